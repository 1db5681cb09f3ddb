//! [`ProcessGroup`]: one c10d backend over a TCPStore rendezvous.

use std::ffi::{c_int, c_void, CString};
use std::time::Duration;

use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

use crate::env::DistEnv;
use crate::error::{DistError, Lost, Result};
use crate::ffi;

/// The c10d backend of a [`ProcessGroup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `ProcessGroupGloo`: CPU tensors, TCP; always built.
    Gloo,
    /// `ProcessGroupNCCL`: CUDA tensors on device `LOCAL_RANK`; built when the NCCL and CUDA
    /// headers were found (see [`built_with_nccl`]).
    Nccl,
}

impl Backend {
    /// NCCL when this build has it and CUDA is available, else Gloo (torch's rule for
    /// `init_process_group()` without a backend).
    pub fn auto() -> Self {
        if built_with_nccl() && tch::Cuda::is_available() {
            Backend::Nccl
        } else {
            Backend::Gloo
        }
    }
}

/// Whether `ProcessGroupNCCL` was compiled in (build.rs found `nccl.h` and the CUDA headers).
pub fn built_with_nccl() -> bool {
    // SAFETY: a constant query.
    unsafe { ffi::bt_dist_built_with_nccl() != 0 }
}

/// DDP's default bucket size (`bucket_cap_mb=25`).
pub const DEFAULT_BUCKET_BYTES: usize = 25 * 1024 * 1024;

/// Tensors at least this large are reduced in place, in a bucket of their own: see
/// [`plan_buckets`].
pub const DEFAULT_SOLO_BYTES: usize = 1024 * 1024;

/// Splits a tensor list into buckets for coalesced collectives: consecutive tensors of the same
/// kind and device, at most `cap` bytes each; a tensor of `solo` bytes or more is a bucket of its
/// own (as is one larger than `cap`). Returns the exclusive end index of each bucket.
///
/// Why buckets: a ResNet has ~60-100 parameter tensors, most of them small (biases, BN pairs),
/// and each collective pays a latency (Gloo: TCP round trips) that dwarfs the bytes of a small
/// tensor, so the small ones are flattened into one buffer per bucket. Why solo tensors: the
/// flattening is a copy in and a copy out, which for a large tensor costs more than the one
/// latency it saves (measured in docs/BENCHMARKS.md, "Distributed"), and a single contiguous
/// tensor is reduced in place without a copy. 25 MB is DDP's bucket cap.
pub fn plan_buckets(items: &[(Kind, Device, usize)], cap: usize, solo: usize) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut bytes = 0usize;
    for (i, (kind, device, b)) in items.iter().enumerate() {
        if i > 0 {
            let (pk, pd, pb) = items[i - 1];
            let alone = *b >= solo || pb >= solo;
            if alone || pk != *kind || pd != *device || bytes + b > cap {
                ends.push(i);
                bytes = 0;
            }
        }
        bytes += b;
    }
    if !items.is_empty() {
        ends.push(items.len());
    }
    ends
}

/// A c10d process group: this process's membership in a data-parallel run.
///
/// Every collective blocks until done or until the group's timeout, and must be called by every
/// rank in the same order (c10d matches collectives by sequence, not by name). A failure is
/// terminal for the group: the error names the lost rank when the heartbeat post-mortem finds one
/// (see [`DistError::Collective`]).
pub struct ProcessGroup {
    raw: *mut c_void,
    env: DistEnv,
    backend: Backend,
    timeout: Duration,
    bucket_bytes: usize,
    solo_bytes: usize,
}

// SAFETY: c10d backends accept work from any thread (DDP's reducer enqueues from autograd
// threads); the handle is an owned reference-counted pointer freed once, in Drop.
unsafe impl Send for ProcessGroup {}
// SAFETY: see Send; every method takes &self and c10d serializes enqueueing internally.
unsafe impl Sync for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.env.rank)
            .field("world_size", &self.env.world_size)
            .field("backend", &self.backend)
            .field("master", &format!("{}:{}", self.env.master_addr, self.env.master_port))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: raw came from bt_dist_new and is released once; autograd nodes that still
        // reference the group hold their own references.
        unsafe { ffi::bt_dist_free(self.raw) };
    }
}

