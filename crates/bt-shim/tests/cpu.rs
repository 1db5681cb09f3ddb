//! CPU tests of the shim: each shim op against the per-tensor tch op (or an analytic result)
//! that does the same thing without the shim.
use bt_shim::*;
use tch::{Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

/// Shapes like a small network's parameters: conv weight, bias, linear weight, a 1-element one.
fn shapes() -> Vec<Vec<i64>> {
    vec![vec![8, 3, 3, 3], vec![8], vec![10, 32], vec![1]]
}

fn randn_list(seed: i64) -> Vec<Tensor> {
    tch::manual_seed(seed);
    shapes().iter().map(|s| Tensor::randn(s.as_slice(), CPU)).collect()
}

/// Positive values (for sqrt and as divisors).
fn rand_pos_list(seed: i64) -> Vec<Tensor> {
    tch::manual_seed(seed);
    shapes().iter().map(|s| Tensor::rand(s.as_slice(), CPU) + 0.5).collect()
}

fn deep_copy(xs: &[Tensor]) -> Vec<Tensor> {
    xs.iter().map(|x| x.copy()).collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// `got[i]` equals `want[i]` within `tol` (1e-6 covers a different but equivalent operation order).
fn assert_lists_close(op: &str, got: &[Tensor], want: &[Tensor], tol: f64) {
    assert_eq!(got.len(), want.len(), "{op}: list length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = max_abs_diff(g, w);
        assert!(d <= tol, "{op}: tensor {i} differs by {d} (tol {tol})");
    }
}

#[test]
fn foreach_scalar_ops_match_per_tensor_ops() {
    let xs = randn_list(1);
    let s = Tensor::from(-0.75f32);

    let a = deep_copy(&xs);
    foreach_mul_scalar_(&a, 0.3).unwrap();
    let want: Vec<_> = xs.iter().map(|x| x * 0.3).collect();
    assert_lists_close("foreach_mul_scalar_", &a, &want, 1e-6);

    let a = deep_copy(&xs);
    foreach_add_scalar_(&a, -1.25).unwrap();
    let want: Vec<_> = xs.iter().map(|x| x - 1.25).collect();
    assert_lists_close("foreach_add_scalar_", &a, &want, 1e-6);

    let a = deep_copy(&xs);
    foreach_mul_tensor_(&a, &s).unwrap();
    let want: Vec<_> = xs.iter().map(|x| x * &s).collect();
    assert_lists_close("foreach_mul_tensor_", &a, &want, 1e-6);

    let a = deep_copy(&xs);
    foreach_zero_(&a).unwrap();
    let want: Vec<_> = xs.iter().map(|x| x.zeros_like()).collect();
    assert_lists_close("foreach_zero_", &a, &want, 0.0);
}

#[test]
fn foreach_binary_ops_match_per_tensor_ops() {
    let (xs, ys) = (randn_list(2), randn_list(3));
    let pos = rand_pos_list(4);

    let a = deep_copy(&xs);
    foreach_add_(&a, &ys, -0.1).unwrap();
    let want: Vec<_> = xs.iter().zip(&ys).map(|(x, y)| x + y * -0.1).collect();
    assert_lists_close("foreach_add_", &a, &want, 1e-6);

    let a = deep_copy(&xs);
    foreach_mul_(&a, &ys).unwrap();
    let want: Vec<_> = xs.iter().zip(&ys).map(|(x, y)| x * y).collect();
    assert_lists_close("foreach_mul_", &a, &want, 0.0);

    let a = deep_copy(&xs);
    foreach_div_(&a, &pos).unwrap();
    let want: Vec<_> = xs.iter().zip(&pos).map(|(x, y)| x / y).collect();
    assert_lists_close("foreach_div_", &a, &want, 1e-6);

    let a = deep_copy(&xs);
    foreach_lerp_(&a, &ys, 0.1).unwrap();
    let want: Vec<_> = xs.iter().zip(&ys).map(|(x, y)| x.lerp(y, 0.1)).collect();
    assert_lists_close("foreach_lerp_", &a, &want, 1e-6);

    let a = deep_copy(&xs);
    foreach_copy_(&a, &ys, false).unwrap();
    assert_lists_close("foreach_copy_", &a, &ys, 0.0);
}

#[test]
fn foreach_ternary_ops_match_per_tensor_ops() {
    let (xs, t1, t2) = (randn_list(5), randn_list(6), rand_pos_list(7));

    let a = deep_copy(&xs);
    foreach_addcmul_(&a, &t1, &t2, 0.001).unwrap();
    let want: Vec<_> = xs.iter().zip(&t1).zip(&t2).map(|((x, a), b)| x + a * b * 0.001).collect();
    assert_lists_close("foreach_addcmul_", &a, &want, 1e-6);

    let a = deep_copy(&xs);
    foreach_addcdiv_(&a, &t1, &t2, -0.01).unwrap();
    let want: Vec<_> = xs.iter().zip(&t1).zip(&t2).map(|((x, a), b)| x + a / b * -0.01).collect();
    assert_lists_close("foreach_addcdiv_", &a, &want, 1e-6);
}

#[test]
fn foreach_sqrt_and_norm_match_per_tensor_ops() {
    let pos = rand_pos_list(8);
    let before = deep_copy(&pos);
    let out = foreach_sqrt(&pos).unwrap();
    let want: Vec<_> = pos.iter().map(|x| x.sqrt()).collect();
    assert_lists_close("foreach_sqrt", &out, &want, 0.0);
    assert_lists_close("foreach_sqrt leaves its input", &pos, &before, 0.0);

    foreach_sqrt_(&pos).unwrap();
    assert_lists_close("foreach_sqrt_", &pos, &want, 0.0);

    let xs = randn_list(9);
    let norms = foreach_norm(&xs).unwrap();
    // Reference computed without any norm kernel: sqrt(sum(x^2)) in f64.
    for (x, n) in xs.iter().zip(&norms) {
        assert_eq!(n.dim(), 0, "one 0-d norm per tensor");
        let want = x.to_kind(Kind::Double).square().sum(Kind::Double).sqrt().double_value(&[]);
        let got = n.double_value(&[]);
        assert!((got - want).abs() <= 1e-5 * want.max(1.0), "norm {got} vs {want}");
    }
}

#[test]
fn foreach_accepts_borrowed_handles_and_updates_every_handle() {
    let xs = randn_list(10);
    let want: Vec<_> = xs.iter().map(|x| x * 2.0).collect();
    // A list of references to a subset, as an optimizer grouping parameters would pass.
    let refs: Vec<&Tensor> = xs.iter().collect();
    foreach_mul_scalar_(&refs, 2.0).unwrap();
    // The original handles see the in-place update: the op mutated the shared storage.
    assert_lists_close("foreach via &[&Tensor]", &xs, &want, 0.0);
}

#[test]
fn foreach_rejects_lists_of_different_lengths() {
    let (xs, ys) = (randn_list(11), randn_list(12));
    let err = foreach_add_(&xs, &ys[..2], 1.0).unwrap_err();
    assert!(matches!(err, Error::LengthMismatch { expected: 4, got: 2, .. }), "unexpected error {err}");
    let err = foreach_addcmul_(&xs, &ys, &ys[..3], 1.0).unwrap_err();
    assert!(matches!(err, Error::LengthMismatch { list: "t2", .. }), "unexpected error {err}");
}

#[test]
fn foreach_on_empty_lists_is_a_no_op() {
    let none: Vec<Tensor> = Vec::new();
    foreach_add_(&none, &none, 1.0).unwrap();
    foreach_zero_(&none).unwrap();
    assert!(foreach_norm(&none).unwrap().is_empty());
}

#[test]
fn foreach_shape_mismatch_is_an_error_not_a_crash() {
    let xs = vec![Tensor::zeros([3], CPU)];
    let ys = vec![Tensor::zeros([4], CPU)];
    let err = foreach_mul_(&xs, &ys).unwrap_err();
    assert!(matches!(err, Error::Torch { op: "foreach_mul_", .. }), "unexpected error {err}");
}

#[test]
fn channels_last_sets_nhwc_strides_and_keeps_values() {
    tch::manual_seed(13);
    let x = Tensor::randn([2, 3, 5, 7], CPU);
    assert!(!is_channels_last(&x));
    let y = to_channels_last(&x).unwrap();
    assert_eq!(y.size(), vec![2, 3, 5, 7], "logical shape unchanged");
    // NHWC order: C is the fastest dimension, then W, then H, then N.
    assert_eq!(y.stride(), vec![5 * 7 * 3, 1, 7 * 3, 3]);
    assert!(is_channels_last(&y));
    assert_eq!(max_abs_diff(&x, &y), 0.0);
    // Converting back with tch's contiguous() restores NCHW strides.
    assert_eq!(y.contiguous().stride(), vec![3 * 5 * 7, 5 * 7, 7, 1]);

    let err = to_channels_last(&Tensor::zeros([2, 3, 5], CPU)).unwrap_err();
    assert!(matches!(err, Error::Torch { op: "to_channels_last", .. }), "unexpected error {err}");
    assert!(!is_channels_last(&Tensor::zeros([2, 3, 5], CPU)));
}

#[test]
fn conv_on_channels_last_input_equals_contiguous_result() {
    tch::manual_seed(14);
    let x = Tensor::randn([4, 3, 16, 16], CPU);
    let w = Tensor::randn([8, 3, 3, 3], CPU);
    let b = Tensor::randn([8], CPU);
    let want = x.conv2d(&w, Some(&b), [1, 1], [1, 1], [1, 1], 1);

    let xc = to_channels_last(&x).unwrap();
    let wc = to_channels_last(&w).unwrap();
    let got = xc.conv2d(&wc, Some(&b), [1, 1], [1, 1], [1, 1], 1);
    // PyTorch propagates the input's memory format through convolution.
    assert!(is_channels_last(&got), "conv output strides {:?}", got.stride());
    let d = max_abs_diff(&got, &want);
    assert!(d <= 1e-4, "channels-last conv differs by {d}");
}

#[test]
fn set_data_converts_a_parameter_in_place() {
    tch::manual_seed(15);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let w = vs.root().randn("w", &[8, 3, 3, 3], 0.0, 1.0);
    let before = w.copy();
    set_data(&w, &to_channels_last(&w).unwrap()).unwrap();
    // Every handle (including the VarStore's) now sees the NHWC layout, still a trainable leaf.
    let stored = &vs.trainable_variables()[0];
    assert!(is_channels_last(stored));
    assert!(stored.requires_grad());
    assert_eq!(max_abs_diff(stored, &before), 0.0);
}

#[test]
fn autocast_guard_on_cpu_runs_matmul_in_bf16_and_restores_state() {
    tch::manual_seed(16);
    let a = Tensor::randn([8, 16], CPU);
    let b = Tensor::randn([16, 4], CPU);
    // Start from a non-default state so that restoring is observable.
    set_autocast_dtype(Device::Cpu, Kind::Half).unwrap();
    assert!(!autocast_enabled(Device::Cpu).unwrap());
    assert_eq!(a.matmul(&b).kind(), Kind::Float);
    {
        let _outer = AutocastGuard::new(Device::Cpu, Kind::BFloat16).unwrap();
        assert!(autocast_enabled(Device::Cpu).unwrap());
        assert_eq!(autocast_dtype(Device::Cpu).unwrap(), Kind::BFloat16);
        let y = a.matmul(&b);
        assert_eq!(y.kind(), Kind::BFloat16);
        // Same as casting the inputs by hand.
        let want = a.to_kind(Kind::BFloat16).matmul(&b.to_kind(Kind::BFloat16));
        assert_eq!(max_abs_diff(&y.to_kind(Kind::Float), &want.to_kind(Kind::Float)), 0.0);
        {
            let _inner = AutocastGuard::new(Device::Cpu, Kind::BFloat16).unwrap();
        }
        // Leaving a nested region keeps the outer one active.
        assert!(autocast_enabled(Device::Cpu).unwrap());
        assert_eq!(a.matmul(&b).kind(), Kind::BFloat16);
    }
    assert!(!autocast_enabled(Device::Cpu).unwrap());
    assert_eq!(autocast_dtype(Device::Cpu).unwrap(), Kind::Half);
    assert_eq!(a.matmul(&b).kind(), Kind::Float);
    // CUDA autocast state is separate and untouched.
    assert!(!autocast_enabled(Device::Cuda(0)).unwrap());
    set_autocast_dtype(Device::Cpu, Kind::BFloat16).unwrap();

    let err = AutocastGuard::new(Device::Cpu, Kind::Double).err().unwrap();
    assert!(matches!(err, Error::Unsupported { .. }), "unexpected error {err}");
}

#[test]
fn set_grad_makes_backward_accumulate_into_the_flat_buffer() {
    tch::manual_seed(17);
    let w = Tensor::randn([3, 4], CPU).set_requires_grad(true);
    let b = Tensor::randn([3], CPU).set_requires_grad(true);
    let flat = Tensor::zeros([15], CPU);
    let gw = flat.narrow(0, 0, 12).view([3, 4]);
    let gb = flat.narrow(0, 12, 3);
    set_grad(&w, Some(&gw)).unwrap();
    set_grad(&b, Some(&gb)).unwrap();

    let x = Tensor::randn([5, 4], CPU);
    let loss = (x.matmul(&w.tr()) + &b).sum(Kind::Float);
    loss.backward();

    // .grad is still the view of the buffer: accumulated in place, not replaced.
    assert_eq!(w.grad().data_ptr(), gw.data_ptr());
    assert_eq!(b.grad().data_ptr(), gb.data_ptr());
    // d(sum(x w^T + b))/dw[i, j] = sum_n x[n, j]; d/db[i] = N.
    let want_w = x.sum_dim_intlist([0i64].as_slice(), true, Kind::Float).expand([3, 4], false);
    let want_b = Tensor::full([3], 5.0, CPU);
    assert!(max_abs_diff(&flat.narrow(0, 0, 12).view([3, 4]), &want_w) <= 1e-5);
    assert_eq!(max_abs_diff(&flat.narrow(0, 12, 3), &want_b), 0.0);

    // A second backward adds to the same memory.
    let loss = (x.matmul(&w.tr()) + &b).sum(Kind::Float);
    loss.backward();
    assert_eq!(w.grad().data_ptr(), gw.data_ptr());
    assert!(max_abs_diff(&gw, &(&want_w * 2.0)) <= 1e-5);
    assert_eq!(max_abs_diff(&gb, &(&want_b * 2.0)), 0.0);

    // Python's checks: wrong shape or dtype is an error.
    let err = set_grad(&w, Some(&Tensor::zeros([4, 3], CPU))).unwrap_err();
    assert!(matches!(err, Error::Torch { op: "set_grad", .. }), "unexpected error {err}");
    let err = set_grad(&w, Some(&Tensor::zeros([3, 4], (Kind::Double, Device::Cpu)))).unwrap_err();
    assert!(err.to_string().contains("dtype"), "unexpected error {err}");

    set_grad(&w, None).unwrap();
    assert!(!w.grad().defined());
}

#[test]
fn backend_switches_round_trip() {
    let was = cudnn_benchmark();
    set_cudnn_benchmark(!was);
    assert_eq!(cudnn_benchmark(), !was);
    set_cudnn_benchmark(was);
    assert_eq!(cudnn_benchmark(), was);

    let (m0, c0) = allow_tf32().unwrap();
    set_allow_tf32(true).unwrap();
    assert_eq!(allow_tf32().unwrap(), (true, true));
    set_allow_tf32(false).unwrap();
    assert_eq!(allow_tf32().unwrap(), (false, false));
    // libtorch's defaults differ (matmul off, cuDNN on), so `set_allow_tf32(false)` changed at
    // least one of them: the getter is not a constant.
    assert!(m0 != c0 || m0, "defaults were {m0}, {c0}");
    // Each switch on its own: both mixed states, then the defaults put back exactly.
    for (m, c) in [(true, false), (false, true), (m0, c0)] {
        set_allow_tf32_each(m, c).unwrap();
        assert_eq!(allow_tf32().unwrap(), (m, c));
    }
}

#[test]
fn device_count_agrees_with_tch() {
    assert_eq!(cuda_device_count(), tch::Cuda::device_count() as usize);
}

/// Every CUDA entry point refuses a device that does not exist with `CudaUnavailable`, before
/// touching CUDA: device 0 on a machine without a GPU, device `n` on one with `n` GPUs, so this
/// checks the same gate everywhere.
#[test]
fn cuda_functions_on_a_missing_device_are_errors() {
    let missing = cuda_device_count();
    let unavailable = |r: Result<()>, what: &str| match r {
        Err(Error::CudaUnavailable { .. }) => {}
        other => panic!("{what}(device {missing}): expected CudaUnavailable, got {other:?}"),
    };
    unavailable(CudaStream::new(missing).map(drop), "CudaStream::new");
    unavailable(CudaStream::current(missing).map(drop), "CudaStream::current");
    unavailable(CudaEvent::new(missing, false).map(drop), "CudaEvent::new");
    unavailable(CudaGraph::new(missing).map(drop), "CudaGraph::new");
    unavailable(cuda_device_properties(missing).map(drop), "cuda_device_properties");
    unavailable(cuda_synchronize(missing), "cuda_synchronize");
    unavailable(current_stream_synchronize(missing), "current_stream_synchronize");
    if missing > 0 {
        // With a driver, pinning works (tests/cuda.rs uses it); the error case below needs a
        // machine without one.
        assert!(is_pinned(&pin_memory(&Tensor::zeros([4], CPU)).unwrap()).unwrap());
        return;
    }
    let err = pin_memory(&Tensor::zeros([4], CPU)).unwrap_err();
    assert!(matches!(err, Error::Torch { op: "pin_memory", .. }), "unexpected error {err}");
}
