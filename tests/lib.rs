//! Helpers shared by the workspace-level end-to-end tests in this folder. They run the real
//! `bt-cli` binary (built by `cargo xtask test`, which builds the whole workspace first) on real
//! files in temporary folders.
//!
//! The binary lives in another package, so cargo does not rebuild it for `cargo test -p bt-e2e`;
//! [`bt_cli_path`] therefore checks that it is newer than every source file it is built from and
//! refuses a stale one (a test of yesterday's binary would pass or fail for the wrong reasons).
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::SystemTime;

/// The newest modification time under `dir` of files that go into the binary.
fn newest_source(dir: &Path, newest: &mut (SystemTime, PathBuf)) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if p.is_dir() {
            if !matches!(name.as_ref(), "tests" | "benches" | "examples" | "target") {
                newest_source(&p, newest);
            }
        } else if [".rs", ".toml", ".cpp", ".h"].iter().any(|x| name.ends_with(x)) {
            if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                if t > newest.0 {
                    *newest = (t, p);
                }
            }
        }
    }
}

/// Path of the `bt-cli` binary of the same profile as this test executable, checked to be
/// newer than the workspace's library and binary sources (`crates/`).
pub fn bt_cli_path() -> PathBuf {
    static CHECKED: OnceLock<PathBuf> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            // target/<profile>/deps/<test-exe> -> target/<profile>/bt-cli
            let exe = std::env::current_exe().expect("current_exe");
            let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
            let bin = dir.join("bt-cli");
            let hint =
                "run the suite with `cargo xtask test` (it builds bt-cli first), or `cargo build --release -p bt-cli`";
            let built = std::fs::metadata(&bin)
                .and_then(|m| m.modified())
                .unwrap_or_else(|_| panic!("{} not found: {hint}", bin.display()));
            let mut newest = (SystemTime::UNIX_EPOCH, PathBuf::new());
            newest_source(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates"), &mut newest);
            assert!(
                built >= newest.0,
                "{} is older than {}: a stale binary; {hint}",
                bin.display(),
                newest.1.display()
            );
            bin
        })
        .clone()
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
