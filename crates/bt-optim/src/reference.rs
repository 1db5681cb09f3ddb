//! Per-tensor reference optimizers: the formulas written once per parameter tensor, the way
//! tfa / the official code / solo-learn loop over variables. The test oracle for the grouped
//! [`Lamb`](crate::Lamb) and [`Lars`](crate::Lars), and the benchmark's peer. Same state keys,
//! so the two load each other's state.
use crate::lars::SOLO_LEARN_EPS;
use crate::{check_params, state_entry, step_from_state, LambParams, LarsParams, LarsVariant, LrPair, Optimizer, Result};
use tch::Tensor;

fn grad_or_zeros(p: &Tensor) -> Tensor {
    let g = p.grad();
    if g.defined() {
        g.detach()
    } else {
        p.zeros_like()
    }
}

fn norm(t: &Tensor) -> f64 {
    t.norm().double_value(&[])
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
        let m = params.iter().map(|(_, t)| t.zeros_like()).collect();
        let v = params.iter().map(|(_, t)| t.zeros_like()).collect();
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
            let g = grad_or_zeros(w);
            let shape = w.size();
            // In place (same arithmetic as m = m·β1 + g·(1−β1)): no fresh moment tensors per step.
            let _ = self.m[i].g_mul_scalar_(b1);
            let _ = self.m[i].g_add_(&(&g * (1.0 - b1)));
            let _ = self.v[i].g_mul_scalar_(b2);
            let _ = self.v[i].g_add_(&(g.square() * (1.0 - b2)));
            let m_hat = &self.m[i] / (1.0 - b1.powf(t));
            let v_hat = &self.v[i] / (1.0 - b2.powf(t));
            let mut u = m_hat / (v_hat.sqrt() + self.p.eps);
            if self.p.weight_decay != 0.0 && !self.p.exclude_from_weight_decay.excludes(name, &shape) {
                u += &*w * self.p.weight_decay;
            }
            let mut ratio = 1.0;
            if !self.p.adapt_filter().excludes(name, &shape) {
                let (wn, un) = (norm(w), norm(&u));
                if wn > 0.0 && un > 0.0 {
                    ratio = wn / un;
                }
            }
            let _ = w.g_sub_(&(u * (ratio * lr_of(&shape, lr))));
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

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = vec![("lamb.step".to_string(), Tensor::from_slice(&[self.step]))];
        for (i, (n, _)) in self.params.iter().enumerate() {
            s.push((format!("lamb.m.{n}"), self.m[i].copy()));
        }
        for (i, (n, _)) in self.params.iter().enumerate() {
            s.push((format!("lamb.v.{n}"), self.v[i].copy()));
        }
        s
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let step = step_from_state(state, "lamb.step")?;
        for (i, (n, p)) in self.params.iter().enumerate() {
            self.m[i] = state_entry(state, &format!("lamb.m.{n}"), &p.size())?.copy();
            self.v[i] = state_entry(state, &format!("lamb.v.{n}"), &p.size())?.copy();
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
        let mu = params.iter().map(|(_, t)| t.zeros_like()).collect();
        Ok(Self { p, params, mu, step: 0 })
    }
}

impl Optimizer for LarsPerTensor {
    fn step(&mut self, lr: &LrPair) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let wd = self.p.weight_decay;
        for (i, (name, w)) in self.params.iter_mut().enumerate() {
            let g = grad_or_zeros(w);
            let shape = w.size();
            let excluded = self.p.exclude.excludes(name, &shape);
            let lr_p = lr_of(&shape, lr);
            let d = match self.p.variant {
                LarsVariant::Official => {
                    let d = if excluded { g } else { g + &*w * wd };
                    let mut q = 1.0;
                    if !excluded {
                        let (pn, dn) = (norm(w), norm(&d));
                        if pn > 0.0 && dn > 0.0 {
                            q = self.p.eta * pn / dn;
                        }
                    }
                    d * q
                }
                LarsVariant::SoloLearn => {
                    let (pn, gn) = (norm(w), norm(&g));
                    if !excluded && pn != 0.0 && gn != 0.0 {
                        let mut s = self.p.eta * pn / (gn + pn * wd + SOLO_LEARN_EPS);
                        if self.p.clip_lr {
                            s = (s / lr_p).min(1.0);
                        }
                        (g + &*w * wd) * s
                    } else {
                        g
                    }
                }
            };
            let _ = self.mu[i].g_mul_scalar_(self.p.momentum);
            let _ = self.mu[i].g_add_(&d);
            let _ = w.g_sub_(&(&self.mu[i] * lr_p));
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

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut s = vec![("lars.step".to_string(), Tensor::from_slice(&[self.step]))];
        for (i, (n, _)) in self.params.iter().enumerate() {
            s.push((format!("lars.mu.{n}"), self.mu[i].copy()));
        }
        s
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let step = step_from_state(state, "lars.step")?;
        for (i, (n, p)) in self.params.iter().enumerate() {
            self.mu[i] = state_entry(state, &format!("lars.mu.{n}"), &p.size())?.copy();
        }
        self.step = step;
        Ok(())
    }
}
