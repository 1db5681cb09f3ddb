//! LAMB and LARS optimizers with learning-rate schedules, for tch variables.
//!
//! - [`Lamb`]: `tfa.optimizers.LAMB` exactly (the seed's optimizer): Adam moments with bias
//!   correction, optional decoupled decay, layer-wise trust ratio `‖w‖ / ‖update‖` (1.0 when
//!   either norm is 0), exclusion filters for decay and for adaptation.
//! - [`Lars`]: the official Barlow Twins LARS and solo-learn's variant ([`LarsVariant`]).
//! - [`Sgd`]: `torch.optim.SGD` (momentum, weight decay, parameter groups) with its state by
//!   name, for the evaluations that follow the official `evaluate.py`.
//! - [`Schedule`]: constant, or the official linear warmup + cosine decay.
//!
//! # Key design choice: one flat buffer, chunked segment reductions
//! A step of a layer-wise optimizer is ~10 elementwise ops per parameter tensor plus two norms;
//! on the 74M-parameter seed model (148 tensors) that is ~1800 small launches per step on a GPU
//! and as many temporaries. [`FlatParams`] instead moves every parameter into one contiguous
//! f32 buffer (`Tensor::set_data` makes each variable a view into it, so the model and the
//! `VarStore` see the same memory), gathers the gradients with one `Tensor::cat_out`, and runs
//! the update math once on the whole buffer, in place or into reused work buffers. Each tensor
//! starts on a [`CHUNK`](flat::CHUNK)-element boundary (zero-padded), so the buffer views as
//! `[chunks, CHUNK]`: per-tensor norms are one row sum plus a small chunk-to-tensor `index_add`
//! (in f64), and the per-tensor trust ratios and learning rates broadcast back as a
//! `[chunks, 1]` column, with no per-element index tensor (`segment_reduce` would need one, or
//! lengths with a single-threaded f32 accumulation, and `repeat_interleave` a 74M-element
//! temporary). A step costs a fixed ~15 ops whatever the number of tensors. The per-tensor
//! loops in [`reference`] are kept as the test oracle and the benchmark's peer.
//!
//! Construction, [`Optimizer::step`] and [`Optimizer::load_state`] use libtorch's fallible `f_`
//! ops and check each gradient against its parameter, so a failure is an [`OptimError`], never a
//! panic.
//!
//! State (moments, step count) is exported per parameter name ([`Optimizer::state`]), so a
//! checkpoint does not depend on the flat layout, and grouped and per-tensor optimizers load
//! each other's state.
//!
//! Example: `cargo run --release -p bt-optim --example optim_demo`
//! (`crates/bt-optim/examples/optim_demo.rs`).
#![deny(missing_docs)]

pub mod flat;
mod lamb;
mod lars;
pub mod reference;
mod schedule;
pub mod sgd;

pub use bt_config::LarsVariant;
pub use flat::FlatParams;
pub use lamb::{Lamb, LambParams};
pub use lars::{Lars, LarsParams};
pub use schedule::Schedule;
pub use sgd::Sgd;

