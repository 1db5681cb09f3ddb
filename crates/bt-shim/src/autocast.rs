//! Autocast (automatic mixed precision) with a chosen dtype, for CUDA and CPU.
//!
//! tch's `autocast` only toggles CUDA autocast at libtorch's default dtype (f16). Barlow Twins
//! training wants bf16 (no loss scaling, same exponent range as f32). [`AutocastGuard`] does what
//! Python's `with torch.autocast(device_type, dtype=torch.bfloat16):` does: set the dtype, enable,
//! count the nesting, and on exit clear the cast-weight cache and restore the previous state.
//!
//! Autocast state is thread-local in libtorch, so the guard is `!Send`: it must be dropped on the
//! thread that created it.
use std::marker::PhantomData;

use tch::{Device, Kind};

use crate::error::{Error, Result};
use crate::ffi::{self, check};

/// c10::DeviceType codes (c10/core/DeviceType.h).
fn device_type(op: &'static str, device: Device) -> Result<i32> {
    match device {
        Device::Cpu => Ok(0),
        Device::Cuda(_) => Ok(1),
        Device::Mps => Ok(13),
        Device::Vulkan => Err(Error::Unsupported { op, what: "autocast device", value: format!("{device:?}") }),
    }
}

/// c10::ScalarType codes (c10/core/ScalarType.h) of the dtypes autocast can target.
fn scalar_type(op: &'static str, kind: Kind) -> Result<i32> {
    match kind {
        Kind::Half => Ok(5),
        Kind::BFloat16 => Ok(15),
        _ => Err(Error::Unsupported { op, what: "autocast dtype", value: format!("{kind:?}") }),
    }
}

fn kind_of(op: &'static str, code: i32) -> Result<Kind> {
    match code {
        5 => Ok(Kind::Half),
        6 => Ok(Kind::Float),
        15 => Ok(Kind::BFloat16),
        _ => Err(Error::Unsupported { op, what: "autocast dtype code", value: code.to_string() }),
    }
}

/// Sets the dtype autocast casts to on `device`'s device type (f16 or bf16); does not enable it.
pub fn set_autocast_dtype(device: Device, kind: Kind) -> Result<()> {
    const OP: &str = "set_autocast_dtype";
    let (d, k) = (device_type(OP, device)?, scalar_type(OP, kind)?);
    check(OP, unsafe { ffi::bt_shim_autocast_set_dtype(d, k) })
}

/// The dtype autocast casts to on `device`'s device type, in this thread.
pub fn autocast_dtype(device: Device) -> Result<Kind> {
    const OP: &str = "autocast_dtype";
    let d = device_type(OP, device)?;
    let mut code = 0;
    check(OP, unsafe { ffi::bt_shim_autocast_get_dtype(d, &mut code) })?;
    kind_of(OP, code)
}

/// Enables or disables autocast for `device`'s device type, in this thread. Prefer
/// [`AutocastGuard`], which also restores the state and clears the cast cache.
pub fn set_autocast_enabled(device: Device, enabled: bool) -> Result<()> {
    const OP: &str = "set_autocast_enabled";
    let d = device_type(OP, device)?;
    check(OP, unsafe { ffi::bt_shim_autocast_set_enabled(d, enabled.into()) })
}

/// Whether autocast is enabled for `device`'s device type in this thread.
pub fn autocast_enabled(device: Device) -> Result<bool> {
    const OP: &str = "autocast_enabled";
    let d = device_type(OP, device)?;
    let mut on = 0;
    check(OP, unsafe { ffi::bt_shim_autocast_is_enabled(d, &mut on) })?;
    Ok(on != 0)
}

/// An autocast region: ops that autocast lists (matmul, conv, linear...) run in `kind` on
/// `device`'s device type until the guard is dropped; reductions and losses autocast lists as
/// f32-only (sum, softmax, ...) stay in f32, and parameters stay f32 (master weights).
///
/// ```no_run
/// # fn main() -> bt_shim::Result<()> {
/// let a = tch::Tensor::randn([4, 4], (tch::Kind::Float, tch::Device::Cpu));
/// let y = {
///     let _ac = bt_shim::AutocastGuard::new(tch::Device::Cpu, tch::Kind::BFloat16)?;
///     a.matmul(&a) // bf16
/// };
/// assert_eq!(y.kind(), tch::Kind::BFloat16);
/// # Ok(()) }
/// ```
#[must_use = "autocast is disabled again when the guard is dropped"]
pub struct AutocastGuard {
    device_type: i32,
    prev_enabled: i32,
    prev_dtype: i32,
    // Autocast state is thread-local: the guard must be dropped where it was created.
    _not_send: PhantomData<*const ()>,
}

impl AutocastGuard {
    /// Enters an autocast region for `device`'s device type with dtype `kind` (f16 or bf16).
    pub fn new(device: Device, kind: Kind) -> Result<Self> {
        const OP: &str = "AutocastGuard::new";
        let (d, k) = (device_type(OP, device)?, scalar_type(OP, kind)?);
        let (mut prev_enabled, mut prev_dtype) = (0, 0);
        check(OP, unsafe { ffi::bt_shim_autocast_enter(d, k, &mut prev_enabled, &mut prev_dtype) })?;
        Ok(Self { device_type: d, prev_enabled, prev_dtype, _not_send: PhantomData })
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        let r = check("AutocastGuard::drop", unsafe {
            ffi::bt_shim_autocast_exit(self.device_type, self.prev_enabled, self.prev_dtype)
        });
        // Restoring plain thread-local flags cannot realistically fail; if it did, panicking in
        // drop would abort during unwinding, so report and carry on.
        if let Err(e) = r {
            eprintln!("bt-shim: {e}");
        }
    }
}
