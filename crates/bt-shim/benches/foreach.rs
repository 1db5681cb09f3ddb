//! Criterion timings of multi-tensor ops vs the per-tensor tch loop, and of channels-last vs
//! NCHW convolution, on CPU. Each variant is timed in its own window, so on a shared, loaded
//! machine the ratio between two lines here is not reliable: the ratios recorded in
//! docs/BENCHMARKS.md come from the interleaved `benches/shim_ab.rs`. On CPU libtorch runs
//! `_foreach` ops as a loop over the list; the fused-launch win is a CUDA effect. Run:
//! `cargo bench -p bt-shim --bench foreach`
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// Parameter shapes of the CIFAR ResNet-18 backbone (3x3 stem, no fc): 60 tensors,
/// 11.2 M values, most of them tiny batch-norm vectors, which is where per-tensor overhead
/// dominates.
fn resnet18_shapes() -> Vec<Vec<i64>> {
    let mut s = vec![vec![64, 3, 3, 3], vec![64], vec![64]];
    let mut c_in = 64;
    for (c, stride) in [(64, 1), (128, 2), (256, 2), (512, 2)] {
        for block in 0..2 {
            let cin = if block == 0 { c_in } else { c };
            s.extend([vec![c, cin, 3, 3], vec![c], vec![c], vec![c, c, 3, 3], vec![c], vec![c]]);
            if block == 0 && (stride != 1 || cin != c) {
                s.extend([vec![c, cin, 1, 1], vec![c], vec![c]]);
            }
        }
        c_in = c;
    }
    s
}

fn list(shapes: &[Vec<i64>]) -> Vec<Tensor> {
    shapes.iter().map(|s| Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu))).collect()
}

fn bench_foreach(c: &mut Criterion) {
    let shapes = resnet18_shapes();
    let (p, g, m) = (list(&shapes), list(&shapes), list(&shapes));
    // Identical kernels on both sides (mul_ by a scalar, lerp_): the difference is the per-call
    // overhead of 2 x 60 tch calls vs 2 shim calls.
    let mut group = c.benchmark_group("same_kernels_resnet18");
    group.bench_function(BenchmarkId::new("per_tensor_tch", shapes.len()), |b| {
        b.iter(|| {
            for (g, m) in g.iter().zip(&m) {
                let mut m = m.shallow_clone();
                let _ = m.g_mul_scalar_(0.9);
                let _ = m.lerp_(g, 0.1);
            }
        })
    });
    group.bench_function(BenchmarkId::new("foreach_shim", shapes.len()), |b| {
        b.iter(|| {
            bt_shim::foreach_mul_scalar_(&m, 0.9).unwrap();
            bt_shim::foreach_lerp_(&m, &g, 0.1).unwrap();
        })
    });
    group.finish();

    // An SGD-with-momentum step as each side writes it best: buf = 0.9 buf + g; p -= 0.1 buf.
    // tch's in-place add has no `alpha`, so the per-tensor side allocates `0.1 * buf`; the
    // shim's foreach_add_ (alpha = -0.1) does not.
    let mut group = c.benchmark_group("sgd_momentum_step_resnet18");
    group.bench_function(BenchmarkId::new("per_tensor_tch", shapes.len()), |b| {
        b.iter(|| {
            for ((p, g), m) in p.iter().zip(&g).zip(&m) {
                let (mut p, mut m) = (p.shallow_clone(), m.shallow_clone());
                let _ = m.g_mul_scalar_(0.9);
                let _ = m.g_add_(g);
                let _ = p.g_sub_(&(&m * 0.1));
            }
        })
    });
    group.bench_function(BenchmarkId::new("foreach_shim", shapes.len()), |b| {
        b.iter(|| {
            bt_shim::foreach_mul_scalar_(&m, 0.9).unwrap();
            bt_shim::foreach_add_(&m, &g, 1.0).unwrap();
            bt_shim::foreach_add_(&p, &m, -0.1).unwrap();
        })
    });
    group.finish();
}

fn bench_channels_last(c: &mut Criterion) {
    let x = Tensor::randn([64, 64, 32, 32], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([64, 64, 3, 3], (Kind::Float, Device::Cpu));
    let (xc, wc) = (bt_shim::to_channels_last(&x).unwrap(), bt_shim::to_channels_last(&w).unwrap());
    let mut group = c.benchmark_group("conv3x3_64ch_32x32_batch64");
    group.bench_function("nchw", |b| b.iter(|| x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)));
    group.bench_function("channels_last", |b| b.iter(|| xc.conv2d(&wc, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1)));
    group.finish();
}

fn config() -> Criterion {
    Criterion::default().sample_size(10).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1))
}

criterion_group! { name = benches; config = config(); targets = bench_foreach, bench_channels_last }
criterion_main!(benches);
