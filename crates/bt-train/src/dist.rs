//! Data-parallel pretraining: what the trainer does differently when it is one of `WORLD_SIZE`
//! processes launched by `torchrun --no-python` or `bt-cli launch`.
//!
//! The contract (derived in docs/DISTRIBUTED.md) is four rules:
//! 1. **Same start**: rank 0's parameters *and* buffers are broadcast once, after the model is
//!    built or a checkpoint loaded ([`Dist::broadcast_model`]).
//! 2. **Disjoint shards of the same global batches**: `data.batch_size` is the *global* batch;
//!    rank r reads rows `[r*B/W, (r+1)*B/W)` of every global batch
//!    ([`bt_data::TwinPipeline::with_shard`]), so the run consumes the samples one process would,
//!    and a checkpoint's position (epoch, batch, step) is global: resuming with another world
//!    size continues the same sequence of batches.
//! 3. **The loss of the global batch**: `bt_dist::LossReducer` in `LossOptions` (its backward
//!    all-reduces the incoming gradient: "sum backward").
//! 4. **Averaged gradients**: `all_reduce_mean_` of the parameter gradients before the optimizer
//!    step ([`Dist::average_grads`]); every rank then takes the same step.
//!
//! Batch norm is **per rank** (as PyTorch DDP without SyncBatchNorm): each rank normalizes its
//! own `B/W` rows. `run.bn_batch` ([`forward_grouped`]) makes a single process normalize in the
//! same groups, which is how the exactness test compares a 2-rank run against one process:
//! with `run.bn_batch = B/2` the single process computes exactly what the two ranks compute.
//!
//! Only rank 0 writes the run folder (config, metrics, plots, checkpoints, model).
//!
//! A [`Dist`] is a value the caller creates ([`Dist::from_env`]) and hands to the trainer
//! ([`Trainer::with_dist`](crate::Trainer::with_dist)); the library keeps no global membership.
use crate::control::Interrupted;
use crate::error::{Result, ResultExt};
use bt_dist::{Backend, DistEnv, LossReducer, ProcessGroup};
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Tensor};

/// Environment variable: timeout of the rendezvous and of every collective, in seconds
/// (default [`DEFAULT_TIMEOUT_S`]). A lost peer is usually detected at once (Gloo sees the closed
/// connection); the timeout bounds the wait for a peer that hangs.
pub const TIMEOUT_VAR: &str = "BT_DIST_TIMEOUT_S";
/// Default collective timeout, seconds (torch's default for Gloo is 30 min; a Barlow Twins step is
/// well under a minute, so 5 min still flags a hung peer quickly).
pub const DEFAULT_TIMEOUT_S: u64 = 300;

/// This process's membership in a data-parallel run.
pub struct Dist {
    /// The process group (shared with the loss reducer).
    pub pg: Arc<ProcessGroup>,
}

impl Dist {
    /// Joins the run when the torchrun environment says `WORLD_SIZE > 1`; `None` otherwise (a
    /// plain single-process run: `WORLD_SIZE` unset or 1).
    ///
    /// `device` decides the backend: NCCL for CUDA (device `LOCAL_RANK`), Gloo for CPU.
    pub fn from_env(device: Device) -> Result<Option<Self>> {
        let world: usize = match std::env::var("WORLD_SIZE") {
            Err(_) => return Ok(None),
            Ok(v) => match v.trim().parse() {
                Ok(n) => n,
                Err(_) => crate::error::refuse!("WORLD_SIZE={v} is not an integer"),
            },
        };
        if world <= 1 {
            return Ok(None);
        }
        let env = DistEnv::from_env()?;
        let timeout = timeout();
        let backend = if device.is_cuda() { Backend::Nccl } else { Backend::Gloo };
        tracing::info!(
            "data-parallel: rank {} of {} (local rank {}), {backend:?}, rendezvous {}:{}{}, timeout {}s",
            env.rank,
            env.world_size,
            env.local_rank,
            env.master_addr,
            env.master_port,
            if env.use_agent_store { " (torchrun agent store)" } else { "" },
            timeout.as_secs()
        );
        let pg = ProcessGroup::connect(env, backend, timeout)?;
        Ok(Some(Self { pg: Arc::new(pg) }))
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.pg.rank()
    }

    /// Number of processes.
    pub fn world(&self) -> usize {
        self.pg.world_size()
    }

    /// The loss reducer (cross-replica statistics with sum backward).
    pub fn reducer(&self) -> Arc<dyn bt_loss::CrossReplicaReduce> {
        Arc::new(LossReducer::new(self.pg.clone()))
    }

