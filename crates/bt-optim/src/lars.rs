//! LARS (official Barlow Twins and solo-learn), grouped over a flat buffer.
use crate::flat::{FlatParams, CHUNK};
use crate::lamb::{lr_per_segment, lr_per_segment_dev, Scalars};
use crate::{chain, mask_skipped, step_counter, step_value, torch, LrPair, Optimizer, ParamFilter, Result};
use bt_config::{LarsVariant, OptimConfig};
use tch::{Kind, Tensor};

/// solo-learn's `eps` in the trust-ratio denominator (its default; its configs keep it).
pub const SOLO_LEARN_EPS: f64 = 1e-8;

/// Hyperparameters of LARS.
#[derive(Debug, Clone, PartialEq)]
pub struct LarsParams {
    /// Which formulas.
    pub variant: LarsVariant,
    /// Momentum (0.9).
    pub momentum: f64,
    /// Trust coefficient η (official 1e-3, solo-learn CIFAR 0.02).
    pub eta: f64,
    /// L2 weight decay added to the gradient (official code 1e-6; paper 1.5e-6).
    pub weight_decay: f64,
    /// solo-learn only: `lars_lr = min(lars_lr / lr, 1)`.
    pub clip_lr: bool,
    /// Parameters excluded from decay and adaptation (official `exclude_bias_and_norm`).
    pub exclude: ParamFilter,
}

impl Default for LarsParams {
    fn default() -> Self {
        Self {
            variant: LarsVariant::Official,
            momentum: 0.9,
            eta: 1e-3,
            weight_decay: 1e-6,
            clip_lr: false,
            exclude: ParamFilter::bias_and_norm(),
        }
    }
}

impl LarsParams {
    /// From `[optim]`.
    pub fn from_config(cfg: &OptimConfig) -> Self {
        Self {
            variant: cfg.lars_variant,
            momentum: cfg.momentum,
            eta: cfg.eta,
            weight_decay: cfg.weight_decay,
            clip_lr: cfg.clip_lr,
            exclude: if cfg.exclude_bias_and_norm { ParamFilter::bias_and_norm() } else { ParamFilter::none() },
        }
    }
}

/// LARS. Per parameter `w` with gradient `g` and momentum buffer `μ` (starts at 0):
///
/// ```text
/// official:   d ← g + wd·w (unless excluded);  q ← η‖w‖/‖d‖ (1 if excluded or a norm is 0)
///             μ ← m μ + q d;  w ← w − lr μ
/// solo-learn: if not excluded and ‖w‖, ‖g‖ ≠ 0:  s ← η‖w‖ / (‖g‖ + wd‖w‖ + 1e-8),
///             s ← min(s / lr, 1) with clip_lr;  d ← s (g + wd·w);  else d ← g
///             μ ← m μ + d;  w ← w − lr μ
/// ```
/// `lr` is [`LrPair::biases`] for rank ≤ 1 parameters, else [`LrPair::weights`].
#[derive(Debug)]
pub struct Lars {
    p: LarsParams,
    flat: FlatParams,
    mu: Tensor,
    /// Work buffers in the flat layout, reused every step: gradients (then the direction `d`)
    /// and a temporary for the squares.
    g: Tensor,
    t: Tensor,
    /// Steps taken, when known on the host (see `Lamb`).
    step: Option<i64>,
    /// `[1]` i64 on the device: steps taken.
    t_dev: Tensor,
    /// 0-d f64 1.0 on the device, made once: a CPU `one` in `where` would be copied over every
    /// step (ATen moves a CPU 0-d `other` to the device, blocking).
    one: Tensor,
    is_bias: Tensor,
    adapt: Tensor,
}

impl Lars {
    /// Takes the variables (they become views into a flat buffer).
    pub fn new(named_params: Vec<(String, Tensor)>, p: LarsParams) -> Result<Self> {
        let flat = FlatParams::new(named_params)?;
        let is_bias = flat.segment_mask(|_, s| s.len() <= 1)?;
        let adapt = flat.segment_mask(|n, s| !p.exclude.excludes(n, s))?;
        Ok(Self {
            mu: flat.zeros_like()?,
            g: flat.zeros_like()?,
            t: flat.zeros_like()?,
            step: Some(0),
            t_dev: step_counter(flat.device(), 0)?,
            one: torch("one", Tensor::f_ones([], (Kind::Double, flat.device())))?,
            p,
            flat,
            is_bias,
            adapt,
        })
    }

    /// The flat parameter layout.
    pub fn flat(&self) -> &FlatParams {
        &self.flat
    }
}