use bt_config::{OptimConfig, OptimKind};
use tch::Tensor;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// No parameters to optimize.
    #[error("no trainable parameters given to the optimizer")]
    NoParams,
    /// A parameter that is not f32, or on another device than the first one.
    #[error("parameter `{name}` is {kind:?} on {device:?}; all parameters must be f32 on {expected:?}")]
    ParamKind {
        /// Parameter name.
        name: String,
        /// Its kind.
        kind: tch::Kind,
        /// Its device.
        device: tch::Device,
        /// The device of the first parameter.
        expected: tch::Device,
    },
    /// A state entry that is missing or has the wrong shape.
    #[error("optimizer state `{key}`: {reason}")]
    State {
        /// State key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A parameter's gradient that does not fit the parameter (another shape, kind or device:
    /// set by hand, e.g. through `set_data` on `.grad()`); stepping with it would corrupt the
    /// flat layout.
    #[error("gradient of `{name}` is {found}, the parameter is {expected}")]
    Grad {
        /// Parameter name.
        name: String,
        /// The parameter's shape, kind and device.
        expected: String,
        /// The gradient's shape, kind and device.
        found: String,
    },
    /// An operation this optimizer does not implement (the per-tensor reference optimizers have
    /// no flat buffer and no device-side step).
    #[error("this optimizer does not implement `{0}`")]
    Unsupported(&'static str),
    /// A β so close to 1 that the bias-correction table would exceed its cap.
    #[error("optim.{key} = {value}: its bias correction does not reach 1.0 within {cap} steps; use a smaller value")]
    BetaTooClose {
        /// `beta1` or `beta2`.
        key: &'static str,
        /// The value.
        value: f64,
        /// The table cap.
        cap: usize,
    },
    /// An error from libtorch (out of memory, a device mismatch, ...).
    #[error("libtorch error in {op}: {source}")]
    Torch {
        /// The operation.
        op: &'static str,
        /// The underlying error.
        source: tch::TchError,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, OptimError>;

/// The learning rates of one step: weights, and biases / norm parameters (rank ≤ 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrPair {
    /// Learning rate of parameters of rank ≥ 2.
    pub weights: f64,
    /// Learning rate of rank-0/1 parameters (biases, BN weights); the official LARS gives them
    /// a separate rate.
    pub biases: f64,
}

impl LrPair {
    /// The same rate for every parameter.
    pub fn same(lr: f64) -> Self {
        Self { weights: lr, biases: lr }
    }
}

/// Which parameters a rule (weight decay, adaptation) skips: tfa's name patterns (tfa uses
/// `re.search`; plain substrings here, which is what its usual patterns such as `"bias"` are) or
/// the official `exclude_bias_and_norm` (rank ≤ 1).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParamFilter {
    /// A parameter whose name contains any of these is excluded.
    pub name_patterns: Vec<String>,
    /// Exclude parameters of rank ≤ 1 (biases, norm weights).
    pub rank_le_1: bool,
}

impl ParamFilter {
    /// Excludes nothing.
    pub fn none() -> Self {
        Self::default()
    }
    /// The official `exclude_bias_and_norm`: rank ≤ 1.
    pub fn bias_and_norm() -> Self {
        Self { name_patterns: vec![], rank_le_1: true }
    }
    /// Excludes names containing any of `patterns`.
    pub fn names<S: Into<String>>(patterns: impl IntoIterator<Item = S>) -> Self {
        Self { name_patterns: patterns.into_iter().map(Into::into).collect(), rank_le_1: false }
    }
    /// Whether the parameter `name` of shape `shape` is excluded.
    pub fn excludes(&self, name: &str, shape: &[i64]) -> bool {
        (self.rank_le_1 && shape.len() <= 1) || self.name_patterns.iter().any(|p| name.contains(p.as_str()))
    }
}

/// The interface the trainer uses.
///
/// Every libtorch op of [`step`](Self::step), [`load_state`](Self::load_state) and the
/// constructors is a fallible `f_` call: an out-of-memory or a bad gradient is an
/// [`OptimError`], not a panic. After a failed `step` the parameters and moments may be
/// partly updated: reload a checkpoint rather than continue.
pub trait Optimizer: Send {
    /// Applies one update from the parameters' current `.grad()` (undefined grads count as 0).
    ///
    /// # Errors
    /// [`OptimError::Grad`] for a gradient whose shape or kind differs from its parameter's,
    /// [`OptimError::Torch`] for a libtorch failure.
    fn step(&mut self, lr: &LrPair) -> Result<()>;
    /// Zeroes every parameter's gradient in place.
    fn zero_grad(&mut self);
    /// Gathers the parameters' current `.grad()` into the optimizer's flat gradient buffer and
    /// returns it (a handle to the same memory, flat layout), for a guard to inspect before
    /// [`step_device`](Self::step_device) uses it. One `cat_out`, no host transfer.
    ///
    /// # Errors
    /// [`OptimError::Unsupported`] for the per-tensor reference optimizers; as [`step`](Self::step).
    fn gather_grads(&mut self) -> Result<Tensor> {
        Err(OptimError::Unsupported("gather_grads"))
    }
    /// `[P]` f64 on the device: the number of `CHUNK`-element chunks of each parameter's gathered
    /// gradient holding a NaN or inf (0 = finite), in [`param_names`](Self::param_names) order.
    /// One `aminmax` over the flat buffer plus a `[chunks]` `index_add`; no host transfer.
    ///
    /// # Errors
    /// [`OptimError::Unsupported`] for the per-tensor reference optimizers; libtorch errors.
    fn nonfinite_grads(&self) -> Result<Tensor> {
        Err(OptimError::Unsupported("nonfinite_grads"))
    }
    /// Parameter names in layout order.
    fn param_names(&self) -> Vec<String> {
        Vec::new()
    }
    /// One update from the gradients of the last [`gather_grads`](Self::gather_grads), with every
    /// step-dependent scalar read from device memory: `lr` is `[2]` f64 (weights, biases) on the
    /// parameters' device; the step count and bias corrections live on the device too. No host
    /// transfer and no value that changes between steps is passed from the host, so the call can
    /// be recorded into a CUDA graph.
    ///
    /// `apply`: `None` applies the update (bit-identical to [`step`](Self::step) on CPU);
    /// `Some(flag)` (0-d bool on the device) applies it only where `flag` is true, and otherwise
    /// leaves parameters, moments and step count exactly as they were (a skipped step, decided on
    /// the device without a sync).
    ///
    /// # Errors
    /// [`OptimError::Unsupported`] for the per-tensor reference optimizers; libtorch errors.
    fn step_device(&mut self, lr: &Tensor, apply: Option<&Tensor>) -> Result<()> {
        let _ = (lr, apply);
        Err(OptimError::Unsupported("step_device"))
    }
    /// Forgets the host's copy of the step count, so the next [`step_count`](Self::step_count)
    /// or state export reads the device counter. Call it once the steps are replayed from a CUDA
    /// graph: a replay advances the device counter but runs none of this object's host code.
    fn forget_host_step(&mut self) {}
    /// Steps taken so far.
    fn step_count(&self) -> i64;
    /// Moments and step count, keyed `<prefix>.<what>.<param name>` and `<prefix>.step`
    /// (copies).
    ///
    /// # Errors
    /// [`OptimError::Torch`] when libtorch cannot allocate the copies.
    fn try_state(&self) -> Result<Vec<(String, Tensor)>>;
    /// [`try_state`](Self::try_state), for callers that treat running out of memory while
    /// checkpointing as fatal.
    ///
    /// # Panics
    /// Where `try_state` returns an error.
    fn state(&self) -> Vec<(String, Tensor)> {
        self.try_state().unwrap_or_else(|e| panic!("{e}"))
    }
    /// Restores what [`state`](Self::state) returned (from this or the other implementation).
    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()>;
}

/// The grouped (flat-buffer) optimizer a config asks for.
///
/// `named_params` are the trainable variables, e.g. from `VarStore::variables()` filtered by
/// `requires_grad()` (tch keeps BN running statistics as non-trainable variables: they must
/// not be passed here). The variables become views into one flat buffer ([`FlatParams`]).
pub fn build(cfg: &OptimConfig, named_params: Vec<(String, Tensor)>) -> Result<Box<dyn Optimizer>> {
    Ok(match cfg.name {
        OptimKind::Lamb => Box::new(Lamb::new(named_params, LambParams::from_config(cfg))?),
        OptimKind::Lars => Box::new(Lars::new(named_params, LarsParams::from_config(cfg))?),
    })
}

/// The per-tensor reference optimizer a config asks for (benchmark peer, test oracle).
pub fn build_per_tensor(cfg: &OptimConfig, named_params: Vec<(String, Tensor)>) -> Result<Box<dyn Optimizer>> {
    Ok(match cfg.name {
        OptimKind::Lamb => Box::new(reference::LambPerTensor::new(named_params, LambParams::from_config(cfg))?),
        OptimKind::Lars => Box::new(reference::LarsPerTensor::new(named_params, LarsParams::from_config(cfg))?),
    })
}

/// The trainable variables of a `VarStore`, sorted by name (a stable flat layout).
pub fn trainable_named(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

pub(crate) fn torch<T>(op: &'static str, r: std::result::Result<T, tch::TchError>) -> Result<T> {
    r.map_err(|source| OptimError::Torch { op, source })
}

/// `t.copy()`, fallible.
pub(crate) fn f_copy(t: &Tensor) -> std::result::Result<Tensor, tch::TchError> {
    let mut r = t.f_zeros_like()?;
    r.f_copy_(t)?;
    Ok(r)
}

/// [`torch`] for a chain of fallible ops (`?` inside the closure).
pub(crate) fn chain<T>(op: &'static str, f: impl FnOnce() -> std::result::Result<T, tch::TchError>) -> Result<T> {
    torch(op, f())
}

/// A parameter's gradient, `None` when undefined; an error when it does not fit the parameter.
pub(crate) fn checked_grad(name: &str, p: &Tensor) -> Result<Option<Tensor>> {
    let g = p.grad();
    if !g.defined() {
        return Ok(None);
    }
    if g.size() != p.size() || g.kind() != p.kind() || g.device() != p.device() {
        let describe = |t: &Tensor| format!("{:?} {:?} on {:?}", t.size(), t.kind(), t.device());
        return Err(OptimError::Grad { name: name.to_string(), expected: describe(p), found: describe(&g) });
    }
    Ok(Some(g.detach()))
}

/// Checks kinds/devices and returns the parameters' shapes.
pub(crate) fn check_params(params: &[(String, Tensor)]) -> Result<tch::Device> {
    let first = params.first().ok_or(OptimError::NoParams)?;
    let expected = first.1.device();
    for (name, t) in params {
        if t.kind() != tch::Kind::Float || t.device() != expected {
            return Err(OptimError::ParamKind { name: name.clone(), kind: t.kind(), device: t.device(), expected });
        }
    }
    Ok(expected)
}

/// Finds `key` in a state list and checks its shape.
pub(crate) fn state_entry<'a>(state: &'a [(String, Tensor)], key: &str, shape: &[i64]) -> Result<&'a Tensor> {
    let t = state
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, t)| t)
        .ok_or_else(|| OptimError::State { key: key.into(), reason: "missing".into() })?;
    if t.size() != shape {
        return Err(OptimError::State {
            key: key.into(),
            reason: format!("shape {:?}, expected {:?}", t.size(), shape),
        });
    }
    Ok(t)
}

