//! Issue "Foundation": the binary runs without LD_LIBRARY_PATH, links libtorch_cuda, and config
//! errors name the key.
use bt_e2e::{bt_cli, bt_cli_path, run, text};
use std::process::Command;

#[test]
fn info_runs_without_ld_library_path_and_reports_libtorch_2_11() {
    let o = bt_cli().arg("info").env_remove("LD_LIBRARY_PATH").output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("libtorch version: 2.11"), "{t}");
    assert!(t.contains("cuda available:"), "{t}");
    assert!(t.contains("intra-op threads:"), "{t}");
}

#[test]
fn binary_lists_libtorch_cuda_as_needed_library() {
    let o = Command::new("readelf").arg("-d").arg(bt_cli_path()).output().expect("readelf (binutils) is installed");
    let t = String::from_utf8_lossy(&o.stdout);
    // The wheel torch==2.11.0 (cu130) ships libtorch_cuda.so; --as-needed must not have dropped it.
    assert!(t.contains("[libtorch_cuda.so]"), "{t}");
    assert!(t.contains("RUNPATH") || t.contains("RPATH"), "{t}");
}

#[test]
fn config_prints_effective_toml_that_reloads() {
    let o =
        run(&["config", "--preset", "cifar-resnet18", "--set", "optim.lr=0.5", "--set", "model.projector=[64, 64]"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("lr = 0.5"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("effective.toml");
    std::fs::write(&f, &out).unwrap();
    // A run folder's config.toml alone reproduces the run: feeding it back gives the same text.
    let o2 = run(&["config", "--preset", "keras-seed", "--config", f.to_str().unwrap()]);
    assert!(o2.status.success(), "{}", text(&o2));
    assert_eq!(String::from_utf8_lossy(&o2.stdout), out);
}

#[test]
fn config_errors_name_the_key_and_exit_non_zero() {
    for (args, needle) in [
        (vec!["--set", "nosuch.key=1"], "nosuch.key"),
        (vec!["--set", "optim.lr=abc"], "optim.lr"),
        (vec!["--set", "data.batch_size=0"], "data.batch_size"),
        (vec!["--set", "loss.lambda=-1"], "loss.lambda"),
        (vec!["--set", "augment.view_a.grayscale_prob=2"], "augment.view_a.grayscale_prob"),
    ] {
        let mut a = vec!["config", "--preset", "keras-seed"];
        a.extend(args);
        let o = run(&a);
        assert!(!o.status.success(), "{a:?} should fail");
        assert!(text(&o).contains(needle), "{a:?}: {}", text(&o));
    }
    let o = run(&["config", "--preset", "no-such-preset"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("keras-seed"), "{}", text(&o));
    let o = run(&["config", "--config", "/nonexistent/x.toml"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("/nonexistent/x.toml"), "{}", text(&o));
}
