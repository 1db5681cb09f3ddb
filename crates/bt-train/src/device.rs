//! The CUDA side of the train step: precision and memory-format choice, backend switches, and
//! the input uploader that copies the next batch on a side stream while the current step runs.
//!
//! # Precision: mixed precision as PyTorch AMP does it, in bt-model
//! bf16 comes from [`bt_model::BarlowTwins::set_precision`], not from a `bt_shim::AutocastGuard`:
//! convolutions and linear layers run in bf16 on bf16 activations, batch norm computes in f32 on
//! bf16 input and returns bf16, the embeddings handed to the loss are f32, and the loss reduces
//! in f32. Each step, [`bt_model::BarlowTwins::refresh_low_precision_weights`] casts every weight
//! once into a bf16 copy (channels-last for conv weights when `channels_last`) that both views'
//! forwards reuse; the f32 variables stay the master weights in bt-optim's flat buffer, and the
//! casts' backward accumulates the gradient into their f32 `.grad`. The casts work on CPU too, so
//! the CPU tests and `bt-cli selftest` exercise the code path the GPU runs.
//!
//! # Channels-last
//! Inputs are converted to NHWC on the side stream, and the per-step bf16 weight copies are NHWC
//! too, so cuDNN neither relays the weights out on every call nor mixes layouts. The f32 weights
//! themselves are not converted with `bt_shim::set_data`: the flat LAMB/LARS optimizer made every
//! parameter a view into one flat buffer, and re-pointing one would detach it from that buffer.
//!
//! # `run.fast_cuda` ("auto" on CUDA)
//! On a CUDA device, [`StepSettings::for_run`] uses bf16 and channels-last unless the config
//! says `run.fast_cuda = false`, so every preset is fast on a GPU without a CUDA-specific config,
//! and identical to its f32 definition on CPU.
//!
//! # `run.precision = "auto"`
//! [`resolve_precision`]: bf16 on CUDA and on CPUs that compute bf16 products in hardware
//! ([`cpu_bf16`]: AMX-BF16 tiles or AVX512-BF16 dot products, read from `cpuid` and the
//! OS-enabled register state in `XCR0`); f32 elsewhere, where oneDNN would emulate bf16 and be
//! slower than f32. Measured on an AVX512-BF16 CPU (AMD EPYC, 2 cores): the `cifar-resnet18`
//! preset runs 1.73x faster end to end in bf16, a bf16 step of the ImageNet ResNet-18 at 96 px
//! 1.50x, of `keras-seed` 1.28-1.43x; only the CPU demo's width-8 network gains nothing end to
//! end (0.94x; docs/RECIPES.md, "Precision on CPU").
//!
//! # TF32
//! cuDNN benchmark is switched on (drop-remainder batches have fixed shapes). TF32 is switched on
//! only for f32 runs: with bf16 the only f32 matrix products left are the loss's, and the fused
//! loss's `Σc² − Σdiag²` cancels badly with TF32's 10-bit mantissa.
use crate::error::{refuse, Result};
use bt_config::{Config, Precision};
use std::collections::VecDeque;
use tch::{Device, Kind, Tensor};

/// What the train step runs with on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepSettings {
    /// Precision of convolutions and linear layers.
    pub precision: Precision,
    /// Inputs in NHWC memory format.
    pub channels_last: bool,
}

