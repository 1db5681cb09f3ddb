//! [`Sgd`]: `torch.optim.SGD` with momentum (no dampening, no Nesterov) and weight decay, over
//! parameter groups that each have their own learning rate; per tensor, with its momentum
//! buffers exported by parameter name. This is what `evaluate.py`'s linear classifier and its
//! fine-tuning use (`bt-train`'s official and fine-tune protocols), and its state goes into their
//! resume files, which libtorch's own optimizer (no state access through tch) cannot provide.
//!
//! PyTorch's update, per parameter `p` with gradient `g` (parameters without a gradient are
//! skipped, as PyTorch skips `grad is None`):
//! ```text
//! d ← g + wd·p                      (weight decay, when wd ≠ 0)
//! b ← d (first step),  b ← m·b + d  (later steps; momentum m ≠ 0)
//! p ← p − lr·b
//! ```
use crate::{chain, torch, OptimError, Result};
use tch::Tensor;

/// Key prefix of a momentum buffer in [`Sgd::state`] (`momentum_buffer.<name>`).
pub const MOMENTUM_BUFFER: &str = "momentum_buffer.";

#[derive(Debug)]
struct Param {
    name: String,
    tensor: Tensor,
    group: usize,
    buf: Option<Tensor>,
}

/// SGD with momentum and weight decay over parameter groups (see the module doc).
#[derive(Debug)]
pub struct Sgd {
    params: Vec<Param>,
    lrs: Vec<f64>,
    momentum: f64,
    weight_decay: f64,
}

impl Sgd {
    /// `groups[i]` are the named parameters of group `i`, trained at `lrs[i]`. Names must be
    /// unique across groups (they key the state).
    ///
    /// # Errors
    /// [`OptimError::NoParams`] without parameters; [`OptimError::State`] for a repeated name or
    /// a group count that differs from the learning rates'.
    pub fn new(groups: Vec<Vec<(String, Tensor)>>, lrs: &[f64], momentum: f64, weight_decay: f64) -> Result<Self> {
        if groups.len() != lrs.len() {
            return Err(OptimError::State {
                key: "lrs".into(),
                reason: format!("{} learning rates for {} parameter groups", lrs.len(), groups.len()),
            });
        }
        let mut params = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (group, named) in groups.into_iter().enumerate() {
            for (name, tensor) in named {
                if !seen.insert(name.clone()) {
                    return Err(OptimError::State { key: name, reason: "the same parameter name twice".into() });
                }
                params.push(Param { name, tensor, group, buf: None });
            }
        }
        if params.is_empty() {
            return Err(OptimError::NoParams);
        }
        Ok(Self { params, lrs: lrs.to_vec(), momentum, weight_decay })
    }

    /// Sets group `group`'s learning rate.
    ///
    /// # Panics
    /// For a group that does not exist.
    pub fn set_lr(&mut self, group: usize, lr: f64) {
        self.lrs[group] = lr;
    }

    /// Group `group`'s learning rate.
    ///
    /// # Panics
    /// For a group that does not exist.
    pub fn lr(&self, group: usize) -> f64 {
        self.lrs[group]
    }

    /// Zeroes every parameter's gradient in place.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
    }

    /// One update from the parameters' current `.grad()`.
    ///
    /// # Errors
    /// [`OptimError::Grad`] for a gradient of another shape than its parameter;
    /// [`OptimError::Torch`] for a libtorch failure (the parameters may then be partly updated).
    pub fn step(&mut self) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let (m, wd) = (self.momentum, self.weight_decay);
        for p in &mut self.params {
            let g = p.tensor.grad();
            if !g.defined() {
                continue;
            }
            if g.size() != p.tensor.size() {
                return Err(OptimError::Grad {
                    name: p.name.clone(),
                    expected: format!("{:?}", p.tensor.size()),
                    found: format!("{:?}", g.size()),
                });
            }
            // PyTorch's `add(x, alpha=a)` computes `self + a·x` in one fused multiply-add per
            // element on CPU; `bt_shim::foreach_add_` reaches the same kernel (tch has no alpha).
            let d = if wd != 0.0 {
                let d = torch("sgd decay", g.f_detach_copy())?;
                shim("sgd decay", bt_shim::foreach_add_(&[&d], &[&p.tensor], wd))?;
                d
            } else {
                g
            };
            let d = if m != 0.0 {
                match &mut p.buf {
                    Some(b) => {
                        let _ = torch("sgd momentum", b.f_mul_scalar_(m))?;
                        let _ = torch("sgd momentum", b.f_add_(&d))?;
                        b.shallow_clone()
                    }
                    None => {
                        let b = torch("sgd momentum", d.f_detach_copy())?;
                        p.buf = Some(b.shallow_clone());
                        b
                    }
                }
            } else {
                d
            };
            let lr = self.lrs[p.group];
            shim("sgd update", bt_shim::foreach_add_(&[&p.tensor], &[&d], -lr))?;
        }
        Ok(())
    }

    /// The momentum buffers (copies), keyed [`MOMENTUM_BUFFER`]`<name>`; a parameter that has not
    /// been stepped yet has none (as in PyTorch's state dict).
    ///
    /// # Errors
    /// [`OptimError::Torch`] when libtorch cannot allocate the copies.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        self.params
            .iter()
            .filter_map(|p| p.buf.as_ref().map(|b| (p, b)))
            .map(|(p, b)| Ok((format!("{MOMENTUM_BUFFER}{}", p.name), torch("sgd state", b.f_detach_copy())?)))
            .collect()
    }

    /// Restores what [`state`](Self::state) returned: each buffer is copied onto its
    /// parameter's device; a parameter absent from `state` starts without one.
    ///
    /// # Errors
    /// [`OptimError::State`] for a key that names no parameter or a buffer of another shape.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let by_name: std::collections::HashMap<&str, &Tensor> = state.iter().map(|(k, t)| (k.as_str(), t)).collect();
        for (k, _) in state {
            let known = k.strip_prefix(MOMENTUM_BUFFER).is_some_and(|n| self.params.iter().any(|p| p.name == n));
            if !known {
                return Err(OptimError::State {
                    key: k.clone(),
                    reason: "names no parameter of this optimizer".into(),
                });
            }
        }
        for p in &mut self.params {
            let key = format!("{MOMENTUM_BUFFER}{}", p.name);
            p.buf = match by_name.get(key.as_str()) {
                None => None,
                Some(t) if t.size() != p.tensor.size() => {
                    return Err(OptimError::State {
                        key,
                        reason: format!("shape {:?}, the parameter's is {:?}", t.size(), p.tensor.size()),
                    })
                }
                Some(t) => Some(chain("sgd state", || {
                    t.f_to_device(p.tensor.device())?.f_to_kind(p.tensor.kind())?.f_detach_copy()
                })?),
            };
        }
        Ok(())
    }
}

