//! The host transfers of a data-parallel step, counted (issue 24): two ranks over Gloo on
//! 127.0.0.1, each a thread of this process running the real `Trainer` with its own process
//! group (`bt_host`'s counters are per thread, so each rank counts its own transfers).
//!
//! `tests/no_sync.rs` checks that a single-process step between log points has no host transfer.
//! A data-parallel step has exactly two counted exceptions, each one read: bt-loss's global row
//! count and the stop agreement (`Dist::agreed_stop`: one upload of the two stop flags, one read
//! of their sums). An uncounted transfer (the stop agreement read the sums with a plain
//! `Vec::try_from` before) makes the counts fall short of these numbers, a new one exceed them.
use bt_train::dist::Dist;
use bt_train::{Event, Observer, RunFolder, Trainer};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Reads and writes of a quiet data-parallel step: the loss's row count and the stop agreement
/// (reads), the stop flags (write).
const READS_PER_STEP: u64 = 2;
const WRITES_PER_STEP: u64 = 1;

#[derive(Default)]
struct Sampler {
    seen: Rc<RefCell<Vec<(usize, bt_host::Counts)>>>,
}

impl Observer for Sampler {
    fn on_event(&mut self, e: &Event<'_>) {
        if let Event::Progress { step, .. } = e {
            self.seen.borrow_mut().push((*step, bt_host::counts()));
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn config() -> bt_config::Config {
    let mut cfg = bt_config::Config::preset("demo").unwrap();
    (cfg.model.width, cfg.model.projector) = (2, vec![16, 16]);
    (cfg.data.batch_size, cfg.run.epochs, cfg.run.knn_every, cfg.run.log_every) = (8, 1, 0, 5);
    (cfg.data.synthetic_train, cfg.data.synthetic_test, cfg.data.workers) = (96, 16, 1);
    cfg
}

/// Rank `rank`'s `(step, counts)` after each step.
fn rank(rank: usize, port: u16, dir: std::path::PathBuf) -> Vec<(usize, bt_host::Counts)> {
    let cfg = config();
    let pg = bt_dist::ProcessGroup::new(rank, 2, "127.0.0.1", port, bt_dist::Backend::Gloo, Duration::from_secs(60))
        .unwrap();
    let dist = Arc::new(Dist { pg: Arc::new(pg) });
    let data = bt_train::setup::load_data(&cfg).unwrap();
    let run = RunFolder::create(dir.join(format!("run{rank}"))).unwrap();
    let sampler = Sampler::default();
    let seen = sampler.seen.clone();
    let out = Trainer::new(cfg, tch::Device::Cpu)
        .with_observer(sampler)
        .with_dist(Some(dist))
        .pretrain(&data, &run, None)
        .unwrap();
    assert_eq!(out.steps, 96 / 8);
    let v = seen.borrow().clone();
    v
}

#[test]
fn a_data_parallel_step_reads_the_host_exactly_at_the_counted_points() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let ranks: Vec<_> = (0..2)
        .map(|r| {
            let dir = tmp.path().to_path_buf();
            std::thread::spawn(move || rank(r, port, dir))
        })
        .collect();
    let log_every = config().run.log_every;
    for (r, h) in ranks.into_iter().enumerate() {
        let seen = h.join().unwrap_or_else(|_| panic!("rank {r} failed"));
        assert_eq!(seen.len(), 12, "rank {r}: one sample per step");
        let mut quiet = 0;
        for w in seen.windows(2) {
            let ((_, before), (step, after)) = (w[0], w[1]);
            // The first step of the epoch uploads its learning-rate table, its last flushes
            // before the checkpoint; log points read the metrics window.
            if step % log_every == 0 || step <= 1 || step == 12 {
                continue;
            }
            let (reads, writes) = (after.reads - before.reads, after.writes - before.writes);
            assert_eq!(
                (reads, writes),
                (READS_PER_STEP, WRITES_PER_STEP),
                "rank {r}, step {step}: (reads, writes) of a data-parallel step between log points"
            );
            quiet += 1;
        }
        assert!(quiet >= 6, "rank {r}: {quiet} quiet steps checked");
    }
}
