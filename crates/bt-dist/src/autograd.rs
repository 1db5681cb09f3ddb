//! Differentiable collectives and the Barlow Twins loss reducer.

use std::sync::Arc;

use tch::Tensor;

use crate::error::Result;
use crate::ffi;
use crate::group::ProcessGroup;

/// `Σ_r x_r` with the gradient contract of `torch.distributed.nn.functional.all_reduce`:
/// the backward pass all-reduces (sums) the incoming gradient.
///
/// This is the reduction that keeps a loss computed from cross-replica statistics
/// gradient-correct (derivation in the crate doc and `docs/DISTRIBUTED.md`): every rank computes
/// the same global loss `L`, each copy depends on every rank's `x`, and the gradient that reaches
/// rank r's `x_r` is `Σ_q ∂L_q/∂x_r = W · ∂L/∂x_r`. Averaging parameter gradients across ranks
/// then gives exactly the full-batch gradient.
///
/// It is a C++ `torch::autograd::Function` (tch has no custom autograd functions): the backward
/// runs a collective, so every rank must run `backward` over the same graph (they do when they
/// compute the same loss).
///
/// # Shapes
/// Any shape; the output has `x`'s shape, kind and device.
///
/// # Errors
/// [`crate::DistError::Collective`] from the forward all-reduce. A failure in the backward one
/// surfaces from `Tensor::f_backward` as a `TchError`; [`ProcessGroup::explain_failure`] names the
/// lost rank then.
pub fn all_reduce_sum_autograd(pg: &ProcessGroup, x: &Tensor) -> Result<Tensor> {
    pg.tensor_op("all_reduce_sum_autograd", x, ffi::bt_dist_allreduce_autograd)
}

/// The rank-ordered row concatenation of every rank's `x`, differentiable: the backward pass
/// gives each rank the sum over ranks of the gradient of its own rows (a reduce-scatter), the
/// contract [`bt_loss::CrossReplicaReduce::all_gather`] asks for.
///
/// # Shapes
/// `N_r x ...` in (row counts may differ between ranks), `(Σ_r N_r) x ...` out.
///
/// # Errors
/// As [`all_reduce_sum_autograd`].
pub fn all_gather_autograd(pg: &ProcessGroup, x: &Tensor) -> Result<Tensor> {
    pg.tensor_op("all_gather_autograd", x, ffi::bt_dist_allgather_autograd)
}

/// The process group as the Barlow Twins loss's [`bt_loss::CrossReplicaReduce`]: with it,
/// `bt_loss::barlow_twins_loss` computes the loss of the global batch on every rank and its
/// gradient is correct when parameter gradients are **averaged** across ranks
/// ([`ProcessGroup::all_reduce_mean_`]).
///
/// A failed collective is returned as the [`crate::DistError`] (which names the lost rank), and
/// `bt_loss::barlow_twins_loss` returns it as `LossError::Reduce`; the error's `source()` is the
/// `DistError` (downcast it to inspect [`crate::Lost`]).
#[derive(Debug, Clone)]
pub struct LossReducer {
    pg: Arc<ProcessGroup>,
}

impl LossReducer {
    /// A reducer over `pg`.
    pub fn new(pg: Arc<ProcessGroup>) -> Self {
        Self { pg }
    }

    /// The group.
    pub fn group(&self) -> &Arc<ProcessGroup> {
        &self.pg
    }
}

impl bt_loss::CrossReplicaReduce for LossReducer {
    fn world_size(&self) -> usize {
        self.pg.world_size()
    }

    fn all_reduce_sum(&self, x: &Tensor) -> std::result::Result<Tensor, bt_loss::ReduceError> {
        Ok(all_reduce_sum_autograd(&self.pg, x)?)
    }

    fn all_gather(&self, x: &Tensor) -> std::result::Result<Tensor, bt_loss::ReduceError> {
        Ok(all_gather_autograd(&self.pg, x)?)
    }
}
