//! The Barlow Twins cross-correlation loss, reference and fused.
//!
//! [`barlow_twins_loss`] normalizes two `N x D` embedding batches over the batch dimension,
//! forms the cross-correlation `c = z̃_aᵀ z̃_b / N` and returns
//! `scale * (Σ_i (1 - c_ii)² + λ Σ_{i≠j} c_ij²)` together with both terms for logging.
//!
//! # Key design choice: the D x D matrix is optional
//! The seed builds `c` (5000 x 5000 at N = 512): `O(N D²)` work. But
//! `Σ_ij c_ij² = ‖z̃_aᵀ z̃_b‖²_F / N² = Σ_nm (G_a ⊙ G_b)_nm / N²` with the `N x N` Gram matrices
//! `G = z̃ z̃ᵀ`, and `c_ii` is a column-wise dot product, so the [fused](LossImpl::Fused) path
//! costs `O(N² D)`: `D / 2N` times less (about 5x at the seed's shape). It computes the off-diagonal
//! sum as `Σ_ij c_ij² − Σ_i c_ii²`, a subtraction that cancels badly in low precision, so every
//! reduction runs in f32 (f64 inputs stay f64) with CUDA autocast switched off inside the loss,
//! whatever precision the model ran in. Even in f32 the fused redundancy term carries an
//! absolute error of ~1e-8 x Σ c_ij², so it is only relatively inexact when the off-diagonal sum
//! is a tiny fraction of the diagonal one, where its weight λ makes it irrelevant to the loss.
//! [`LossImpl::Auto`] picks the fused path when `D > 2N`
//! (the same rule the config documents). The [reference](LossImpl::Reference) path is the
//! official code's: it builds `c` and takes its off-diagonal elements directly.
//!
//! # Data parallelism
//! [`LossOptions::reducer`] takes a [`CrossReplicaReduce`]; with one, every statistic that
//! spans the batch is reduced across replicas, so each replica computes the *global* loss of the
//! whole batch. See [`CrossReplicaReduce`] for exactly what is reduced and why the gradient stays
//! correct.
//!
//! # Errors, not panics
//! Every libtorch op is a fallible `f_` call and every collective returns a `Result`, so a shape
//! error, an out-of-memory or a lost replica is a [`LossError`] naming what failed. [`tch`] and
//! the config types are re-exported: calling the loss needs no other dependency.
//!
//! Example: `cargo run --release -p bt-loss --example loss_demo`
//! (`crates/bt-loss/examples/loss_demo.rs`).
#![deny(missing_docs)]

/// The config types [`LossOptions`] holds and is built from, re-exported so that calling the
/// loss needs no direct `bt-config` dependency.
pub use bt_config::{LossConfig, LossImpl, LossNorm};
/// tch, re-exported: the loss takes and returns [`tch::Tensor`]s, and a caller must use the same
/// tch version.
pub use tch;

use std::sync::Arc;
use tch::{Kind, Tensor};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum LossError {
    /// The two views' embeddings do not have the same `N x D` shape.
    #[error("embedding shapes differ or are not 2-D: z_a {a:?}, z_b {b:?} (expected both N x D)")]
    Shape {
        /// Shape of `z_a`.
        a: Vec<i64>,
        /// Shape of `z_b`.
        b: Vec<i64>,
    },
    /// Fewer than 2 samples: the batch variance is undefined.
    #[error("batch of {n} samples: the loss needs at least 2 (batch statistics)")]
    TooSmall {
        /// Global batch size.
        n: i64,
    },
    /// An error from libtorch (out of memory, a device mismatch, ...).
    #[error("libtorch error in {op}: {source}")]
    Torch {
        /// The operation.
        op: &'static str,
        /// The underlying error.
        source: tch::TchError,
    },
    /// The [`CrossReplicaReduce`] collective failed (a lost peer, a timeout).
    #[error("cross-replica {op} failed: {source}")]
    Reduce {
        /// `all_reduce_sum` or `all_gather`, and what was being reduced.
        op: &'static str,
        /// The reducer's error (e.g. a `bt_dist::DistError` naming the lost rank).
        source: ReduceError,
    },
}

/// The error a [`CrossReplicaReduce`] returns: any error type of the implementation (bt-loss
/// does not know the collective library).
pub type ReduceError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, LossError>;

/// BN epsilon of the `batchnorm` normalization (official code, solo-learn, lightly).
pub const BATCHNORM_EPS: f64 = 1e-5;