fn shim(op: &'static str, r: std::result::Result<(), bt_shim::Error>) -> Result<()> {
    r.map_err(|e| OptimError::Torch { op, source: tch::TchError::Torch(e.to_string()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn param(v: &[f32]) -> Tensor {
        Tensor::from_slice(v).set_requires_grad(true)
    }

    /// Three steps of PyTorch's rule written out by hand on one parameter: the first step seeds
    /// the buffer with the decayed gradient, the later ones accumulate.
    #[test]
    fn steps_follow_pytorch_sgd() {
        let w = param(&[1.0, -2.0]);
        let mut opt = Sgd::new(vec![vec![("w".into(), w.shallow_clone())]], &[0.1], 0.9, 0.01).unwrap();
        let (mut wv, mut b) = ([1.0f64, -2.0], [0.0f64; 2]);
        for step in 0..3 {
            opt.zero_grad();
            (&w * &w).sum(Kind::Float).backward();
            opt.step().unwrap();
            for i in 0..2 {
                let d = 2.0 * wv[i] + 0.01 * wv[i];
                b[i] = if step == 0 { d } else { 0.9 * b[i] + d };
                wv[i] -= 0.1 * b[i];
            }
            let got = Vec::<f32>::try_from(&w).unwrap();
            for i in 0..2 {
                assert!((f64::from(got[i]) - wv[i]).abs() < 1e-6, "step {step}: {got:?} vs {wv:?}");
            }
        }
    }

    /// Three steps in one optimizer equal two steps, the state saved and loaded into a fresh
    /// optimizer, and a third step there; without the state the third step differs.
    #[test]
    fn state_round_trips_and_matters() {
        let third_step = |restore: Option<bool>| {
            let (w, b) = (param(&[0.5, 1.5, -1.0]), param(&[0.25]));
            let groups = || vec![vec![("w".into(), w.shallow_clone())], vec![("b".into(), b.shallow_clone())]];
            let loss = || ((&w * &w).sum(Kind::Float) + (&b * w.sum(Kind::Float))).sum(Kind::Float);
            let mut opt = Sgd::new(groups(), &[0.1, 0.05], 0.9, 0.0).unwrap();
            for _ in 0..2 {
                opt.zero_grad();
                loss().backward();
                opt.step().unwrap();
            }
            if let Some(restore) = restore {
                let state = opt.state().unwrap();
                assert_eq!(state.len(), 2, "one buffer per parameter");
                opt = Sgd::new(groups(), &[0.1, 0.05], 0.9, 0.0).unwrap();
                if restore {
                    opt.load_state(&state).unwrap();
                }
            }
            opt.zero_grad();
            loss().backward();
            opt.step().unwrap();
            (Vec::<f32>::try_from(&w).unwrap(), Vec::<f32>::try_from(&b).unwrap())
        };
        let straight = third_step(None);
        assert_eq!(third_step(Some(true)), straight, "resumed from the saved state");
        let lost = third_step(Some(false));
        let d = lost.0.iter().zip(&straight.0).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(d > 1e-3, "the momentum made no difference ({d})");
    }

    #[test]
    fn bad_state_is_named() {
        let w = param(&[1.0, 2.0]);
        let mut opt = Sgd::new(vec![vec![("w".into(), w)]], &[0.1], 0.9, 0.0).unwrap();
        let e = opt.load_state(&[("momentum_buffer.v".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu)))]);
        assert!(e.unwrap_err().to_string().contains("momentum_buffer.v"));
        let e = opt.load_state(&[("momentum_buffer.w".into(), Tensor::zeros([3], (Kind::Float, Device::Cpu)))]);
        assert!(e.unwrap_err().to_string().contains("shape [3]"));
    }
}
