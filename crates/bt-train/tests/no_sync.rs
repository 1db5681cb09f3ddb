//! The step has no host transfer between log points: every device read-back and host-value
//! upload of the step path goes through `bt_host`, which counts them per thread; an observer
//! (called on the trainer's thread) samples the counter after every step. Steps that are not a
//! log point, an epoch end or a checkpoint must leave it unchanged; log points must read.
use bt_train::{Event, Observer, RunFolder, Trainer};
use std::cell::RefCell;
use std::rc::Rc;

#[derive(Default)]
struct Sampler {
    /// `(step, transfers so far)` after each step.
    seen: Rc<RefCell<Vec<(usize, u64)>>>,
}

impl Observer for Sampler {
    fn on_event(&mut self, e: &Event<'_>) {
        if let Event::Progress { step, .. } = e {
            self.seen.borrow_mut().push((*step, bt_host::counts().total()));
        }
    }
}

#[test]
fn no_host_transfer_between_log_points() {
    let mut cfg = bt_config::Config::preset("demo").unwrap();
    (cfg.model.width, cfg.model.projector) = (2, vec![16, 16]);
    (cfg.data.batch_size, cfg.run.epochs, cfg.run.knn_every, cfg.run.log_every) = (8, 2, 0, 5);
    (cfg.data.synthetic_train, cfg.data.synthetic_test, cfg.data.workers) = (96, 16, 1);
    // Skip policy: the on-device skip path (flag, conditional update, BN restore) is exercised too.
    cfg.run.on_nonfinite = bt_config::NonFinitePolicy::Skip;
    let data = bt_train::setup::load_data(&cfg).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let run = RunFolder::create(tmp.path().join("run")).unwrap();
    let sampler = Sampler::default();
    let seen = sampler.seen.clone();
    let out = Trainer::new(cfg.clone(), tch::Device::Cpu).with_observer(sampler).pretrain(&data, &run, None).unwrap();
    let spe = 96 / 8;
    assert_eq!(out.steps, 2 * spe);
    let seen = seen.borrow();
    assert_eq!(seen.len(), 2 * spe);
    let mut quiet = 0;
    for w in seen.windows(2) {
        let ((_, before), (step, after)) = (w[0], w[1]);
        // Epoch ends flush before their checkpoint; the next epoch's first step uploads that
        // epoch's learning-rate table (one write per epoch).
        let boundary = step % spe == 0 || step % spe == 1;
        if step % cfg.run.log_every == 0 {
            assert!(after > before, "step {step}: a log point reads the window back");
        } else if !boundary {
            assert_eq!(after, before, "step {step}: a host transfer between log points");
            quiet += 1;
        }
    }
    assert!(quiet >= 10, "{quiet} quiet steps checked");
}
