//! Per-tensor reference optimizers: the formulas written once per parameter tensor, the way
//! tfa / the official code / solo-learn loop over variables. The test oracle for the grouped
//! [`Lamb`](crate::Lamb) and [`Lars`](crate::Lars), and the benchmark's peer. Same state keys,
//! so the two load each other's state.
use crate::lars::SOLO_LEARN_EPS;
use crate::{
    chain, check_params, checked_grad, f_copy, state_entry, step_from_state, torch, LambParams, LarsParams,
    LarsVariant, LrPair, Optimizer, Result,
};
use tch::Tensor;

fn grad_or_zeros(name: &str, p: &Tensor) -> Result<Tensor> {
    match checked_grad(name, p)? {
        Some(g) => Ok(g),
        None => torch("zeros_like(grad)", p.f_zeros_like()),
    }
}

fn norm(t: &Tensor) -> Result<f64> {
    chain("norm", || t.f_norm()?.f_double_value(&[]))
}

fn zeros(params: &[(String, Tensor)]) -> Result<Vec<Tensor>> {
    params.iter().map(|(_, t)| torch("zeros_like", t.f_zeros_like())).collect()
}

fn lr_of(shape: &[i64], lr: &LrPair) -> f64 {
    if shape.len() <= 1 {
        lr.biases
    } else {
        lr.weights
    }
}

/// [`Lamb`](crate::Lamb), one tensor at a time.
#[derive(Debug)]
pub struct LambPerTensor {
    p: LambParams,
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: i64,
}

impl LambPerTensor {
    /// Takes the variables (left where they are).
    pub fn new(params: Vec<(String, Tensor)>, p: LambParams) -> Result<Self> {
        check_params(&params)?;
        let m = zeros(&params)?;
        let v = zeros(&params)?;
        Ok(Self { p, params, m, v, step: 0 })
    }
}

impl Optimizer for LambPerTensor {
    fn step(&mut self, lr: &LrPair) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let t = self.step as f64;
        let (b1, b2) = (self.p.beta1, self.p.beta2);
        for (i, (name, w)) in self.params.iter_mut().enumerate() {
            let g = grad_or_zeros(name, w)?;
            let shape = w.size();
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            // In place (same arithmetic as m = m·β1 + g·(1−β1)): no fresh moment tensors per step.
            let mut u = chain("lamb update", || {
                let _ = m.f_mul_scalar_(b1)?;
                let _ = m.f_add_(&g.f_mul_scalar(1.0 - b1)?)?;
                let _ = v.f_mul_scalar_(b2)?;
                let _ = v.f_add_(&g.f_square()?.f_mul_scalar(1.0 - b2)?)?;
                let m_hat = m.f_div_scalar(1.0 - b1.powf(t))?;
                let v_hat = v.f_div_scalar(1.0 - b2.powf(t))?;
                m_hat.f_div(&v_hat.f_sqrt()?.f_add_scalar(self.p.eps)?)
            })?;
            if self.p.weight_decay != 0.0 && !self.p.exclude_from_weight_decay.excludes(name, &shape) {
                u = chain("decay", || u.f_add(&w.f_mul_scalar(self.p.weight_decay)?))?;
            }
            let mut ratio = 1.0;
            if !self.p.adapt_filter().excludes(name, &shape) {
                let (wn, un) = (norm(w)?, norm(&u)?);
                if wn > 0.0 && un > 0.0 {
                    ratio = wn / un;
                }
            }
            let _ = chain("apply", || w.f_sub_(&u.f_mul_scalar(ratio * lr_of(&shape, lr))?))?;
        }
        Ok(())
    }

    fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    fn step_count(&self) -> i64 {
        self.step
    }

    fn try_state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut s = vec![("lamb.step".to_string(), Tensor::from_slice(&[self.step]))];
        for (i, (n, _)) in self.params.iter().enumerate() {
            s.push((format!("lamb.m.{n}"), torch("copy(state)", f_copy(&self.m[i]))?));
        }
        for (i, (n, _)) in self.params.iter().enumerate() {
            s.push((format!("lamb.v.{n}"), torch("copy(state)", f_copy(&self.v[i]))?));
        }
        Ok(s)
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let step = step_from_state(state, "lamb.step")?;
        for (i, (n, p)) in self.params.iter().enumerate() {
            self.m[i] = torch("copy(state)", f_copy(state_entry(state, &format!("lamb.m.{n}"), &p.size())?))?;
            self.v[i] = torch("copy(state)", f_copy(state_entry(state, &format!("lamb.v.{n}"), &p.size())?))?;
        }
        self.step = step;
        Ok(())
    }
}

/// [`Lars`](crate::Lars), one tensor at a time.
#[derive(Debug)]
pub struct LarsPerTensor {
    p: LarsParams,
    params: Vec<(String, Tensor)>,
    mu: Vec<Tensor>,
    step: i64,
}

impl LarsPerTensor {
    /// Takes the variables (left where they are).
    pub fn new(params: Vec<(String, Tensor)>, p: LarsParams) -> Result<Self> {
        check_params(&params)?;
        let mu = zeros(&params)?;
        Ok(Self { p, params, mu, step: 0 })
    }
}

impl Optimizer for LarsPerTensor {
    fn step(&mut self, lr: &LrPair) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let wd = self.p.weight_decay;
        for (i, (name, w)) in self.params.iter_mut().enumerate() {
            let g = grad_or_zeros(name, w)?;
            let shape = w.size();
            let excluded = self.p.exclude.excludes(name, &shape);
            let lr_p = lr_of(&shape, lr);
            let decayed = |g: &Tensor| chain("decay", || g.f_add(&w.f_mul_scalar(wd)?));
            let d = match self.p.variant {
                LarsVariant::Official => {
                    let d = if excluded { g } else { decayed(&g)? };
                    let mut q = 1.0;
                    if !excluded {
                        let (pn, dn) = (norm(w)?, norm(&d)?);
                        if pn > 0.0 && dn > 0.0 {
                            q = self.p.eta * pn / dn;
                        }
                    }
                    torch("scale", d.f_mul_scalar(q))?
                }
                LarsVariant::SoloLearn => {
                    let (pn, gn) = (norm(w)?, norm(&g)?);
                    if !excluded && pn != 0.0 && gn != 0.0 {
                        let mut s = self.p.eta * pn / (gn + pn * wd + SOLO_LEARN_EPS);
                        if self.p.clip_lr {
                            s = (s / lr_p).min(1.0);
                        }
                        torch("scale", decayed(&g)?.f_mul_scalar(s))?
                    } else {
                        g
                    }
                }
            };
            let mu = &mut self.mu[i];
            let _ = chain("momentum", || {
                let _ = mu.f_mul_scalar_(self.p.momentum)?;
                let _ = mu.f_add_(&d)?;
                w.f_sub_(&mu.f_mul_scalar(lr_p)?)
            })?;
        }
        Ok(())
    }

    fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    fn step_count(&self) -> i64 {
        self.step
    }

    fn try_state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut s = vec![("lars.step".to_string(), Tensor::from_slice(&[self.step]))];
        for (i, (n, _)) in self.params.iter().enumerate() {
            s.push((format!("lars.mu.{n}"), torch("copy(state)", f_copy(&self.mu[i]))?));
        }
        Ok(s)
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let step = step_from_state(state, "lars.step")?;
        for (i, (n, p)) in self.params.iter().enumerate() {
            self.mu[i] = torch("copy(state)", f_copy(state_entry(state, &format!("lars.mu.{n}"), &p.size())?))?;
        }
        self.step = step;
        Ok(())
    }
}
