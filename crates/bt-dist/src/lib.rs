//! Data-parallel training on libtorch's own c10d: a TCPStore rendezvous compatible with
//! torchrun's `env://`, `ProcessGroupGloo` (CPU) and `ProcessGroupNCCL` (CUDA) collectives, and
//! the gradient-correct cross-replica reduction that lets every rank compute the Barlow Twins loss
//! of the global batch.
//!
//! # Key design choice: c10d through a small C++ shim, not home-made collectives
//! libtorch already ships TCPStore, Gloo and NCCL process groups, tested by every PyTorch DDP
//! run; `csrc/dist.cpp` exposes them through a C ABI (errors as strings, never exceptions), and
//! the Rust side adds what the C++ does not give: typed errors, bucket planning, and a
//! post-mortem that names the lost rank. The same binary therefore joins a run launched by
//! `torchrun --no-python` (it reads `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
//! `MASTER_PORT`, `TORCHELASTIC_USE_AGENT_STORE`: [`DistEnv`]) and interoperates with the
//! agent's store.
//!
//! # The gradient of a loss over cross-replica statistics
//! W ranks hold rows `z_r` of the global batch; every rank computes the same global loss
//! `L(z_1..z_W)` from all-reduced statistics (column sums, centered sums of squares, the
//! cross-correlation or Gram terms). The full-batch gradient is
//! `dL/dθ = Σ_r ∂L/∂z_r · ∂z_r/∂θ`, and rank r can only form its own term.
//!
//! * Identity backward (`x + (Σx − x).detach()`, what a plain `all_reduce` inside the loss
//!   does) gives rank r `∂L/∂z_r` **with the other ranks' sent values held constant**. That is
//!   the true partial only if those values do not depend on `z_r`. They do here: rank q's
//!   normalized rows `(z_q − μ)/σ` depend on `z_r` through the global `μ, σ`, and are summed
//!   again into `c`. The paths `z_r → μ,σ → rank q's rows → c → L` are lost, and no rescaling
//!   of the summed gradient repairs it. (For a single-stage sum it would be exact with a SUM of
//!   parameter gradients; with DDP's MEAN it is `1/W` of the truth, lightly's bug.)
//! * Sum backward ([`all_reduce_sum_autograd`]: the backward all-reduces the incoming gradient)
//!   makes the W ranks' graphs one graph that computes `Φ = Σ_q L_q = W·L`: the gradient into
//!   rank r's contribution is `Σ_q ∂L_q/∂S = ∂Φ/∂S`, every cross-rank path included. Rank r's
//!   parameter gradient is then `∂Φ/∂θ_r` (its own copy of θ), and the **mean** over ranks is
//!   `(1/W)·Σ_r ∂Φ/∂θ_r = Σ_r ∂L/∂θ_r = dL/dθ`, exactly the single-process gradient of the whole
//!   batch. [`all_gather_autograd`] (reduce-scatter backward) follows the same rule.
//!
//! So: [`LossReducer`] in the loss, [`ProcessGroup::all_reduce_mean_`] on the gradients.
//! `tests/multiprocess.rs` proves it: two Gloo processes with batch B train to the same
//! parameters as one process with batch 2B, to 1e-5, for both loss implementations, and an
//! identity-backward reducer (defined in that test, not part of this API: it is the bug) fails
//! the same comparison.
//!
//! # Failure
//! Every collective and the rendezvous use the group's timeout. A failed collective runs a
//! post-mortem over per-rank heartbeat counters in the store (see
//! [`ProcessGroup::explain_failure`]), so the error says `lost rank(s): 1` rather than only
//! Gloo's socket address. NCCL failures are caught by ProcessGroupNCCL's watchdog, which tears
//! the process down after the timeout (not tested here: no GPU on the build machine). Inside the
//! loss, [`LossReducer`] returns the [`DistError`] and `bt_loss::barlow_twins_loss` returns it
//! as `LossError::Reduce` (its `source()`), never a panic.
//!
//! Build requirement: the gloo headers (`apt-get install -y libgloo-dev`); see `build.rs`.
//!
//! Example: `crates/bt-dist/examples/allreduce.rs` (two processes on one machine, launched by
//! itself or by torchrun).
#![deny(missing_docs)]

mod autograd;
mod env;
mod error;
mod ffi;
mod group;

pub use autograd::{all_gather_autograd, all_reduce_sum_autograd, LossReducer};
pub use env::DistEnv;
pub use error::{DistError, Lost, Result};
pub use group::{built_with_nccl, plan_buckets, Backend, ProcessGroup, DEFAULT_BUCKET_BYTES, DEFAULT_SOLO_BYTES};
