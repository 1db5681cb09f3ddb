//! The claim of `examples/train_custom.rs`, checked on its own code (its config, data, observer
//! and `pretrain`, included below): a run stopped by the observer's `StopToken` after N steps and
//! resumed from the checkpoint the stop wrote ends bit-identical to an uninterrupted run of the
//! same config: every model variable (weights, BN statistics) and every optimizer tensor of the
//! final checkpoint, compared with `Tensor::equal`. Also: the stop's checkpoint is at the right
//! position, and the resumed run's `metrics.jsonl` holds every step once, with the losses and
//! learning rates of the uninterrupted run.
#[allow(dead_code)]
#[path = "../examples/train_custom.rs"]
mod example;

use bt_train::{checkpoint, metrics, store, Position, RunFolder, StopReason};
use serde_json::Value;
use tch::Tensor;

/// `a` and `b` hold the same names, and under each the same dtype, shape and values, bit for bit.
fn assert_same_tensors(what: &str, a: &[(String, Tensor)], b: &[(String, Tensor)]) {
    let names = |v: &[(String, Tensor)]| {
        let mut n: Vec<String> = v.iter().map(|(k, _)| k.clone()).collect();
        n.sort();
        n
    };
    assert_eq!(names(a), names(b), "{what}: different tensor names");
    let b: std::collections::HashMap<&str, &Tensor> = b.iter().map(|(k, t)| (k.as_str(), t)).collect();
    for (name, x) in a {
        let y = b[name.as_str()];
        assert_eq!((x.kind(), x.size()), (y.kind(), y.size()), "{what}: {name}");
        assert!(x.equal(y), "{what}: {name} differs (max |diff| {})", (x - y).abs().max().double_value(&[]));
    }
}

fn records(run: &RunFolder, kind: &str) -> Vec<Value> {
    metrics::of_kind(&metrics::read_all(&run.metrics()).unwrap(), kind).cloned().collect()
}

#[test]
fn stop_and_resume_from_the_observer_is_bit_identical_to_an_uninterrupted_run() {
    let (mut cfg, data) = (example::config(), example::data());
    cfg.run.epochs = 3; // half the example's run: the same code, less test time
    cfg.run.log_every = 1; // every step's record is compared below
    let spe = data.train.len() / cfg.data.batch_size; // drop_remainder: 10 steps per epoch
    let total = spe * cfg.run.epochs;

    let tmp = tempfile::tempdir().unwrap();
    let base = RunFolder::create(tmp.path().join("uninterrupted")).unwrap();
    let whole = example::pretrain(&cfg, &data, &base, None, None).unwrap();
    assert!(whole.stop.is_none());
    assert_eq!(whole.position, Position { epochs_done: cfg.run.epochs, batch_in_epoch: 0, step: total });
    let want = checkpoint::load(&base.checkpoint(cfg.run.epochs)).unwrap();
    let want_steps = records(&base, "step");
    let want_epochs = records(&base, "epoch");
    assert_eq!(want_steps.len(), total, "log_every = 1: one step record per step");

    // The example's stop (mid-epoch) and one at an epoch boundary: the two checkpoint paths.
    for stop_after in [example::STOP_AFTER, spe] {
        let what = format!("stop after {stop_after}");
        let run = RunFolder::create(tmp.path().join(format!("stop-{stop_after}"))).unwrap();
        let first = example::pretrain(&cfg, &data, &run, Some(stop_after), None).unwrap();
        let stop = first.stop.clone().unwrap_or_else(|| panic!("{what}: the observer did not stop the run"));
        let at = Position { epochs_done: stop_after / spe, batch_in_epoch: stop_after % spe, step: stop_after };
        assert!(matches!(stop.reason, StopReason::Interrupted(i) if i.signo == -1), "{what}: {stop}");
        assert_eq!((stop.step, first.steps, first.position), (stop_after, stop_after, at), "{what}");
        assert_eq!(stop.checkpoint, run.checkpoints().join(store::file_name(at)), "{what}");
        assert_eq!(checkpoint::load(&stop.checkpoint).unwrap().position, at, "{what}: position in the file");

        let end = example::pretrain(&cfg, &data, &run, None, Some(&stop.checkpoint)).unwrap();
        assert!(end.stop.is_none(), "{what}");
        assert_eq!((end.steps, end.position), (total - stop_after, whole.position), "{what}");
        let got = checkpoint::load(&run.checkpoint(cfg.run.epochs)).unwrap();
        assert_eq!(got.position, want.position, "{what}");
        assert_same_tensors(&format!("{what}: model"), &got.model, &want.model);
        assert_same_tensors(&format!("{what}: optimizer"), &got.optimizer, &want.optimizer);
        // The model the resumed run returns is the one it saved.
        let live: Vec<(String, Tensor)> =
            end.model.variables().iter().map(|v| (v.name.clone(), v.tensor.shallow_clone())).collect();
        assert_same_tensors(&format!("{what}: returned model"), &live, &want.model);

        // Each step once, in order, with the uninterrupted run's values (JSON keeps f64 exactly).
        let steps = records(&run, "step");
        let got_steps: Vec<u64> = steps.iter().map(|r| r["step"].as_u64().unwrap()).collect();
        assert_eq!(got_steps, (1..=total as u64).collect::<Vec<_>>(), "{what}: step records");
        for (g, w) in steps.iter().zip(&want_steps) {
            for key in ["epoch", "loss", "invariance", "redundancy", "lr"] {
                assert_eq!(g[key], w[key], "{what}: `{key}` of step {}", g["step"]);
            }
        }
        let epochs = records(&run, "epoch");
        let got_epochs: Vec<u64> = epochs.iter().map(|r| r["epoch"].as_u64().unwrap()).collect();
        assert_eq!(got_epochs, (1..=cfg.run.epochs as u64).collect::<Vec<_>>(), "{what}: epoch records");
        // An epoch the stop split in two is logged by the resumed run over its own steps only, so
        // its mean differs; every other epoch's mean is the uninterrupted run's.
        let split = (at.batch_in_epoch > 0).then_some(at.epochs_done + 1);
        for (g, w) in epochs.iter().zip(&want_epochs).filter(|(g, _)| g["epoch"].as_u64() != split.map(|e| e as u64)) {
            assert_eq!(
                (g["loss"].clone(), g["step"].clone()),
                (w["loss"].clone(), w["step"].clone()),
                "{what}: epoch {}",
                g["epoch"]
            );
        }
    }
}
