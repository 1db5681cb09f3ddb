//! Links libtorch so that `bt-cli` works the first time:
//!
//! - `--no-as-needed -ltorch_cuda`: nothing in tch references a libtorch_cuda symbol, so the
//!   linker's default `--as-needed` drops it, and CUDA is then silently "unavailable" at run time
//!   even on a GPU machine. Forcing it into DT_NEEDED makes its static initializers register the
//!   CUDA backend.
//! - an rpath to the libtorch lib dir, so the binary runs without `LD_LIBRARY_PATH` on the machine
//!   it was built on (other machines: set `LD_LIBRARY_PATH`, see scripts/gpu-check.sh).
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys did not report its libtorch lib dir (DEP_TCH_LIBTORCH_LIB)");
    let lib = PathBuf::from(lib);
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-env=BT_LIBTORCH_LIB={}", lib.display());
    println!("cargo:rustc-env=BT_LIBTORCH_VERSION={}", libtorch_version(&lib));
}

/// The version string of the libtorch that was linked: `version.py` of a pip wheel or
/// `build-version` of a libtorch zip.
fn libtorch_version(lib: &Path) -> String {
    let root = lib.parent().unwrap_or(lib);
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("__version__ = ") {
                return v.trim().trim_matches('\'').trim_matches('"').to_string();
            }
        }
    }
    std::fs::read_to_string(root.join("build-version"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