/// A cross-replica collective for data-parallel training, plugged into the loss.
///
/// # What the loss reduces
/// With `W` replicas each holding `N_r` rows (global `N = Σ N_r`):
/// 1. the row count `N_r` (a no-grad scalar), to get `N`;
/// 2. per view, the column sums `Σ_n z_n` (D), giving the global mean `μ`;
/// 3. per view, the centered column sums of squares `Σ_n (z_n − μ)²` (D), giving the global
///    population variance (two passes: no `E[z²] − μ²` cancellation);
/// 4. reference path: the partial cross-correlation `z̃_a,rᵀ z̃_b,r` (D x D), as the official code's
///    `all_reduce(c)`; fused path: the column dot products `Σ_n z̃_a,ni z̃_b,ni` (D) and the scalar
///    `Σ_{n ∈ r} Σ_m G_a[n,m] G_b[n,m]` computed against the [`all_gather`](Self::all_gather)ed
///    normalized embeddings of both views (N x D each).
///
/// # The gradient contract
/// [`all_reduce_sum`](Self::all_reduce_sum) must return `Σ_r x_r` in the forward pass and, in the
/// backward pass, **all-reduce (sum) the incoming gradient** (`torch.distributed.nn.all_reduce`
/// semantics); [`all_gather`](Self::all_gather) must return the rank-ordered row concatenation and
/// in the backward pass give each replica the sum over replicas of the gradient of its own rows
/// (reduce-scatter). Every replica then computes the same global loss `L`, and the gradient that
/// reaches replica r's `z` rows is exactly `W · ∂L/∂z_r`: the sum over the `W` replicated copies of
/// the loss, each of which depends on `z_r`. Averaging parameter gradients across replicas (DDP's
/// default) therefore yields exactly the full-batch gradient.
///
/// Why not a plain all-reduce (identity backward) as in the official code and lightly: each
/// replica's gradient then misses every path through the *other* replicas' rows. For `c` that
/// only scales the result, and DDP's mean turns it into `(1/W) · ∂L/∂θ`; for the batch moments
/// (the std enters every replica's rows) the gradient is not even proportional. The official
/// code keeps its moments exact only because SyncBatchNorm all-reduces its own backward statistics.
///
/// Implementations must be called collectively: every replica calls the same methods in the same
/// order (the loss does).
///
/// # Errors
/// A failed collective returns its error, and [`barlow_twins_loss`] returns it as
/// [`LossError::Reduce`]; a data-parallel trainer then stops (the other replicas fail at the
/// same collective, or time out).
pub trait CrossReplicaReduce: Send + Sync {
    /// Number of replicas `W`.
    fn world_size(&self) -> usize;
    /// Sum of `x` over replicas (same shape), with the gradient contract above.
    fn all_reduce_sum(&self, x: &Tensor) -> std::result::Result<Tensor, ReduceError>;
    /// Rows of every replica concatenated in rank order (`N_r x D` in, `N x D` out).
    fn all_gather(&self, x: &Tensor) -> std::result::Result<Tensor, ReduceError>;
}

/// How [`barlow_twins_loss`] runs; built from [`LossConfig`] by [`LossOptions::from_config`].
#[derive(Clone)]
pub struct LossOptions {
    /// Weight λ of the redundancy term.
    pub lambda: f64,
    /// Batch normalization of the embeddings.
    pub normalization: LossNorm,
    /// Multiplies the whole loss.
    pub scale: f64,
    /// Reference, fused, or chosen by shape.
    pub implementation: LossImpl,
    /// Optional cross-replica reduction; `None` = one process holds the whole batch.
    pub reducer: Option<Arc<dyn CrossReplicaReduce>>,
}

impl std::fmt::Debug for LossOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LossOptions")
            .field("lambda", &self.lambda)
            .field("normalization", &self.normalization)
            .field("scale", &self.scale)
            .field("implementation", &self.implementation)
            .field("reducer", &self.reducer.as_ref().map(|r| r.world_size()))
            .finish()
    }
}

impl Default for LossOptions {
    fn default() -> Self {
        Self::from_config(&LossConfig::default())
    }
}

impl LossOptions {
    /// The options of a `[loss]` config section (no reducer).
    pub fn from_config(cfg: &LossConfig) -> Self {
        Self {
            lambda: cfg.lambda,
            normalization: cfg.normalization,
            scale: cfg.scale,
            implementation: cfg.implementation,
            reducer: None,
        }
    }

    /// The same options with a different implementation.
    pub fn with_implementation(mut self, implementation: LossImpl) -> Self {
        self.implementation = implementation;
        self
    }

