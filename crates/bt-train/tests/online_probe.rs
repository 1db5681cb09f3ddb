//! `run.online_probe`: the probe learns the labels from the features the run is training, and it
//! leaves the run exactly as it would have been without it.
//!
//! Two pretrainings of the example (the demo preset shrunk, four pattern classes, 60 steps),
//! one with the probe and one without, end with bit-identical model variables (weights, batch-
//! norm statistics, counters); the run with the probe writes one `online_probe` record per epoch
//! to `metrics.jsonl`, and its test top-1 at the end is well above the 25% of chance. The
//! official linear protocol then runs on that encoder, learns, and leaves it untouched; fine-
//! tuning the encoder on the same labels then beats it by far. A run stopped mid-epoch and
//! resumed writes the same probe records as the uninterrupted one (the probe's state is in the
//! checkpoint).
#[allow(dead_code)]
#[path = "../examples/train_custom.rs"]
mod example;

use bt_train::{metrics, RunFolder};

fn variables(o: &bt_train::Outcome) -> Vec<(String, tch::Tensor)> {
    o.model.variables().iter().map(|v| (v.name.clone(), v.tensor.shallow_clone())).collect()
}

#[derive(Default)]
struct Progress {
    last: (usize, usize),
}

impl bt_train::Observer for Progress {
    fn on_event(&mut self, e: &bt_train::Event<'_>) {
        if let bt_train::Event::EvalProgress { done, total, .. } = e {
            self.last = (*done, *total);
        }
    }
}

