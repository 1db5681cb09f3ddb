//! Issues 6 and 22: `bt-cli demo` pretrains on the synthetic data and the pretrained encoder
//! clearly beats the same architecture at its random initialization, on both the linear probe and
//! kNN, for several seeds and in bf16 and channels-last.
//!
//! Each run is the `demo` preset as shipped (4000 images, 6 epochs, batch 64; about a minute on 2
//! cores): a shrunk run (2000 images, 4 epochs, batch 32) did not learn with the new
//! augmentations for seed 7, so the test runs what users run. Three seeds in f32, one in bf16
//! and one in channels-last; docs/BENCHMARKS.md has the results over five seeds per mode.
//! Before issue 22 the shipped recipe passed this for seed 7 only: seeds 8 and 9, bf16 and
//! channels-last ended below their random init on kNN (docs/RECIPES.md, "demo").
use bt_e2e::{bt_cli, text};

fn value(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing in `{line}`"))
        .parse()
        .unwrap()
}

/// `(linear pretrained, linear random, kNN pretrained, kNN random)` of one shrunk demo run.
fn demo(seed: u64, sets: &[&str], files: bool) -> [f64; 4] {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let mut c = bt_cli();
    c.args(["demo", "--synthetic", "--device", "cpu", "--out", out.to_str().unwrap()])
        .args(["--set", &format!("run.seed={seed}")]);
    for s in sets {
        c.args(["--set", s]);
    }
    let o = c.current_dir(tmp.path()).output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("pretrained encoder") && stdout.contains("random init"), "{stdout}");
    assert!(stdout.contains(out.to_str().unwrap()), "the run folder is printed: {stdout}");
    let last = stdout.lines().last().unwrap();
    let r = ["linear_pretrained", "linear_random", "knn_pretrained", "knn_random"].map(|k| value(last, k));
    assert!(r.iter().all(|v| (0.0..=1.0).contains(v)), "accuracies in [0, 1]: {last}");
    // "Clearly": on 1000 test images (the binomial standard deviation at 50% is 1.6 points)
    // pretraining must win by 8 points on the probe and 4 on kNN.
    let [lp, lr, kp, kr] = r;
    assert!(lp >= lr + 0.08, "seed {seed} {sets:?}: linear pretrained {lp} vs random {lr}\n{t}");
    assert!(kp >= kr + 0.04, "seed {seed} {sets:?}: kNN pretrained {kp} vs random {kr}\n{t}");
    if files {
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
    eprintln!("seed {seed} {sets:?}: linear {lp:.3} vs {lr:.3}, kNN {kp:.3} vs {kr:.3}");
    r
}

#[test]
fn demo_pretrained_beats_random_init_for_three_seeds_and_in_bf16_and_channels_last() {
    let mut f32_seed8 = [0.0; 4];
    for seed in [7, 8, 9] {
        let r = demo(seed, &[], seed == 7);
        if seed == 8 {
            f32_seed8 = r;
        }
    }
    // The two halves of the CUDA default mode learn as well, and not less than f32 for the same
    // seed: at most 5 points below on either probe (measured: bf16 +3.0 linear / +4.2 kNN,
    // channels-last +17.8 / +18.7). Over 5 seeds the mode means are at or above f32's and the
    // spread between seeds dominates (docs/BENCHMARKS.md); seed 7 is bf16's weakest run.
    for mode in ["run.precision=bf16", "run.channels_last=true"] {
        let [lp, _, kp, _] = demo(8, &[mode], false);
        let [fl, _, fk, _] = f32_seed8;
        assert!(lp >= fl - 0.05 && kp >= fk - 0.05, "{mode}, seed 8: linear {lp} kNN {kp} vs f32 {fl} / {fk}");
    }
}
