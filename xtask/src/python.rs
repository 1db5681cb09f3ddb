//! The Python package `twinloader` (`crates/bt-py`): its build tools in the project's Python,
//! a from-source install and its pytest suite (`cargo xtask test`), and the wheel file
//! (`cargo xtask wheel`).
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the package's build and tests need: maturin, pytest, numpy, and Pillow (the tests
/// write their JPEG/PNG/WebP fixtures with it). The libtorch Python has the last two already.
const TOOLS: &[&str] = &["maturin>=1.5,<2", "pytest>=7", "numpy", "pillow"];
/// The package folder (the `pyproject.toml` the README names).
pub const PACKAGE: &str = "crates/bt-py";

/// The Python to use: libtorch's (`.venv/` or `BT_PYTHON`) when xtask found one, else `.venv/`,
/// created without torch when missing (the package needs only numpy). Its build tools are
/// installed when missing.
pub fn python(root: &Path, found: Option<&Path>) -> Result<PathBuf> {
    let py = match found {
        Some(p) => p.to_path_buf(),
        None => {
            let venv = root.join(".venv/bin/python");
            if !venv.exists() {
                let status = Command::new("python3").args(["-m", "venv"]).arg(root.join(".venv")).status();
                if !status.map(|s| s.success()).unwrap_or(false) {
                    bail!("no Python for the twinloader package: install Python 3.9+ with venv, or set BT_PYTHON");
                }
            }
            venv
        }
    };
    let has = |code: &str| Command::new(&py).args(["-c", code]).output().map(|o| o.status.success()).unwrap_or(false);
    if !has("import maturin, pytest, numpy, PIL") {
        let mut c = Command::new(&py);
        c.args(["-m", "pip", "install", "--disable-pip-version-check"]).args(TOOLS);
        run(&mut c, "pip install maturin pytest numpy pillow")?;
    }
    Ok(py)
}

/// The environment maturin gives pyo3's build script for `py` (its `PYO3_*` variables). The
/// workspace build of `cargo xtask test` runs with it too, so that the pip install after it
/// reuses the compiled pyo3 instead of rebuilding it for a different fingerprint.
pub fn pyo3_env(py: &Path) -> Result<Vec<(String, String)>> {
    let out = Command::new(py)
        .args(["-c", "import sys; print(f'cpython-{sys.version_info[0]}.{sys.version_info[1]}-64bit')"])
        .output()
        .with_context(|| format!("running {}", py.display()))?;
    if !out.status.success() {
        bail!("{} failed to print its version", py.display());
    }
    let sig = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let py = py.display().to_string();
    Ok(vec![
        ("PYO3_BUILD_EXTENSION_MODULE".into(), "1".into()),
        ("PYO3_ENVIRONMENT_SIGNATURE".into(), sig),
        ("PYO3_PYTHON".into(), py.clone()),
        ("PYTHON_SYS_EXECUTABLE".into(), py),
    ])
}

/// `PATH` with the Python's own `bin/` first: maturin's build backend runs the `maturin`
/// executable installed beside it.
fn path_with(py: &Path) -> String {
    let bin = py.parent().map(|p| p.display().to_string()).unwrap_or_default();
    match std::env::var("PATH") {
        Ok(p) if !p.is_empty() => format!("{bin}:{p}"),
        _ => bin,
    }
}

/// `pip install` of the package from source (the README's command), then its pytest suite.
pub fn test(root: &Path, py: &Path, env: &[(String, String)]) -> Result<()> {
    let mut c = Command::new(py);
    // No build isolation: maturin from this Python, no download; the Rust build shares target/.
    c.args(["-m", "pip", "install"])
        .args(["--disable-pip-version-check", "--no-build-isolation", "--force-reinstall", "--no-deps"])
        .arg(root.join(PACKAGE))
        .env("PATH", path_with(py))
        .current_dir(root);
    run(&mut c, "pip install crates/bt-py (builds twinloader from source)")?;
    let mut c = Command::new(py);
    c.args(["-m", "pytest", "-q", "-p", "no:cacheprovider"]).arg(root.join(PACKAGE).join("tests")).current_dir(root);
    for (k, v) in env {
        c.env(k, v);
    }
    run(&mut c, "pytest crates/bt-py/tests")
}

/// `maturin build --release` of the package into `target/wheels/`.
pub fn wheel(root: &Path, py: &Path) -> Result<()> {
    let out = root.join("target/wheels");
    let mut c = Command::new(py);
    c.args(["-m", "maturin", "build", "--release", "--manifest-path"])
        .arg(root.join(PACKAGE).join("Cargo.toml"))
        .arg("--out")
        .arg(&out)
        .env("PATH", path_with(py))
        .current_dir(root);
    run(&mut c, "maturin build")?;
    println!("wheel(s) in {}", out.display());
    Ok(())
}

fn run(c: &mut Command, what: &str) -> Result<()> {
    let st = c.status().with_context(|| format!("starting {what}"))?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}
