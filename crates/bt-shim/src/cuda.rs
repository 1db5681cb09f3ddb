//! CUDA devices, side streams, events and graphs.
//!
//! Every function here first checks that the shim was built with CUDA and that the device
//! exists, and returns [`Error::CudaUnavailable`] otherwise, so CPU machines get an error, never
//! a crash. Streams and the current-stream setting are per thread and per device, as in
//! libtorch.
use std::ffi::{c_char, c_int, c_void, CStr};
use std::marker::PhantomData;

use tch::Tensor;

use crate::error::{Error, Result};
use crate::ffi::{self, check};

/// Whether this build compiled the CUDA parts (`csrc/cuda.cpp` with `BT_SHIM_CUDA`): libtorch
/// had libtorch_cuda and the CUDA runtime headers were found at build time.
pub fn built_with_cuda() -> bool {
    unsafe { ffi::bt_shim_built_with_cuda() != 0 }
}

/// Number of CUDA devices the process sees; 0 without a driver, without devices, or when the
/// shim was built without CUDA.
pub fn cuda_device_count() -> usize {
    usize::try_from(unsafe { ffi::bt_shim_cuda_device_count() }).unwrap_or(0)
}

fn require(op: &'static str, device: usize) -> Result<c_int> {
    if !built_with_cuda() {
        return Err(Error::CudaUnavailable { op, reason: "bt-shim was built without CUDA support".into() });
    }
    let n = cuda_device_count();
    if device >= n {
        return Err(Error::CudaUnavailable {
            op,
            reason: format!("CUDA device {device} requested, {n} device(s) available"),
        });
    }
    Ok(device as c_int)
}

/// What `torch.cuda.get_device_properties(i)` reports, the parts we print and use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceProperties {
    /// Marketing name, e.g. "NVIDIA H200".
    pub name: String,
    /// Compute capability major (9 for Hopper).
    pub major: i32,
    /// Compute capability minor.
    pub minor: i32,
    /// Global memory in bytes.
    pub total_memory: u64,
    /// Streaming multiprocessor count.
    pub multiprocessors: i32,
}

/// Properties of CUDA device `device`.
pub fn cuda_device_properties(device: usize) -> Result<DeviceProperties> {
    const OP: &str = "cuda_device_properties";
    let d = require(OP, device)?;
    let mut name = [0 as c_char; 256];
    let (mut major, mut minor, mut mem, mut sms) = (0, 0, 0u64, 0);
    check(OP, unsafe {
        ffi::bt_shim_cuda_device_properties(
            d,
            name.as_mut_ptr(),
            name.len(),
            &mut major,
            &mut minor,
            &mut mem,
            &mut sms,
        )
    })?;
    // SAFETY: the C side always NUL-terminates within `name.len()`.
    let name = unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
    Ok(DeviceProperties { name, major, minor, total_memory: mem, multiprocessors: sms })
}

/// Blocks the host until all work on `device` has finished (`torch.cuda.synchronize(device)`).
pub fn cuda_synchronize(device: usize) -> Result<()> {
    const OP: &str = "cuda_synchronize";
    let d = require(OP, device)?;
    check(OP, unsafe { ffi::bt_shim_cuda_synchronize(d) })
}

/// Blocks the host until the work queued so far on this thread's current stream of `device`
/// has finished (cheaper than [`cuda_synchronize`] when side streams are busy with prefetch).
pub fn current_stream_synchronize(device: usize) -> Result<()> {
    const OP: &str = "current_stream_synchronize";
    let d = require(OP, device)?;
    check(OP, unsafe { ffi::bt_shim_cuda_current_stream_synchronize(d) })
}

/// A CUDA stream of libtorch's pool, as a (stream id, device) pair. Copy: it is a name, the
/// stream itself lives for the whole process (libtorch's pool never frees its streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaStream {
    id: i64,
    device: c_int,
}

impl CudaStream {
    /// A side stream from libtorch's pool on `device` (`torch.cuda.Stream()`); the pool hands
    /// out its streams round-robin.
    pub fn new(device: usize) -> Result<Self> {
        Self::from_pool(device, false)
    }

    /// A side stream from the pool, high or normal priority.
    pub fn from_pool(device: usize, high_priority: bool) -> Result<Self> {
        const OP: &str = "CudaStream::from_pool";
        let d = require(OP, device)?;
        let mut id = 0;
        check(OP, unsafe { ffi::bt_shim_cuda_stream_from_pool(d, high_priority.into(), &mut id) })?;
        Ok(Self { id, device: d })
    }

