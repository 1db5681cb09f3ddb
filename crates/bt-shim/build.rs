//! Compiles `csrc/*.cpp` against the libtorch that torch-sys found, so the shim and tch share one
//! libtorch (same headers, same ABI, same allocator for the `at::Tensor*` handles they exchange).
//!
//! CUDA: `csrc/cuda.cpp` is compiled with `BT_SHIM_CUDA` only when libtorch has
//! `libtorch_cuda`/`libc10_cuda` AND the CUDA runtime headers are found (the pip wheel ships
//! them in `site-packages/nvidia/cu13/include`); otherwise the CUDA entry points compile to
//! stubs returning "built without CUDA support", so a CPU-only libtorch builds too.
//! `BT_SHIM_NO_CUDA=1` forces the stubs; `BT_SHIM_CUDA_INCLUDE=<dir>` names the headers.
use std::path::{Path, PathBuf};

use bt_build::{cuda_include_candidates, libtorch_cc, libtorch_dirs, libtorch_has_cuda, link_libtorch};

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=BT_SHIM_NO_CUDA");
    println!("cargo:rerun-if-env-changed=BT_SHIM_CUDA_INCLUDE");
    println!("cargo::rustc-check-cfg=cfg(bt_shim_cuda)");

    let (lib, torch) = libtorch_dirs();
    let forced_off = std::env::var_os("BT_SHIM_NO_CUDA").is_some_and(|v| v != "0");
    let wants_cuda = libtorch_has_cuda(&lib) && !forced_off;
    let cuda_include = if wants_cuda { find_cuda_include(&torch) } else { None };
    if wants_cuda && cuda_include.is_none() {
        // Not an error (a CPU build is valid), but never silent: a GPU bundle built like this
        // would run nothing on CUDA (`cargo xtask gpu-bundle` refuses it).
        println!(
            "cargo:warning=bt-shim: libtorch has CUDA but no usable CUDA runtime headers were found; \
             building WITHOUT CUDA support (set BT_SHIM_CUDA_INCLUDE=<dir with cuda_runtime_api.h>)"
        );
    }

    let mut build = libtorch_cc(&torch, cuda_include.as_slice());
    if cuda_include.is_some() {
        build.define("BT_SHIM_CUDA", None);
        println!("cargo:rustc-cfg=bt_shim_cuda");
    }
    build.files(["csrc/shim.cpp", "csrc/cuda.cpp", "csrc/opcount.cpp"]);
    build.compile("bt_shim");

    // cuda.cpp calls into torch_cuda/c10_cuda (streams, events, graphs, device properties); the
    // CUDA runtime itself is reached only through them, never linked directly.
    link_libtorch(&lib, cuda_include.is_some());
    println!(
        "cargo:rustc-env=BT_SHIM_CUDA_INCLUDE={}",
        cuda_include.as_deref().map(|p| p.display().to_string()).unwrap_or_default()
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
    candidates.extend(cuda_include_candidates(site));
    let found = candidates.into_iter().find(|d| d.join("cuda_runtime_api.h").exists())?;
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
