//! Pretraining from a Rust program: your own images, your own observer, a stop and an exact resume,
//! then a kNN evaluation of the encoder.
//!
//! What it shows:
//! - images made in memory become a `bt_data::Dataset` (CHW bytes + labels, no files);
//! - a `Config` is the `demo` preset changed in code (a width-4 ResNet-18, a small projector);
//! - an `Observer` sees every event; this one asks the trainer to stop, through its `StopToken`,
//!   after N steps; the trainer then writes a checkpoint (`Outcome::stop`);
//! - `Trainer::pretrain(.., resume)` continues from that checkpoint to the end, bit-identical to an
//!   uninterrupted run (`tests/example_resume.rs` checks exactly that);
//! - `eval::knn_eval` scores the encoder's frozen features.
//!
//! Run: `eval "$(cargo xtask env)"; cargo run --release -p bt-train --example train_custom`
//! (`cargo xtask env` tells cargo where libtorch is; bt-train's build script gives the example an
//! rpath to it, so the binary then also runs on its own).
//!
//! Expected output (about 20 s on one busy CPU core: 6 epochs of 10 steps, a width-4 ResNet-18;
//! the accuracies may differ by a few points on another CPU or libtorch build):
//! ```text
//! interrupted by stop request after step 12; checkpoint /tmp/bt-train-example-<pid>/checkpoints/epoch-0001-b000002.safetensors holds this position
//! resumed: 48 more steps, to step 60; last epoch's mean loss 17.8
//! kNN top-1, pretrained encoder, 200 test images: 55.0%
//! kNN top-1, random init encoder, 200 test images: 35.0%
//! run folder: /tmp/bt-train-example-<pid>
//! ```
use bt_data::Dataset;
use bt_train::{Event, Observer, Outcome, RunFolder, StopToken, Trainer};
use std::path::Path;
use std::sync::Arc;

/// Steps before the observer asks for a stop: mid-epoch (10 steps per epoch).
pub const STOP_AFTER: usize = 12;

/// The `demo` preset shrunk to seconds: 6 epochs of 320 images at batch 32, no kNN monitor.
pub fn config() -> bt_config::Config {
    let mut cfg = bt_config::Config::preset("demo").expect("the demo preset is built in");
    (cfg.model.width, cfg.model.projector) = (4, vec![64, 64]);
    (cfg.data.batch_size, cfg.run.epochs, cfg.run.knn_every) = (32, 6, 0);
    cfg
}

/// `n` 32x32 RGB images (CHW bytes) of four patterns, the label: stripes across, stripes down,
/// checks, a frame. Colours and phase come from a hash of `(seed, i)`: only the pattern tells the
/// class, and the augmentations (crops, hue jitter over the full circle) keep the pattern.
pub fn patterns(n: usize, seed: u64) -> Arc<Dataset> {
    let mut images = Vec::with_capacity(n * bt_data::IMAGE_BYTES);
    for i in 0..n {
        let h = |k: u64| (((seed << 40) ^ ((i as u64) << 8) ^ k).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8;
        let (fg, bg, p) = ([h(1), h(2), h(3)], [h(4), h(5), h(6)], h(7) as usize % 8);
        for px in 0..bt_data::IMAGE_BYTES {
            let (c, y, x) = (px / 1024, px / 32 % 32, px % 32); // CHW order
            let on = match i % 4 {
                0 => (y + p) / 4 % 2 == 0,
                1 => (x + p) / 4 % 2 == 0,
                2 => ((x + p) / 4 + (y + p) / 4) % 2 == 0,
                _ => (2..6).contains(&x.min(y).min(31 - x).min(31 - y)),
            };
            images.push(if on { fg[c] } else { bg[c] });
        }
    }
    let labels = (0..n).map(|i| (i % 4) as u8).collect();
    Arc::new(Dataset::new(images, labels).expect("3072 bytes per label, labels < 10"))
}

/// An observer: counts steps and triggers the token after `left` of them.
pub struct StopAfter {
    left: usize,
    token: StopToken,
}

impl Observer for StopAfter {
    fn on_event(&mut self, event: &Event<'_>) {
        if let Event::Progress { .. } = event {
            self.left = self.left.saturating_sub(1);
            if self.left == 0 {
                self.token.request(0); // the trainer stops after this step, with a checkpoint
            }
        }
    }
}

/// Pretrains into `run` (from `resume` if given), stopping after `stop_after` steps if given.
// bt_train::Error is large (it wraps every crate's error by value); the library allows clippy's
// result_large_err for the same reason.
#[allow(clippy::result_large_err)]
pub fn pretrain(
    cfg: &bt_config::Config,
    data: &bt_train::setup::Data,
    run: &RunFolder,
    stop_after: Option<usize>,
    resume: Option<&Path>,
) -> bt_train::Result<Outcome> {
    let token = StopToken::new();
    let observer = StopAfter { left: stop_after.unwrap_or(usize::MAX), token: token.clone() };
    Trainer::new(cfg.clone(), tch::Device::Cpu)
        .with_stop_token(token)
        .with_observer(observer)
        .pretrain(data, run, resume)
}

/// The training and test sets of the example.
pub fn data() -> bt_train::setup::Data {
    let (train, test) = (patterns(320, 1), patterns(200, 2));
    bt_train::setup::Data::new(train, Some(test), "4 patterns, 320 train / 200 test")
}

#[allow(clippy::result_large_err)] // see `pretrain`
fn main() -> bt_train::Result<()> {
    let (cfg, data, cpu) = (config(), data(), tch::Device::Cpu);
    let dir = std::env::temp_dir().join(format!("bt-train-example-{}", std::process::id()));
    let run = RunFolder::create(&dir)?;
    let first = pretrain(&cfg, &data, &run, Some(STOP_AFTER), None)?;
    let stop = first.stop.expect("the observer stops the run before its end");
    println!("{stop}");
    let end = pretrain(&cfg, &data, &run, None, Some(&stop.checkpoint))?;
    let (steps, loss) = (end.position.step, end.final_loss);
    println!("resumed: {} more steps, to step {steps}; last epoch's mean loss {loss:.1}", end.steps);
    // The same architecture at the weights pretraining started from (both come from run.seed).
    let (_vs, random) = bt_train::setup::build_model(&cfg, cpu)?;
    for (name, model) in [("pretrained", &end.model), ("random init", &random)] {
        let knn = bt_train::eval::knn_eval(&cfg, model, &data, cpu, &mut ())?;
        let top1 = 100.0 * knn["test_top1"].as_f64().unwrap_or(f64::NAN);
        println!("kNN top-1, {name} encoder, {} test images: {top1:.1}%", data.test()?.len());
    }
    println!("run folder: {}", dir.display());
    Ok(())
}
