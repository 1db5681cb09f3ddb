//! LAMB, grouped over a flat buffer.
use crate::flat::FlatParams;
use crate::{chain, step_from_state, torch, LrPair, Optimizer, ParamFilter, Result};
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
    step: i64,
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
        Ok(Self {
            m: flat.zeros_like()?,
            v: flat.zeros_like()?,
            g: flat.zeros_like()?,
            t: flat.zeros_like()?,
            u: flat.zeros_like()?,
            step: 0,
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

/// `[P]` f64 learning rate per parameter.
pub(crate) fn lr_per_segment(is_bias: &Tensor, lr: &LrPair) -> Result<Tensor> {
    chain("learning rates", || {
        let w = Tensor::from(lr.weights).f_to_kind(Kind::Double)?.f_to_device(is_bias.device())?;
        let b = Tensor::from(lr.biases).f_to_kind(Kind::Double)?.f_to_device(is_bias.device())?;
        b.f_where_self(is_bias, &w)
    })
}

impl Optimizer for Lamb {
    fn step(&mut self, lr: &LrPair) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let (b1, b2) = (self.p.beta1, self.p.beta2);
        let (g, t, u) = (&self.g, &self.t, &self.u);
        self.flat.grads_into(g)?;
        // β m + (1−β) g as one lerp: m + (1−β)(g − m).
        let _ = chain("lamb moments", || {
            let _ = self.m.f_lerp_(g, 1.0 - b1)?;
            let _ = g.f_square_out(t)?;
            self.v.f_lerp_(t, 1.0 - b2)
        })?;
        // t = sqrt(v / (1 − β2ᵗ)) + ε;  u = m / t / (1 − β1ᵗ)
        let bc2 = Tensor::from((1.0 - b2.powf(t_step(self.step))) as f32);
        let _ = chain("lamb update", || {
            let _ = self.v.f_div_out(t, &bc2)?;
            let _ = t.shallow_clone().f_sqrt_()?;
            let _ = t.shallow_clone().f_add_scalar_(self.p.eps)?;
            let _ = self.m.f_div_out(u, t)?;
            u.shallow_clone().f_div_scalar_(1.0 - b1.powf(t_step(self.step)))
        })?;
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
        let lr_seg = lr_per_segment(&self.is_bias, lr)?;
        let coef = self.flat.chunk_column(&chain("coefficients", || ratio.f_mul(&lr_seg)?.f_mul_scalar(-1.0))?)?;
        let _ = torch("apply", w2.shallow_clone().f_addcmul_(&u2, &coef))?;
        Ok(())
    }

    fn zero_grad(&mut self) {
        self.flat.zero_grad();
    }

    fn step_count(&self) -> i64 {
        self.step
    }

    fn try_state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut s = vec![("lamb.step".to_string(), Tensor::from_slice(&[self.step]))];
        s.extend(self.flat.export(&self.m, "lamb.m.")?);
        s.extend(self.flat.export(&self.v, "lamb.v.")?);
        Ok(s)
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let step = step_from_state(state, "lamb.step")?;
        self.flat.load_into(&self.m, state, "lamb.m.")?;
        self.flat.load_into(&self.v, state, "lamb.v.")?;
        self.step = step;
        Ok(())
    }
}