    /// The same options with a cross-replica reducer.
    pub fn with_reducer(mut self, reducer: Arc<dyn CrossReplicaReduce>) -> Self {
        self.reducer = Some(reducer);
        self
    }
}

/// The loss and its two terms, scalar tensors (f32, or f64 for f64 inputs).
#[derive(Debug)]
pub struct LossOutput {
    /// `scale * (invariance + lambda * redundancy)`; differentiable.
    pub loss: Tensor,
    /// `Σ_i (1 − c_ii)²`, unscaled.
    pub invariance: Tensor,
    /// `Σ_{i≠j} c_ij²`, unweighted and unscaled.
    pub redundancy: Tensor,
}

/// Which implementation [`LossImpl::Auto`] selects for a global batch `n` and dimension `d`:
/// fused when `d > 2n`, where the Gram path does less work.
pub fn resolve_impl(implementation: LossImpl, n: i64, d: i64) -> LossImpl {
    match implementation {
        LossImpl::Auto if d > 2 * n => LossImpl::Fused,
        LossImpl::Auto => LossImpl::Reference,
        other => other,
    }
}

/// The Barlow Twins loss of two views' embeddings.
///
/// # Shapes
/// `z_a`, `z_b`: `N x D` (this replica's rows when a reducer is set), any floating kind; the
/// computation runs in f32 (f64 stays f64), provided the caller has not switched CUDA autocast
/// on around the call. Output: three scalars.
///
/// # Errors
/// Shape mismatch ([`LossError::Shape`], naming both shapes), fewer than 2 rows in the global
/// batch, a libtorch failure ([`LossError::Torch`]: every op is a fallible `f_` call, so out of
/// memory is an error, not a panic), or a failed collective ([`LossError::Reduce`]).
pub fn barlow_twins_loss(z_a: &Tensor, z_b: &Tensor, opts: &LossOptions) -> Result<LossOutput> {
    let (sa, sb) = (z_a.size(), z_b.size());
    if sa.len() != 2 || sa != sb {
        return Err(LossError::Shape { a: sa, b: sb });
    }
    // No autocast exit here: nothing in the workspace turns autocast on (bt-model's mixed
    // precision casts in the model and hands f32 embeddings over), and tch's `autocast(false, ..)`
    // calls libtorch 2.11's deprecated device-less API, which logs a warning on every call on
    // CUDA. A caller running this under its own CUDA autocast would get bf16 matmuls below, and
    // the fused path's cancellation would eat the redundancy term: call it outside autocast.
    loss_f32(z_a, z_b, opts)
}

