//! libtorch provisioning: `LIBTORCH` → a Python whose torch is 2.11.x → a `.venv/` made here.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The libtorch version tch 0.24.0 binds.
pub const NEED: &str = "2.11";
/// What `.venv/` gets: torch for libtorch; torchvision, timm, numpy and safetensors for the tests
/// that load our checkpoints into torchvision and timm; tensorboard for the test that reads our
/// event files back with its own reader (`scripts/check_tensorboard.py`); onnx for
/// `bt-cli export --format onnx` (torch.onnx writes through it) and onnxruntime for its test.
const PIP_PACKAGES: &[&str] = &[
    "torch==2.11.0",
    "torchvision==0.26.0",
    "timm==1.0.31",
    "numpy",
    "safetensors",
    "tensorboard==2.21.0",
    "onnx",
    "onnxruntime",
];
/// The test tools a Python must import to be used by `cargo xtask test` (kept in step with the
/// list above).
const TEST_TOOLS: &str = "import torchvision, timm, numpy, safetensors, tensorboard, onnx, onnxruntime";
/// The CUDA 13 wheels leave out the `crt/` headers that `cuda_runtime.h` includes; bt-shim's CUDA
/// half needs them to compile (without them it builds CPU-only). Installed `--no-deps` so pip
/// can never touch torch. The version matches the wheel's nvidia-cuda-runtime 13.0. CCCL (`nv/target`)
/// is needed by bt-dist's NCCL path.
const PIP_NO_DEPS: &[&str] = &["nvidia-cuda-crt==13.0.88", "nvidia-cuda-cccl==13.0.85"];

/// A usable libtorch.
pub struct Torch {
    /// The folder holding `lib/` and `include/` (a libtorch zip or a wheel's `torch/`).
    pub dir: PathBuf,
    /// Its version, e.g. `2.11.0+cu130`.
    pub version: String,
    /// How it was found, for the log.
    pub source: String,
    /// A Python with this torch, torchvision, timm, numpy, safetensors and tensorboard (test tools),
    /// if any.
    pub python: Option<PathBuf>,
}

impl Torch {
    /// Environment for cargo and for running binaries and tests.
    pub fn env(&self) -> Vec<(String, String)> {
        let lib = self.dir.join("lib");
        let mut ld = lib.display().to_string();
        if let Ok(old) = std::env::var("LD_LIBRARY_PATH") {
            if !old.is_empty() {
                ld = format!("{ld}:{old}");
            }
        }
        let mut v = vec![("LIBTORCH".to_string(), self.dir.display().to_string()), ("LD_LIBRARY_PATH".to_string(), ld)];
        if let Some(py) = &self.python {
            v.push(("BT_PYTHON".to_string(), py.display().to_string()));
        }
        v
    }
}

/// Finds or installs libtorch 2.11; see the module doc for the order. Also makes sure the one
/// system package the build needs is there (gloo headers, see [`ensure_gloo_headers`]).
pub fn provision(root: &Path) -> Result<Torch> {
    ensure_gloo_headers()?;
    let venv_py = root.join(".venv/bin/python");
    if let Some(dir) = std::env::var_os("LIBTORCH").filter(|s| !s.is_empty()) {
        let dir = PathBuf::from(dir);
        let version = version_of_dir(&dir).with_context(|| {
            format!("LIBTORCH={} does not look like a libtorch folder (no version.py or build-version)", dir.display())
        })?;
        check_version(&version, &format!("LIBTORCH={}", dir.display()))?;
        let python = find_python(root)?.map(|p| p.0);
        return Ok(Torch { dir, version, source: "LIBTORCH".into(), python });
    }
    if let Some((python, version, dir)) = find_python(root)? {
        return Ok(Torch { dir, version, source: format!("the torch of {}", python.display()), python: Some(python) });
    }
    // Nothing usable: make our own virtual environment.
    eprintln!(
        "xtask: no libtorch {NEED}.x found (LIBTORCH unset, no Python with torch {NEED}); creating .venv/ with {}",
        PIP_PACKAGES.join(" ")
    );
    if !venv_py.exists() {
        let base = base_python().context(
            "no python3 found: install Python 3.10+ (with the venv module) or set LIBTORCH to a libtorch 2.11 folder",
        )?;
        run(Command::new(&base).args(["-m", "venv"]).arg(root.join(".venv")), "creating .venv")?;
    }
    pip_install(&venv_py)?;
    match query(&venv_py)? {
        Some((version, dir)) => {
            check_version(&version, &format!("{}", venv_py.display()))?;
            Ok(Torch { dir, version, source: "the torch of .venv/ (created by xtask)".into(), python: Some(venv_py) })
        }
        None => bail!("installed torch into .venv/ but `import torch` fails there; see pip's output above"),
    }
}

fn pip_install(py: &Path) -> Result<()> {
    let mut c = Command::new(py);
    c.args(["-m", "pip", "install", "--disable-pip-version-check"]).args(PIP_PACKAGES);
    run(&mut c, "pip install into .venv (about 1-2 minutes, 4.6 GB)")?;
    pip_install_no_deps(py)
}

fn pip_install_no_deps(py: &Path) -> Result<()> {
    let mut c = Command::new(py);
    c.args(["-m", "pip", "install", "--disable-pip-version-check", "--no-deps"]).args(PIP_NO_DEPS);
    run(&mut c, "pip install --no-deps (CUDA crt headers) into .venv")
}

fn run(c: &mut Command, what: &str) -> Result<()> {
    let st = c.status().with_context(|| format!("{what}: could not start {:?}", c.get_program()))?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}

