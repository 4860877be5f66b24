//! Build script: make the `sweep` binary find libtorch at run time without LD_LIBRARY_PATH.
//!
//! torch-sys links against `$LIBTORCH/lib` but adds no rpath to the final binary, so we do. The
//! default LIBTORCH is the repository's `libtorch/` (see .cargo/config.toml and
//! scripts/setup-libtorch); a user's own LIBTORCH (or LIBTORCH_LIB) wins.
//!
//! `SWEEP_CUDA=1` is the opt-in switch for a binary that is to see CUDA: it links libtorch.so with
//! `--no-as-needed`, so that libtorch_cuda.so is loaded (such a binary needs it to start).

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=SWEEP_CUDA");
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
    if env::var("SWEEP_CUDA").as_deref() == Ok("1") {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
