//! Compiles `csrc/*.cpp` against the libtorch that torch-sys found, so the shim and tch share one
//! libtorch (same headers, same ABI, same allocator for the `at::Tensor*` handles they exchange).
//!
//! CUDA: `csrc/cuda.cpp` is compiled with `BT_SHIM_CUDA` only when libtorch has
//! `libtorch_cuda`/`libc10_cuda` AND the CUDA runtime headers are found (the pip wheel ships
//! them in `site-packages/nvidia/cu13/include`); otherwise the CUDA entry points compile to
//! stubs returning "built without CUDA support", so a CPU-only libtorch builds too.
//! `BT_SHIM_NO_CUDA=1` forces the stubs; `BT_SHIM_CUDA_INCLUDE=<dir>` names the headers.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=BT_SHIM_NO_CUDA");
    println!("cargo:rerun-if-env-changed=BT_SHIM_CUDA_INCLUDE");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo::rustc-check-cfg=cfg(bt_shim_cuda)");

    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not report its libtorch lib dir (DEP_TCH_LIBTORCH_LIB)"),
    );
    let torch = lib.parent().unwrap_or(&lib).to_path_buf();

    let cuda_libs = lib.join("libtorch_cuda.so").exists() && lib.join("libc10_cuda.so").exists();
    let forced_off = std::env::var_os("BT_SHIM_NO_CUDA").is_some_and(|v| v != "0");
    let cuda_include = if cuda_libs && !forced_off {
        find_cuda_include(&torch)
    } else {
        None
    };

    let mut build = cc::Build::new();
    build.cpp(true).pic(true).std("c++17");
    build.define("_GLIBCXX_USE_CXX11_ABI", "1");
    // torch-sys compiles tch's own wrapper with this define; keep the two TUs identical.
    build.define("GLOG_USE_GLOG_EXPORT", None);
    // -isystem: libtorch's headers are noisy under -Wall; our own files keep their warnings.
    let mut sys_includes = vec![
        torch.join("include"),
        torch.join("include/torch/csrc/api/include"),
    ];
    if let Some(inc) = &cuda_include {
        sys_includes.push(inc.clone());
        build.define("BT_SHIM_CUDA", None);
        println!("cargo:rustc-cfg=bt_shim_cuda");
    }
    for inc in &sys_includes {
        build
            .flag("-isystem")
            .flag(inc.to_str().expect("non-UTF-8 libtorch path"));
    }
    build.flag_if_supported("-Wno-unused-parameter");
    build.files(["csrc/shim.cpp", "csrc/cuda.cpp"]);
    build.compile("bt_shim");

    println!("cargo:rustc-link-search=native={}", lib.display());
    if cuda_include.is_some() {
        // cuda.cpp calls into these two (streams, events, graphs, device properties); the CUDA
        // runtime itself is reached only through them, never linked directly.
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!(
        "cargo:rustc-env=BT_SHIM_CUDA_INCLUDE={}",
        cuda_include
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
}

/// The CUDA runtime headers: an explicit override, the pip wheel's nvidia packages (CUDA 13 and
/// CUDA 12 layouts), then a system toolkit.
fn find_cuda_include(torch: &Path) -> Option<PathBuf> {
    let site = torch.parent().unwrap_or(torch);
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("BT_SHIM_CUDA_INCLUDE") {
        candidates.push(dir.into());
    }
    candidates.push(site.join("nvidia/cu13/include"));
    candidates.push(site.join("nvidia/cuda_runtime/include"));
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        candidates.push(PathBuf::from(home).join("include"));
    }
    candidates.push("/usr/local/cuda/include".into());
    let found = candidates
        .into_iter()
        .find(|d| d.join("cuda_runtime_api.h").exists())?;
    // The CUDA 13 wheels split `crt/` (included by cuda_runtime.h, which libtorch's CUDA headers
    // pull in) into its own package; without it compilation would fail half-way.
    if !found.join("crt/host_config.h").exists() {
        println!(
            "cargo:warning=bt-shim: {} lacks crt/host_config.h; building WITHOUT CUDA support \
             (pip install --no-deps nvidia-cuda-crt==<CUDA runtime version> to enable it)",
            found.display()
        );
        return None;
    }
    Some(found)
}