fn check_version(version: &str, origin: &str) -> Result<()> {
    if !version.starts_with(&format!("{NEED}.")) {
        bail!(
            "{origin}: found libtorch {version}, need {NEED}.x (tch 0.24.0 binds libtorch 2.11.0).\n\
             Fix: point LIBTORCH at a libtorch 2.11 (the `torch/` folder of `pip install torch==2.11.0`), \
             or unset LIBTORCH and run `cargo xtask setup`, which installs torch==2.11.0 into .venv/."
        );
    }
    Ok(())
}

/// `__version__` of a wheel's `torch/version.py`, or a libtorch zip's `build-version`.
fn version_of_dir(dir: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(dir.join("version.py")) {
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("__version__ = ") {
                return Some(v.trim().trim_matches('\'').trim_matches('"').to_string());
            }
        }
    }
    std::fs::read_to_string(dir.join("build-version")).ok().map(|s| s.trim().to_string())
}

fn base_python() -> Option<PathBuf> {
    ["python3", "python"]
        .iter()
        .find(|p| Command::new(p).arg("--version").output().map(|o| o.status.success()).unwrap_or(false))
        .map(PathBuf::from)
}

/// `(version, torch dir)` of the torch importable by `py`, if any.
fn query(py: &Path) -> Result<Option<(String, PathBuf)>> {
    let out = match Command::new(py)
        .args(["-c", "import torch, os; print(torch.__version__); print(os.path.dirname(torch.__file__))"])
        .output()
    {
        Ok(o) => o,
        Err(_) => return Ok(None),
    };
    if !out.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    match (lines.next(), lines.next()) {
        (Some(v), Some(d)) => Ok(Some((v.trim().to_string(), PathBuf::from(d.trim())))),
        _ => Ok(None),
    }
}

fn has_package(py: &Path, dist: &str) -> bool {
    Command::new(py)
        .args(["-c", &format!("import importlib.metadata as m; m.version('{dist}')")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn has_test_tools(py: &Path) -> bool {
    Command::new(py).args(["-c", TEST_TOOLS]).output().map(|o| o.status.success()).unwrap_or(false)
}

/// A Python with torch 2.11.x: `BT_PYTHON`, then `.venv/`, then `python3`/`python` on PATH.
/// A `.venv/` of ours with torch but without the test tools gets them installed.
fn find_python(root: &Path) -> Result<Option<(PathBuf, String, PathBuf)>> {
    let venv_py = root.join(".venv/bin/python");
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("BT_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(venv_py.clone());
    candidates.extend(["python3", "python"].map(PathBuf::from));
    for py in candidates {
        let Some((version, dir)) = query(&py)? else { continue };
        if !version.starts_with(&format!("{NEED}.")) {
            eprintln!("xtask: {} has torch {version}, need {NEED}.x; skipping it", py.display());
            continue;
        }
        let missing_no_deps = PIP_NO_DEPS.iter().any(|p| !has_package(&py, p.split("==").next().unwrap_or(p)));
        if py == venv_py && missing_no_deps {
            pip_install_no_deps(&py)?;
        }
        if !has_test_tools(&py) {
            if py == venv_py {
                pip_install(&py)?;
            } else {
                eprintln!("xtask: {} has torch {version} but lacks torchvision/timm/numpy/safetensors/tensorboard/onnx/onnxruntime (test tools); skipping it", py.display());
                continue;
            }
        }
        return Ok(Some((py, version, dir)));
    }
    Ok(None)
}

/// bt-dist compiles libtorch's c10d Gloo backend, whose headers the torch wheel lacks; Debian and
/// Ubuntu ship them as `libgloo-dev`. Installed with apt-get when we are root or have
/// password-less sudo; otherwise a clear instruction.
fn ensure_gloo_headers() -> Result<()> {
    const HEADER: &str = "/usr/include/gloo/config.h";
    if Path::new(HEADER).exists() || std::env::var_os("BT_DIST_GLOO_INCLUDE").is_some() {
        return Ok(());
    }
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    let sudo: &[&str] = if root { &[] } else { &["sudo", "-n"] };
    let has_apt = Command::new("apt-get").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if has_apt {
        eprintln!("xtask: gloo headers missing ({HEADER}); installing Debian's libgloo-dev");
        let mut update = Command::new(sudo.first().copied().unwrap_or("apt-get"));
        update.args(sudo.iter().skip(1)).args(if root {
            &["update", "-qq"][..]
        } else {
            &["apt-get", "update", "-qq"][..]
        });
        let mut install = Command::new(sudo.first().copied().unwrap_or("apt-get"));
        install
            .args(sudo.iter().skip(1))
            .args(if root {
                &["install", "-y", "-qq", "libgloo-dev"][..]
            } else {
                &["apt-get", "install", "-y", "-qq", "libgloo-dev"][..]
            })
            .env("DEBIAN_FRONTEND", "noninteractive");
        if run(&mut update, "apt-get update").is_ok()
            && run(&mut install, "apt-get install libgloo-dev").is_ok()
            && Path::new(HEADER).exists()
        {
            return Ok(());
        }
    }
    bail!(
        "the gloo headers ({HEADER}) are missing and could not be installed automatically.\n\
         Fix: `sudo apt-get install libgloo-dev` (Debian/Ubuntu), or build gloo's headers yourself and set \
         BT_DIST_GLOO_INCLUDE to the folder holding gloo/ (needed by bt-dist's c10d Gloo bindings)."
    )
}
