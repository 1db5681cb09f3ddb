//! Helpers shared by the workspace-level end-to-end tests in this folder. They run the real
//! `bt-cli` binary (built by `cargo xtask test`, which builds the whole workspace first) on real
//! files in temporary folders.
use std::path::PathBuf;
use std::process::{Command, Output};

/// Path of the `bt-cli` binary of the same profile as this test executable.
pub fn bt_cli_path() -> PathBuf {
    // target/<profile>/deps/<test-exe> -> target/<profile>/bt-cli
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let bin = dir.join("bt-cli");
    assert!(
        bin.is_file(),
        "{} not found: run the suite with `cargo xtask test` (it builds bt-cli before the tests)",
        bin.display()
    );
    bin
}

/// A `bt-cli` command.
pub fn bt_cli() -> Command {
    Command::new(bt_cli_path())
}

/// Runs `bt-cli ARGS` and returns its output.
pub fn run(args: &[&str]) -> Output {
    bt_cli().args(args).output().expect("spawn bt-cli")
}

/// stdout + stderr as one string, for assertion messages.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}
