//! `cargo xtask gpu-bundle [--dataset DIR] [--out DIR]`: everything one GPU-machine run needs, in
//! one git-ignored folder (default `.gpu/`), under the 64 MiB the transfer allows:
//!
//! - `bt-cli` (release, stripped; refused unless its shim has the CUDA half) and the test binaries
//!   with CUDA-only tests (`tests/`: bt-shim's `cuda` test, bt-train's unit tests and `static_step`),
//! - `gpu-check.sh` (scripts/gpu-check.sh, the run itself) and `bench/*.py` (the PyTorch peers),
//! - `cifar10-jpeg-q75.pack` + `unpack.py` from `--dataset DIR` (default
//!   `../shared/datasets/cifar10-jpeg`) when present.
//!
//! Then, on the GPU machine: `bash .gpu/gpu-check.sh [EPOCHS]` (docs/GPU.md).
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

const LIMIT: u64 = 64 * 1024 * 1024;

fn copy(src: &Path, dst: &Path) -> Result<u64> {
    std::fs::copy(src, dst).with_context(|| format!("copying {} to {}", src.display(), dst.display()))
}

fn strip(path: &Path) -> Result<()> {
    let st = Command::new("strip").arg(path).status().context("running strip (binutils)")?;
    if !st.success() {
        bail!("strip {} failed ({st})", path.display());
    }
    Ok(())
}

/// Whether `bt-cli info` says its shim was compiled with the CUDA half (`csrc/cuda.cpp` with
/// `BT_SHIM_CUDA`); without it every CUDA path of the bundle would return "built without CUDA
/// support" on the GPU machine, after the transfer.
fn shim_has_cuda(info: &str) -> bool {
    info.lines().any(|l| l.starts_with("bt-shim CUDA support: yes"))
}

/// The shared libraries an ELF binary needs and its run path, from `readelf -d`.
fn dynamic_section(readelf: &str) -> (Vec<String>, Option<String>) {
    let bracketed = |l: &str| Some(l[l.find('[')? + 1..l.rfind(']')?].to_string());
    let needed = readelf.lines().filter(|l| l.contains("(NEEDED)")).filter_map(bracketed).collect();
    let rpath = readelf.lines().find(|l| l.contains("(RUNPATH)") || l.contains("(RPATH)")).and_then(bracketed);
    (needed, rpath)
}

/// Refuses a `bt-cli` without the shim's CUDA half and prints the libraries it needs (they must
/// resolve on the GPU machine through its torch's `lib/`, which gpu-check.sh puts first).
fn check_binary(t: &crate::torch::Torch, bin: &Path) -> Result<()> {
    let mut c = Command::new(bin);
    c.arg("info");
    for (k, v) in t.env() {
        c.env(k, v);
    }
    let o = c.output().with_context(|| format!("running {} info", bin.display()))?;
    let info = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() || !shim_has_cuda(&info) {
        bail!(
            "{} was built without bt-shim's CUDA half (no CUDA runtime headers at build time; see the \
             bt-shim build warning, set BT_SHIM_CUDA_INCLUDE, `cargo clean -p bt-shim` and rebuild):\n{info}{}",
            bin.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = Command::new("readelf").args(["-d"]).arg(bin).output().context("running readelf (binutils)")?;
    let (needed, rpath) = dynamic_section(&String::from_utf8_lossy(&o.stdout));
    println!("bt-cli needs: {}", needed.join(" "));
    println!("bt-cli run path: {}", rpath.as_deref().unwrap_or("(none)"));
    if !needed.iter().any(|l| l.starts_with("libtorch_cuda")) {
        bail!("{} does not link libtorch_cuda (needs: {})", bin.display(), needed.join(" "));
    }
    Ok(())
}

/// The executables cargo reports for `cargo test --no-run` of one test target.
fn test_executables(json: &str) -> Vec<PathBuf> {
    // Light on purpose (xtask has no JSON dependency): each artifact line carries
    // `"executable":"<path>"` (null for non-test artifacts).
    json.lines()
        .filter_map(|l| {
            let i = l.find("\"executable\":\"")? + "\"executable\":\"".len();
            let j = l[i..].find('"')?;
            Some(PathBuf::from(&l[i..i + j]))
        })
        .collect()
}

pub fn run(root: &Path, t: &crate::torch::Torch, args: &[String]) -> Result<()> {
    let mut dataset = root.join("../shared/datasets/cifar10-jpeg");
    let mut out = root.join(".gpu");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dataset" => dataset = PathBuf::from(it.next().context("--dataset needs a folder")?),
            "--out" => out = PathBuf::from(it.next().context("--out needs a folder")?),
            other => bail!("gpu-bundle: unknown argument `{other}` (--dataset DIR, --out DIR)"),
        }
    }
    crate::cargo(t, &["build", "--release", "-p", "bt-cli"])?;
    check_binary(t, &root.join("target/release/bt-cli"))?;
    // Test binaries with `#[ignore = "needs CUDA"]` tests: bt-shim's CUDA tests, bt-train's
    // unit tests (the uploader's pinned staging) and its static step (CUDA graph replay vs eager),
    // bt-dist's NCCL world of one (docs/DISTRIBUTED.md); the GPU check runs them with `--ignored`.
    let mut tests = Vec::new();
    for (pkg, target, name) in TEST_BINARIES {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut c = Command::new(cargo);
        c.args(["test", "--release", "-p", pkg]).args(target.iter().filter(|a| !a.is_empty()));
        c.args(["--no-run", "--message-format=json"]).current_dir(root);
        for (k, v) in t.env() {
            c.env(k, v);
        }
        let o = c.output().context("building the CUDA test binaries")?;
        if !o.status.success() {
            bail!("cargo test -p {pkg} --no-run failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        match test_executables(&String::from_utf8_lossy(&o.stdout)).as_slice() {
            [exe] => tests.push((exe.clone(), name)),
            other => bail!("expected one test executable from {pkg} {target:?}, cargo reported {other:?}"),
        }
    }

    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(out.join("bench"))?;
    std::fs::create_dir_all(out.join("tests"))?;
    let bin = out.join("bt-cli");
    copy(&root.join("target/release/bt-cli"), &bin)?;
    strip(&bin)?;
    for (exe, name) in &tests {
        // The script runs whatever is in tests/.
        let dst = out.join("tests").join(name);
        copy(exe, &dst)?;
        strip(&dst)?;
    }
    copy(&root.join("scripts/gpu-check.sh"), &out.join("gpu-check.sh"))?;
    for e in std::fs::read_dir(root.join("bench"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "py") {
            copy(&p, &out.join("bench").join(p.file_name().unwrap()))?;
        }
    }
    let pack = dataset.join("cifar10-jpeg-q75.pack");
    if pack.is_file() {
        copy(&pack, &out.join("cifar10-jpeg-q75.pack"))?;
        // The repository's unpack.py (the dataset's, for any record count), which the dry run
        // (tests/gpu_check.rs) runs on a small pack: the GPU machine runs a tested script.
        copy(&root.join("scripts/unpack.py"), &out.join("unpack.py"))?;
    } else {
        eprintln!("gpu-bundle: no dataset pack at {} (pass --dataset DIR); the bundle has none", pack.display());
    }
    let mut total = 0u64;
    let mut stack = vec![out.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                total += e.metadata()?.len();
                println!("{:>10}  {}", e.metadata()?.len(), e.path().strip_prefix(&out).unwrap_or(&e.path()).display());
            }
        }
    }
    println!("gpu-bundle: {} ({:.1} MiB of the 64 MiB limit)", out.display(), total as f64 / 1048576.0);
    if total >= LIMIT {
        bail!("the bundle is {total} bytes, over the 64 MiB limit");
    }
    println!(
        "on the GPU machine: bash {}/gpu-check.sh [EPOCHS]   (see docs/GPU.md)",
        out.file_name().unwrap().to_string_lossy()
    );
    Ok(())
}

