//! Issue 6: `bt-cli demo` pretrains on the synthetic data and the pretrained encoder clearly
//! beats the same architecture at its random initialization, on both the linear probe and kNN.
//!
//! The full demo (`cargo xtask demo`) runs the `demo` preset as shipped (deterministic for a given
//! CPU; on its 4000 images: linear 78.2% / kNN 66.8% pretrained vs 26.2% / 27.1% random on the
//! 2-core Xeon of docs/BENCHMARKS.md, 81.6% / 70.2% on the machine of 2026-11-28). This test
//! shrinks it to a third of the pairs (2000 instead of 4000 images, 4 instead of 6 epochs) to stay
//! within a minute or two of test time, keeping model, augmentations, loss, optimizer and schedule
//! as shipped, but at batch 32 instead of 64. Why: at batch 64 this budget is only 124 steps, and
//! kNN (k = 200) did not pull ahead (measured 21.0% pretrained vs 21.8% random, linear 37.0% vs
//! 26.0%); at batch 32 the same pairs make 248 steps: linear 42.6% vs 26.0%, kNN 30.4% vs 21.8%
//! (the batch-32 step does ~0.77x the pairs/s of batch 64 on a 2-core CPU, so pretraining takes
//! ~1.3x as long).
use bt_e2e::{bt_cli, text};

fn value(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing in `{line}`"))
        .parse()
        .unwrap()
}

#[test]
fn demo_pretrained_beats_random_init() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let o = bt_cli()
        .args(["demo", "--synthetic", "--device", "cpu", "--out", out.to_str().unwrap()])
        .args(["--epochs", "4", "--set", "data.synthetic_train=2000", "--set", "data.synthetic_test=500"])
        .args(["--set", "data.batch_size=32"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("pretrained encoder") && stdout.contains("random init"), "{stdout}");
    assert!(stdout.contains(out.to_str().unwrap()), "the run folder is printed: {stdout}");
    let last = stdout.lines().last().unwrap();
    let (lp, lr) = (value(last, "linear_pretrained"), value(last, "linear_random"));
    let (kp, kr) = (value(last, "knn_pretrained"), value(last, "knn_random"));
    // "Clearly": on 500 test images (one image = 0.2 points), pretraining must win by about half
    // the margins measured at this budget (16.6 points linear, 8.6 points kNN; see the module doc).
    assert!(lp >= lr + 0.08, "linear: pretrained {lp} vs random {lr}\n{t}");
    assert!(kp >= kr + 0.04, "kNN: pretrained {kp} vs random {kr}\n{t}");
    for f in [
        "report.md",
        "eval_linear_standard.json",
        "eval_knn.json",
        "eval_random_linear_standard.json",
        "eval_random_knn.json",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| random |") && report.contains("| pretrained |"), "{report}");
}
