//! Reference vs fused loss, forward and forward + backward, at the shapes.
//! `cargo bench -p bt-loss` (the (2048, 8192) shape is forward-only: minutes per sample on CPU
//! for the reference's backward).
use bt_loss::LossImpl;
use bt_loss::{barlow_twins_loss, LossOptions};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("loss");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5));
    for (n, d, backward) in [(256i64, 2048i64, true), (512, 5000, true), (2048, 8192, false)] {
        tch::manual_seed(0);
        let za = Tensor::randn([n, d], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let zb = Tensor::randn([n, d], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        for imp in [LossImpl::Reference, LossImpl::Fused] {
            let o = LossOptions::default().with_implementation(imp);
            let id = format!("{imp:?}/{n}x{d}");
            g.bench_function(BenchmarkId::new("forward", &id), |b| {
                b.iter(|| tch::no_grad(|| barlow_twins_loss(&za, &zb, &o).unwrap().loss.double_value(&[])))
            });
            if backward {
                g.bench_function(BenchmarkId::new("forward_backward", &id), |b| {
                    b.iter(|| {
                        let out = barlow_twins_loss(&za, &zb, &o).unwrap();
                        Tensor::run_backward(&[&out.loss], &[&za, &zb], false, false)
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