/// The CUDA test binaries of the bundle: (package, cargo target, name in `.gpu/tests/`).
pub const TEST_BINARIES: [(&str, [&str; 2], &str); 4] = [
    ("bt-shim", ["--test", "cuda"], "bt-shim-cuda"),
    ("bt-train", ["--lib", ""], "bt-train-lib"),
    ("bt-train", ["--test", "static_step"], "bt-train-static-step"),
    ("bt-dist", ["--test", "single"], "bt-dist-single"),
];

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_shim_cuda_line_of_info() {
        assert!(super::shim_has_cuda("cuda devices: 0\nbt-shim CUDA support: yes (built against /x)\n"));
        assert!(!super::shim_has_cuda("bt-shim CUDA support: no (built without CUDA headers)\n"));
        assert!(!super::shim_has_cuda("cuda available: false\n"));
    }

    #[test]
    fn reads_needed_libraries_and_run_path() {
        let out = " 0x0000000000000001 (NEEDED)             Shared library: [libtorch_cuda.so]\n \
                   0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]\n \
                   0x000000000000001d (RUNPATH)            Library runpath: [/venv/torch/lib]\n";
        let (needed, rpath) = super::dynamic_section(out);
        assert_eq!(needed, ["libtorch_cuda.so", "libc.so.6"]);
        assert_eq!(rpath.as_deref(), Some("/venv/torch/lib"));
        assert_eq!(super::dynamic_section("").1, None);
    }

    #[test]
    fn finds_test_executables_in_cargo_json() {
        let json = "{\"reason\":\"compiler-artifact\",\"executable\":null}\n\
                    {\"reason\":\"compiler-artifact\",\"target\":{\"name\":\"cuda\"},\"executable\":\"/t/release/deps/cuda-abc123\",\"fresh\":true}\n";
        assert_eq!(super::test_executables(json), vec![std::path::PathBuf::from("/t/release/deps/cuda-abc123")]);
    }

    /// Every test target with a `#[ignore = "needs CUDA"]` test is in the bundle (the NCCL
    /// world of one was missing once: docs/DISTRIBUTED.md said to run it, the bundle had not).
    #[test]
    fn every_cuda_test_target_is_bundled() {
        fn rs_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    rs_files(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let crates = crate::root().join("crates");
        let mut found = Vec::new();
        for c in std::fs::read_dir(&crates).unwrap().flatten() {
            let pkg = c.file_name().to_string_lossy().into_owned();
            let mut files = Vec::new();
            rs_files(&c.path().join("src"), &mut files);
            let cuda = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().contains("ignore = \"needs CUDA\"");
            if files.iter().any(|p| cuda(p)) {
                found.push((pkg.clone(), "--lib".to_string(), String::new()));
            }
            for e in std::fs::read_dir(c.path().join("tests")).into_iter().flatten().flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "rs") && cuda(&p) {
                    let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
                    found.push((pkg.clone(), "--test".to_string(), stem));
                }
            }
        }
        assert!(found.len() >= 4, "{found:?}");
        for (pkg, kind, name) in &found {
            assert!(
                super::TEST_BINARIES.iter().any(|(p, t, _)| p == pkg && t[0] == kind && t[1] == name),
                "{pkg} {kind} {name} has `needs CUDA` tests but is not in gpu_bundle::TEST_BINARIES"
            );
        }
    }
}
