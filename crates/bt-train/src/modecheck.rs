//! Does a training mode compute what plain f32 computes? Teacher-forced along its own run.
//!
//! [`trace`] trains a small model for some steps with the trainer's own [`StaticStep`] in the
//! mode under test (bf16 weight copies, channels-last, another device), on real twin batches of
//! the synthetic dataset. Before every step it copies the mode's current weights into a plain
//! f32 contiguous model on the CPU and computes, on the same batch, the reference loss and
//! gradient. So every step compares the mode with f32 *at the same weights*: the difference is
//! the arithmetic of one step (roundings, summation order), not the chaos of two trajectories
//! drifting apart, and it stays bounded however long the run. A stale or never-refreshed bf16
//! weight copy shows as a loss computed at other weights; a scaled gradient as a projection
//! coefficient away from 1. [`Bounds`] holds the tolerances and their derivation; `bt-cli
//! selftest` runs the same trace on a GPU.
use crate::device::{StepSettings, Uploader};
use crate::error::Result;
use crate::guard::{Guard, Pending};
use crate::step::{StaticStep, StepParts};
use bt_config::{Config, Precision};
use tch::{nn, Device, Kind, Tensor};

/// One step of a [`trace`]: the mode's loss and gradient against f32's at the same weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepDiff {
    /// The mode's loss (what the trainer's guard recorded for the step).
    pub loss: f64,
    /// The f32 reference loss at the same weights on the same batch.
    pub ref_loss: f64,
    /// `<g, g_ref> / <g_ref, g_ref>` over all trainable variables: 1 when the mode's gradient
    /// has the reference's scale along the reference's direction (a halved gradient gives 0.5).
    pub grad_beta: f64,
    /// Cosine between the mode's and the reference gradient.
    pub grad_cos: f64,
}

impl StepDiff {
    /// `|loss - ref_loss| / |ref_loss|` (NaN when either is not finite).
    pub fn loss_rel(&self) -> f64 {
        if !(self.loss.is_finite() && self.ref_loss.is_finite()) {
            return f64::NAN;
        }
        (self.loss - self.ref_loss).abs() / self.ref_loss.abs().max(1e-12)
    }
}

/// Tolerances of a mode against f32 at the same weights, from its arithmetic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// Largest relative loss difference of any step.
    pub loss_rel_max: f64,
    /// Largest mean relative loss difference over the steps.
    pub loss_rel_mean: f64,
    /// `|grad_beta - 1|` of any step.
    pub beta_dev: f64,
    /// `|mean(grad_beta) - 1|` over the steps.
    pub beta_mean_dev: f64,
    /// Smallest gradient cosine of any step.
    pub cos_min: f64,
}

impl Bounds {
    /// The bounds for `precision` (channels-last or not: the layout only reorders sums).
    ///
    /// **f32** (any layout; any device with TF32 off): the same operations in another summation
    /// order. A reordered sum of `k` terms moves by about `√k·u` relative (`u = 2^-24 ≈ 6·10^-8`);
    /// a ResNet-18 step chains ~60 reductions of up to 10^4 terms, so the loss moves by ~10^-5
    /// relative at most: bound 10^-4 (measured 1.8·10^-6 over 50 steps). The gradient of a Barlow
    /// Twins loss is a difference of nearly equal terms pushed back through training-mode batch
    /// norms, which amplifies those last-bit differences about 10^4-fold (measured: β within
    /// 2.3·10^-3 of 1, cosine ≥ 0.99995): bound |β - 1| ≤ 10^-2, cosine ≥ 0.999. A layout bug
    /// (permuted channels, a transposed weight) changes the function, not the last bits: its loss
    /// is off by percents.
    ///
    /// **bf16**: every convolution and linear layer rounds its input, weight and output to 8
    /// significant bits, `u = 2^-9 ≈ 2·10^-3` relative per rounding. Batch norm rescales each
    /// layer, so the relative errors of the 20 weight layers (~4 roundings each) add in
    /// quadrature: `√80·u ≈ 1.7·10^-2` on the embeddings. The loss sums squared correlations of
    /// embeddings normalized over the batch; an embedding error ε moves a correlation by at most
    /// 2ε: bound `2·√80·u = 3.6·10^-2` on any step, a third of it (1.2·10^-2) on the mean, where
    /// the roundings' signs average out (measured: max 9.5·10^-3). The gradient is the difference
    /// of nearly equal terms pushed back through training-mode batch norms, which amplifies the
    /// roundings far more than the loss; no closed form, so its bounds come from PyTorch's own
    /// CPU autocast on the same views (`bench/bf16_grad_torch.py`: seeds 5-9, 10 teacher-forced
    /// steps each, at batch 32): per step |β - 1| up to 0.38 and cosine down to 0.76, the largest
    /// at the first steps after init, where β < 1; over a seed's steps, β's mean within 0.08 of 1.
    /// Bounds: per step |β - 1| ≤ 0.45, cosine ≥ 0.7; the mean of β over the steps within 0.15 of
    /// 1. A halved or doubled gradient moves every step's β, and so the mean, by 0.5 or 1.
    pub fn for_precision(precision: Precision) -> Self {
        match precision {
            Precision::F32 => {
                Self { loss_rel_max: 1e-4, loss_rel_mean: 1e-4, beta_dev: 1e-2, beta_mean_dev: 1e-2, cos_min: 0.999 }
            }
            // An unresolved `auto` may run either: the looser bounds (callers pass the
            // resolved precision, `StepSettings::precision`).
            Precision::Bf16 | Precision::Auto => {
                Self { loss_rel_max: 3.6e-2, loss_rel_mean: 1.2e-2, beta_dev: 0.45, beta_mean_dev: 0.15, cos_min: 0.7 }
            }
        }
    }