    /// This thread's current stream on `device` (the default stream unless changed).
    pub fn current(device: usize) -> Result<Self> {
        const OP: &str = "CudaStream::current";
        let d = require(OP, device)?;
        let mut id = 0;
        check(OP, unsafe { ffi::bt_shim_cuda_current_stream(d, &mut id) })?;
        Ok(Self { id, device: d })
    }

    /// The default (legacy, id 0) stream of `device`.
    pub fn default_stream(device: usize) -> Result<Self> {
        const OP: &str = "CudaStream::default_stream";
        let d = require(OP, device)?;
        let mut id = 0;
        check(OP, unsafe { ffi::bt_shim_cuda_default_stream(d, &mut id) })?;
        Ok(Self { id, device: d })
    }

    /// The device index of this stream.
    pub fn device(&self) -> usize {
        self.device as usize
    }

    /// Blocks the host until this stream's queued work has finished.
    pub fn synchronize(&self) -> Result<()> {
        check("CudaStream::synchronize", unsafe { ffi::bt_shim_cuda_stream_synchronize(self.id, self.device) })
    }

    /// Whether all work queued on this stream has finished (non-blocking).
    pub fn query(&self) -> Result<bool> {
        let mut done = 0;
        check("CudaStream::query", unsafe { ffi::bt_shim_cuda_stream_query(self.id, self.device, &mut done) })?;
        Ok(done != 0)
    }

    /// Makes this stream wait (on the GPU; the host does not block) for `event`.
    pub fn wait_event(&self, event: &CudaEvent) -> Result<()> {
        check("CudaStream::wait_event", unsafe { ffi::bt_shim_cuda_event_block(event.raw, self.id, self.device) })
    }

    /// Makes this stream current on its device for this thread until the guard drops
    /// (`with torch.cuda.stream(s):`).
    pub fn make_current(&self) -> Result<CudaStreamGuard> {
        let mut prev = 0;
        check("CudaStream::make_current", unsafe {
            ffi::bt_shim_cuda_exchange_stream(self.id, self.device, &mut prev)
        })?;
        Ok(CudaStreamGuard { prev: CudaStream { id: prev, device: self.device }, _not_send: PhantomData })
    }
}

/// Restores the previous current stream on drop; see [`CudaStream::make_current`].
#[must_use = "the previous stream is restored when the guard is dropped"]
pub struct CudaStreamGuard {
    prev: CudaStream,
    // The current stream is thread-local.
    _not_send: PhantomData<*const ()>,
}

impl Drop for CudaStreamGuard {
    fn drop(&mut self) {
        let mut ignored = 0;
        let r = check("CudaStreamGuard::drop", unsafe {
            ffi::bt_shim_cuda_exchange_stream(self.prev.id, self.prev.device, &mut ignored)
        });
        if let Err(e) = r {
            eprintln!("bt-shim: {e}");
        }
    }
}

/// `dst.copy_(src, non_blocking)` enqueued on `stream` instead of the current stream: with a
/// pinned host `src` and `non_blocking = true` the host-to-device copy overlaps the compute on
/// the main stream. Order it against the consumer with a [`CudaEvent`] recorded on `stream`
/// and waited on by the consumer's stream; if `dst` was allocated on another stream, see
/// [`record_stream`].
pub fn copy_on_stream(dst: &Tensor, src: &Tensor, stream: &CudaStream, non_blocking: bool) -> Result<()> {
    const OP: &str = "copy_on_stream";
    require(OP, stream.device())?;
    check(OP, unsafe {
        ffi::bt_shim_copy_on_stream(dst.as_ptr(), src.as_ptr(), stream.id, stream.device, non_blocking.into())
    })
}

/// `t.record_stream(stream)`: tells libtorch's caching allocator that `t` (allocated on another
/// stream) is used on `stream`, so its memory is not reused before `stream`'s work is done.
pub fn record_stream(t: &Tensor, stream: &CudaStream) -> Result<()> {
    const OP: &str = "record_stream";
    require(OP, stream.device())?;
    check(OP, unsafe { ffi::bt_shim_record_stream(t.as_ptr(), stream.id, stream.device) })
}

/// A CUDA event (`torch.cuda.Event`): a marker in a stream that other streams can wait for.
pub struct CudaEvent {
    raw: *mut c_void,
    device: usize,
}

// SAFETY: a c10::Event wraps a cudaEvent_t, which CUDA allows to be recorded/waited/queried from
// any thread; the handoff "loader thread records, main thread waits" is the intended use. Not
// Sync: `record` mutates it.
unsafe impl Send for CudaEvent {}