fn tensor_ptrs(ts: &[Tensor]) -> Vec<*const C_tensor> {
    ts.iter().map(|t| t.as_ptr()).collect()
}

impl ProcessGroup {
    /// Joins the run described by the torchrun environment ([`DistEnv::from_env`]) with
    /// [`Backend::auto`].
    ///
    /// # Errors
    /// A bad environment, or the rendezvous failing within `timeout`.
    pub fn from_env(timeout: Duration) -> Result<Self> {
        Self::connect(DistEnv::from_env()?, Backend::auto(), timeout)
    }

    /// Joins a run without torchrun: rank 0 hosts the TCPStore at `addr:port`.
    ///
    /// # Errors
    /// See [`connect`](Self::connect).
    pub fn new(
        rank: usize,
        world_size: usize,
        addr: &str,
        port: u16,
        backend: Backend,
        timeout: Duration,
    ) -> Result<Self> {
        let env = DistEnv {
            rank,
            world_size,
            local_rank: rank,
            master_addr: addr.to_string(),
            master_port: port,
            use_agent_store: false,
            restart_count: 0,
        };
        Self::connect(env, backend, timeout)
    }

    /// Joins the run `env` describes. Blocks until all `world_size` ranks have joined (or the
    /// timeout). For NCCL, the process's current CUDA device becomes `env.local_rank`.
    ///
    /// # Errors
    /// [`DistError::Init`]: the store is unreachable, the other ranks did not arrive within
    /// `timeout`, or the backend is not built in.
    pub fn connect(env: DistEnv, backend: Backend, timeout: Duration) -> Result<Self> {
        let init_err = |message: String| DistError::Init {
            addr: format!("{}:{}", env.master_addr, env.master_port),
            rank: env.rank,
            world: env.world_size,
            backend,
            message,
        };
        let addr =
            CString::new(env.master_addr.clone()).map_err(|_| init_err("MASTER_ADDR contains a NUL byte".into()))?;
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX).max(1);
        let mut raw: *mut c_void = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the call; raw is written only on success.
        let err = unsafe {
            ffi::bt_dist_new(
                addr.as_ptr(),
                c_int::from(env.master_port),
                env.rank as c_int,
                env.world_size as c_int,
                env.hosts_store() as c_int,
                env.use_agent_store as c_int,
                env.restart_count as c_int,
                matches!(backend, Backend::Nccl) as c_int,
                env.local_rank as c_int,
                timeout_ms,
                &mut raw,
            )
        };
        ffi::take_error(err).map_err(init_err)?;
        Ok(Self { raw, env, backend, timeout, bucket_bytes: DEFAULT_BUCKET_BYTES, solo_bytes: DEFAULT_SOLO_BYTES })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.env.rank
    }

    /// Number of processes.
    pub fn world_size(&self) -> usize {
        self.env.world_size
    }

    /// The rendezvous this group was built from.
    pub fn env(&self) -> &DistEnv {
        &self.env
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The timeout of every collective and of the rendezvous.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The device collectives run on: CPU for Gloo, `cuda:LOCAL_RANK` for NCCL.
    pub fn device(&self) -> Device {
        match self.backend {
            Backend::Gloo => Device::Cpu,
            Backend::Nccl => Device::Cuda(self.env.local_rank),
        }
    }

    /// The bucket size of [`all_reduce_sum_`](Self::all_reduce_sum_) and
    /// [`broadcast_`](Self::broadcast_), in bytes.
    pub fn bucket_bytes(&self) -> usize {
        self.bucket_bytes
    }

    /// Sets the bucket size (at least 1 byte: each tensor then gets its own collective).
    pub fn set_bucket_bytes(&mut self, bytes: usize) {
        self.bucket_bytes = bytes.max(1);
    }

    /// Sets the size from which a tensor is reduced alone and in place ([`plan_buckets`];
    /// `usize::MAX` flattens everything into buckets).
    pub fn set_solo_bytes(&mut self, bytes: usize) {
        self.solo_bytes = bytes.max(1);
    }

    /// Turns a c10d failure message into a [`DistError::Collective`], after a post-mortem that
    /// finds which peers are gone: every rank's heartbeat counter in the store is read twice,
    /// three heartbeat intervals apart (one twentieth of the timeout, 50 ms to 1 s); ranks whose
    /// counter stood still are lost; an unreachable store means its host is lost.
    ///
    /// Public for failures that surface elsewhere, e.g. a backward pass through
    /// [`all_reduce_sum_autograd`](crate::all_reduce_sum_autograd) that fails inside
    /// `Tensor::f_backward`.
    pub fn explain_failure(&self, op: &'static str, message: String) -> DistError {
        // SAFETY: raw is live for &self.
        let interval = unsafe { ffi::bt_dist_heartbeat_interval_ms(self.raw) };
        let mut stalled = vec![0 as c_int; self.world_size()];
        // SAFETY: stalled has world_size entries, as the C side writes.
        let err = unsafe { ffi::bt_dist_stalled_ranks(self.raw, 3 * interval, stalled.as_mut_ptr()) };
        let lost = match ffi::take_error(err) {
            Err(store_msg) => Lost::Store {
                addr: format!("{}:{}", self.env.master_addr, self.env.master_port),
                hosted_by_rank0: !self.env.use_agent_store,
                message: store_msg,
            },
            Ok(()) => {
                let ranks: Vec<usize> = stalled.iter().enumerate().filter(|(_, s)| **s != 0).map(|(r, _)| r).collect();
                if ranks.is_empty() {
                    Lost::NoneLost { timeout_ms: self.timeout.as_millis() }
                } else {
                    Lost::Ranks(ranks)
                }
            }
        };
        DistError::Collective { op, rank: self.rank(), world: self.world_size(), message, lost }
    }

    fn check(&self, op: &'static str, err: ffi::Err) -> Result<()> {
        ffi::take_error(err).map_err(|m| self.explain_failure(op, m))
    }

    fn coalesced(
        &self,
        op: &'static str,
        tensors: &[Tensor],
        call: impl FnOnce(*const *const C_tensor, usize, *const usize, usize) -> ffi::Err,
    ) -> Result<()> {
        if tensors.is_empty() {
            return Ok(());
        }
        let items: Vec<(Kind, Device, usize)> = tensors
            .iter()
            .map(|t| {
                let k = t.kind();
                (k, t.device(), t.numel() * k.elt_size_in_bytes())
            })
            .collect();
        let ends = plan_buckets(&items, self.bucket_bytes, self.solo_bytes);
        let ptrs = tensor_ptrs(tensors);
        self.check(op, call(ptrs.as_ptr(), ptrs.len(), ends.as_ptr(), ends.len()))
    }

    /// Sums each tensor across ranks, in place, with one collective per bucket of about
    /// [`bucket_bytes`](Self::bucket_bytes) (tensors of one bucket share kind and device).
    /// Gradients are the intended use; autograd does not record this.
    ///
    /// # Errors
    /// [`DistError::Collective`], naming lost ranks when a peer died.
    pub fn all_reduce_sum_(&self, tensors: &mut [Tensor]) -> Result<()> {
        // SAFETY: pointers are valid for the call; the C side only writes into the tensors.
        self.coalesced("all_reduce", tensors, |p, n, e, nb| unsafe {
            ffi::bt_dist_allreduce_coalesced(self.raw, p, n, e, nb, 1.0)
        })
    }

    /// [`all_reduce_sum_`](Self::all_reduce_sum_) divided by the world size: DDP's gradient
    /// averaging (the right one with [`crate::LossReducer`], see the crate doc).
    ///
    /// # Errors
    /// As [`all_reduce_sum_`](Self::all_reduce_sum_).
    pub fn all_reduce_mean_(&self, tensors: &mut [Tensor]) -> Result<()> {
        let scale = 1.0 / self.world_size() as f64;
        // SAFETY: as in all_reduce_sum_.
        self.coalesced("all_reduce", tensors, |p, n, e, nb| unsafe {
            ffi::bt_dist_allreduce_coalesced(self.raw, p, n, e, nb, scale)
        })
    }

    /// Copies rank `root`'s tensors into every rank's, in place and bucketed (the initial
    /// parameter and buffer sync). Autograd does not record this.
    ///
    /// # Errors
    /// `root` out of range, or [`DistError::Collective`].
    pub fn broadcast_(&self, tensors: &mut [Tensor], root: usize) -> Result<()> {
        if root >= self.world_size() {
            return Err(DistError::Usage {
                op: "broadcast",
                message: format!("root {root} >= world size {}", self.world_size()),
            });
        }
        // SAFETY: as in all_reduce_sum_.
        self.coalesced("broadcast", tensors, |p, n, e, nb| unsafe {
            ffi::bt_dist_broadcast_coalesced(self.raw, p, n, e, nb, root as c_int)
        })
    }

    /// The sum of `x` over ranks, as a new tensor (no gradient: see
    /// [`all_reduce_sum_autograd`](crate::all_reduce_sum_autograd) for the differentiable one).
    ///
    /// # Errors
    /// [`DistError::Collective`].
    pub fn all_reduce(&self, x: &Tensor) -> Result<Tensor> {
        self.tensor_op("all_reduce", x, ffi::bt_dist_allreduce)
    }

    /// Every rank's rows concatenated in rank order along dim 0; row counts may differ.
    ///
    /// # Shapes
    /// `N_r x ...` in, `(Σ_r N_r) x ...` out.
    ///
    /// # Errors
    /// [`DistError::Collective`].
    pub fn all_gather(&self, x: &Tensor) -> Result<Tensor> {
        self.tensor_op("all_gather", x, ffi::bt_dist_allgather)
    }

    /// Blocks until every rank has called it.
    ///
    /// # Errors
    /// [`DistError::Collective`].
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: raw is live for &self.
        self.check("barrier", unsafe { ffi::bt_dist_barrier(self.raw) })
    }

    pub(crate) fn tensor_op(
        &self,
        op: &'static str,
        x: &Tensor,
        f: unsafe extern "C" fn(*mut c_void, *const C_tensor, *mut *mut C_tensor) -> ffi::Err,
    ) -> Result<Tensor> {
        let mut out: *mut C_tensor = std::ptr::null_mut();
        // SAFETY: x is a live tensor; out is written only on success with a fresh at::Tensor*.
        self.check(op, unsafe { f(self.raw, x.as_ptr(), &mut out) })?;
        // SAFETY: out is a new heap at::Tensor owned by us from here on.
        Ok(unsafe { Tensor::from_ptr(out) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: Kind = Kind::Float;
    const D: Kind = Kind::Double;
    const CPU: Device = Device::Cpu;

    #[test]
    fn buckets_respect_cap_kind_and_device() {
        let no_solo = usize::MAX;
        assert!(plan_buckets(&[], 10, no_solo).is_empty());
        let items = [(F, CPU, 4), (F, CPU, 4), (F, CPU, 4), (D, CPU, 8), (D, CPU, 30), (D, CPU, 1)];
        // 4+4 fit in 10, the third float starts a bucket, the kind change another, the 30-byte
        // tensor is alone, then 1 byte.
        assert_eq!(plan_buckets(&items, 10, no_solo), vec![2, 3, 4, 5, 6]);
        assert_eq!(plan_buckets(&items, 1000, no_solo), vec![3, 6]);
        assert_eq!(plan_buckets(&items, 1, no_solo), vec![1, 2, 3, 4, 5, 6]);
        // The 30-byte tensor is "large": alone, and its neighbours do not join it.
        assert_eq!(plan_buckets(&items, 1000, 30), vec![3, 4, 5, 6]);
        let mixed = [(F, CPU, 4), (F, Device::Cuda(0), 4)];
        assert_eq!(plan_buckets(&mixed, 1000, no_solo), vec![1, 2]);
    }
}