impl StepSettings {
    /// The settings of `cfg` on `device`: on CUDA with `run.fast_cuda`, bf16 + channels-last;
    /// otherwise `run.precision` ([`resolve_precision`]: `auto` becomes bf16 or f32) and
    /// `run.channels_last`.
    ///
    /// # Errors
    /// Channels-last on CPU with `model.width < 8`: libtorch 2.11's oneDNN kernel for the
    /// weight gradient of the 4 -> 8 channel 1x1 shortcut convolution crashes (SIGSEGV with one
    /// thread) or never finishes (two threads) in NHWC; PyTorch itself does the same
    /// (`OMP_NUM_THREADS=1 python bench/step_torch.py --arch CifarResnet18 --width 4
    /// --channels-last`). Widths 8, 16, 32 and 64 run.
    pub fn for_run(cfg: &Config, device: Device) -> Result<Self> {
        if device.is_cuda() && cfg.run.fast_cuda {
            return Ok(Self { precision: Precision::Bf16, channels_last: true });
        }
        if !device.is_cuda() && cfg.run.channels_last && cfg.model.width < 8 {
            refuse!(
                "run.channels_last = true with model.width = {} on CPU: libtorch 2.11's NHWC weight-gradient \
                 kernel crashes or hangs for so few channels (an upstream oneDNN bug, PyTorch does the same); \
                 use model.width >= 8 or run.channels_last = false",
                cfg.model.width
            );
        }
        Ok(Self { precision: resolve_precision(cfg.run.precision, device), channels_last: cfg.run.channels_last })
    }

    /// Switches the process-wide backend flags for these settings (cuDNN benchmark; TF32 for
    /// f32 runs). A no-op on CPU.
    pub fn apply_backend(&self, device: Device) -> Result<()> {
        if device.is_cuda() {
            bt_shim::set_cudnn_benchmark(true);
            bt_shim::set_allow_tf32(self.precision == Precision::F32)?;
        }
        Ok(())
    }
}

/// The CPU's native bf16 matrix instructions, if it has any: `"amx-bf16"` (Intel Sapphire
/// Rapids and later: tile multiply-accumulate) or `"avx512-bf16"` (Intel Cooper Lake, AMD Zen 4
/// and later: `vdpbf16ps` dot products). Each needs the CPU's `cpuid` bit and the operating
/// system's enabling of the registers it uses (`XCR0`: the tile state for AMX, the AVX-512
/// state for AVX512-BF16). `None` on other CPUs and other architectures.
pub fn cpu_bf16() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
        // SAFETY: cpuid exists on every x86-64 CPU; leaf 7 is read only when the maximum leaf
        // (leaf 0's eax) covers it, and xgetbv only when cpuid says the OS enabled it (OSXSAVE).
        unsafe {
            if __cpuid(0).eax < 7 || (__cpuid(1).ecx >> 27) & 1 == 0 {
                return None;
            }
            let xcr0 = _xgetbv(0);
            let l7 = __cpuid_count(7, 0);
            let tiles = xcr0 & (0b11 << 17) == 0b11 << 17;
            if (l7.edx >> 22) & 1 == 1 && (l7.edx >> 24) & 1 == 1 && tiles {
                return Some("amx-bf16");
            }
            // XMM, YMM, opmask, ZMM_Hi256 and Hi16_ZMM state.
            let avx512_state = xcr0 & 0xe6 == 0xe6;
            if (l7.ebx >> 16) & 1 == 1 && avx512_state && l7.eax >= 1 && (__cpuid_count(7, 1).eax >> 5) & 1 == 1 {
                return Some("avx512-bf16");
            }
        }
        None
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// The precision a model runs with on `device`: `F32` and `Bf16` as they are; `Auto` is `Bf16`
/// on CUDA and on a CPU with [`cpu_bf16`], else `F32`.
pub fn resolve_precision(p: Precision, device: Device) -> Precision {
    match p {
        Precision::Auto if device.is_cuda() || cpu_bf16().is_some() => Precision::Bf16,
        Precision::Auto => Precision::F32,
        p => p,
    }
}

/// What `run.precision = "auto"` chose on `device`, and why (the log line and `bt-cli info`).
pub fn describe_auto(resolved: Precision, device: Device) -> String {
    match (resolved, device.is_cuda(), cpu_bf16()) {
        (Precision::Bf16, true, _) => "bf16 (CUDA)".into(),
        (Precision::Bf16, false, Some(isa)) => format!("bf16 (this CPU computes bf16 in hardware: {isa})"),
        _ => "f32 (this CPU has neither AMX-BF16 nor AVX512-BF16: bf16 would be emulated, slower than f32)".into(),
    }
}

