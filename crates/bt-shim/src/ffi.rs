//! Raw declarations of the C ABI in `csrc/`. Every fallible function returns a malloc'ed
//! error string (null on success) that [`check`] turns into an [`Error::Torch`] and frees.
use std::ffi::{c_char, c_int, c_void, CStr};

use torch_sys::C_tensor;

use crate::error::{Error, Result};

pub(crate) type Err = *mut c_char;
pub(crate) type TL = *const *const C_tensor;

extern "C" {
    pub(crate) fn bt_shim_free_string(s: *mut c_char);
    pub(crate) fn bt_shim_built_with_cuda() -> c_int;

    pub(crate) fn bt_shim_opcount_start() -> Err;
    pub(crate) fn bt_shim_opcount_stop(ops: *mut u64, names: *mut *mut c_char) -> Err;

    pub(crate) fn bt_shim_foreach_mul_scalar_(xs: TL, n: usize, s: f64) -> Err;
    pub(crate) fn bt_shim_foreach_add_scalar_(xs: TL, n: usize, s: f64) -> Err;
    pub(crate) fn bt_shim_foreach_mul_tensor_(xs: TL, n: usize, s: *const C_tensor) -> Err;
    pub(crate) fn bt_shim_foreach_add_(xs: TL, ys: TL, n: usize, alpha: f64) -> Err;
    pub(crate) fn bt_shim_foreach_mul_(xs: TL, ys: TL, n: usize) -> Err;
    pub(crate) fn bt_shim_foreach_div_(xs: TL, ys: TL, n: usize) -> Err;
    pub(crate) fn bt_shim_foreach_addcmul_(xs: TL, t1: TL, t2: TL, n: usize, value: f64) -> Err;
    pub(crate) fn bt_shim_foreach_addcdiv_(xs: TL, t1: TL, t2: TL, n: usize, value: f64) -> Err;
    pub(crate) fn bt_shim_foreach_lerp_(xs: TL, ends: TL, n: usize, weight: f64) -> Err;
    pub(crate) fn bt_shim_foreach_copy_(xs: TL, src: TL, n: usize, non_blocking: c_int) -> Err;
    pub(crate) fn bt_shim_foreach_zero_(xs: TL, n: usize) -> Err;
    pub(crate) fn bt_shim_foreach_sqrt_(xs: TL, n: usize) -> Err;
    pub(crate) fn bt_shim_foreach_sqrt(xs: TL, n: usize, out: *mut *mut C_tensor) -> Err;
    pub(crate) fn bt_shim_foreach_norm(xs: TL, n: usize, ord: f64, out: *mut *mut C_tensor) -> Err;

    pub(crate) fn bt_shim_to_channels_last(t: *const C_tensor, out: *mut *mut C_tensor) -> Err;
    pub(crate) fn bt_shim_is_channels_last(t: *const C_tensor) -> c_int;
    pub(crate) fn bt_shim_set_grad(param: *const C_tensor, grad: *const C_tensor) -> Err;
    pub(crate) fn bt_shim_set_data(var: *const C_tensor, data: *const C_tensor) -> Err;

    pub(crate) fn bt_shim_autocast_set_dtype(device_type: c_int, dtype: c_int) -> Err;
    pub(crate) fn bt_shim_autocast_get_dtype(device_type: c_int, dtype: *mut c_int) -> Err;
    pub(crate) fn bt_shim_autocast_set_enabled(device_type: c_int, enabled: c_int) -> Err;
    pub(crate) fn bt_shim_autocast_is_enabled(device_type: c_int, enabled: *mut c_int) -> Err;
    pub(crate) fn bt_shim_autocast_enter(
        device_type: c_int,
        dtype: c_int,
        prev_enabled: *mut c_int,
        prev_dtype: *mut c_int,
    ) -> Err;
    pub(crate) fn bt_shim_autocast_exit(device_type: c_int, prev_enabled: c_int, prev_dtype: c_int) -> Err;

    pub(crate) fn bt_shim_set_cudnn_benchmark(on: c_int);
    pub(crate) fn bt_shim_cudnn_benchmark() -> c_int;
    pub(crate) fn bt_shim_set_allow_tf32(on: c_int) -> Err;
    pub(crate) fn bt_shim_set_allow_tf32_each(matmul: c_int, cudnn: c_int) -> Err;
    pub(crate) fn bt_shim_allow_tf32(matmul: *mut c_int, cudnn: *mut c_int) -> Err;

    pub(crate) fn bt_shim_pin_memory(t: *const C_tensor, out: *mut *mut C_tensor) -> Err;
    pub(crate) fn bt_shim_is_pinned(t: *const C_tensor, pinned: *mut c_int) -> Err;

    pub(crate) fn bt_shim_cuda_device_count() -> c_int;
    pub(crate) fn bt_shim_cuda_device_properties(
        device: c_int,
        name: *mut c_char,
        name_len: usize,
        major: *mut c_int,
        minor: *mut c_int,
        total_memory: *mut u64,
        multiprocessors: *mut c_int,
    ) -> Err;
    pub(crate) fn bt_shim_cuda_synchronize(device: c_int) -> Err;
    pub(crate) fn bt_shim_cuda_stream_from_pool(device: c_int, high_priority: c_int, id: *mut i64) -> Err;
    pub(crate) fn bt_shim_cuda_current_stream(device: c_int, id: *mut i64) -> Err;
    pub(crate) fn bt_shim_cuda_default_stream(device: c_int, id: *mut i64) -> Err;
    pub(crate) fn bt_shim_cuda_exchange_stream(id: i64, device: c_int, prev: *mut i64) -> Err;
    pub(crate) fn bt_shim_cuda_stream_synchronize(id: i64, device: c_int) -> Err;
    pub(crate) fn bt_shim_cuda_stream_query(id: i64, device: c_int, done: *mut c_int) -> Err;
    pub(crate) fn bt_shim_cuda_current_stream_synchronize(device: c_int) -> Err;
    pub(crate) fn bt_shim_copy_on_stream(
        dst: *const C_tensor,
        src: *const C_tensor,
        id: i64,
        device: c_int,
        non_blocking: c_int,
    ) -> Err;
    pub(crate) fn bt_shim_record_stream(t: *const C_tensor, id: i64, device: c_int) -> Err;

    pub(crate) fn bt_shim_cuda_event_new(enable_timing: c_int, out: *mut *mut c_void) -> Err;
    pub(crate) fn bt_shim_cuda_event_free(ev: *mut c_void);
    pub(crate) fn bt_shim_cuda_event_record(ev: *mut c_void, id: i64, device: c_int) -> Err;
    pub(crate) fn bt_shim_cuda_event_block(ev: *mut c_void, id: i64, device: c_int) -> Err;
    pub(crate) fn bt_shim_cuda_event_synchronize(ev: *mut c_void) -> Err;
    pub(crate) fn bt_shim_cuda_event_query(ev: *mut c_void, done: *mut c_int) -> Err;
    pub(crate) fn bt_shim_cuda_event_elapsed_ms(start: *mut c_void, end: *mut c_void, ms: *mut f64) -> Err;

    pub(crate) fn bt_shim_cuda_graph_new(out: *mut *mut c_void) -> Err;
    pub(crate) fn bt_shim_cuda_graph_free(g: *mut c_void);
    pub(crate) fn bt_shim_cuda_graph_capture_begin(g: *mut c_void, id: i64, device: c_int) -> Err;
    pub(crate) fn bt_shim_cuda_graph_capture_end(g: *mut c_void) -> Err;
    pub(crate) fn bt_shim_cuda_graph_replay(g: *mut c_void) -> Err;
    pub(crate) fn bt_shim_cuda_graph_reset(g: *mut c_void) -> Err;
}

/// Turns a returned error string into a `Result`, freeing the string.
pub(crate) fn check(op: &'static str, err: Err) -> Result<()> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string malloc'ed by bt_shim::dup_error,
    // owned by us from here on.
    let message = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { bt_shim_free_string(err) };
    Err(Error::Torch { op, message })
}