    /// Copies rank 0's variables (parameters, BN statistics and counters) into every rank's.
    pub fn broadcast_model(&self, model: &bt_model::BarlowTwins) -> Result<()> {
        // Detached handles share storage: c10d writes into the variables without autograd seeing
        // an in-place op on a leaf that requires grad.
        let mut ts: Vec<Tensor> = model.variables().iter().map(|v| v.tensor.detach()).collect();
        tch::no_grad(|| self.pg.broadcast_(&mut ts, 0)).context("broadcasting rank 0's model")?;
        Ok(())
    }

    /// Averages the gradients of `params` across ranks, in place (bucketed). With the loss
    /// reducer's sum backward this gives every rank the full-batch gradient.
    pub fn average_grads(&self, params: &[Tensor]) -> Result<()> {
        let mut grads: Vec<Tensor> = params.iter().map(|p| p.grad()).filter(|g| g.defined()).collect();
        self.pg.all_reduce_mean_(&mut grads).context("averaging gradients across ranks")?;
        Ok(())
    }
}

/// The device of this process: `cuda` / `auto` on a CUDA machine means device `LOCAL_RANK` when
/// launched data-parallel (one GPU per process, as torchrun expects).
pub fn local_device(device: Device) -> Device {
    match device {
        Device::Cuda(0) => match std::env::var("LOCAL_RANK").ok().and_then(|v| v.trim().parse::<usize>().ok()) {
            Some(r)
                if std::env::var("WORLD_SIZE").ok().and_then(|w| w.trim().parse::<usize>().ok()).unwrap_or(1) > 1 =>
            {
                Device::Cuda(r)
            }
            _ => device,
        },
        d => d,
    }
}

impl Dist {
    /// `(rank, world)`.
    pub fn rank_world(&self) -> (usize, usize) {
        (self.rank(), self.world())
    }

    /// The pipeline restricted to this rank's rows of every global batch.
    pub fn shard(&self, pipe: bt_data::TwinPipeline) -> Result<bt_data::TwinPipeline> {
        Ok(if self.world() > 1 { pipe.with_shard(self.rank(), self.world())? } else { pipe })
    }

    /// Agrees across ranks on a stop request: a stop requested on one rank, or seen by the
    /// ranks at different steps, must stop all of them at the same step, or the others would
    /// wait in the next collective for a rank that is gone. Returns this rank's own request if
    /// it has one, else the one another rank saw (`from_peer`), else `None`. One tiny
    /// all-reduce; every rank must call it at the same points.
    ///
    /// Host transfers: one upload of the two flags and one read of their sums per call (every
    /// step), both through `bt_host`, so they are counted like every other transfer of the step
    /// (docs/GPU.md; `tests/dist_host_reads.rs` counts them).
    pub fn agreed_stop(&self, local: Option<Interrupted>) -> Result<Option<Interrupted>> {
        let seen = |signo| local.is_some_and(|i| i.signo == signo) as i32 as f64;
        let other = local.is_some_and(|i| i.signo != SIGINT && i.signo != SIGTERM) as i32 as f64;
        let flags = bt_host::from_f64s(&[seen(SIGINT), seen(SIGTERM) + other], tch::Kind::Float, self.pg.device())?;
        let total = tch::no_grad(|| self.pg.all_reduce(&flags)).context("agreeing on a stop across ranks")?;
        let total = bt_host::read_f64s(&total)?;
        Ok(match local {
            Some(i) => Some(i),
            None if total[1] > 0.0 => Some(Interrupted { signo: SIGTERM, from_peer: true }),
            None if total[0] > 0.0 => Some(Interrupted { signo: SIGINT, from_peer: true }),
            None => None,
        })
    }
}

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

/// `model.sync_bn` (or the older `model.projector_sync_bn`): the projector's, or every, batch
/// norm takes its statistics over the global batch, as `nn.SyncBatchNorm` does. In a
/// data-parallel run the cross-replica sum is an all-reduce with sum backward (as the loss
/// reducer's); in a single process it is the identity, so that one process runs the very
/// arithmetic of W ranks (statistics summed in f64, bt-model's `forward_synced`) rather than
/// libtorch's batch-norm kernel, whose f32 statistics round differently: with `"all"` that
/// rounding alone made one process and two ranks diverge (issue 14).
pub fn sync_bn(dist: Option<&Dist>, model: &mut bt_model::BarlowTwins, cfg: &bt_config::ModelConfig) {
    let scope = cfg.sync_bn_scope();
    if scope == bt_config::SyncBn::Off {
        return;
    }
    let sum: bt_model::CrossReplicaSum = match dist {
        Some(d) => {
            let pg = d.pg.clone();
            Box::new(move |x: &Tensor| {
                // The loss reducer fails the same way: a lost peer is a panic the trainer reports.
                bt_dist::all_reduce_sum_autograd(&pg, x).unwrap_or_else(|e| panic!("{e}"))
            })
        }
        None => Box::new(|x: &Tensor| x.shallow_clone()),
    };
    model.set_sync_bn(scope, Some(sum));
}

