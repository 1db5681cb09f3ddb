//! Build-script helper: compile C++ against the libtorch that `torch-sys` found, and link it.
//!
//! Used as a `[build-dependencies]` entry by `bt-shim` and `bt-dist`, the two crates with C++.
//! Both exchange `at::Tensor*` handles with tch, so their translation units must see exactly the
//! headers, C++ ABI and defines tch's own wrapper was compiled with; keeping that setup in one
//! crate means the two can never drift apart (and each stays a self-contained, packageable crate,
//! which an `include!` of a file outside their folders did not allow).
//!
//! # Usage (in a `build.rs`)
//! The calling crate must depend on `torch-sys` directly: cargo passes a `links` crate's metadata
//! (`DEP_TCH_LIBTORCH_LIB`) only to the build scripts of its direct dependents.
//!
//! ```no_run
//! let (lib, torch) = bt_build::libtorch_dirs();
//! let mut build = bt_build::libtorch_cc(&torch, &[]);
//! build.file("csrc/my.cpp");
//! build.compile("my");
//! bt_build::link_libtorch(&lib, false);
//! ```
//!
//! # Panics
//! These functions run inside build scripts, where a panic is how a build fails with a message:
//! [`libtorch_dirs`] panics when torch-sys did not report its lib dir, [`libtorch_cc`] on a
//! non-UTF-8 include path.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

/// libtorch's lib dir as torch-sys reported it (`DEP_TCH_LIBTORCH_LIB`), and the folder above it
/// holding `include/` (a libtorch zip, or a pip wheel's `torch/`): `(lib, torch)`.
///
/// # Panics
/// When `DEP_TCH_LIBTORCH_LIB` is unset (the calling crate does not depend on `torch-sys`).
pub fn libtorch_dirs() -> (PathBuf, PathBuf) {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not report its libtorch lib dir (DEP_TCH_LIBTORCH_LIB)"),
    );
    let torch = lib.parent().unwrap_or(&lib).to_path_buf();
    (lib, torch)
}

/// A C++17 `cc::Build` with libtorch's ABI and defines; libtorch's headers and `extra` as
/// `-isystem` (libtorch's headers are noisy under -Wall; the caller's own files keep their
/// warnings). `torch` is the second value of [`libtorch_dirs`].
///
/// # Panics
/// On a non-UTF-8 include path.
pub fn libtorch_cc(torch: &Path, extra: &[PathBuf]) -> cc::Build {
    let mut build = cc::Build::new();
    build.cpp(true).pic(true).std("c++17");
    build.define("_GLIBCXX_USE_CXX11_ABI", "1");
    // torch-sys compiles tch's own wrapper with this define; keep the TUs identical.
    build.define("GLOG_USE_GLOG_EXPORT", None);
    let base = [torch.join("include"), torch.join("include/torch/csrc/api/include")];
    // Re-adding /usr/include with -isystem reorders libstdc++'s #include_next chain and breaks
    // <cstdlib>; it is searched by default anyway.
    for inc in base.iter().chain(extra).filter(|d| d.as_path() != Path::new("/usr/include")) {
        build.flag("-isystem").flag(inc.to_str().expect("non-UTF-8 include path"));
    }
    build.flag_if_supported("-Wno-unused-parameter");
    build
}

/// Prints the link lines for libtorch's CPU libraries, and its CUDA ones when `cuda`.
pub fn link_libtorch(lib: &Path, cuda: bool) {
    println!("cargo:rustc-link-search=native={}", lib.display());
    if cuda {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

/// Whether libtorch was built with CUDA (`libtorch_cuda` and `libc10_cuda` next to it).
pub fn libtorch_has_cuda(lib: &Path) -> bool {
    lib.join("libtorch_cuda.so").exists() && lib.join("libc10_cuda.so").exists()
}

/// Where CUDA runtime headers may be, in order: the pip wheel's nvidia packages (CUDA 13, then
/// CUDA 12 layout, in `site`, the folder holding `torch/`), `$CUDA_HOME/include`, a system toolkit.
pub fn cuda_include_candidates(site: &Path) -> Vec<PathBuf> {
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let mut v = vec![site.join("nvidia/cu13/include"), site.join("nvidia/cuda_runtime/include")];
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        v.push(PathBuf::from(home).join("include"));
    }
    v.push("/usr/local/cuda/include".into());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_candidates_start_with_the_wheel_layouts() {
        let site = Path::new("/opt/site");
        let v = cuda_include_candidates(site);
        assert_eq!(v[0], site.join("nvidia/cu13/include"));
        assert_eq!(v[1], site.join("nvidia/cuda_runtime/include"));
        assert_eq!(v.last().unwrap(), Path::new("/usr/local/cuda/include"));
    }

    #[test]
    fn cuda_needs_both_libraries() {
        let dir = std::env::temp_dir().join(format!("bt-build-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!libtorch_has_cuda(&dir));
        std::fs::write(dir.join("libtorch_cuda.so"), b"").unwrap();
        assert!(!libtorch_has_cuda(&dir), "libc10_cuda.so is missing");
        std::fs::write(dir.join("libc10_cuda.so"), b"").unwrap();
        assert!(libtorch_has_cuda(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
