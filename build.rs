//! Build script: make the `sweep` binary find libtorch at run time without LD_LIBRARY_PATH.
//!
//! torch-sys links against `$LIBTORCH/lib` but adds no rpath to the final binary, so we do. The
//! default LIBTORCH is the repository's `libtorch/` (see .cargo/config.toml and
//! scripts/setup-libtorch); a user's own LIBTORCH (or LIBTORCH_LIB) wins.
//!
//! `SWEEP_CUDA=1` is the opt-in switch for a binary that is to see CUDA: it links libtorch.so with
//! `--no-as-needed`, so that libtorch_cuda.so is loaded (such a binary needs it to start).
//!
//! It also compiles the c10d shim (src/dist/c10d_shim.cpp, multi-process training) against
//! libtorch's headers and Gloo's (Debian's libgloo-dev; `SWEEP_GLOO_INCLUDE` for another
//! folder), and sets `cfg(sweep_c10d)`. Without Gloo's headers (or with SWEEP_NO_C10D=1) the
//! binary is built without it: it trains in one process and says so when asked for more.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=SWEEP_CUDA");
    println!("cargo:rerun-if-env-changed=SWEEP_GLOO_INCLUDE");
    println!("cargo:rerun-if-env-changed=SWEEP_NO_C10D");
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    println!("cargo:rerun-if-changed=src/dist/c10d_shim.cpp");
    println!("cargo::rustc-check-cfg=cfg(sweep_c10d)");
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
    if let Some(include) = include {
        build_c10d_shim(&include);
    }
    if env::var("SWEEP_CUDA").as_deref() == Ok("1") {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// Compile the c10d shim when libtorch's c10d headers and Gloo's are both there.
fn build_c10d_shim(include: &std::path::Path) {
    if env::var("SWEEP_NO_C10D").as_deref() == Ok("1") {
        return;
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
        return;
    }
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .include(&gloo)
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DUSE_C10D_GLOO")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("src/dist/c10d_shim.cpp")
        .compile("sweep_c10d");
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rustc-cfg=sweep_c10d");
}