/// The loss options of `cfg`, with the cross-replica reducer in a data-parallel run.
pub fn loss_options(cfg: &bt_config::LossConfig, dist: Option<&Dist>) -> bt_loss::LossOptions {
    let o = bt_loss::LossOptions::from_config(cfg);
    match dist {
        Some(d) => o.with_reducer(d.reducer()),
        None => o,
    }
}

fn timeout() -> Duration {
    let s =
        std::env::var(TIMEOUT_VAR).ok().and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(DEFAULT_TIMEOUT_S as f64);
    Duration::from_secs_f64(s.max(0.1))
}

/// `model.forward(x, true)` with batch-norm statistics over groups of `bn_batch` rows
/// (`run.bn_batch`; 0 or `>= N`: one group, the plain forward).
///
/// # Shapes
/// `N x 3 x H x W` in, `N x D` out.
///
/// With the projector's batch norm synchronized (`model.sync_bn = "projector"`) only the encoder
/// is grouped: the projector normalizes over the whole batch, as synchronized batch norm does
/// across ranks. (`"all"` and `run.bn_batch` exclude each other: validation refuses both.)
pub fn forward_grouped(model: &bt_model::BarlowTwins, x: &Tensor, bn_batch: usize) -> Tensor {
    let n = x.size()[0];
    if bn_batch == 0 || bn_batch as i64 >= n {
        return model.forward(x, true);
    }
    let chunks = x.split(bn_batch as i64, 0);
    if model.config().sync_bn_scope() == bt_config::SyncBn::Projector {
        let h: Vec<Tensor> = chunks.iter().map(|c| model.encode(c, true)).collect();
        return model.project(&Tensor::cat(&h, 0), true);
    }
    let parts: Vec<Tensor> = chunks.iter().map(|c| model.forward(c, true)).collect();
    Tensor::cat(&parts, 0)
}

/// [`forward_grouped`] that also returns the encoder features of `x` (`N x F`, f32): the
/// same operations in the same order, so the embeddings are bit-identical to
/// [`forward_grouped`]'s (the online probe reads the features; see probe.rs).
pub fn forward_grouped_features(model: &bt_model::BarlowTwins, x: &Tensor, bn_batch: usize) -> (Tensor, Tensor) {
    let n = x.size()[0];
    if bn_batch == 0 || bn_batch as i64 >= n {
        return model.forward_features(x, true);
    }
    let chunks = x.split(bn_batch as i64, 0);
    if model.config().sync_bn_scope() == bt_config::SyncBn::Projector {
        let h: Vec<Tensor> = chunks.iter().map(|c| model.encode(c, true)).collect();
        let h = Tensor::cat(&h, 0);
        let z = model.project(&h, true);
        return (h, z);
    }
    let (h, z): (Vec<Tensor>, Vec<Tensor>) = chunks.iter().map(|c| model.forward_features(c, true)).unzip();
    (Tensor::cat(&h, 0), Tensor::cat(&z, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bt_config::ModelConfig;
    use tch::{nn, Kind};

    #[test]
    fn grouped_forward_normalizes_each_group_on_its_own() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig {
            arch: bt_config::Arch::CifarResnet18,
            width: 4,
            projector: vec![16, 8],
            ..Default::default()
        };
        let model = bt_model::BarlowTwins::new(&vs.root(), &cfg);
        let x = Tensor::rand([8, 3, 32, 32], (Kind::Float, Device::Cpu));
        let grouped = forward_grouped(&model, &x, 4);
        let halves =
            Tensor::cat(&[model.forward(&x.narrow(0, 0, 4), true), model.forward(&x.narrow(0, 4, 4), true)], 0);
        assert!(grouped.allclose(&halves, 1e-6, 1e-6, false));
        let whole = forward_grouped(&model, &x, 0);
        assert!(!whole.allclose(&halves, 1e-3, 1e-3, false), "one group of 8 differs from two of 4");
        assert!(whole.allclose(&model.forward(&x, true), 1e-6, 1e-6, false));
    }
}
