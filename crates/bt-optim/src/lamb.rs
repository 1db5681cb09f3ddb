//! LAMB, grouped over a flat buffer.
use crate::flat::FlatParams;
use crate::{chain, mask_skipped, step_counter, step_value, torch, LrPair, OptimError, Optimizer, ParamFilter, Result};
use bt_config::OptimConfig;
use tch::{Kind, Tensor};

/// Hyperparameters of `tfa.optimizers.LAMB` (its defaults in [`Default`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LambParams {
    /// β1 (0.9).
    pub beta1: f64,
    /// β2 (0.999).
    pub beta2: f64,
    /// ε added to `sqrt(v̂)` (1e-6).
    pub eps: f64,
    /// Decoupled weight decay rate, added to the update before the trust ratio (0).
    pub weight_decay: f64,
    /// Parameters without weight decay (tfa `exclude_from_weight_decay`).
    pub exclude_from_weight_decay: ParamFilter,
    /// Parameters without the trust ratio (tfa `exclude_from_layer_adaptation`; `None` = same as
    /// the weight-decay filter, as in tfa).
    pub exclude_from_layer_adaptation: Option<ParamFilter>,
}

impl Default for LambParams {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.0,
            exclude_from_weight_decay: ParamFilter::none(),
            exclude_from_layer_adaptation: None,
        }
    }
}

impl LambParams {
    /// From `[optim]`: `exclude_bias_and_norm` excludes rank ≤ 1 from decay and adaptation.
    pub fn from_config(cfg: &OptimConfig) -> Self {
        let filter = if cfg.exclude_bias_and_norm { ParamFilter::bias_and_norm() } else { ParamFilter::none() };
        Self {
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
            exclude_from_weight_decay: filter,
            exclude_from_layer_adaptation: None,
        }
    }

    pub(crate) fn adapt_filter(&self) -> &ParamFilter {
        self.exclude_from_layer_adaptation.as_ref().unwrap_or(&self.exclude_from_weight_decay)
    }
}

/// LAMB as `tfa.optimizers.LAMB`, per parameter `w` with gradient `g` at step `t` (1-based):
///
/// ```text
/// m ← β1 m + (1−β1) g            v ← β2 v + (1−β2) g²
/// u ← (m / (1−β1ᵗ)) / (sqrt(v / (1−β2ᵗ)) + ε) + wd·w       (wd = 0 where excluded)
/// r ← ‖w‖ / ‖u‖, or 1 when either norm is 0 or w is excluded from adaptation
/// w ← w − lr · r · u
/// ```
/// Grouped: every op runs once on the flat buffer (see [`FlatParams`]).
#[derive(Debug)]
pub struct Lamb {
    p: LambParams,
    flat: FlatParams,
    m: Tensor,
    v: Tensor,
    /// Work buffers in the flat layout, reused every step: gradients, a temporary, the update.
    g: Tensor,
    t: Tensor,
    u: Tensor,
    /// Steps taken, when known on the host (`None` after [`Optimizer::step_device`] with a flag:
    /// then only `t` knows).
    step: Option<i64>,
    /// `[1]` i64 on the device: steps taken (the index into `bias_corr`).
    t_dev: Tensor,
    /// `[L + 1, 2]` f32 on the device: row `t` holds `(1 − β1ᵗ, 1 − β2ᵗ)` as f32, computed on the
    /// host with the same `powf` as [`Optimizer::step`] (so the device step is bit-identical), up
    /// to the first `L` where both are 1.0 (a clamped index serves every later step); row 0 is
    /// `(1, 1)` so a skipped first step divides by 1, not 0.
    bias_corr: Tensor,
    /// `L`, the last row of `bias_corr`.
    bias_last: i64,
    /// `[P]` bool: rank ≤ 1 parameters (bias learning rate).
    is_bias: Tensor,
    /// `[chunks, 1]` decay rate per parameter (0 where excluded); `None`: no decay at all.
    decay: Option<Tensor>,
    /// `[P]` bool: parameters that get the trust ratio.
    adapt: Tensor,
}

