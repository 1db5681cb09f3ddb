//! Train-mode forward + backward of a narrow CIFAR ResNet-18 (the `demo` model): the speed
//! hooks against the plain f32 contiguous path, in one run.
//!
//! `cargo bench -p bt-model --bench forward` (results: docs/BENCHMARKS.md, "bt-model").
use bt_config::{Arch, ModelConfig, Precision};
use bt_model::BarlowTwins;
use criterion::{criterion_group, criterion_main, Criterion};
use tch::{nn, Device, Kind, Tensor};

fn forward_backward(c: &mut Criterion) {
    let cfg =
        ModelConfig { arch: Arch::CifarResnet18, width: 16, projector: vec![512, 512, 512], ..ModelConfig::default() };
    let vs = nn::VarStore::new(Device::Cpu);
    let mut m = BarlowTwins::new(&vs.root(), &cfg);
    let x = Tensor::rand([32, 3, 32, 32], (Kind::Float, Device::Cpu));
    let x_cl = x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
    let mut g = c.benchmark_group("demo_resnet18_b32_fwd_bwd");
    g.sample_size(10);
    let run = |m: &BarlowTwins, x: &Tensor| m.forward(x, true).sum(Kind::Float).backward();
    g.bench_function("f32_contiguous", |b| b.iter(|| run(&m, &x)));
    g.bench_function("f32_channels_last", |b| b.iter(|| run(&m, &x_cl)));
    m.set_precision(Precision::Bf16);
    g.bench_function("bf16_contiguous", |b| b.iter(|| run(&m, &x)));
    g.finish();
}

criterion_group!(benches, forward_backward);
criterion_main!(benches);
