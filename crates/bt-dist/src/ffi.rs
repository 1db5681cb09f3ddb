//! Raw declarations of the C ABI in `csrc/dist.cpp`. Every fallible function returns a malloc'ed
//! error string (null on success) that [`take_error`] turns into a Rust string and frees.
use std::ffi::{c_char, c_int, c_void, CStr};

use torch_sys::C_tensor;

pub(crate) type Err = *mut c_char;

extern "C" {
    pub(crate) fn bt_dist_free_string(s: *mut c_char);
    pub(crate) fn bt_dist_built_with_nccl() -> c_int;
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn bt_dist_new(
        addr: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        host_store: c_int,
        agent_store: c_int,
        restart_count: c_int,
        backend: c_int,
        device_index: c_int,
        timeout_ms: i64,
        out: *mut *mut c_void,
    ) -> Err;
    pub(crate) fn bt_dist_free(g: *mut c_void);
    pub(crate) fn bt_dist_allreduce_coalesced(
        g: *mut c_void,
        ts: *const *const C_tensor,
        n: usize,
        ends: *const usize,
        nb: usize,
        scale: f64,
    ) -> Err;
    pub(crate) fn bt_dist_broadcast_coalesced(
        g: *mut c_void,
        ts: *const *const C_tensor,
        n: usize,
        ends: *const usize,
        nb: usize,
        root: c_int,
    ) -> Err;
    pub(crate) fn bt_dist_allreduce(g: *mut c_void, x: *const C_tensor, out: *mut *mut C_tensor) -> Err;
    pub(crate) fn bt_dist_allgather(g: *mut c_void, x: *const C_tensor, out: *mut *mut C_tensor) -> Err;
    pub(crate) fn bt_dist_barrier(g: *mut c_void) -> Err;
    pub(crate) fn bt_dist_allreduce_autograd(g: *mut c_void, x: *const C_tensor, out: *mut *mut C_tensor) -> Err;
    pub(crate) fn bt_dist_allgather_autograd(g: *mut c_void, x: *const C_tensor, out: *mut *mut C_tensor) -> Err;
    pub(crate) fn bt_dist_stalled_ranks(g: *mut c_void, wait_ms: i64, stalled: *mut c_int) -> Err;
    pub(crate) fn bt_dist_heartbeat_interval_ms(g: *mut c_void) -> i64;
}

/// `Ok(())` for a null error, else the message (the C string is freed).
pub(crate) fn take_error(e: Err) -> Result<(), String> {
    if e.is_null() {
        return Ok(());
    }
    // SAFETY: non-null errors are NUL-terminated strings malloc'ed by dup_error.
    let msg = unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned();
    unsafe { bt_dist_free_string(e) };
    Err(msg)
}
