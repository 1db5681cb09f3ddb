//! Multi-tensor (`torch._foreach_*`) ops: one call updates a whole list of tensors.
//!
//! Why: an optimizer step over ResNet-18's ~60 parameter tensors issued tensor by tensor is
//! hundreds of small kernel launches (each ~5 us of launch overhead on CUDA, more than the work
//! itself for small tensors). The `_foreach` kernels group same-device, same-dtype tensors into
//! a few fused launches. On CPU libtorch runs them as a per-tensor loop, so results match the
//! per-tensor ops exactly (the tests check this).
//!
//! In-place ops (`*_` suffix) take `&[T]` where `T: Borrow<Tensor>` (so both `&[Tensor]` and
//! `&[&Tensor]` work) and mutate the tensors' shared storage, as libtorch does; tch handles are
//! reference-counted views of the same `TensorImpl`, so every handle sees the update. They are
//! not autograd-aware beyond what libtorch does: call them under `tch::no_grad` for optimizer
//! state, as torch.optim does.
//!
//! # Shapes
//! Tensors at the same index of the argument lists must have the same shape (broadcasting is not
//! supported by the fused CUDA path); the lists must have equal lengths (checked here). Empty
//! lists are a no-op (libtorch itself rejects them).
use std::borrow::Borrow;

use tch::Tensor;
use torch_sys::C_tensor;

use crate::error::{Error, Result};
use crate::ffi::{self, check};

fn ptrs<T: Borrow<Tensor>>(ts: &[T]) -> Vec<*const C_tensor> {
    ts.iter().map(|t| t.borrow().as_ptr()).collect()
}

fn same_len<A, B>(op: &'static str, list: &'static str, xs: &[A], ys: &[B]) -> Result<()> {
    if xs.len() == ys.len() {
        Ok(())
    } else {
        Err(Error::LengthMismatch { op, list, expected: xs.len(), got: ys.len() })
    }
}

/// Adopts the `n` fresh `at::Tensor*` the C side wrote into `out`.
fn adopt(out: Vec<*mut C_tensor>) -> Vec<Tensor> {
    // SAFETY: each pointer was produced by `new at::Tensor(...)` in csrc/shim.cpp and is owned
    // by nobody else; tch frees it with `delete` on drop.
    out.into_iter().map(|p| unsafe { Tensor::from_ptr(p) }).collect()
}

/// `xs[i] *= s` for every i.
pub fn foreach_mul_scalar_<T: Borrow<Tensor>>(xs: &[T], s: f64) -> Result<()> {
    let p = ptrs(xs);
    if p.is_empty() {
        return Ok(());
    }
    check("foreach_mul_scalar_", unsafe { ffi::bt_shim_foreach_mul_scalar_(p.as_ptr(), p.len(), s) })
}

/// `xs[i] += s` for every i.
pub fn foreach_add_scalar_<T: Borrow<Tensor>>(xs: &[T], s: f64) -> Result<()> {
    let p = ptrs(xs);
    if p.is_empty() {
        return Ok(());
    }
    check("foreach_add_scalar_", unsafe { ffi::bt_shim_foreach_add_scalar_(p.as_ptr(), p.len(), s) })
}

/// `xs[i] *= s` with one 0-d tensor `s` (e.g. a learning rate that lives on the GPU, so the
/// step needs no host sync to read it).
pub fn foreach_mul_tensor_<T: Borrow<Tensor>>(xs: &[T], s: &Tensor) -> Result<()> {
    let p = ptrs(xs);
    if p.is_empty() {
        return Ok(());
    }
    check("foreach_mul_tensor_", unsafe { ffi::bt_shim_foreach_mul_tensor_(p.as_ptr(), p.len(), s.as_ptr()) })
}

/// `xs[i] += alpha * ys[i]`.
pub fn foreach_add_<T: Borrow<Tensor>, U: Borrow<Tensor>>(xs: &[T], ys: &[U], alpha: f64) -> Result<()> {
    same_len("foreach_add_", "ys", xs, ys)?;
    let (p, q) = (ptrs(xs), ptrs(ys));
    if p.is_empty() {
        return Ok(());
    }
    check("foreach_add_", unsafe { ffi::bt_shim_foreach_add_(p.as_ptr(), q.as_ptr(), p.len(), alpha) })
}

/// `xs[i] *= ys[i]` (element-wise; `ys[i]` may also be a 0-d tensor per entry, e.g. a
/// per-layer trust ratio).
pub fn foreach_mul_<T: Borrow<Tensor>, U: Borrow<Tensor>>(xs: &[T], ys: &[U]) -> Result<()> {
    same_len("foreach_mul_", "ys", xs, ys)?;
    let (p, q) = (ptrs(xs), ptrs(ys));
    if p.is_empty() {
        return Ok(());
    }
    check("foreach_mul_", unsafe { ffi::bt_shim_foreach_mul_(p.as_ptr(), q.as_ptr(), p.len()) })
}

