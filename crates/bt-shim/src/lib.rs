//! A small C++ shim over libtorch for what tch 0.24 does not expose and a fast CUDA training
//! step needs: the autocast dtype (bf16), channels-last memory format, multi-tensor `_foreach`
//! ops for optimizers, `.grad`/`.data` assignment, cuDNN-benchmark and TF32 switches, pinned
//! memory, CUDA device properties, side streams, events and CUDA graphs.
//!
//! # Design: a C ABI over the same libtorch tch uses, exceptions stopped at the border
//!
//! `build.rs` compiles `csrc/*.cpp` with the `cc` crate against the headers of the libtorch that
//! torch-sys found (`DEP_TCH_LIBTORCH_LIB`), so tch and the shim share one libtorch, one ABI
//! and one allocator. Tensors cross as tch's own handles: [`tch::Tensor::as_ptr`] is an
//! `at::Tensor*`, and tensors the shim creates are `new at::Tensor` that Rust adopts with
//! [`tch::Tensor::from_ptr`] (freed by tch's `delete`). No Rust-side copy of libtorch's data
//! structures, no second tensor type.
//!
//! Every C function runs its body in a `try`/`catch` and returns an error string; a C++
//! exception never unwinds into Rust (that would be undefined behaviour). Errors become
//! [`Error`] with the operation's name.
//!
//! The CUDA half (`csrc/cuda.cpp`) is compiled only when libtorch has `libtorch_cuda` and the
//! CUDA runtime headers are present; otherwise its functions are stubs, and on a CUDA build
//! without a GPU every CUDA function returns [`Error::CudaUnavailable`] before touching CUDA.
//! So the crate builds, links and passes its tests on CPU-only machines. See `docs/SHIM.md`.
//!
//! Streams and events use c10's device-generic `c10::Stream`/`c10::Event`, which reach the CUDA
//! runtime through `libc10_cuda`; the shim never links `libcudart` itself, so a binary built
//! here runs wherever libtorch's own libraries resolve.
//!
//! Module layout: `csrc/shim.cpp` (device-independent), `csrc/cuda.cpp` (CUDA); c10d bindings
//! for multi-process training are meant to go to `csrc/dist.cpp` + `src/dist.rs` later.
//!
//! # Example
//! `examples/foreach_channels_last.rs` runs a multi-tensor SGD-with-momentum step and a
//! channels-last convolution on CPU:
//! `cargo run --release -p bt-shim --example foreach_channels_last`.
#![deny(missing_docs)]

mod autocast;
mod backend;
mod cuda;
mod error;
mod ffi;
mod foreach;
mod opcount;
mod tensor;

pub use autocast::{autocast_dtype, autocast_enabled, set_autocast_dtype, set_autocast_enabled, AutocastGuard};
pub use backend::{allow_tf32, cudnn_benchmark, set_allow_tf32, set_allow_tf32_each, set_cudnn_benchmark};
pub use cuda::{
    built_with_cuda, copy_on_stream, cuda_device_count, cuda_device_properties, cuda_synchronize,
    current_stream_synchronize, record_stream, CudaEvent, CudaGraph, CudaStream, CudaStreamGuard, DeviceProperties,
};
pub use error::{Error, Result};
pub use foreach::{
    foreach_add_, foreach_add_scalar_, foreach_addcdiv_, foreach_addcmul_, foreach_copy_, foreach_div_, foreach_lerp_,
    foreach_mul_, foreach_mul_scalar_, foreach_mul_tensor_, foreach_norm, foreach_sqrt, foreach_sqrt_, foreach_zero_,
};
pub use opcount::{count_ops, OpCounts};
pub use tensor::{is_channels_last, is_pinned, pin_memory, set_data, set_grad, to_channels_last};

/// The CUDA runtime include directory the shim was compiled against, if it was built with CUDA.
pub const CUDA_INCLUDE_DIR: Option<&str> = match env!("BT_SHIM_CUDA_INCLUDE").as_bytes() {
    [] => None,
    _ => Some(env!("BT_SHIM_CUDA_INCLUDE")),
};
