//! Counting the ATen operators a piece of code dispatches ([`count_ops`]), to count rather than
//! guess the kernels a training step launches (see `csrc/opcount.cpp`).
//!
//! Every operator of every depth is counted in [`OpCounts::ops`]. The *kernel operators* are
//! listed by name: operators that are not views, allocations or metadata reads and inside which
//! no other computing operator ran (a composite such as `aten::linear` launches nothing itself;
//! `aten::mm` still counts although on CPU it calls `aten::resolve_conj` inside). Each is at least
//! one kernel launch on CUDA, so [`OpCounts::kernels`] is the kernel count up to the few
//! operators whose CUDA implementation launches more than one kernel (cuDNN convolutions,
//! reductions in two passes).
//! Host-device copies and syncs show up as `aten::copy_` and `aten::_local_scalar_dense` (an
//! `.item()`), counted by name in [`OpCounts::count`].
//!
//! The callbacks see operators of every thread (the autograd engine's too). Counting is
//! process-wide: two counters must not overlap (a second [`count_ops`] while one runs restarts
//! the count).
use std::ffi::{c_char, CStr};

use crate::error::Result;
use crate::ffi::{self, check};

/// What [`count_ops`] counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Operators of every depth (composites and the operators they dispatch to).
    pub ops: u64,
    /// Kernel operators by name (`aten::addmm`, ...), sorted by name.
    pub leaves: Vec<(String, u64)>,
}

impl OpCounts {
    /// Kernel operators (the sum of [`OpCounts::leaves`]).
    pub fn kernels(&self) -> u64 {
        self.leaves.iter().map(|(_, c)| c).sum()
    }

    /// How many kernel operators named `name` ran.
    pub fn count(&self, name: &str) -> u64 {
        self.leaves.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c)
    }
}

/// Runs `f` and counts the ATen operators it (and every thread it drives) dispatches.
pub fn count_ops<T>(f: impl FnOnce() -> T) -> Result<(T, OpCounts)> {
    check("opcount_start", unsafe { ffi::bt_shim_opcount_start() })?;
    let out = f();
    let mut ops = 0u64;
    let mut names: *mut c_char = std::ptr::null_mut();
    check("opcount_stop", unsafe { ffi::bt_shim_opcount_stop(&mut ops, &mut names) })?;
    let text = if names.is_null() {
        String::new()
    } else {
        let s = unsafe { CStr::from_ptr(names) }.to_string_lossy().into_owned();
        unsafe { ffi::bt_shim_free_string(names) };
        s
    };
    let mut leaves: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| {
            let (n, c) = l.split_once('\t')?;
            Some((n.to_string(), c.parse().ok()?))
        })
        .collect();
    leaves.sort();
    Ok((out, OpCounts { ops, leaves }))
}
