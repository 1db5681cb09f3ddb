//! The one door between device tensors and host values.
//!
//! On CUDA, reading a device value on the host (`double_value`, `Vec::try_from`, `.to(cpu)`)
//! waits for every queued kernel: a *sync*. Turning a host number into a device tensor
//! (`Tensor::from(x).to(cuda)`) is a pageable host-to-device *copy*, which also blocks the host
//! until the copy is done. Either one inside the training step stalls the CPU that should be
//! queueing the next kernels, and neither can be recorded into a CUDA graph.
//!
//! Every such transfer of the step path (`bt-train`'s loop and guard, `bt-optim`'s optimizers,
//! `bt-loss`'s data-parallel row count) goes through this crate, which counts it in a
//! thread-local [`Counts`]. The counter is what makes "no host sync between log points"
//! testable on any machine: on CPU no transfer is a real sync, but the structure is the same, so
//! a test that runs steps and sees the counter unchanged between log points proves the CUDA run
//! has no hidden sync either. Thread-local, not process-wide, because the trainer runs on its
//! caller's thread and tests run in parallel in one process.
//!
//! A `fill_(x)` with a host scalar is *not* a transfer (the value travels as a kernel
//! argument): it is neither routed nor counted. It cannot be captured into a CUDA graph with a
//! changing value, which is why the graph-capturable step reads its learning rate from a device
//! table instead.
#![deny(missing_docs)]

use std::cell::Cell;
use tch::{Device, Kind, TchError, Tensor};

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
    static WRITES: Cell<u64> = const { Cell::new(0) };
}

/// Transfers made on this thread so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Device-to-host reads (each one a sync on CUDA).
    pub reads: u64,
    /// Host-to-device uploads of host values (each one a blocking copy on CUDA).
    pub writes: u64,
}

impl Counts {
    /// Reads plus writes.
    pub fn total(&self) -> u64 {
        self.reads + self.writes
    }
}

/// The transfers made on this thread so far.
pub fn counts() -> Counts {
    Counts { reads: READS.with(Cell::get), writes: WRITES.with(Cell::get) }
}

fn read() {
    READS.with(|c| c.set(c.get() + 1));
}

fn write() {
    WRITES.with(|c| c.set(c.get() + 1));
}

/// Every element of `t` (any shape, any numeric kind) as f64, row-major: one read.
pub fn read_f64s(t: &Tensor) -> Result<Vec<f64>, TchError> {
    read();
    let host = t.f_detach()?.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?.f_contiguous()?.f_view([-1])?;
    Vec::<f64>::try_from(&host)
}

/// The single element of `t` as f64: one read.
pub fn read_f64(t: &Tensor) -> Result<f64, TchError> {
    read();
    t.f_detach()?.f_to_kind(Kind::Double)?.f_double_value(&[])
}

/// Every element of `t` as i64, row-major: one read.
pub fn read_i64s(t: &Tensor) -> Result<Vec<i64>, TchError> {
    read();
    let host = t.f_detach()?.f_to_device(Device::Cpu)?.f_to_kind(Kind::Int64)?.f_contiguous()?.f_view([-1])?;
    Vec::<i64>::try_from(&host)
}

/// A copy of `t` in host memory (for checkpoints, exports): one read.
pub fn to_host(t: &Tensor) -> Result<Tensor, TchError> {
    read();
    t.f_detach()?.f_to_device(Device::Cpu)
}

/// `values` as a 1-d tensor of `kind` on `device`: one write.
pub fn from_f64s(values: &[f64], kind: Kind, device: Device) -> Result<Tensor, TchError> {
    write();
    Tensor::from_slice(values).f_to_kind(kind)?.f_to_device(device)
}

/// `values` as a 1-d i64 tensor on `device`: one write.
pub fn from_i64s(values: &[i64], device: Device) -> Result<Tensor, TchError> {
    write();
    Tensor::from_slice(values).f_to_device(device)
}

/// `v` as a 0-d tensor of `kind` on `device`: one write.
pub fn scalar_tensor(v: f64, kind: Kind, device: Device) -> Result<Tensor, TchError> {
    write();
    Tensor::from(v).f_to_kind(kind)?.f_to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_transfer_once_and_round_trips() {
        let c0 = counts();
        let t = from_f64s(&[1.5, -2.0, f64::NAN], Kind::Float, Device::Cpu).unwrap();
        let back = read_f64s(&t).unwrap();
        assert_eq!(&back[..2], &[1.5, -2.0]);
        assert!(back[2].is_nan());
        let s = scalar_tensor(0.25, Kind::Double, Device::Cpu).unwrap();
        assert_eq!(read_f64(&s).unwrap(), 0.25);
        assert_eq!(read_i64s(&from_i64s(&[3, 4], Device::Cpu).unwrap()).unwrap(), [3, 4]);
        let c = counts();
        assert_eq!((c.reads - c0.reads, c.writes - c0.writes), (3, 3));
        // Another thread has its own counter.
        std::thread::spawn(|| assert_eq!(counts(), Counts::default())).join().unwrap();
    }
}
