//! Per-op and whole-view costs on one 32x32 image, and one keras-seed batch of 512 pairs.
//! `cargo bench -p bt-data --bench augment` (numbers in docs/BENCHMARKS.md, section bt-data).
use bt_data::ops::{self, CropRect};
use bt_data::policy::{apply, ViewPolicy};
use bt_data::rng::SampleRng;
use bt_data::{synthetic, TwinPipeline};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use std::time::Duration;

fn ops_bench(c: &mut Criterion) {
    let ds = synthetic::generate(16, 0, synthetic::Split::Train);
    let src = ds.image(3).to_vec();
    let mut img = vec![0f32; 3072];
    let rect = CropRect { top: 3, left: 2, height: 27, width: 27 };
    ops::crop_resize_u8(&src, 32, 32, rect, false, &mut img, 32, 32);
    let base = img.clone();
    let mut g = c.benchmark_group("op_32x32");
    g.bench_function("crop_resize_u8", |b| {
        b.iter(|| ops::crop_resize_u8(black_box(&src), 32, 32, rect, true, &mut img, 32, 32))
    });
    let mut run = |name: &str, f: &dyn Fn(&mut [f32])| {
        g.bench_function(name, |b| {
            b.iter(|| {
                img.copy_from_slice(&base);
                f(black_box(&mut img))
            })
        });
    };
    run("copy_only", &|_| {});
    run("tf_brightness", &|x| ops::tf_adjust_brightness(x, 0.3));
    run("tf_contrast", &|x| ops::tf_adjust_contrast(x, 32, 32, 1.3));
    run("tf_saturation", &|x| ops::tf_adjust_saturation(x, 32, 32, 1.3));
    run("tf_hue", &|x| ops::tf_adjust_hue(x, 32, 32, 0.1));
    run("tf_saturation_hue_fused", &|x| ops::tf_adjust_saturation_hue(x, 32, 32, 1.3, 0.1));
    run("tfa_blur3x3", &|x| ops::tfa_gaussian_blur3x3(x, 32, 32, 0.7));
    run("tf_grayscale", &|x| ops::tf_grayscale(x, 32, 32));
    run("tv_hue", &|x| ops::tv_adjust_hue(x, 32, 32, 0.1));
    run("clip", &|x| ops::clip01(x));
    g.finish();

    let p = ViewPolicy::from_config(&bt_config::ViewConfig::keras_seed()).unwrap();
    let mut k = 0u64;
    c.bench_function("keras_seed_view_sample_apply", |b| {
        b.iter(|| {
            k += 1;
            let v = p.sample(&mut SampleRng::new(0, 0, k, 0));
            apply(black_box(&src), &v, &mut img)
        })
    });
}

fn batch_bench(c: &mut Criterion) {
    let ds = Arc::new(synthetic::generate(1024, 0, synthetic::Split::Train));
    let mut g = c.benchmark_group("keras_seed_batch512");
    g.sample_size(10);
    for t in [1, 2] {
        let data = bt_config::DataConfig { batch_size: 512, workers: t, ..Default::default() };
        let pipe = TwinPipeline::new(ds.clone(), &data, &bt_config::AugmentConfig::keras_seed(), 1).unwrap();
        g.bench_function(format!("{t}_threads"), |b| b.iter(|| pipe.make_batch(0, 0).unwrap()));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    targets = ops_bench, batch_bench
}
criterion_main!(benches);