/// A device step counter (`[1]` i64) holding `step`: a fill kernel, no host transfer.
pub(crate) fn step_counter(device: tch::Device, step: i64) -> Result<Tensor> {
    chain("step counter", || Tensor::f_zeros([1], (tch::Kind::Int64, device))?.f_fill_(step))
}

/// The host mirror of a step count, or the device counter read back (one counted read).
pub(crate) fn step_value(mirror: Option<i64>, counter: &Tensor) -> Result<i64> {
    match mirror {
        Some(s) => Ok(s),
        None => Ok(torch("read step", bt_host::read_i64s(counter))?[0]),
    }
}

/// `g` with every element zeroed where `apply` is false (a skipped step must not feed NaN into
/// the moments: `0 * NaN` is NaN, a masked fill is not).
pub(crate) fn mask_skipped(g: &Tensor, apply: &Tensor) -> Result<()> {
    chain("mask skipped", || g.shallow_clone().f_masked_fill_(&apply.f_logical_not()?, 0.0).map(|_| ()))
}

/// The [`Optimizer`] methods the grouped optimizers share, for an `impl Optimizer` block of a
/// type with the fields `flat: FlatParams`, `g: Tensor` (flat gradients), `step: Option<i64>`
/// (host mirror), `t_dev: Tensor` (device counter) and a method `update(&mut self, Scalars)`;
/// its state is `<prefix>.step` plus each listed moment buffer under `<prefix>.<moment>.`.
/// One definition, so LAMB and LARS cannot drift apart in how they gather, guard, step on the
/// device, count steps or checkpoint.
macro_rules! flat_optimizer_methods {
    ($prefix:literal, [$($moment:ident),+]) => {
        fn step(&mut self, lr: &LrPair) -> Result<()> {
            self.flat.grads_into(&self.g)?;
            self.update(Scalars::Host(lr))
        }

        fn gather_grads(&mut self) -> Result<Tensor> {
            self.flat.grads_into(&self.g)?;
            Ok(self.g.shallow_clone())
        }

        fn nonfinite_grads(&self) -> Result<Tensor> {
            self.flat.segment_nonfinite(&self.g)
        }

        fn param_names(&self) -> Vec<String> {
            self.flat.names().to_vec()
        }

        fn step_device(&mut self, lr: &Tensor, apply: Option<&Tensor>) -> Result<()> {
            self.update(Scalars::Device { lr, apply })
        }

        fn zero_grad(&mut self) {
            self.flat.zero_grad();
        }

        fn forget_host_step(&mut self) {
            self.step = None;
        }

        fn step_count(&self) -> i64 {
            $crate::step_value(self.step, &self.t_dev).unwrap_or(-1)
        }

        fn try_state(&self) -> Result<Vec<(String, Tensor)>> {
            let step = $crate::step_value(self.step, &self.t_dev)?;
            let mut s = vec![(concat!($prefix, ".step").to_string(), Tensor::from_slice(&[step]))];
            $(s.extend(self.flat.export(&self.$moment, concat!($prefix, ".", stringify!($moment), "."))?);)+
            Ok(s)
        }

        fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
            let step = $crate::step_from_state(state, concat!($prefix, ".step"))?;
            $(self.flat.load_into(&self.$moment, state, concat!($prefix, ".", stringify!($moment), "."))?;)+
            let _ = $crate::torch("step counter", self.t_dev.f_fill_(step))?;
            self.step = Some(step);
            Ok(())
        }
    };
}
pub(crate) use flat_optimizer_methods;

pub(crate) fn step_from_state(state: &[(String, Tensor)], key: &str) -> Result<i64> {
    let t = state_entry(state, key, &[1])?;
    Ok(torch("step", bt_host::read_i64s(t))?[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_name_and_rank() {
        let f = ParamFilter::names(["bias", "bn"]);
        assert!(f.excludes("layer1.bias", &[64, 3, 3, 3]));
        assert!(f.excludes("stem.bn.weight", &[64]));
        assert!(!f.excludes("layer1.weight", &[64]));
        let r = ParamFilter::bias_and_norm();
        assert!(r.excludes("x", &[64]) && r.excludes("s", &[]));
        assert!(!r.excludes("bias", &[2, 2]));
        assert!(!ParamFilter::none().excludes("bias", &[1]));
    }
}
