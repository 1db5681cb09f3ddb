//! Process-wide backend switches (PyTorch's `torch.backends.*`). They are plain flags in
//! libtorch's global context: setting them works (and does nothing) without CUDA.

use crate::error::Result;
use crate::ffi::{self, check};

/// `torch.backends.cudnn.benchmark = on`: let cuDNN time its algorithms for each new input
/// shape and keep the fastest. Pays off when shapes are fixed (drop-last batches), as here.
pub fn set_cudnn_benchmark(on: bool) {
    unsafe { ffi::bt_shim_set_cudnn_benchmark(on.into()) }
}

/// The current cuDNN benchmark flag.
pub fn cudnn_benchmark() -> bool {
    unsafe { ffi::bt_shim_cudnn_benchmark() != 0 }
}

/// `torch.backends.cuda.matmul.allow_tf32 = on` and `torch.backends.cudnn.allow_tf32 = on`:
/// f32 matmuls and convolutions that remain outside autocast (e.g. the f32 loss's
/// cross-correlation) may use TF32 tensor cores (10-bit mantissa inputs, f32 accumulation).
pub fn set_allow_tf32(on: bool) -> Result<()> {
    check("set_allow_tf32", unsafe { ffi::bt_shim_set_allow_tf32(on.into()) })
}

/// Sets the two TF32 switches separately (PyTorch's defaults differ: matmul off, cuDNN on), so
/// a value read with [`allow_tf32`] can be put back exactly.
pub fn set_allow_tf32_each(matmul: bool, cudnn: bool) -> Result<()> {
    check("set_allow_tf32_each", unsafe { ffi::bt_shim_set_allow_tf32_each(matmul.into(), cudnn.into()) })
}

/// The TF32 switches: `(matmul (cuBLAS), convolutions (cuDNN))`.
pub fn allow_tf32() -> Result<(bool, bool)> {
    let (mut m, mut c) = (0, 0);
    check("allow_tf32", unsafe { ffi::bt_shim_allow_tf32(&mut m, &mut c) })?;
    Ok((m != 0, c != 0))
}
