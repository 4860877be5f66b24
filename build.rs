//! Build script: make the `sweep` binary find libtorch at run time without LD_LIBRARY_PATH.
//!
//! torch-sys links against `$LIBTORCH/lib` but adds no rpath to the final binary, so we do. The
//! default LIBTORCH is the repository's `libtorch/` (see .cargo/config.toml and
//! scripts/setup-libtorch); a user's own LIBTORCH (or LIBTORCH_LIB) wins.
//!
//! `SWEEP_CUDA=1` is the opt-in switch for a binary that is to see CUDA: it links libtorch.so with
//! `--no-as-needed`, so that libtorch_cuda.so is loaded (such a binary needs it to start).
//!
//! It also compiles the C++ shim (src/shim/) against libtorch's headers: always its optimizer
//! kernels (kernels.cpp), and its c10d part (c10d.cpp, multi-process training) where Gloo's
//! headers are too (Debian's libgloo-dev; `SWEEP_GLOO_INCLUDE` for another folder), setting
//! `cfg(sweep_c10d)`. Without Gloo's headers (or with SWEEP_NO_C10D=1) the binary is built
//! without c10d: it trains in one process and says so when asked for more.
//!
//! With SWEEP_CUDA=1 the shim also gets c10d's NCCL backend (`cfg(sweep_nccl)`) when NCCL's and
//! CUDA's headers are found: in SWEEP_CUDA_INCLUDE (folders separated by `:`), else in the nvidia
//! wheels beside a torch wheel's `torch/` folder (site-packages/nvidia/*/include), else in
//! $CUDA_HOME/include or /usr/local/cuda/include. scripts/build-cuda sets all of this up.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=SWEEP_CUDA");
    println!("cargo:rerun-if-env-changed=SWEEP_GLOO_INCLUDE");
    println!("cargo:rerun-if-env-changed=SWEEP_NO_C10D");
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    println!("cargo:rerun-if-env-changed=SWEEP_CUDA_INCLUDE");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo::rustc-check-cfg=cfg(sweep_nccl)");
    println!("cargo:rerun-if-changed=src/shim");
    println!("cargo::rustc-check-cfg=cfg(sweep_c10d)");
    println!("cargo::rustc-check-cfg=cfg(sweep_shim)");
    if env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    let lib = match (env::var_os("LIBTORCH_LIB"), env::var_os("LIBTORCH")) {
        (Some(lib), _) => PathBuf::from(lib).join("lib"),
        (None, Some(root)) => PathBuf::from(root).join("lib"),
        (None, None) => return,
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // `sweep submit --install` copies this libtorch to a cluster that names none of its own.
    println!("cargo:rustc-env=SWEEP_LIBTORCH_LIB={}", lib.display());
    let include = env::var_os("LIBTORCH_INCLUDE")
        .map(PathBuf::from)
        .or_else(|| lib.parent().map(|root| root.to_path_buf()))
        .map(|root| root.join("include"));
    let cuda = env::var("SWEEP_CUDA").as_deref() == Ok("1");
    if let Some(include) = include {
        let nccl = if cuda { cuda_includes(&lib) } else { None };
        build_shim(&include, nccl.as_deref());
    }
    if cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
        // libtorch_cuda's own libraries (cuBLAS, cuDNN, NCCL...) are found by the loader where
        // it runs; linking needs only the symbols of the libraries named here.
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
    }
}

/// The include folders that hold NCCL's and CUDA's headers (nccl.h, cuda_runtime_api.h and the
/// cuBLAS, cuSPARSE and cuSOLVER headers that ATen's CUDA context includes), if all are found.
fn cuda_includes(lib: &std::path::Path) -> Option<Vec<PathBuf>> {
    let mut candidates: Vec<PathBuf> = match env::var_os("SWEEP_CUDA_INCLUDE") {
        Some(list) => env::split_paths(&list).collect(),
        None => Vec::new(),
    };
    // A torch wheel's torch/lib: its nvidia wheels are site-packages/nvidia/<name>/include.
    if let Some(nvidia) = lib
        .parent()
        .and_then(|t| t.parent())
        .map(|sp| sp.join("nvidia"))
    {
        if let Ok(rd) = std::fs::read_dir(&nvidia) {
            let mut found: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path().join("include"))
                .filter(|p| p.is_dir())
                .collect();
            found.sort();
            candidates.extend(found);
        }
    }
    if let Some(home) = env::var_os("CUDA_HOME") {
        candidates.push(PathBuf::from(home).join("include"));
    }
    candidates.push(PathBuf::from("/usr/local/cuda/include"));
    let needed = [
        "nccl.h",
        "cuda_runtime_api.h",
        "cublas_v2.h",
        "cusparse.h",
        "cusolverDn.h",
    ];
    let mut dirs = Vec::new();
    for h in needed {
        match candidates.iter().find(|d| d.join(h).exists()) {
            Some(d) => {
                if !dirs.contains(d) {
                    dirs.push(d.clone());
                }
            }
            None => {
                println!(
                    "cargo:warning=building without NCCL: {h} is not in SWEEP_CUDA_INCLUDE, the torch wheel's nvidia folders, CUDA_HOME or /usr/local/cuda (scripts/build-cuda fetches them); ranks on CUDA will reduce through Gloo"
                );
                return None;
            }
        }
    }
    Some(dirs)
}

/// Compile the shim: its kernels always, its c10d part when libtorch's c10d headers and Gloo's
/// are both there; with NCCL's backend when `nccl` names the CUDA include folders.
fn build_shim(include: &std::path::Path, nccl: Option<&[PathBuf]>) {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("src/shim/kernels.cpp");
    if let Some(dirs) = nccl {
        // The CUDA headers: the allocator's statistics (and, with c10d, NCCL).
        for d in dirs {
            build.include(d);
        }
        build
            .define("SWEEP_CUDA_STATS", None)
            .define("USE_CUDA", None);
    }
    let c10d = c10d_includes(include);
    if let Some(gloo) = &c10d {
        build
            .include(gloo)
            .flag("-DUSE_C10D_GLOO")
            .file("src/shim/c10d.cpp");
        if nccl.is_some() {
            build
                .define("SWEEP_NCCL", None)
                .define("USE_C10D_NCCL", None);
        }
    }
    build.compile("sweep_shim");
    println!("cargo:rustc-cfg=sweep_shim");
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    if nccl.is_some() {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    if c10d.is_none() {
        return;
    }
    if nccl.is_some() {
        println!("cargo:rustc-cfg=sweep_nccl");
    }
    println!("cargo:rustc-cfg=sweep_c10d");
}

/// Gloo's include folder, when multi-process training can be built: libtorch's c10d headers and
/// Gloo's are there, and SWEEP_NO_C10D is not 1.
fn c10d_includes(include: &std::path::Path) -> Option<PathBuf> {
    if env::var("SWEEP_NO_C10D").as_deref() == Ok("1") {
        return None;
    }
    let gloo = env::var_os("SWEEP_GLOO_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    let c10d = include.join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp");
    if !c10d.exists() || !gloo.join("gloo/config.h").exists() {
        println!(
            "cargo:warning=building without multi-process training: {} or {} is missing (install libgloo-dev, or set SWEEP_GLOO_INCLUDE)",
            c10d.display(),
            gloo.join("gloo/config.h").display()
        );
        return None;
    }
    Some(gloo)
}
