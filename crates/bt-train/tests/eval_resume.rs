//! The epoch-based evaluations (official linear protocol, fine-tuning) stopped mid-epoch and
//! started again give the result of an uninterrupted run, bit for bit: the resume file holds
//! the classifier, the SGD momentum, for fine-tuning the encoder and its batch-norm statistics,
//! and the records so far. A resume file of other settings, other weights or damaged bytes is
//! refused with a message naming what is wrong, and left in place.
#[allow(dead_code)]
#[path = "../examples/train_custom.rs"]
mod example;

use bt_train::eval::{finetune, official, EvalControl};
use bt_train::{Error, Event, Observer, StopToken};
use serde_json::Value;
use std::sync::Mutex;
use tch::{Device, Tensor};

/// Model construction seeds libtorch's global generator: one test at a time.
static TORCH_RNG: Mutex<()> = Mutex::new(());

/// Requests a stop when the evaluation reports `at` batches done; records the first batch seen.
struct StopAt {
    token: StopToken,
    at: usize,
    first: Option<usize>,
}

impl Observer for StopAt {
    fn on_event(&mut self, e: &Event<'_>) {
        // The protocols' training batches (not the test split's feature extraction).
        if let Event::EvalProgress { done, stage: "official linear" | "finetune", .. } = e {
            self.first.get_or_insert(*done);
            if *done == self.at {
                self.token.request(2);
            }
        }
    }
}

fn model(cfg: &bt_config::Config) -> (tch::nn::VarStore, bt_model::BarlowTwins) {
    bt_train::setup::build_model(cfg, Device::Cpu).unwrap()
}

fn variables(m: &bt_model::BarlowTwins) -> Vec<(String, Tensor)> {
    m.variables().iter().map(|v| (v.name.clone(), v.tensor.shallow_clone())).collect()
}

/// Everything of a result but its wall time.
fn same_result(a: &Value, b: &Value) {
    for k in ["history", "best_top1", "best_top5", "test_top1", "test_top5", "confusion", "per_class_top1"] {
        assert_eq!(a[k], b[k], "`{k}` differs after the resume:\n{}\nvs\n{}", a[k], b[k]);
    }
    assert!(a["history"].as_array().is_some_and(|h| !h.is_empty()), "{a}");
}

/// The detail of a stop with exit code `code` (130: SIGINT, 143: SIGTERM).
fn stopped(r: bt_train::Result<Value>, code: i32) -> String {
    match r {
        Err(Error::Stopped { interrupted, detail }) => {
            assert_eq!(interrupted.exit_code(), code);
            detail
        }
        other => panic!("expected a stop, got {:?}", other.map(|v| v["history"].clone())),
    }
}

#[test]
fn the_official_protocol_resumes_to_the_uninterrupted_result_and_refuses_a_foreign_state() {
    let _g = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let data = example::data();
    let mut cfg = example::config();
    (cfg.eval.official_epochs, cfg.eval.official_batch_size) = (4, 32);
    let (_vs, m) = model(&cfg);
    let straight = official::official_linear(&cfg, &m, &data, Device::Cpu, &mut (), &EvalControl::default()).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("eval_linear_official.state.safetensors");
    let ctl = |token: StopToken| EvalControl::resumable(state.clone(), "weights-a", false, token);
    // 10 batches per epoch: stop during epoch 3 (after its 4th batch).
    let token = StopToken::new();
    let mut obs = StopAt { token: token.clone(), at: 24, first: None };
    let detail = stopped(official::official_linear(&cfg, &m, &data, Device::Cpu, &mut obs, &ctl(token)), 130);
    assert!(state.is_file(), "the resume file exists after the stop");
    assert!(detail.contains("epoch 3 of 4") && detail.contains("holds epoch 2"), "{detail}");
    let meta = bt_train::store::read_meta(&state).unwrap();
    assert_eq!(meta["epochs_done"], "2");

    // Refused, naming what differs, and left untouched.
    let before = std::fs::read(&state).unwrap();
    let mut other = cfg.clone();
    other.eval.official_lr = 0.5;
    let e = official::official_linear(&other, &m, &data, Device::Cpu, &mut (), &ctl(StopToken::new())).unwrap_err();
    assert!(e.to_string().contains("eval.official_lr") && e.to_string().contains("--fresh"), "{e}");
    let foreign = EvalControl::resumable(state.clone(), "weights-b", false, StopToken::new());
    let e = official::official_linear(&cfg, &m, &data, Device::Cpu, &mut (), &foreign).unwrap_err();
    assert!(e.to_string().contains("weights-a"), "{e}");
    assert_eq!(std::fs::read(&state).unwrap(), before, "a refused resume file is left as it was");
    let mut damaged = before.clone();
    let n = damaged.len();
    damaged[n - 3] ^= 0x40;
    let broken = tmp.path().join("broken.state.safetensors");
    std::fs::write(&broken, &damaged).unwrap();
    let ctl_broken = EvalControl::resumable(broken.clone(), "weights-a", false, StopToken::new());
    let e = official::official_linear(&cfg, &m, &data, Device::Cpu, &mut (), &ctl_broken).unwrap_err();
    assert!(e.to_string().contains("CRC") && e.to_string().contains("broken.state"), "{e}");

    // Resumed: it starts at epoch 3 and ends where the uninterrupted run ended.
    let mut obs = StopAt { token: StopToken::new(), at: usize::MAX, first: None };
    let resumed = official::official_linear(&cfg, &m, &data, Device::Cpu, &mut obs, &ctl(StopToken::new())).unwrap();
    assert_eq!(obs.first, Some(21), "the first batch after the resume is epoch 3's first");
    same_result(&straight, &resumed);
    ctl(StopToken::new()).finish().unwrap();
    assert!(!state.exists(), "finish removes the resume file");
}

