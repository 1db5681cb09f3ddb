// Shared by crates/bt-shim/build.rs and crates/bt-dist/build.rs, which `include!` it: compiling
// C++ against the libtorch torch-sys found (same headers, ABI and allocator as tch), and the
// CUDA header lookup both need. Items only; each build script keeps its own `main`.

/// libtorch's lib dir as torch-sys reported it, and the folder above it holding `include/`
/// (a libtorch zip, or a pip wheel's `torch/`).
fn libtorch_dirs() -> (std::path::PathBuf, std::path::PathBuf) {
    println!("cargo:rerun-if-changed=../../build-support/libtorch.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = std::path::PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not report its libtorch lib dir (DEP_TCH_LIBTORCH_LIB)"),
    );
    let torch = lib.parent().unwrap_or(&lib).to_path_buf();
    (lib, torch)
}

/// A C++17 `cc::Build` with libtorch's ABI and defines; libtorch's headers and `extra` as
/// `-isystem` (libtorch's headers are noisy under -Wall; our own files keep their warnings).
fn libtorch_cc(torch: &std::path::Path, extra: &[std::path::PathBuf]) -> cc::Build {
    let mut build = cc::Build::new();
    build.cpp(true).pic(true).std("c++17");
    build.define("_GLIBCXX_USE_CXX11_ABI", "1");
    // torch-sys compiles tch's own wrapper with this define; keep the TUs identical.
    build.define("GLOG_USE_GLOG_EXPORT", None);
    let base = [torch.join("include"), torch.join("include/torch/csrc/api/include")];
    // Re-adding /usr/include with -isystem reorders libstdc++'s #include_next chain and breaks
    // <cstdlib>; it is searched by default anyway.
    for inc in base.iter().chain(extra).filter(|d| d.as_path() != std::path::Path::new("/usr/include")) {
        build
            .flag("-isystem")
            .flag(inc.to_str().expect("non-UTF-8 include path"));
    }
    build.flag_if_supported("-Wno-unused-parameter");
    build
}

/// Links libtorch's CPU libraries, and its CUDA ones when `cuda`.
fn link_libtorch(lib: &std::path::Path, cuda: bool) {
    println!("cargo:rustc-link-search=native={}", lib.display());
    if cuda {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

/// Whether libtorch was built with CUDA (`libtorch_cuda` and `libc10_cuda` next to it).
fn libtorch_has_cuda(lib: &std::path::Path) -> bool {
    lib.join("libtorch_cuda.so").exists() && lib.join("libc10_cuda.so").exists()
}

/// Where CUDA runtime headers may be, in order: the pip wheel's nvidia packages (CUDA 13, then
/// CUDA 12 layout, in `site`, the folder holding `torch/`), `$CUDA_HOME/include`, a system toolkit.
fn cuda_include_candidates(site: &std::path::Path) -> Vec<std::path::PathBuf> {
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let mut v = vec![site.join("nvidia/cu13/include"), site.join("nvidia/cuda_runtime/include")];
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        v.push(std::path::PathBuf::from(home).join("include"));
    }
    v.push("/usr/local/cuda/include".into());
    v
}
