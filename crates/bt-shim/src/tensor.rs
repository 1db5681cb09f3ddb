//! Per-tensor plumbing tch lacks: memory format, `.grad` / `.data` assignment, pinned memory.
use tch::Tensor;
use torch_sys::C_tensor;

use crate::error::Result;
use crate::ffi::{self, check};

fn adopt(p: *mut C_tensor) -> Tensor {
    // SAFETY: `p` was produced by `new at::Tensor(...)` in csrc/shim.cpp and is owned by nobody
    // else; tch frees it with `delete` on drop.
    unsafe { Tensor::from_ptr(p) }
}

/// A copy of `t` in channels-last (NHWC) memory order, or `t` itself (a new handle, no copy)
/// when it already is. The logical shape and values are unchanged; only the strides are.
///
/// Why: cuDNN's fast bf16 convolution kernels (tensor cores) work on NHWC; an NCHW input costs
/// a transpose before and after every convolution.
///
/// # Shapes
/// `t`: `[N, C, H, W]` (any other rank is an error). Result strides: `[H*W*C, 1, W*C, C]`.
pub fn to_channels_last(t: &Tensor) -> Result<Tensor> {
    let mut out = std::ptr::null_mut();
    check("to_channels_last", unsafe { ffi::bt_shim_to_channels_last(t.as_ptr(), &mut out) })?;
    Ok(adopt(out))
}

/// Whether `t` is a 4-d tensor laid out channels-last. Note that degenerate shapes (`C == 1`, or
/// `H == W == 1`) are both contiguous and channels-last, as in PyTorch.
pub fn is_channels_last(t: &Tensor) -> bool {
    unsafe { ffi::bt_shim_is_channels_last(t.as_ptr()) != 0 }
}

/// Assigns `param.grad = grad` (Python's setter, with its checks: same dtype, device, shape).
///
/// Why: point each parameter's `.grad` at a view of one flat buffer; backward then accumulates
/// into the buffer in place (AccumulateGrad adds into a defined `.grad` under no-grad mode), so a
/// multi-tensor optimizer or an all-reduce can treat all gradients as one tensor, with no copy.
/// `grad = None` clears the gradient (Python's `param.grad = None`).
pub fn set_grad(param: &Tensor, grad: Option<&Tensor>) -> Result<()> {
    let g = grad.map_or(std::ptr::null(), |g| g.as_ptr());
    check("set_grad", unsafe { ffi::bt_shim_set_grad(param.as_ptr(), g) })
}

/// `var.data = data`: swaps the storage/strides of `var` (a variable, typically a parameter)
/// for those of `data`, keeping the variable's identity (its autograd node, its handles in a
/// `VarStore`, its `.grad`).
///
/// Why: converting a model's conv weights to channels-last in place (what PyTorch's
/// `model.to(memory_format=torch.channels_last)` does) without rebuilding the `VarStore`.
pub fn set_data(var: &Tensor, data: &Tensor) -> Result<()> {
    check("set_data", unsafe { ffi::bt_shim_set_data(var.as_ptr(), data.as_ptr()) })
}

/// A copy of the CPU tensor `t` in page-locked (pinned) host memory, which makes host-to-device
/// copies with `non_blocking = true` truly asynchronous. Needs a CUDA driver: without one
/// libtorch refuses and this returns an error.
pub fn pin_memory(t: &Tensor) -> Result<Tensor> {
    let mut out = std::ptr::null_mut();
    check("pin_memory", unsafe { ffi::bt_shim_pin_memory(t.as_ptr(), &mut out) })?;
    Ok(adopt(out))
}

/// Whether `t`'s storage is pinned host memory.
pub fn is_pinned(t: &Tensor) -> Result<bool> {
    let mut pinned = 0;
    check("is_pinned", unsafe { ffi::bt_shim_is_pinned(t.as_ptr(), &mut pinned) })?;
    Ok(pinned != 0)
}