fn compute_kind(z: &Tensor) -> Kind {
    if z.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

fn torch<T>(op: &'static str, r: std::result::Result<T, tch::TchError>) -> Result<T> {
    r.map_err(|source| LossError::Torch { op, source })
}

/// [`torch`] for a chain of fallible ops (`?` inside the closure).
fn chain<T>(op: &'static str, f: impl FnOnce() -> std::result::Result<T, tch::TchError>) -> Result<T> {
    torch(op, f())
}

fn loss_f32(z_a: &Tensor, z_b: &Tensor, opts: &LossOptions) -> Result<LossOutput> {
    let kind = compute_kind(z_a);
    let z_a = torch("to_kind", z_a.f_to_kind(kind))?;
    let z_b = torch("to_kind", z_b.f_to_kind(kind))?;
    let reducer = opts.reducer.as_deref();
    let sum = |op: &'static str, x: Tensor| -> Result<Tensor> {
        match reducer {
            Some(r) => r.all_reduce_sum(&x).map_err(|source| LossError::Reduce { op, source }),
            None => Ok(x),
        }
    };
    let (n_local, d) = (z_a.size()[0], z_a.size()[1]);
    let n = match reducer {
        Some(_) => {
            // A host read per step in data-parallel runs (counted by bt-host; the graph-capturable
            // step does not run data-parallel).
            let n = sum("all_reduce_sum(row count)", Tensor::from(n_local as f64))?;
            torch("count", bt_host::read_f64(&n))?.round() as i64
        }
        None => n_local,
    };
    if n < 2 {
        return Err(LossError::TooSmall { n });
    }
    let nf = n as f64;
    let normalize = |z: &Tensor| -> Result<Tensor> {
        let col_sum = torch("sum(columns)", z.f_sum_dim_intlist(0, false, kind))?;
        let col_sum = sum("all_reduce_sum(column sums)", col_sum)?;
        let mean = torch("mean", col_sum.f_div_scalar(nf))?;
        let centered = torch("center", z.f_sub(&mean))?;
        let sq = torch("square", centered.f_square())?;
        let sq_sum = torch("sum(squares)", sq.f_sum_dim_intlist(0, false, kind))?;
        let var = sum("all_reduce_sum(centered squares)", sq_sum)?;
        let var = torch("variance", var.f_div_scalar(nf))?;
        let std = match opts.normalization {
            LossNorm::KerasSeed => torch("sqrt", var.f_sqrt())?,
            LossNorm::Batchnorm => chain("sqrt", || var.f_add_scalar(BATCHNORM_EPS)?.f_sqrt())?,
        };
        torch("normalize", centered.f_div(&std))
    };
    let (a, b) = (normalize(&z_a)?, normalize(&z_b)?);
    let (invariance, redundancy) = match resolve_impl(opts.implementation, n, d) {
        LossImpl::Fused => {
            // c_ii = Σ_n a_ni b_ni / N: the diagonal without the D x D matrix.
            let ab = chain("a*b", || a.f_mul(&b)?.f_sum_dim_intlist(0, false, kind))?;
            let ab = sum("all_reduce_sum(diagonal)", ab)?;
            let diag = torch("diag", ab.f_div_scalar(nf))?;
            let gather = |op: &'static str, x: &Tensor| -> Result<Tensor> {
                match reducer {
                    Some(r) => r.all_gather(x).map_err(|source| LossError::Reduce { op, source }),
                    None => Ok(x.shallow_clone()),
                }
            };
            let a_all = gather("all_gather(view a)", &a)?;
            let b_all = gather("all_gather(view b)", &b)?;
            // Σ_ij c_ij² = Σ_nm (A Aᵀ)_nm (B Bᵀ)_nm / N², this replica's rows n only.
            let ga = chain("gram(a)", || a.f_matmul(&a_all.f_tr()?))?;
            let gb = chain("gram(b)", || b.f_matmul(&b_all.f_tr()?))?;
            let gg = chain("gram product", || ga.f_mul(&gb)?.f_sum(kind))?;
            let total = sum("all_reduce_sum(gram product)", gg)?;
            let total = torch("total", total.f_div_scalar(nf * nf))?;
            let diag_sq = chain("diag²", || diag.f_square()?.f_sum(kind))?;
            let inv = chain("invariance", || diag.f_sub_scalar(1.0)?.f_square()?.f_sum(kind))?;
            (inv, torch("redundancy", total.f_sub(&diag_sq))?)
        }
        _ => {
            let c = chain("cross-correlation", || a.f_tr()?.f_matmul(&b))?;
            let c = sum("all_reduce_sum(c)", c)?;
            let c = torch("c / N", c.f_div_scalar(nf))?;
            let inv = chain("invariance", || c.f_diagonal(0, 0, 1)?.f_sub_scalar(1.0)?.f_square()?.f_sum(kind))?;
            // The official code's off_diagonal: drop the last element, view as (D-1) x (D+1),
            // and every row then starts with a diagonal element.
            let off = chain("off-diagonal", || {
                c.f_flatten(0, 1)?.f_narrow(0, 0, d * d - 1)?.f_view([d - 1, d + 1])?.f_narrow(1, 1, d)
            })?;
            (inv, chain("redundancy", || off.f_square()?.f_sum(kind))?)
        }
    };
    let weighted = torch("λ·redundancy", redundancy.f_mul_scalar(opts.lambda))?;
    let loss = chain("loss", || invariance.f_add(&weighted)?.f_mul_scalar(opts.scale))?;
    Ok(LossOutput { loss, invariance, redundancy })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_fused_only_when_d_exceeds_2n() {
        assert_eq!(resolve_impl(LossImpl::Auto, 512, 5000), LossImpl::Fused);
        assert_eq!(resolve_impl(LossImpl::Auto, 512, 1024), LossImpl::Reference);
        assert_eq!(resolve_impl(LossImpl::Reference, 8, 5000), LossImpl::Reference);
        assert_eq!(resolve_impl(LossImpl::Fused, 512, 8), LossImpl::Fused);
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let a = Tensor::zeros([4, 3], (Kind::Float, tch::Device::Cpu));
        let b = Tensor::zeros([4, 2], (Kind::Float, tch::Device::Cpu));
        let e = barlow_twins_loss(&a, &b, &LossOptions::default()).unwrap_err().to_string();
        assert!(e.contains("[4, 3]") && e.contains("[4, 2]"), "{e}");
        let one = Tensor::zeros([1, 3], (Kind::Float, tch::Device::Cpu));
        assert!(matches!(barlow_twins_loss(&one, &one, &LossOptions::default()), Err(LossError::TooSmall { n: 1 })));
    }
}