/// Host batches to device tensors. On CUDA: pinned staging, the copy and the NHWC conversion on
/// a side stream, ordered before the consumer by an event ([`Staged::ready`]); the time the main
/// stream had to wait for a copy is measured with timing events. On CPU: wraps the data.
pub struct Uploader {
    device: Device,
    channels_last: bool,
    stream: Option<bt_shim::CudaStream>,
    /// (main stream reached the batch, copy finished) pairs not yet read back.
    pending: VecDeque<(bt_shim::CudaEvent, bt_shim::CudaEvent)>,
    wait_ms: f64,
    measured: usize,
    /// CUDA: pinned host buffers the batches are written into (the one host copy), reused.
    staging: [Staging; 2],
    next: usize,
}

/// One set of pinned buffers (one per view) and the event of the last copy out of them. Two
/// sets, used in turn: batch i+1 is written while batch i's copy may still be running.
#[derive(Default)]
struct Staging {
    bufs: Vec<Tensor>,
    copied: Option<bt_shim::CudaEvent>,
}

/// Copies `src` into the contiguous f32 host tensor `dst` (the pipeline's batch written straight
/// into a reused, e.g. pinned, buffer: one host copy).
fn fill_f32(dst: &Tensor, src: &[f32]) -> Result<()> {
    if dst.kind() != Kind::Float || dst.device() != Device::Cpu || !dst.is_contiguous() || dst.numel() != src.len() {
        return Err(crate::error::Error::Torch(tch::TchError::Kind(format!(
            "staging buffer {:?} {:?} on {:?} cannot take {} f32 values",
            dst.size(),
            dst.kind(),
            dst.device(),
            src.len()
        ))));
    }
    // SAFETY: `dst` is a contiguous CPU f32 tensor of exactly `src.len()` elements (checked
    // above) that this uploader owns; no copy out of it is in flight (the caller waited).
    unsafe { std::slice::from_raw_parts_mut(dst.data_ptr() as *mut f32, src.len()) }.copy_from_slice(src);
    Ok(())
}

/// A batch whose copy may still be in flight; call [`ready`](Staged::ready) before using it.
pub struct Staged {
    /// The tensors (valid on the main stream only after `ready`).
    pub tensors: Vec<Tensor>,
    copied: Option<bt_shim::CudaEvent>,
}

impl Uploader {
    /// An uploader for `device`.
    pub fn new(device: Device, channels_last: bool) -> Result<Self> {
        let stream = match device {
            Device::Cuda(i) => Some(bt_shim::CudaStream::new(i)?),
            _ => None,
        };
        Ok(Self {
            device,
            channels_last,
            stream,
            pending: VecDeque::new(),
            wait_ms: 0.0,
            measured: 0,
            staging: Default::default(),
            next: 0,
        })
    }

