//! `run.tensorboard = true`: what TensorBoard shows is what `metrics.jsonl` says.
//!
//! A short pretraining (the example's config and data, with the kNN monitor on), stopped and
//! resumed once so the folder holds one event file per invocation, is read back by
//! `scripts/check_tensorboard.py` with the `tensorboard` package's own readers (a strict CRC pass
//! over every record, then the `EventAccumulator` behind the scalar dashboard). Every tag must
//! hold exactly the points of the matching `metrics.jsonl` records, step for step, with the value
//! rounded to f32 (the event files store `simple_value` as a float), and nothing else.
//!
//! Needs `BT_PYTHON` (a Python with `tensorboard`; `cargo xtask test` sets it). Without it the
//! test says it skips, except under CI (`CI` set), where that is a failure.
#[allow(dead_code)]
#[path = "../examples/train_custom.rs"]
mod example;

use bt_train::{metrics, RunFolder};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// `metrics.jsonl` key of each TensorBoard tag, per record kind (src/tensorboard.rs).
const TAGS: &[(&str, &str, &str)] = &[
    ("step", "loss", "loss"),
    ("step", "invariance", "loss/invariance"),
    ("step", "redundancy", "loss/redundancy"),
    ("step", "lr", "lr"),
    ("step", "pairs_per_s", "pairs_per_s"),
    ("step", "data_wait_s", "data_wait_s"),
    ("epoch", "loss", "epoch/loss"),
    ("epoch", "data_wait_pct", "epoch/data_wait_pct"),
    ("knn", "top1", "knn/top1"),
];

fn python() -> Option<String> {
    match std::env::var("BT_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            // Fails under `cargo xtask test`/CI and unless BT_ALLOW_SKIP=1 (bt-testkit).
            bt_testkit::skip(
                "BT_PYTHON is not set, and reading the event files back needs the `tensorboard` Python \
                 package (run via `cargo xtask test`, or set BT_PYTHON=.venv/bin/python)",
            );
            None
        }
    }
}

#[test]
fn tensorboard_events_read_back_equal_metrics_jsonl() {
    let Some(python) = python() else { return };
    let mut cfg = example::config();
    (cfg.run.tensorboard, cfg.run.knn_every, cfg.run.epochs) = (true, 1, 3);
    let data = example::data();
    let tmp = tempfile::tempdir().unwrap();
    let run = RunFolder::create(tmp.path().join("run")).unwrap();
    let first = example::pretrain(&cfg, &data, &run, Some(example::STOP_AFTER), None).unwrap();
    let stop = first.stop.expect("the observer stops the first invocation");
    let end = example::pretrain(&cfg, &data, &run, None, Some(&stop.checkpoint)).unwrap();
    assert!(end.stop.is_none());

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check_tensorboard.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(run.dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run BT_PYTHON={python}: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "check_tensorboard.py failed\nstdout: {stdout}\nstderr: {stderr}");
    let tb: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();

    // Expected points per tag, in the order the run wrote them.
    let recs = metrics::read_all(&run.metrics()).unwrap();
    let mut want: BTreeMap<&str, Vec<(u64, f32)>> = BTreeMap::new();
    let mut events = 0;
    for r in &recs {
        let kind = r["kind"].as_str().unwrap();
        let tags: Vec<_> = TAGS.iter().filter(|(k, _, _)| *k == kind).collect();
        events += usize::from(!tags.is_empty());
        for (_, key, tag) in tags {
            let v = r[*key].as_f64().unwrap_or_else(|| panic!("`{key}` of {r}"));
            assert!(v.is_finite(), "{r}");
            want.entry(tag).or_default().push((r["step"].as_u64().unwrap(), v as f32));
        }
    }
    // The random-init baseline (step 0), then every epoch.
    assert_eq!(want["knn/top1"].len(), cfg.run.epochs + 1, "the monitor ran at the start and every epoch");
    assert_eq!(want["knn/top1"][0].0, 0, "the baseline is at step 0");

    let got: BTreeMap<&str, Vec<(u64, f32)>> = tb["scalars"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(tag, pts)| {
            let pts = pts.as_array().unwrap();
            // A Python float of an f32 converts back to that f32 exactly.
            (tag.as_str(), pts.iter().map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap() as f32)).collect())
        })
        .collect();
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "tags");
    for (tag, w) in &want {
        assert_eq!(&got[tag], w, "tag {tag}: (step, value) read back vs metrics.jsonl");
    }

    // One event file per invocation, each opened by the version record; every other record is one
    // event of the run (a logged step, an epoch, a kNN result).
    let files = tb["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "one file per invocation: {tb}");
    assert!(tb["file_versions"].as_array().unwrap().iter().all(|v| v == "brain.Event:2"), "{tb}");
    let records: u64 = tb["records"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(records as usize, files.len() + events, "{tb}");
}
