//! Compiles `csrc/dist.cpp` against the libtorch that torch-sys found (same headers, same ABI,
//! same allocator as tch), with libtorch's c10d compiled in `libtorch_cpu` / `libtorch_cuda`.
//!
//! Gloo (always on): libtorch's `ProcessGroupGloo.hpp` includes gloo headers that the pip wheel
//! does not ship. They come from Debian's `libgloo-dev` (`apt-get install -y libgloo-dev`) or from
//! `BT_DIST_GLOO_INCLUDE=<dir containing gloo/>`. Only the headers are used: every gloo symbol
//! we reach lives in libtorch_cpu, which links its own gloo statically.
//!
//! NCCL (optional): compiled with `-DUSE_C10D_NCCL` only when libtorch has `libtorch_cuda` and both
//! `nccl.h` (the wheel's `site-packages/nvidia/nccl/include`) and the CUDA runtime headers
//! (`site-packages/nvidia/cu13/include`, including CCCL's `nv/target`, which ATen's CUDA headers
//! pull in through `cuda_fp16.h`: `pip install --no-deps nvidia-cuda-cccl==13.0.85`) are found;
//! otherwise the NCCL entry point returns "built without NCCL" and a cargo warning says what is
//! missing. `BT_DIST_NO_NCCL=1` forces that; `BT_DIST_CUDA_EXTRA_INCLUDE=<dir>` adds a header
//! directory (e.g. an unpacked CCCL wheel).
use std::path::{Path, PathBuf};

use bt_build::{cuda_include_candidates, libtorch_cc, libtorch_dirs, libtorch_has_cuda, link_libtorch};

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    for var in ["BT_DIST_GLOO_INCLUDE", "BT_DIST_NO_NCCL", "BT_DIST_CUDA_EXTRA_INCLUDE"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo::rustc-check-cfg=cfg(bt_dist_nccl)");

    let (lib, torch) = libtorch_dirs();
    let site = torch.parent().unwrap_or(&torch).to_path_buf();

    let gloo = find_gloo_include(&torch).unwrap_or_else(|| {
        panic!(
            "\n\nbt-dist: the gloo headers (gloo/algorithm.h) were not found.\n\
             libtorch's ProcessGroupGloo.hpp needs them and the pip wheel does not ship them.\n\
             Install them with:\n\n    apt-get install -y libgloo-dev\n\n\
             or point BT_DIST_GLOO_INCLUDE at a directory that contains gloo/.\n\n"
        )
    });

    let forced_off = std::env::var_os("BT_DIST_NO_NCCL").is_some_and(|v| v != "0");
    let nccl = if libtorch_has_cuda(&lib) && !forced_off { find_nccl_includes(&site) } else { None };

    let mut includes = vec![gloo];
    includes.extend(nccl.iter().flatten().cloned());
    let mut build = libtorch_cc(&torch, &includes);
    build.define("USE_C10D_GLOO", None);
    if nccl.is_some() {
        build.define("USE_C10D_NCCL", None);
        build.define("USE_CUDA", None);
        println!("cargo:rustc-cfg=bt_dist_nccl");
    }
    build.file("csrc/dist.cpp");
    build.compile("bt_dist");

    link_libtorch(&lib, nccl.is_some());
}

fn find_gloo_include(torch: &Path) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("BT_DIST_GLOO_INCLUDE") {
        candidates.push(dir.into());
    }
    candidates.push(torch.join("include"));
    candidates.push("/usr/include".into());
    candidates.push("/usr/local/include".into());
    candidates.into_iter().find(|d| d.join("gloo/algorithm.h").exists())
}

/// `nccl.h`, the CUDA runtime headers (with `crt/`, split into its own package in CUDA 13) and
/// CCCL's `nv/target`. Prints a cargo warning naming what is missing.
fn find_nccl_includes(site: &Path) -> Option<Vec<PathBuf>> {
    let missing = |what: &str| {
        println!("cargo:warning=bt-dist: building WITHOUT NCCL: {what}");
        None
    };
    let Some(nccl) =
        [site.join("nvidia/nccl/include"), "/usr/include".into()].into_iter().find(|d| d.join("nccl.h").exists())
    else {
        return missing("nccl.h not found (pip package nvidia-nccl-cu13)");
    };
    let Some(cuda) = cuda_include_candidates(site)
        .into_iter()
        .find(|d| d.join("cuda_runtime_api.h").exists() && d.join("crt/host_config.h").exists())
    else {
        return missing("CUDA runtime headers with crt/ not found (pip nvidia-cuda-crt)");
    };
    let mut dirs = vec![nccl, cuda.clone()];
    if let Some(extra) = std::env::var_os("BT_DIST_CUDA_EXTRA_INCLUDE") {
        dirs.extend(std::env::split_paths(&extra));
    }
    if !dirs.iter().any(|d| d.join("nv/target").exists()) {
        return missing(&format!(
            "CCCL's nv/target is not in {} (pip install --no-deps nvidia-cuda-cccl==13.0.85, \
             or BT_DIST_CUDA_EXTRA_INCLUDE=<dir>)",
            cuda.display()
        ));
    }
    Some(dirs)
}