impl Lars {
    fn update(&mut self, s: Scalars<'_>) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let apply = match s {
            Scalars::Device { apply, .. } => apply,
            Scalars::Host(_) => None,
        };
        self.step = match s {
            Scalars::Host(_) => {
                let n = step_value(self.step, &self.t_dev)? + 1;
                let _ = torch("step counter", self.t_dev.f_fill_(n))?;
                Some(n)
            }
            Scalars::Device { apply: None, .. } => {
                let _ = torch("step counter", self.t_dev.f_add_scalar_(1))?;
                self.step.map(|n| n + 1)
            }
            Scalars::Device { apply: Some(f), .. } => {
                let _ = torch("step counter", self.t_dev.f_add_(f))?;
                None
            }
        };
        let (g, t) = (&self.g, &self.t);
        if let Some(f) = apply {
            mask_skipped(g, f)?;
        }
        let w = self.flat.flat();
        let (w2, mut g2) = chain("view", || Ok((w.f_view([-1, CHUNK])?, g.f_view([-1, CHUNK])?)))?;
        let lr_seg = match s {
            Scalars::Host(lr) => lr_per_segment(&self.is_bias, lr)?,
            Scalars::Device { lr, .. } => lr_per_segment_dev(&self.is_bias, lr)?,
        };
        let wd = self.p.weight_decay;
        let one = &self.one;
        let _ = torch("square", w.f_square_out(t))?;
        let pn = torch("sqrt", self.flat.segment_sums(t)?.f_sqrt())?;
        // After this match, g holds the direction d and `scale` its per-tensor multiplier.
        let scale = match self.p.variant {
            LarsVariant::Official => {
                if wd != 0.0 {
                    let rate = chain("decay rates", || self.adapt.f_to_kind(Kind::Double)?.f_mul_scalar(wd))?;
                    let _ = torch("decay", g2.f_addcmul_(&w2, &self.flat.chunk_column(&rate)?))?;
                }
                let _ = torch("square", g.f_square_out(t))?;
                let dn = torch("sqrt", self.flat.segment_sums(t)?.f_sqrt())?;
                chain("trust ratio", || {
                    let ok = self.adapt.f_logical_and(&pn.f_gt(0.0)?)?.f_logical_and(&dn.f_gt(0.0)?)?;
                    pn.f_mul_scalar(self.p.eta)?.f_div(&dn)?.f_where_self(&ok, one)
                })?
            }
            LarsVariant::SoloLearn => {
                let _ = torch("square", g.f_square_out(t))?;
                let gn = torch("sqrt", self.flat.segment_sums(t)?.f_sqrt())?;
                let ok = chain("mask", || self.adapt.f_logical_and(&pn.f_gt(0.0)?)?.f_logical_and(&gn.f_gt(0.0)?))?;
                let mut s = chain("trust ratio", || {
                    let denom = gn.f_add(&pn.f_mul_scalar(wd)?)?.f_add_scalar(SOLO_LEARN_EPS)?;
                    pn.f_mul_scalar(self.p.eta)?.f_div(&denom)
                })?;
                if self.p.clip_lr {
                    // min(s / lr, 1); lr = 0 (warmup start) gives inf -> 1, as in PyTorch.
                    s = chain("clip", || s.f_div(&lr_seg)?.f_clamp_max(1.0))?;
                }
                if wd != 0.0 {
                    let rate = chain("decay rates", || ok.f_to_kind(Kind::Double)?.f_mul_scalar(wd))?;
                    let _ = torch("decay", g2.f_addcmul_(&w2, &self.flat.chunk_column(&rate)?))?;
                }
                torch("where", s.f_where_self(&ok, one))?
            }
        };
        let d = g2;
        let mut mu2 = torch("view", self.mu.f_view([-1, CHUNK]))?;
        // A skipped step: μ·1 + 0 = μ and w + 0·μ = w exactly (d was masked to 0).
        let coef = match apply {
            None => {
                let _ = torch("momentum", mu2.f_mul_scalar_(self.p.momentum))?;
                torch("-lr", lr_seg.f_mul_scalar(-1.0))?
            }
            Some(f) => {
                let m = torch("momentum", Tensor::f_where_scalar(f, self.p.momentum, 1.0))?;
                let _ = torch("momentum", mu2.f_mul_(&m))?;
                chain("-lr", || lr_seg.f_mul_scalar(-1.0)?.f_mul(&f.f_to_kind(Kind::Double)?))?
            }
        };
        // The decay made d nonzero again on a skipped step: its multiplier is what goes to 0.
        let scale = match apply {
            None => scale,
            Some(f) => chain("skip", || scale.f_mul(&f.f_to_kind(Kind::Double)?))?,
        };
        let _ = torch("momentum", mu2.f_addcmul_(&d, &self.flat.chunk_column(&scale)?))?;
        let coef = self.flat.chunk_column(&coef)?;
        let _ = torch("apply", w2.shallow_clone().f_addcmul_(&mu2, &coef))?;
        Ok(())
    }
}

impl Optimizer for Lars {
    crate::flat_optimizer_methods!("lars", [mu]);
}