/// The largest `done` of the test split's feature extraction.
#[derive(Default)]
struct Extraction {
    done: usize,
    total: usize,
}

impl Observer for Extraction {
    fn on_event(&mut self, e: &Event<'_>) {
        if let Event::EvalProgress { done, total, stage: "features test" } = e {
            (self.done, self.total) = (self.done.max(*done), *total);
        }
    }
}

/// A stop requested before (or during) the official protocol's one pass over the test split
/// ends that pass at its next batch, not after it.
#[test]
fn a_stop_during_the_test_features_ends_the_official_protocol_at_once() {
    let _g = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let data = example::data();
    let mut cfg = example::config();
    (cfg.eval.official_epochs, cfg.eval.official_batch_size) = (4, 32);
    let (_vs, m) = model(&cfg);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("s.state.safetensors");
    let token = StopToken::new();
    token.request(15);
    let ctl = EvalControl::resumable(state.clone(), "w", false, token);
    let mut obs = Extraction::default();
    let detail = stopped(official::official_linear(&cfg, &m, &data, Device::Cpu, &mut obs, &ctl), 143);
    assert!(detail.contains("epoch 1 of 4") && detail.contains("nothing to resume from"), "{detail}");
    assert_eq!(obs.total, 200, "the test split's extraction started");
    assert!(obs.done < obs.total, "it stopped within the extraction ({} of {})", obs.done, obs.total);
    assert!(!state.exists(), "no epoch finished, no resume file");
}

#[test]
fn fine_tuning_resumes_to_the_uninterrupted_encoder_and_result() {
    let _g = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let data = example::data();
    let mut cfg = example::config();
    (cfg.eval.finetune_epochs, cfg.eval.finetune_batch_size) = (3, 32);
    (cfg.eval.finetune_lr_classifier, cfg.eval.finetune_lr_backbone) = (0.1, 0.01);
    let (_va, a) = model(&cfg);
    let (straight, _) = finetune::finetune(&cfg, &a, &data, Device::Cpu, &mut (), &EvalControl::default()).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("eval_linear_finetune_100pct.state.safetensors");
    let ctl = |token: StopToken| EvalControl::resumable(state.clone(), "w", false, token);
    // The encoder is trained in place: the stopped run and the resumed one each start from a
    // fresh copy of the same weights, as two bt-cli processes would.
    let (_vb, b) = model(&cfg);
    let token = StopToken::new();
    let mut obs = StopAt { token: token.clone(), at: 15, first: None };
    let r = finetune::finetune(&cfg, &b, &data, Device::Cpu, &mut obs, &ctl(token)).map(|(v, _)| v);
    let detail = stopped(r, 130);
    assert!(state.is_file(), "the resume file exists after the stop");
    assert!(detail.contains("epoch 2 of 3") && detail.contains("holds epoch 1"), "{detail}");

    let (_vc, c) = model(&cfg);
    let mut obs = StopAt { token: StopToken::new(), at: usize::MAX, first: None };
    let (resumed, _) = finetune::finetune(&cfg, &c, &data, Device::Cpu, &mut obs, &ctl(StopToken::new())).unwrap();
    assert_eq!(obs.first, Some(11), "the first batch after the resume is epoch 2's first");
    same_result(&straight, &resumed);
    let (va, vc) = (variables(&a), variables(&c));
    assert!(!va.is_empty());
    for ((n, ta), (_, tc)) in va.iter().zip(&vc) {
        assert!(ta.equal(tc), "{n}: the resumed fine-tuning ends with another encoder");
    }
    // Fine-tuning moved the encoder, so the comparison above is not of two untouched models.
    let (_vd, d) = model(&cfg);
    let moved = variables(&d).iter().zip(&va).filter(|((_, t0), (_, t1))| !t0.equal(t1)).count();
    assert!(moved > 0, "fine-tuning changed no encoder tensor");
}