    /// Each bound that `diffs` break, as a sentence; empty when all hold. Not-finite values
    /// break every bound (each test checks NaN first).
    pub fn violations(&self, diffs: &[StepDiff]) -> Vec<String> {
        let mut v = Vec::new();
        if diffs.is_empty() {
            v.push("no steps were compared".to_string());
            return v;
        }
        let mut sum = 0.0;
        for (i, d) in diffs.iter().enumerate() {
            let r = d.loss_rel();
            sum += r;
            if r.is_nan() || r > self.loss_rel_max {
                v.push(format!(
                    "step {}: loss {} vs f32 {} (relative {r:.2e} > {:.1e})",
                    i + 1,
                    d.loss,
                    d.ref_loss,
                    self.loss_rel_max
                ));
            }
            if d.grad_beta.is_nan() || (d.grad_beta - 1.0).abs() > self.beta_dev {
                v.push(format!("step {}: gradient scale β {:.4} (|β-1| > {:.1e})", i + 1, d.grad_beta, self.beta_dev));
            }
            if d.grad_cos.is_nan() || d.grad_cos < self.cos_min {
                v.push(format!("step {}: gradient cosine {:.6} < {}", i + 1, d.grad_cos, self.cos_min));
            }
        }
        let mean = sum / diffs.len() as f64;
        if mean.is_nan() || mean > self.loss_rel_mean {
            v.push(format!("mean relative loss difference {mean:.2e} > {:.1e}", self.loss_rel_mean));
        }
        let beta = diffs.iter().map(|d| d.grad_beta).sum::<f64>() / diffs.len() as f64;
        if beta.is_nan() || (beta - 1.0).abs() > self.beta_mean_dev {
            v.push(format!("mean gradient scale β {beta:.4} (|β-1| > {:.1e})", self.beta_mean_dev));
        }
        v
    }
}

/// The configuration the [`Bounds`] were measured on: the `demo` recipe at a test's size (batch
/// 32, a 256-wide projector, LAMB at a constant lr 2e-2: each tensor moves ~2% of its norm per
/// step, so a weight copy one step stale is computed at visibly other weights), seed 5.
pub fn check_config() -> Result<Config> {
    let mut b = bt_config::ConfigBuilder::new();
    b.preset("demo")?;
    for s in ["data.batch_size=32", "model.projector=[256, 256, 256]", "optim.lr=2e-2", "run.seed=5"] {
        b.set(s)?;
    }
    Ok(b.build()?)
}

