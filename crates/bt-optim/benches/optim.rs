//! One LAMB / LARS step, grouped (flat buffer) vs per-tensor, on ResNet-18-like shapes with a
//! 2048-wide projector (~20M parameters, 70 tensors). The 74M-parameter seed model and timm's
//! Lamb are compared by `bt-cli bench optim --compare-python bench/optim_timm.py`.
use bt_config::{OptimConfig, OptimKind};
use bt_optim::{build, build_per_tensor, LrPair, Optimizer};
use criterion::{criterion_group, criterion_main, Criterion};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

fn shapes() -> Vec<Vec<i64>> {
    let mut s = vec![vec![64, 3, 3, 3], vec![64], vec![64]];
    let mut cin = 64;
    for (c, blocks) in [(64, 2), (128, 2), (256, 2), (512, 2)] {
        for _ in 0..blocks {
            s.extend([vec![c, cin, 3, 3], vec![c], vec![c], vec![c, c, 3, 3], vec![c], vec![c]]);
            cin = c;
        }
    }
    s.extend([vec![2048, 512], vec![2048], vec![2048], vec![2048, 2048], vec![2048], vec![2048], vec![2048, 2048]]);
    s
}

fn params() -> Vec<(String, Tensor)> {
    tch::manual_seed(0);
    shapes()
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let p = (Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu)) * 0.02).set_requires_grad(true);
            (&p * Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu))).sum(Kind::Float).backward();
            (format!("p{i}"), p)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("optim_step_20M");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5));
    for kind in [OptimKind::Lamb, OptimKind::Lars] {
        let cfg = OptimConfig { name: kind, ..OptimConfig::default() };
        let lr = LrPair::same(1e-3);
        let mut grouped: Box<dyn Optimizer> = build(&cfg, params()).unwrap();
        g.bench_function(format!("{kind:?}/grouped"), |b| b.iter(|| grouped.step(&lr).unwrap()));
        drop(grouped);
        let mut per: Box<dyn Optimizer> = build_per_tensor(&cfg, params()).unwrap();
        g.bench_function(format!("{kind:?}/per_tensor"), |b| b.iter(|| per.step(&lr).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