impl CudaEvent {
    /// A new event for streams of `device`; `enable_timing` allows [`CudaEvent::elapsed_ms`]
    /// (at a small cost per record, hence off for pure synchronization events).
    pub fn new(device: usize, enable_timing: bool) -> Result<Self> {
        const OP: &str = "CudaEvent::new";
        require(OP, device)?;
        let mut raw = std::ptr::null_mut();
        check(OP, unsafe { ffi::bt_shim_cuda_event_new(enable_timing.into(), &mut raw) })?;
        Ok(Self { raw, device })
    }

    /// Records the event on this thread's current stream of its device.
    pub fn record(&mut self) -> Result<()> {
        let s = CudaStream::current(self.device)?;
        self.record_on(&s)
    }

    /// Records the event on `stream`.
    pub fn record_on(&mut self, stream: &CudaStream) -> Result<()> {
        check("CudaEvent::record_on", unsafe { ffi::bt_shim_cuda_event_record(self.raw, stream.id, stream.device) })
    }

    /// Makes this thread's current stream wait for the event (GPU-side; the host returns at once).
    pub fn wait(&self) -> Result<()> {
        CudaStream::current(self.device)?.wait_event(self)
    }

    /// Blocks the host until the event has completed.
    pub fn synchronize(&self) -> Result<()> {
        check("CudaEvent::synchronize", unsafe { ffi::bt_shim_cuda_event_synchronize(self.raw) })
    }

    /// Whether the work before the event has completed (non-blocking).
    pub fn query(&self) -> Result<bool> {
        let mut done = 0;
        check("CudaEvent::query", unsafe { ffi::bt_shim_cuda_event_query(self.raw, &mut done) })?;
        Ok(done != 0)
    }

    /// Milliseconds of GPU time from `self` to `end` (both recorded with timing enabled, both
    /// completed).
    pub fn elapsed_ms(&self, end: &CudaEvent) -> Result<f64> {
        let mut ms = 0.0;
        check("CudaEvent::elapsed_ms", unsafe { ffi::bt_shim_cuda_event_elapsed_ms(self.raw, end.raw, &mut ms) })?;
        Ok(ms)
    }
}

impl Drop for CudaEvent {
    fn drop(&mut self) {
        unsafe { ffi::bt_shim_cuda_event_free(self.raw) }
    }
}

/// A CUDA graph (`torch.cuda.CUDAGraph`): capture a fixed sequence of kernels once, replay it
/// with one launch. Inputs and outputs must live in tensors allocated before or during capture
/// and reused across replays (copy new data into them), as in PyTorch.
pub struct CudaGraph {
    raw: *mut c_void,
    device: usize,
    // Capture makes a stream current for this thread until capture_end.
    _not_send: PhantomData<*const ()>,
}

impl CudaGraph {
    /// An empty graph for `device`.
    pub fn new(device: usize) -> Result<Self> {
        const OP: &str = "CudaGraph::new";
        require(OP, device)?;
        let mut raw = std::ptr::null_mut();
        check(OP, unsafe { ffi::bt_shim_cuda_graph_new(&mut raw) })?;
        Ok(Self { raw, device, _not_send: PhantomData })
    }

    /// Starts capturing work queued on this thread: `stream` (a side stream, never the default
    /// one; CUDA cannot capture the legacy default stream) becomes current until
    /// [`CudaGraph::capture_end`]. Synchronize before capturing, and warm up the captured code
    /// once on a side stream first (cuDNN/cuBLAS autotuning and lazy init cannot be captured).
    pub fn capture_begin(&mut self, stream: &CudaStream) -> Result<()> {
        const OP: &str = "CudaGraph::capture_begin";
        if stream.device() != self.device {
            return Err(Error::Unsupported {
                op: OP,
                what: "capture stream device",
                value: format!("stream on cuda:{}, graph on cuda:{}", stream.device(), self.device),
            });
        }
        check(OP, unsafe { ffi::bt_shim_cuda_graph_capture_begin(self.raw, stream.id, stream.device) })
    }

    /// Ends the capture, instantiates the graph and restores the previous current stream.
    pub fn capture_end(&mut self) -> Result<()> {
        check("CudaGraph::capture_end", unsafe { ffi::bt_shim_cuda_graph_capture_end(self.raw) })
    }

    /// Launches the captured work on the current stream.
    pub fn replay(&self) -> Result<()> {
        check("CudaGraph::replay", unsafe { ffi::bt_shim_cuda_graph_replay(self.raw) })
    }

    /// Drops the captured graph (and its private memory pool reference) so it can be captured
    /// again.
    pub fn reset(&mut self) -> Result<()> {
        check("CudaGraph::reset", unsafe { ffi::bt_shim_cuda_graph_reset(self.raw) })
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        unsafe { ffi::bt_shim_cuda_graph_free(self.raw) }
    }
}