/// The model's trainable gradients, flattened into one f64 CPU vector.
fn flat_grads(params: &[Tensor]) -> Result<Tensor> {
    let gs = params
        .iter()
        .map(|p| {
            let g = p.grad();
            let g = if g.defined() { g } else { p.zeros_like() };
            g.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?.f_flatten(0, -1)
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Tensor::f_cat(&gs, 0)?)
}

/// Trains `cfg`'s model for `steps` steps on `dev` in `settings` with the trainer's step, and
/// compares every step with f32 on the CPU at the same weights (see the module doc). The batches
/// are the synthetic dataset's twin views under `cfg`'s augmentations (`cfg.data.batch_size`
/// pairs); the learning rate is `optim.lr`, constant.
pub fn trace(cfg: &Config, dev: Device, settings: StepSettings, steps: usize) -> Result<Vec<StepDiff>> {
    let n = cfg.data.batch_size;
    let side = cfg.data.image_size;
    let images = bt_data::synthetic::generate(n * steps, cfg.run.seed, bt_data::synthetic::Split::Train);
    let mut data = cfg.data.clone();
    data.dataset = bt_config::DatasetKind::Synthetic;
    let pipe = bt_data::TwinPipeline::new(std::sync::Arc::new(images), &data, &cfg.augment, cfg.run.seed)?;
    let batches: Vec<bt_data::TwinBatch> = pipe.epoch(0, 0).take(steps).collect::<std::result::Result<_, _>>()?;

    tch::manual_seed(cfg.run.seed as i64);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let mut model = bt_model::BarlowTwins::try_new(&vs.root(), &cfg.model)?;
    vs.set_device(dev);
    model.set_precision(settings.precision);
    settings.apply_backend(dev)?;
    if settings.precision == Precision::F32 {
        // apply_backend turns TF32 on for f32 CUDA runs; this is an f32 comparison.
        bt_shim::set_allow_tf32(false)?;
    }
    let ref_vs = nn::VarStore::new(Device::Cpu);
    let reference = bt_model::BarlowTwins::try_new(&ref_vs.root(), &cfg.model)?;
    let ref_params = reference.trainable_variables();
    let loss_opts = bt_loss::LossOptions::from_config(&cfg.loss);

    let mut opt = bt_optim::build(&cfg.optim, bt_optim::trainable_named(&vs))?;
    let names = opt.param_names();
    let mut run = cfg.run.clone();
    run.log_every = 1;
    let mut guard = Guard::new(&run);
    let mut pending = Pending::new(1, dev)?;
    let mut step = StaticStep::new(cfg, &model, &vs, settings, &guard, None)?;
    step.set_epoch_lrs(&[cfg.optim.lr, cfg.optim.lr].repeat(steps), 0)?;
    let params = model.trainable_variables();
    let mut up = Uploader::new(dev, settings.channels_last)?;
    let mut out = Vec::with_capacity(steps);
    for (k, b) in batches.iter().enumerate() {
        // The reference takes the mode's weights (and batch-norm buffers) as they are now.
        tch::no_grad(|| -> Result<()> {
            let mut src = vs.variables();
            for (name, t) in ref_vs.variables() {
                let s = src.remove(&name).expect("same architecture, same names");
                t.shallow_clone().f_copy_(&s.f_to_device(Device::Cpu)?)?;
            }
            Ok(())
        })?;
        let views = [&b.view_a, &b.view_b]
            .map(|v| Tensor::from_slice(v).view([b.batch_size as i64, 3, side as i64, side as i64]));
        let ref_out = bt_loss::barlow_twins_loss(
            &reference.forward(&views[0], true),
            &reference.forward(&views[1], true),
            &loss_opts,
        )?;
        for p in &ref_params {
            let mut p = p.shallow_clone();
            p.zero_grad();
        }
        ref_out.loss.f_backward()?;
        let g_ref = flat_grads(&ref_params)?;

        let x = up.upload(&[&b.view_a, &b.view_b], b.batch_size, side)?.ready(&mut up)?;
        let mut parts =
            StepParts { model: &model, opt: opt.as_mut(), guard: &guard, pending: &mut pending, dist: None };
        step.run_step(&mut parts, &x, k + 1, 1)?;
        let g = flat_grads(&params)?;
        let judged = guard.flush(&mut pending, &names)?;
        let loss = judged.last().map_or(f64::NAN, |j| j.loss[0]);
        let dot = |a: &Tensor, b: &Tensor| (a * b).sum(Kind::Double).double_value(&[]);
        let gg = dot(&g_ref, &g_ref);
        out.push(StepDiff {
            loss,
            ref_loss: ref_out.loss.double_value(&[]),
            grad_beta: dot(&g, &g_ref) / gg,
            grad_cos: dot(&g, &g_ref) / (gg * dot(&g, &g)).sqrt(),
        });
    }
    Ok(out)
}
