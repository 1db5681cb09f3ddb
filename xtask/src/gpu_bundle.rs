//! `cargo xtask gpu-bundle [--dataset DIR] [--out DIR]`: everything one GPU-machine run needs, in
//! one git-ignored folder (default `.gpu/`), under the 64 MiB the transfer allows:
//!
//! - `bt-cli` (release, stripped) and the CUDA test binaries (`tests/`: bt-shim's `cuda` test),
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
    // The CUDA-only test binary of the shim (its tests are `#[ignore = "needs CUDA"]`; the GPU
    // check runs them with `--include-ignored` on the H200).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.args(["test", "--release", "-p", "bt-shim", "--test", "cuda", "--no-run", "--message-format=json"])
        .current_dir(root);
    for (k, v) in t.env() {
        c.env(k, v);
    }
    let o = c.output().context("building the CUDA test binaries")?;
    if !o.status.success() {
        bail!("cargo test --no-run failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let tests = test_executables(&String::from_utf8_lossy(&o.stdout));

    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(out.join("bench"))?;
    std::fs::create_dir_all(out.join("tests"))?;
    let bin = out.join("bt-cli");
    copy(&root.join("target/release/bt-cli"), &bin)?;
    strip(&bin)?;
    for exe in &tests {
        let name = exe.file_name().context("test binary name")?.to_string_lossy().to_string();
        // cargo names them `<target>-<hash>`; the script runs whatever is in tests/.
        let short = name.split('-').next().unwrap_or(&name).to_string();
        let dst = out.join("tests").join(format!("bt-shim-{short}"));
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
        copy(&dataset.join("unpack.py"), &out.join("unpack.py"))?;
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

#[cfg(test)]
mod tests {
    #[test]
    fn finds_test_executables_in_cargo_json() {
        let json = "{\"reason\":\"compiler-artifact\",\"executable\":null}\n\
                    {\"reason\":\"compiler-artifact\",\"target\":{\"name\":\"cuda\"},\"executable\":\"/t/release/deps/cuda-abc123\",\"fresh\":true}\n";
        assert_eq!(super::test_executables(json), vec![std::path::PathBuf::from("/t/release/deps/cuda-abc123")]);
    }
}