/// `xs[i] /= ys[i]`.
pub fn foreach_div_<T: Borrow<Tensor>, U: Borrow<Tensor>>(xs: &[T], ys: &[U]) -> Result<()> {
    same_len("foreach_div_", "ys", xs, ys)?;
    let (p, q) = (ptrs(xs), ptrs(ys));
    if p.is_empty() {
        return Ok(());
    }
    check("foreach_div_", unsafe { ffi::bt_shim_foreach_div_(p.as_ptr(), q.as_ptr(), p.len()) })
}

/// `xs[i] += value * t1[i] * t2[i]` (Adam/LAMB second moment: `v += (1-b2) * g * g`).
pub fn foreach_addcmul_<T: Borrow<Tensor>, U: Borrow<Tensor>, V: Borrow<Tensor>>(
    xs: &[T],
    t1: &[U],
    t2: &[V],
    value: f64,
) -> Result<()> {
    same_len("foreach_addcmul_", "t1", xs, t1)?;
    same_len("foreach_addcmul_", "t2", xs, t2)?;
    let (p, a, b) = (ptrs(xs), ptrs(t1), ptrs(t2));
    if p.is_empty() {
        return Ok(());
    }
    check("foreach_addcmul_", unsafe {
        ffi::bt_shim_foreach_addcmul_(p.as_ptr(), a.as_ptr(), b.as_ptr(), p.len(), value)
    })
}

/// `xs[i] += value * t1[i] / t2[i]` (Adam's update `p -= lr * m / (sqrt(v) + eps)`).
pub fn foreach_addcdiv_<T: Borrow<Tensor>, U: Borrow<Tensor>, V: Borrow<Tensor>>(
    xs: &[T],
    t1: &[U],
    t2: &[V],
    value: f64,
) -> Result<()> {
    same_len("foreach_addcdiv_", "t1", xs, t1)?;
    same_len("foreach_addcdiv_", "t2", xs, t2)?;
    let (p, a, b) = (ptrs(xs), ptrs(t1), ptrs(t2));
    if p.is_empty() {
        return Ok(());
    }
    check("foreach_addcdiv_", unsafe {
        ffi::bt_shim_foreach_addcdiv_(p.as_ptr(), a.as_ptr(), b.as_ptr(), p.len(), value)
    })
}

/// `xs[i] += weight * (ends[i] - xs[i])` (Adam's first moment: `m.lerp_(g, 1-b1)`).
pub fn foreach_lerp_<T: Borrow<Tensor>, U: Borrow<Tensor>>(xs: &[T], ends: &[U], weight: f64) -> Result<()> {
    same_len("foreach_lerp_", "ends", xs, ends)?;
    let (p, q) = (ptrs(xs), ptrs(ends));
    if p.is_empty() {
        return Ok(());
    }
    check("foreach_lerp_", unsafe { ffi::bt_shim_foreach_lerp_(p.as_ptr(), q.as_ptr(), p.len(), weight) })
}

/// `xs[i].copy_(src[i])`, possibly across devices/dtypes.
pub fn foreach_copy_<T: Borrow<Tensor>, U: Borrow<Tensor>>(xs: &[T], src: &[U], non_blocking: bool) -> Result<()> {
    same_len("foreach_copy_", "src", xs, src)?;
    let (p, q) = (ptrs(xs), ptrs(src));
    if p.is_empty() {
        return Ok(());
    }
    check("foreach_copy_", unsafe { ffi::bt_shim_foreach_copy_(p.as_ptr(), q.as_ptr(), p.len(), non_blocking.into()) })
}

/// `xs[i].zero_()`.
pub fn foreach_zero_<T: Borrow<Tensor>>(xs: &[T]) -> Result<()> {
    let p = ptrs(xs);
    if p.is_empty() {
        return Ok(());
    }
    check("foreach_zero_", unsafe { ffi::bt_shim_foreach_zero_(p.as_ptr(), p.len()) })
}

/// `xs[i].sqrt_()`.
pub fn foreach_sqrt_<T: Borrow<Tensor>>(xs: &[T]) -> Result<()> {
    let p = ptrs(xs);
    if p.is_empty() {
        return Ok(());
    }
    check("foreach_sqrt_", unsafe { ffi::bt_shim_foreach_sqrt_(p.as_ptr(), p.len()) })
}

/// `[xs[i].sqrt()]`: new tensors, inputs untouched.
pub fn foreach_sqrt<T: Borrow<Tensor>>(xs: &[T]) -> Result<Vec<Tensor>> {
    let p = ptrs(xs);
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = vec![std::ptr::null_mut(); p.len()];
    check("foreach_sqrt", unsafe { ffi::bt_shim_foreach_sqrt(p.as_ptr(), p.len(), out.as_mut_ptr()) })?;
    Ok(adopt(out))
}

/// `[xs[i].norm()]`: the L2 norm of each tensor as a 0-d tensor on its device (LAMB/LARS trust
/// ratios need one per layer; reading them on the host would be a sync per layer, so they stay
/// tensors).
pub fn foreach_norm<T: Borrow<Tensor>>(xs: &[T]) -> Result<Vec<Tensor>> {
    let p = ptrs(xs);
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = vec![std::ptr::null_mut(); p.len()];
    check("foreach_norm", unsafe { ffi::bt_shim_foreach_norm(p.as_ptr(), p.len(), 2.0, out.as_mut_ptr()) })?;
    Ok(adopt(out))
}