    /// Starts uploading `views` (each `n x 3 x side x side` f32, NCHW) and returns at once on
    /// CUDA.
    pub fn upload(&mut self, views: &[&[f32]], n: usize, side: usize) -> Result<Staged> {
        let shape = [n as i64, 3, side as i64, side as i64];
        let Some(stream) = self.stream else {
            // CPU: the tensors are the data (one copy out of the pipeline's buffers).
            let host: Vec<Tensor> =
                views.iter().map(|v| Tensor::f_from_slice(v)?.f_view(shape)).collect::<std::result::Result<_, _>>()?;
            let tensors = host
                .into_iter()
                .map(|t| if self.channels_last { bt_shim::to_channels_last(&t).map_err(Into::into) } else { Ok(t) })
                .collect::<Result<Vec<_>>>()?;
            return Ok(Staged { tensors, copied: None });
        };
        let Device::Cuda(d) = self.device else { unreachable!("a stream implies CUDA") };
        // Allocate *and* copy on the side stream (`with torch.cuda.stream(s): x.cuda(non_blocking)`):
        // a block allocated on the main stream could still be read by queued main-stream kernels
        // of an earlier step when the side stream overwrites it. `ready` then hands the tensors
        // to the main stream with record_stream.
        // The one host copy: the batch goes straight into a pinned buffer of the slot, once the
        // copy that last read that slot has finished (normally long ago: a step has passed).
        let slot = &mut self.staging[self.next];
        self.next = (self.next + 1) % 2;
        if let Some(ev) = slot.copied.take() {
            ev.synchronize()?;
        }
        let numel = shape.iter().product::<i64>();
        if slot.bufs.len() != views.len() || slot.bufs.iter().any(|b| b.numel() != numel as usize) {
            slot.bufs = (0..views.len())
                .map(|_| -> Result<Tensor> {
                    Ok(bt_shim::pin_memory(&Tensor::f_empty(shape, (Kind::Float, Device::Cpu))?)?)
                })
                .collect::<Result<_>>()?;
        }
        for (buf, v) in slot.bufs.iter().zip(views) {
            fill_f32(buf, v)?;
        }
        let _on_side = stream.make_current()?;
        let mut tensors = Vec::with_capacity(views.len());
        for buf in &slot.bufs {
            let g = buf.f_view(shape)?.to_device_(self.device, Kind::Float, true, false);
            tensors.push(if self.channels_last { bt_shim::to_channels_last(&g)? } else { g });
        }
        let mut ev = bt_shim::CudaEvent::new(d, true)?;
        ev.record_on(&stream)?;
        let mut slot_ev = bt_shim::CudaEvent::new(d, false)?;
        slot_ev.record_on(&stream)?;
        slot.copied = Some(slot_ev);
        Ok(Staged { tensors, copied: Some(ev) })
    }

    /// GPU milliseconds the main stream spent waiting for input copies so far (measured ones),
    /// and how many waits were measured. Reads back only events that have completed.
    pub fn wait_ms(&mut self) -> Result<(f64, usize)> {
        while let Some((reached, copied)) = self.pending.front() {
            if !(reached.query()? && copied.query()?) {
                break;
            }
            // Positive when the copy finished after the main stream got there: a stall.
            self.wait_ms += reached.elapsed_ms(copied)?.max(0.0);
            self.measured += 1;
            self.pending.pop_front();
        }
        Ok((self.wait_ms, self.measured))
    }

    /// Like [`wait_ms`](Self::wait_ms) after synchronizing the device (end of a run).
    pub fn final_wait_ms(&mut self) -> Result<(f64, usize)> {
        if let Device::Cuda(i) = self.device {
            bt_shim::cuda_synchronize(i)?;
        }
        self.wait_ms()
    }
}

