//! Issue 22, item 2: bf16 and channels-last compute what f32 computes, step after step of a real
//! run. `bt_train::modecheck::trace` trains with the trainer's own step in the mode under test
//! and, before every step, evaluates plain contiguous f32 at the same weights on the same batch;
//! `Bounds::for_precision` derives the tolerances from the arithmetic (see its doc).
//!
//! Shown to fail (each injected by hand into the library, run, reverted; see docs/RECIPES.md):
//! a bf16 weight copy refreshed only every other step (stale), a copy never refreshed after the
//! first step, a gradient halved after the backward pass in bf16, and channels-last inputs whose
//! channels are permuted.
use bt_config::Precision;
use bt_train::device::StepSettings;
use bt_train::modecheck::{check_config, trace, Bounds, StepDiff};
use tch::Device;

/// One trace at a time: the model's initial weights come from libtorch's global generator, which
/// the test threads of this binary share; traced in parallel, their draws interleave and every run
/// starts from other weights (CI once saw bf16 at β 0.82 that way).
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn check(precision: Precision, channels_last: bool, steps: usize) -> Vec<StepDiff> {
    check_seed(precision, channels_last, steps, 5)
}

fn check_seed(precision: Precision, channels_last: bool, steps: usize, seed: u64) -> Vec<StepDiff> {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let settings = StepSettings { precision, channels_last };
    let mut cfg = check_config().unwrap();
    cfg.run.seed = seed;
    let diffs = trace(&cfg, Device::Cpu, settings, steps).unwrap();
    assert_eq!(diffs.len(), steps, "every step compared");
    let bounds = Bounds::for_precision(precision);
    let v = bounds.violations(&diffs);
    let worst = diffs.iter().map(StepDiff::loss_rel).fold(0.0, f64::max);
    let beta = diffs.iter().map(|d| (d.grad_beta - 1.0).abs()).fold(0.0, f64::max);
    let cos = diffs.iter().map(|d| d.grad_cos).fold(1.0, f64::min);
    let mean_beta = diffs.iter().map(|d| d.grad_beta).sum::<f64>() / diffs.len() as f64;
    eprintln!(
        "{precision:?} channels_last {channels_last} seed {seed}: max loss rel {worst:.2e}, max |β-1| {beta:.2e}, \
         mean β {mean_beta:.4}, min cos {cos:.6}"
    );
    assert!(v.is_empty(), "{precision:?} channels_last {channels_last} seed {seed} vs f32:\n{}", v.join("\n"));
    diffs
}

#[test]
fn channels_last_f32_matches_contiguous_f32_at_every_step() {
    let d = check(Precision::F32, true, 50);
    // The comparison ran on a run that moved: the loss changed over the steps.
    assert!((d[0].ref_loss - d[49].ref_loss).abs() > 1e-2 * d[0].ref_loss.abs(), "{d:?}");
}

#[test]
fn bf16_matches_f32_at_every_step() {
    // Three seeds: the gradient's rounding error depends on the weights (seed 5 alone once
    // suggested a bound of 0.15 on |β-1| that other seeds, and PyTorch's autocast, exceed).
    for seed in [5, 6, 7] {
        let d = check_seed(Precision::Bf16, false, 20, seed);
        // bf16 really ran (a bit-identical loss would mean the f32 path ran twice).
        assert!(d.iter().any(|s| s.loss != s.ref_loss));
    }
}

#[test]
fn bf16_channels_last_matches_f32_at_every_step() {
    check(Precision::Bf16, true, 10);
}

#[test]
fn the_bounds_fail_on_nan_on_no_steps_and_on_a_halved_gradient() {
    let ok = StepDiff { loss: 100.0, ref_loss: 100.5, grad_beta: 1.01, grad_cos: 0.95 };
    let b = Bounds::for_precision(Precision::Bf16);
    assert!(b.violations(&[ok]).is_empty());
    assert!(!b.violations(&[]).is_empty());
    // A gradient a fifth too small on every step passes each step's bound but not the mean's.
    let low = StepDiff { grad_beta: 0.8, ..ok };
    assert!(b.violations(&[low, low, low]).iter().all(|m| m.starts_with("mean gradient scale")));
    assert_eq!(b.violations(&[low, low, low]).len(), 1);
    for bad in [
        StepDiff { loss: f64::NAN, ..ok },
        StepDiff { ref_loss: f64::INFINITY, ..ok },
        StepDiff { grad_beta: f64::NAN, ..ok },
        StepDiff { grad_cos: f64::NAN, ..ok },
        StepDiff { grad_beta: 0.5, ..ok },
        StepDiff { loss: 110.0, ..ok },
    ] {
        assert!(!b.violations(&[bad]).is_empty(), "{bad:?} passed");
    }
}
