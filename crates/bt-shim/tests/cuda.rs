//! CUDA tests of the shim, all `#[ignore = "needs CUDA"]` so that a machine without a GPU
//! reports them as ignored rather than passed; on the GPU machine `scripts/gpu-check.sh` runs
//! them with `--include-ignored` (or: `cargo test -p bt-shim --test cuda -- --ignored`). Run
//! without a CUDA device, they fail.
use bt_shim::*;
use std::sync::{Mutex, MutexGuard};
use tch::{Device, Kind, Tensor};

/// The tests share one GPU and run on parallel threads; a graph capture (global capture mode)
/// makes CUDA calls from other threads fail, so each test holds this lock.
static GPU: Mutex<()> = Mutex::new(());

/// The first CUDA device and the GPU lock.
///
/// # Panics
/// Without a CUDA device: these tests were asked for explicitly (`--ignored`), so a machine
/// that cannot run them is a failure, not a pass.
fn cuda() -> (Device, MutexGuard<'static, ()>) {
    assert!(
        cuda_device_count() > 0,
        "no CUDA device (built_with_cuda = {}): these tests need a GPU",
        built_with_cuda()
    );
    (Device::Cuda(0), GPU.lock().unwrap_or_else(|e| e.into_inner()))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_device(Device::Cpu).to_kind(Kind::Double) - b.to_device(Device::Cpu).to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
#[ignore = "needs CUDA"]
fn device_properties_are_reported() {
    let (_, _gpu) = cuda();
    assert!(built_with_cuda());
    let p = cuda_device_properties(0).unwrap();
    eprintln!("{p:?}");
    assert!(!p.name.is_empty());
    assert!(p.major >= 3 && p.total_memory > 0 && p.multiprocessors > 0, "{p:?}");
    let n = cuda_device_count();
    assert!(matches!(cuda_device_properties(n), Err(Error::CudaUnavailable { .. })));
}

#[test]
#[ignore = "needs CUDA"]
fn pinned_copy_on_side_stream_is_ordered_by_an_event() {
    let (dev, _gpu) = cuda();
    tch::manual_seed(1);
    let host = Tensor::randn([1 << 20], (Kind::Float, Device::Cpu));
    let pinned = pin_memory(&host).unwrap();
    assert!(is_pinned(&pinned).unwrap());
    assert!(!is_pinned(&host).unwrap());

    let dst = Tensor::empty([1 << 20], (Kind::Float, dev));
    let side = CudaStream::new(0).unwrap();
    assert_ne!(side, CudaStream::current(0).unwrap());
    // dst was allocated on the current stream and is written on `side`.
    record_stream(&dst, &side).unwrap();
    copy_on_stream(&dst, &pinned, &side, true).unwrap();
    let mut ready = CudaEvent::new(0, false).unwrap();
    ready.record_on(&side).unwrap();
    ready.wait().unwrap();
    let y = &dst * 2.0;
    current_stream_synchronize(0).unwrap();
    assert_eq!(max_abs_diff(&y, &(&host * 2.0)), 0.0);
}

#[test]
#[ignore = "needs CUDA"]
fn timing_events_measure_gpu_time() {
    let (dev, _gpu) = cuda();
    let a = Tensor::randn([1024, 1024], (Kind::Float, dev));
    let mut start = CudaEvent::new(0, true).unwrap();
    let mut end = CudaEvent::new(0, true).unwrap();
    start.record().unwrap();
    let _ = a.matmul(&a);
    end.record().unwrap();
    end.synchronize().unwrap();
    assert!(end.query().unwrap());
    let ms = start.elapsed_ms(&end).unwrap();
    assert!(ms >= 0.0, "elapsed {ms} ms");
}

#[test]
#[ignore = "needs CUDA"]
fn cuda_graph_replays_the_captured_step_on_new_inputs() {
    let (dev, _gpu) = cuda();
    let x = Tensor::zeros([4096], (Kind::Float, dev));
    let side = CudaStream::new(0).unwrap();
    {
        // Warm-up on the capture stream, as torch.cuda.graph's docs require.
        let _g = side.make_current().unwrap();
        let _ = &x * 2.0 + 1.0;
    }
    cuda_synchronize(0).unwrap();
    let mut graph = CudaGraph::new(0).unwrap();
    graph.capture_begin(&side).unwrap();
    let y = &x * 2.0 + 1.0;
    graph.capture_end().unwrap();

    tch::manual_seed(2);
    let input = Tensor::randn([4096], (Kind::Float, dev));
    tch::no_grad(|| x.shallow_clone().copy_(&input));
    graph.replay().unwrap();
    cuda_synchronize(0).unwrap();
    assert!(max_abs_diff(&y, &(&input * 2.0 + 1.0)) <= 1e-6);
}

#[test]
#[ignore = "needs CUDA"]
fn foreach_on_cuda_matches_cpu() {
    let (dev, _gpu) = cuda();
    tch::manual_seed(3);
    let shapes: [&[i64]; 3] = [&[64, 3, 3, 3], &[64], &[512, 10]];
    let xs: Vec<Tensor> = shapes.iter().map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu))).collect();
    let ys: Vec<Tensor> = shapes.iter().map(|s| Tensor::rand(*s, (Kind::Float, Device::Cpu)) + 0.5).collect();
    let (xg, yg): (Vec<_>, Vec<_>) =
        (xs.iter().map(|t| t.to_device(dev)).collect(), ys.iter().map(|t| t.to_device(dev)).collect());
    for (x, y) in [(&xs, &ys), (&xg, &yg)] {
        foreach_lerp_(x, y, 0.1).unwrap();
        foreach_addcdiv_(x, y, y, -0.5).unwrap();
        foreach_mul_(x, y).unwrap();
    }
    for (c, g) in xs.iter().zip(&xg) {
        assert!(max_abs_diff(c, g) <= 1e-5);
    }
    let (nc, ng) = (foreach_norm(&xs).unwrap(), foreach_norm(&xg).unwrap());
    for (c, g) in nc.iter().zip(&ng) {
        assert!(max_abs_diff(c, g) <= 1e-4 * c.double_value(&[]).max(1.0));
    }
}

#[test]
#[ignore = "needs CUDA"]
fn cuda_autocast_bf16_and_channels_last_conv() {
    let (dev, _gpu) = cuda();
    set_allow_tf32(false).unwrap();
    tch::manual_seed(4);
    let x = Tensor::randn([8, 3, 32, 32], (Kind::Float, dev));
    let w = Tensor::randn([16, 3, 3, 3], (Kind::Float, dev));
    let want = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
    let got =
        to_channels_last(&x).unwrap().conv2d(&to_channels_last(&w).unwrap(), None::<Tensor>, [1, 1], [1, 1], [1, 1], 1);
    assert!(is_channels_last(&got));
    assert!(max_abs_diff(&got, &want) <= 1e-3);

    let y = {
        let _ac = AutocastGuard::new(dev, Kind::BFloat16).unwrap();
        x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)
    };
    assert_eq!(y.kind(), Kind::BFloat16);
    assert!(!autocast_enabled(dev).unwrap());
}