impl Staged {
    /// Orders the copy before the main stream's next work and returns the tensors.
    pub fn ready(self, up: &mut Uploader) -> Result<Vec<Tensor>> {
        if let (Some(copied), Device::Cuda(d)) = (self.copied, up.device) {
            let main = bt_shim::CudaStream::current(d)?;
            let mut reached = bt_shim::CudaEvent::new(d, true)?;
            reached.record_on(&main)?;
            main.wait_event(&copied)?;
            for t in &self.tensors {
                bt_shim::record_stream(t, &main)?;
            }
            up.pending.push_back((reached, copied));
        }
        Ok(self.tensors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The detection agrees with the kernel's own reading of the CPU (`/proc/cpuinfo` flags
    /// `amx_bf16`, `avx512_bf16`), and `auto` follows it.
    #[test]
    fn cpu_bf16_agrees_with_proc_cpuinfo_and_auto_follows_it() {
        let found = cpu_bf16();
        if let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") {
            let flags: Vec<&str> = info
                .lines()
                .find(|l| l.starts_with("flags"))
                .map(|l| l.split_whitespace().collect())
                .unwrap_or_default();
            let want = if flags.contains(&"amx_bf16") {
                Some("amx-bf16")
            } else if flags.contains(&"avx512_bf16") {
                Some("avx512-bf16")
            } else {
                None
            };
            assert_eq!(found, want, "cpuid says {found:?}, /proc/cpuinfo says {want:?}");
        }
        let auto = resolve_precision(Precision::Auto, Device::Cpu);
        assert_eq!(auto == Precision::Bf16, found.is_some(), "auto is bf16 where the CPU computes bf16");
        assert_eq!(resolve_precision(Precision::Auto, Device::Cuda(0)), Precision::Bf16);
        for p in [Precision::F32, Precision::Bf16] {
            assert_eq!(resolve_precision(p, Device::Cpu), p, "explicit precisions are kept");
        }
        assert!(describe_auto(auto, Device::Cpu).starts_with(if auto == Precision::Bf16 { "bf16" } else { "f32" }));
    }

    fn batch(n: usize, side: usize, k: f32) -> Vec<f32> {
        (0..n * 3 * side * side).map(|i| (i % 251) as f32 * k).collect()
    }

    #[test]
    fn fill_writes_exactly_and_refuses_a_mismatched_buffer() {
        let t = Tensor::zeros([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let v = batch(2, 4, 0.5);
        fill_f32(&t, &v).unwrap();
        assert_eq!(Vec::<f32>::try_from(t.reshape([-1])).unwrap(), v);
        assert!(fill_f32(&t, &v[1..]).is_err(), "wrong length");
        let d = Tensor::zeros([v.len() as i64], (Kind::Double, Device::Cpu));
        assert!(fill_f32(&d, &v).unwrap_err().to_string().contains("Double"));
        let strided = Tensor::zeros([4, 96], (Kind::Float, Device::Cpu)).transpose(0, 1);
        assert!(fill_f32(&strided, &v).is_err(), "non-contiguous");
    }

    #[test]
    fn cpu_upload_is_the_batch_in_either_layout() {
        for cl in [false, true] {
            let mut up = Uploader::new(Device::Cpu, cl).unwrap();
            for k in [1.0, 2.0, 3.0] {
                let (a, b) = (batch(2, 8, k), batch(2, 8, -k));
                let ts = up.upload(&[&a, &b], 2, 8).unwrap().ready(&mut up).unwrap();
                assert_eq!(ts[0].size(), [2, 3, 8, 8]);
                assert_eq!(bt_shim::is_channels_last(&ts[0]), cl);
                assert_eq!(Vec::<f32>::try_from(ts[0].contiguous().reshape([-1])).unwrap(), a);
                assert_eq!(Vec::<f32>::try_from(ts[1].contiguous().reshape([-1])).unwrap(), b);
            }
        }
    }

    /// The staging buffers are pinned and reused (two slots in turn), and every batch arrives
    /// exactly even though the next one overwrites a buffer a copy may just have read.
    #[test]
    #[ignore = "needs CUDA"]
    fn cuda_upload_reuses_pinned_staging_and_copies_exactly() {
        let dev = Device::Cuda(0);
        let mut up = Uploader::new(dev, true).unwrap();
        let mut kept = Vec::new();
        for i in 0..6 {
            let (a, b) = (batch(4, 32, i as f32), batch(4, 32, -(i as f32)));
            let ts = up.upload(&[&a, &b], 4, 32).unwrap().ready(&mut up).unwrap();
            kept.push((a, b, ts));
        }
        for (a, b, ts) in &kept {
            assert_eq!(Vec::<f32>::try_from(ts[0].to_device(Device::Cpu).contiguous().reshape([-1])).unwrap(), *a);
            assert_eq!(Vec::<f32>::try_from(ts[1].to_device(Device::Cpu).contiguous().reshape([-1])).unwrap(), *b);
        }
        let ptrs: Vec<usize> = up.staging.iter().flat_map(|s| s.bufs.iter().map(|b| b.data_ptr() as usize)).collect();
        assert_eq!(ptrs.len(), 4);
        assert!(up.staging.iter().all(|s| s.bufs.iter().all(|b| bt_shim::is_pinned(b).unwrap())));
        // One more batch of the same size: the same buffers.
        let a = batch(4, 32, 9.0);
        up.upload(&[&a, &a], 4, 32).unwrap().ready(&mut up).unwrap();
        let again: Vec<usize> = up.staging.iter().flat_map(|s| s.bufs.iter().map(|b| b.data_ptr() as usize)).collect();
        assert_eq!(ptrs, again);
    }
}