impl Lamb {
    /// Takes the variables (they become views into a flat buffer).
    pub fn new(named_params: Vec<(String, Tensor)>, p: LambParams) -> Result<Self> {
        let flat = FlatParams::new(named_params)?;
        let is_bias = flat.segment_mask(|_, s| s.len() <= 1)?;
        let decay = match p.weight_decay != 0.0 {
            true => {
                let keep = flat.segment_mask(|n, s| !p.exclude_from_weight_decay.excludes(n, s))?;
                let rate = chain("decay rates", || keep.f_to_kind(Kind::Double)?.f_mul_scalar(p.weight_decay))?;
                Some(flat.chunk_column(&rate)?)
            }
            false => None,
        };
        let adapt = flat.segment_mask(|n, s| !p.adapt_filter().excludes(n, s))?;
        let rows = bias_corrections(p.beta1, p.beta2)?;
        let bias_last = rows.len() as i64 / 2 - 1;
        // Built once: a one-off upload, not a per-step one.
        let bias_corr = chain("bias corrections", || {
            bt_host::from_f64s(&rows, Kind::Float, flat.device())?.f_view([bias_last + 1, 2])
        })?;
        Ok(Self {
            t_dev: step_counter(flat.device(), 0)?,
            bias_corr,
            bias_last,
            m: flat.zeros_like()?,
            v: flat.zeros_like()?,
            g: flat.zeros_like()?,
            t: flat.zeros_like()?,
            u: flat.zeros_like()?,
            step: Some(0),
            p,
            flat,
            is_bias,
            decay,
            adapt,
        })
    }

    /// The flat parameter layout.
    pub fn flat(&self) -> &FlatParams {
        &self.flat
    }
}

fn t_step(step: i64) -> f64 {
    step as f64
}

/// Most rows of the bias-correction table (β = 0.9999 needs ~1.7e5).
const BIAS_TABLE_CAP: usize = 1 << 22;

/// The rows `(1 − β1ᵗ, 1 − β2ᵗ)` (as f32 values, flattened) for `t = 0..=L`; see `Lamb::bias_corr`.
fn bias_corrections(b1: f64, b2: f64) -> Result<Vec<f64>> {
    let mut rows = vec![1.0, 1.0];
    for t in 1..=BIAS_TABLE_CAP {
        let c1 = (1.0 - b1.powf(t_step(t as i64))) as f32;
        let c2 = (1.0 - b2.powf(t_step(t as i64))) as f32;
        rows.extend([c1 as f64, c2 as f64]);
        if c1 == 1.0 && c2 == 1.0 {
            return Ok(rows);
        }
    }
    let (key, value) = if (1.0 - b1.powf(BIAS_TABLE_CAP as f64)) as f32 != 1.0 { ("beta1", b1) } else { ("beta2", b2) };
    Err(OptimError::BetaTooClose { key, value, cap: BIAS_TABLE_CAP })
}

/// `[P]` f64 learning rate per parameter from host values: two host-to-device copies (the
/// compatibility path of [`Optimizer::step`]; [`Optimizer::step_device`] has none).
pub(crate) fn lr_per_segment(is_bias: &Tensor, lr: &LrPair) -> Result<Tensor> {
    chain("learning rates", || {
        let w = bt_host::scalar_tensor(lr.weights, Kind::Double, is_bias.device())?;
        let b = bt_host::scalar_tensor(lr.biases, Kind::Double, is_bias.device())?;
        b.f_where_self(is_bias, &w)
    })
}

/// `[P]` f64 learning rate per parameter from a device `[2]` (weights, biases): no transfer.
pub(crate) fn lr_per_segment_dev(is_bias: &Tensor, lr: &Tensor) -> Result<Tensor> {
    chain("learning rates", || lr.f_select(0, 1)?.f_where_self(is_bias, &lr.f_select(0, 0)?))
}

/// Where a step's scalars come from.
pub(crate) enum Scalars<'a> {
    /// Host values ([`Optimizer::step`], the path every existing caller and test uses).
    Host(&'a LrPair),
    /// Device memory ([`Optimizer::step_device`]).
    Device { lr: &'a Tensor, apply: Option<&'a Tensor> },
}

