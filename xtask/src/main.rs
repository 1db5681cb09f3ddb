//! `cargo xtask <command>`: project automation (matklad's xtask pattern).
//!
//! Every command that builds first provisions libtorch ([`torch::provision`]), so a fresh clone
//! needs no manual step: `LIBTORCH` if set, else a Python whose torch is 2.11.x, else a `.venv/`
//! created here with `pip install torch==2.11.0`.
//!
//! Dependencies stay light on purpose (no clap, no tch): xtask must build before libtorch exists.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

mod fetch;
mod gpu_bundle;
mod python;
mod torch;

const HELP: &str = "\
cargo xtask <command>

Commands:
  setup                 find or install libtorch 2.11 (LIBTORCH, a Python's torch, or .venv/)
  env                   print the environment for plain cargo commands (eval \"$(cargo xtask env)\")
  build                 setup, then build bt-cli in release mode
  test                  setup, then build and run the whole test suite (what CI runs), then
                        pip install crates/bt-py (twinloader) from source and run its pytest suite
  test-py               only the twinloader part of `test` (pip install from source, pytest)
  wheel                 build the twinloader wheel (maturin, into target/wheels/)
  demo [ARGS...]        setup, build, run the end-to-end demo (extra args go to the demo)
  fetch-cifar [--dest DIR] [--url URL] [--from FILE]
                        download (or unpack a local) cifar-10-binary.tar.gz, verify its MD5,
                        install DIR/cifar-10-batches-bin atomically (DIR defaults to data)
  gpu-bundle [--dataset DIR] [--out DIR]
                        release build + stripped bt-cli, CUDA test binaries, scripts/gpu-check.sh,
                        bench/*.py and the CIFAR-10 JPEG pack (DIR: ../shared/datasets/cifar10-jpeg)
                        into .gpu/ (< 64 MiB); then run `bash .gpu/gpu-check.sh` on the GPU machine
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &[String]) -> Result<()> {
    let Some(cmd) = args.first() else {
        print!("{HELP}");
        return Ok(());
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "setup" => {
            let t = torch::provision(&root())?;
            println!("libtorch {} at {}", t.version, t.dir.display());
            println!("found via: {}", t.source);
            Ok(())
        }
        "env" => {
            let t = torch::provision(&root())?;
            for (k, v) in t.env() {
                println!("export {k}={}", shell_quote(&v));
            }
            Ok(())
        }
        "build" => {
            let t = torch::provision(&root())?;
            cargo(&t, &["build", "--release", "-p", "bt-cli"])
        }
        "test" => {
            let t = torch::provision(&root())?;
            // The Python package's build tools first: the workspace build then compiles pyo3
            // with the environment maturin will give it (one build of it, not two).
            let py = python::python(&root(), t.python.as_deref())?;
            let mut env = t.env();
            env.extend(python::pyo3_env(&py)?);
            // One release build of everything (bins included: the end-to-end tests run the real
            // bt-cli binary), then the tests. Release because the numeric tests are slow unoptimized
            // and a second (dev) build of the libtorch bindings would double CI time.
            cargo_env(&env, &["build", "--release", "--workspace", "--all-targets"])?;
            let mut a = vec!["test", "--release", "--workspace"];
            a.extend(rest.iter().map(String::as_str));
            // Every test must run here: a test that cannot (no Python, a CUDA machine for a
            // CPU-only check) fails instead of skipping (bt-testkit's `skip`).
            let mut test_env = env.clone();
            test_env.push(("BT_REQUIRE_ALL".into(), "1".into()));
            cargo_env(&test_env, &a)?;
            // The Python package: built and installed from source into the project's Python,
            // then tested through its Python surface (crates/bt-py/tests).
            python::test(&root(), &py, &t.env())
        }
        "test-py" => {
            let found = std::env::var_os("BT_PYTHON").map(PathBuf::from);
            let py = python::python(&root(), found.as_deref())?;
            python::test(&root(), &py, &[])
        }
        "wheel" => {
            // No libtorch needed: the package links bt-data only.
            let found = std::env::var_os("BT_PYTHON").map(PathBuf::from);
            let py = python::python(&root(), found.as_deref())?;
            python::wheel(&root(), &py)
        }
        "demo" => {
            let t = torch::provision(&root())?;
            cargo(&t, &["build", "--release", "-p", "bt-cli"])?;
            // Pretrain the demo preset, evaluate pretrained vs random init, print both and the
            // run folder. Extra args go to `bt-cli demo` (--out, --epochs, --set, --synthetic).
            let mut a = vec!["demo"];
            a.extend(rest.iter().map(String::as_str));
            bt_cli(&t, &a)
        }
        "fetch-cifar" => fetch::run(rest),
        "gpu-bundle" => {
            let t = torch::provision(&root())?;
            gpu_bundle::run(&root(), &t, rest)
        }
        "-h" | "--help" | "help" => {
            print!("{HELP}");
            Ok(())
        }
        other => bail!("unknown xtask command `{other}`\n\n{HELP}"),
    }
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
}

/// Runs cargo with the libtorch environment.
fn cargo(t: &torch::Torch, args: &[&str]) -> Result<()> {
    cargo_env(&t.env(), args)
}

/// Runs cargo with `env` added.
fn cargo_env(env: &[(String, String)], args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.args(args).current_dir(root());
    for (k, v) in env {
        c.env(k, v);
    }
    let st = c.status().context("running cargo")?;
    if !st.success() {
        bail!("cargo {} failed ({st})", args.join(" "));
    }
    Ok(())
}

/// Runs the release `bt-cli` with the libtorch environment.
fn bt_cli(t: &torch::Torch, args: &[&str]) -> Result<()> {
    let bin = root().join("target/release/bt-cli");
    let mut c = Command::new(&bin);
    c.args(args).current_dir(root());
    for (k, v) in t.env() {
        c.env(k, v);
    }
    let st = c.status().with_context(|| format!("running {}", bin.display()))?;
    if !st.success() {
        bail!("bt-cli {} failed ({st})", args.join(" "));
    }
    Ok(())
}

fn shell_quote(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:=+".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