#[test]
fn the_probe_learns_and_the_run_is_bit_identical_without_it() {
    let data = example::data();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = example::config();
    // The kNN monitor at epoch 3 (and 6): with the probe on, one extraction serves both.
    cfg.run.knn_every = 3;
    let plain =
        example::pretrain(&cfg, &data, &RunFolder::create(tmp.path().join("plain")).unwrap(), None, None).unwrap();
    cfg.run.online_probe = true;
    let run = RunFolder::create(tmp.path().join("probe")).unwrap();
    let probed = example::pretrain(&cfg, &data, &run, None, None).unwrap();

    let (a, b) = (variables(&plain), variables(&probed));
    assert_eq!(a.len(), b.len());
    assert!(!a.is_empty());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs between the runs with and without the online probe");
    }

    let recs = metrics::read_all(&run.metrics()).unwrap();
    let plain_recs = metrics::read_all(&tmp.path().join("plain/metrics.jsonl")).unwrap();
    let knn = |r: &[serde_json::Value]| metrics::of_kind(r, "knn").map(|k| k["top1"].clone()).collect::<Vec<_>>();
    assert_eq!(knn(&recs).len(), 3, "random init, epochs 3 and 6");
    assert_eq!(knn(&recs), knn(&plain_recs), "the monitor's kNN on the probe's extraction is the monitor's own");
    let probe: Vec<_> = metrics::of_kind(&recs, "online_probe").collect();
    assert_eq!(probe.len(), cfg.run.epochs, "one online_probe record per epoch: {probe:?}");
    for (i, r) in probe.iter().enumerate() {
        assert_eq!(r["epoch"].as_u64(), Some(i as u64 + 1), "{r}");
        assert_eq!(r["rows"].as_u64(), Some(320), "every labeled row of the epoch trains the probe: {r}");
        let t = r["train_top1"].as_f64().unwrap();
        assert!(t.is_finite() && (0.0..=1.0).contains(&t), "{r}");
    }
    let last = probe.last().unwrap();
    let test = last["test_top1"].as_f64().expect("test top-1 at the end of the run");
    eprintln!("online probe: {last}");
    // Measured 0.535 (train 0.569) after 60 steps; chance is 0.25.
    assert!(test > 0.4, "online probe test top-1 {test} (chance: 0.25)");
    assert!(last["train_top1"].as_f64().unwrap() > 0.4, "{last}");
    assert!(last["test_top5"].as_f64() == Some(1.0), "4 classes: top-5 is top-4: {last}");
    // The official linear protocol (evaluate.py --weights freeze) on the same encoder: augmented
    // training images through the frozen encoder, SGD + per-epoch cosine, 3 epochs here.
    let mut ecfg = cfg.clone();
    (ecfg.eval.official_epochs, ecfg.eval.official_batch_size) = (3, 32);
    let mut progress = Progress::default();
    let before: Vec<tch::Tensor> = b.iter().map(|(_, t)| t.copy()).collect();
    let v = bt_train::eval::official::official_linear(
        &ecfg,
        &probed.model,
        &data,
        tch::Device::Cpu,
        &mut progress,
        &Default::default(),
    )
    .unwrap();
    eprintln!(
        "official linear: top-1 {} top-5 {} best {} history {}",
        v["test_top1"], v["test_top5"], v["best_top1"], v["history"]
    );
    assert_eq!(v["protocol"], "official");
    assert_eq!(v["history"].as_array().unwrap().len(), 3);
    assert_eq!(progress.last, (30, 30), "10 batches of 32 per epoch, 3 epochs");
    let (top1, best1) = (v["test_top1"].as_f64().unwrap(), v["best_top1"].as_f64().unwrap());
    assert!(best1 >= top1 && top1 > 0.4, "official protocol top-1 {top1} (best {best1}; chance 0.25)");
    let classes = data.train.num_classes().unwrap();
    assert_eq!(v["confusion"].as_array().unwrap().len(), classes, "one row per class of the source");
    // The frozen encoder is untouched by the protocol.
    for (t0, (n, t1)) in before.iter().zip(&variables(&probed)) {
        assert!(t0.equal(t1), "{n} changed during the official linear evaluation");
    }
    // Stopped mid-epoch and resumed, the probe continues from the checkpoint's state: the
    // records of the epochs after the stop equal the uninterrupted run's, bit for bit.
    let run2 = RunFolder::create(tmp.path().join("resumed")).unwrap();
    let first = example::pretrain(&cfg, &data, &run2, Some(example::STOP_AFTER), None).unwrap();
    let stop = first.stop.expect("the observer stops the run");
    example::pretrain(&cfg, &data, &run2, None, Some(&stop.checkpoint)).unwrap();
    let resumed: Vec<_> = metrics::read_all(&run2.metrics()).unwrap();
    let resumed: Vec<_> = metrics::of_kind(&resumed, "online_probe").collect();
    let stop_epoch = stop.step / 10 + 1;
    assert!(!stop.step.is_multiple_of(10), "the stop is mid-epoch: {}", stop.step);
    for want in probe.iter().filter(|r| r["epoch"].as_u64().unwrap() as usize >= stop_epoch) {
        let got = resumed.iter().rev().find(|r| r["epoch"] == want["epoch"]).expect("a record per epoch");
        for k in ["loss", "train_top1", "rows", "test_top1"] {
            assert_eq!(got[k], want[k], "epoch {} `{k}` after the resume: {got} vs {want}", want["epoch"]);
        }
    }

    // Without the probe there is no such record.
    assert_eq!(metrics::of_kind(&plain_recs, "online_probe").count(), 0);

    // Fine-tuning (evaluate.py --weights finetune, learning rates for this small task): training
    // the encoder too, on the same labels, it ends far above the frozen encoder's official
    // linear evaluation (measured 0.99 against 0.58).
    let mut fcfg = cfg.clone();
    (fcfg.eval.finetune_epochs, fcfg.eval.finetune_batch_size) = (10, 32);
    (fcfg.eval.finetune_lr_classifier, fcfg.eval.finetune_lr_backbone) = (0.1, 0.01);
    let (f, _) =
        bt_train::eval::finetune::finetune(&fcfg, &probed.model, &data, tch::Device::Cpu, &mut (), &Default::default())
            .unwrap();
    eprintln!("finetune: top-1 {} best {} history {}", f["test_top1"], f["best_top1"], f["history"]);
    assert_eq!((f["n_train"].as_u64(), f["train_percent"].as_f64()), (Some(320), Some(100.0)), "{f}");
    let ft1 = f["test_top1"].as_f64().unwrap();
    assert!(ft1 > 0.85 && ft1 > top1 + 0.2, "fine-tuned top-1 {ft1} vs frozen official {top1}");
    let moved = variables(&probed).iter().zip(&before).filter(|((_, t1), t0)| !t0.equal(t1)).count();
    assert!(moved > 0, "fine-tuning trains the encoder in place");
}