impl Lamb {
    fn update(&mut self, s: Scalars<'_>) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let (b1, b2) = (self.p.beta1, self.p.beta2);
        let (g, t, u) = (&self.g, &self.t, &self.u);
        let apply = match s {
            Scalars::Device { apply, .. } => apply,
            Scalars::Host(_) => None,
        };
        // The step count: host path as before (the device counter follows with a fill kernel);
        // device path in place, by the flag when there is one.
        let host_step = match s {
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
        self.step = host_step;
        if let Some(f) = apply {
            mask_skipped(g, f)?;
        }
        // β m + (1−β) g as one lerp: m + (1−β)(g − m). A skipped step has g = 0 and weight 0:
        // m + 0·(0 − m) = m exactly.
        let _ = chain("lamb moments", || match apply {
            None => {
                let _ = self.m.f_lerp_(g, 1.0 - b1)?;
                let _ = g.f_square_out(t)?;
                self.v.f_lerp_(t, 1.0 - b2)
            }
            Some(f) => {
                let f = f.f_to_kind(Kind::Float)?;
                let _ = self.m.f_lerp_tensor_(g, &f.f_mul_scalar(1.0 - b1)?)?;
                let _ = g.f_square_out(t)?;
                self.v.f_lerp_tensor_(t, &f.f_mul_scalar(1.0 - b2)?)
            }
        })?;
        // t = sqrt(v / (1 − β2ᵗ)) + ε;  u = m / t / (1 − β1ᵗ)
        match s {
            Scalars::Host(_) => {
                let n = t_step(host_step.expect("host step"));
                let bc2 = Tensor::from((1.0 - b2.powf(n)) as f32);
                let _ = chain("lamb update", || {
                    let _ = self.v.f_div_out(t, &bc2)?;
                    let _ = t.shallow_clone().f_sqrt_()?;
                    let _ = t.shallow_clone().f_add_scalar_(self.p.eps)?;
                    let _ = self.m.f_div_out(u, t)?;
                    u.shallow_clone().f_div_scalar_(1.0 - b1.powf(n))
                })?;
            }
            Scalars::Device { .. } => {
                let _ = chain("lamb update", || {
                    let row = self.bias_corr.f_index_select(0, &self.t_dev.f_clamp_max(self.bias_last)?)?;
                    let (bc1, bc2) = (row.f_select(1, 0)?, row.f_select(1, 1)?);
                    let _ = self.v.f_div_out(t, &bc2)?;
                    let _ = t.shallow_clone().f_sqrt_()?;
                    let _ = t.shallow_clone().f_add_scalar_(self.p.eps)?;
                    let _ = self.m.f_div_out(u, t)?;
                    u.shallow_clone().f_div_(&bc1)
                })?;
            }
        }
        let w = self.flat.flat();
        let (w2, mut u2) =
            chain("view", || Ok((w.f_view([-1, crate::flat::CHUNK])?, u.f_view([-1, crate::flat::CHUNK])?)))?;
        if let Some(decay) = &self.decay {
            let _ = torch("decay", u2.f_addcmul_(&w2, decay))?;
        }
        let _ = torch("square", w.f_square_out(t))?;
        let wn = torch("sqrt", self.flat.segment_sums(t)?.f_sqrt())?;
        let _ = torch("square", u.f_square_out(t))?;
        let un = torch("sqrt", self.flat.segment_sums(t)?.f_sqrt())?;
        let ratio = chain("trust ratio", || {
            let ok = self.adapt.f_logical_and(&wn.f_gt(0.0)?)?.f_logical_and(&un.f_gt(0.0)?)?;
            wn.f_div(&un)?.f_where_self(&ok, &wn.f_ones_like()?)
        })?;
        let lr_seg = match s {
            Scalars::Host(lr) => lr_per_segment(&self.is_bias, lr)?,
            Scalars::Device { lr, .. } => lr_per_segment_dev(&self.is_bias, lr)?,
        };
        let coef = chain("coefficients", || {
            let c = ratio.f_mul(&lr_seg)?.f_mul_scalar(-1.0)?;
            match apply {
                None => Ok(c),
                // w + 0·u = w: the skipped step's update is finite (g was masked), so this is exact.
                Some(f) => c.f_mul(&f.f_to_kind(Kind::Double)?),
            }
        })?;
        let coef = self.flat.chunk_column(&coef)?;
        let _ = torch("apply", w2.shallow_clone().f_addcmul_(&u2, &coef))?;
        Ok(())
    }
}

impl Optimizer for Lamb {
    crate::flat_optimizer_methods!("lamb", [m, v]);
}
