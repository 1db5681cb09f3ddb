//! Pipeline behaviour: determinism across thread counts, resume, bounded memory with a stalled
//! consumer, clean shutdown, worker panic -> error.
use bt_config::{AugmentConfig, DataConfig};
use bt_data::{synthetic, DataError, Dataset, TwinPipeline};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn ds(n: usize) -> Arc<Dataset> {
    Arc::new(synthetic::generate(n, 42, synthetic::Split::Train))
}

fn pipe(d: &Arc<Dataset>, workers: usize, batch: usize, cap: usize, aug: &AugmentConfig) -> TwinPipeline {
    let data = DataConfig { batch_size: batch, workers, queue_capacity: cap, ..Default::default() };
    TwinPipeline::new(d.clone(), &data, aug, 7).unwrap()
}

/// (view A bits, view B bits, indices, batch index) of each batch.
type Bits = Vec<(Vec<u32>, Vec<u32>, Vec<i64>, usize)>;

fn collect(p: &TwinPipeline, epoch: u64, start: usize) -> Bits {
    p.epoch(epoch, start)
        .map(|b| {
            let b = b.unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            (bits(&b.view_a), bits(&b.view_b), b.indices.clone(), b.batch_index)
        })
        .collect()
}

#[test]
fn bit_identical_across_1_2_4_threads_for_both_policies() {
    let d = ds(200);
    for aug in [AugmentConfig::keras_seed(), AugmentConfig::cifar_asymmetric()] {
        let one = collect(&pipe(&d, 1, 32, 2, &aug), 3, 0);
        assert_eq!(one.len(), 6, "200 / 32 with drop_remainder");
        for t in [2, 4] {
            assert!(one == collect(&pipe(&d, t, 32, 2, &aug), 3, 0), "{t} threads differ ({})", aug.policy);
        }
        // Another epoch differs (new shuffle and new augmentations).
        let other = collect(&pipe(&d, 2, 32, 2, &aug), 4, 0);
        assert_ne!(one[0].2, other[0].2);
    }
}

#[test]
fn views_differ_and_epochs_are_permutations() {
    let d = ds(100);
    let p = pipe(&d, 2, 25, 2, &AugmentConfig::keras_seed());
    let mut seen = Vec::new();
    for b in p.epoch(0, 0) {
        let b = b.unwrap();
        assert_eq!(b.view_a.len(), 25 * 3072);
        assert_ne!(b.view_a, b.view_b, "independent augmentations");
        assert!(b.view_a.iter().all(|v| (0.0..=1.0).contains(v)), "clipped");
        for (&i, &l) in b.indices.iter().zip(&b.labels) {
            assert_eq!(d.label(i as usize) as i64, l);
        }
        seen.extend(b.indices.iter().copied());
    }
    seen.sort();
    assert_eq!(seen, (0..100).collect::<Vec<i64>>());
}

#[test]
fn drop_remainder_and_keep_remainder() {
    let d = ds(70);
    let p = pipe(&d, 2, 32, 2, &AugmentConfig::keras_seed());
    assert_eq!(p.batches_per_epoch(), 2);
    let data = DataConfig { batch_size: 32, workers: 2, drop_remainder: false, ..Default::default() };
    let p = TwinPipeline::new(d, &data, &AugmentConfig::keras_seed(), 7).unwrap();
    let sizes: Vec<usize> = p.epoch(0, 0).map(|b| b.unwrap().batch_size).collect();
    assert_eq!(sizes, vec![32, 32, 6]);
}

#[test]
fn resume_from_start_batch_gives_the_same_remaining_batches() {
    let d = ds(160);
    let p = pipe(&d, 2, 16, 2, &AugmentConfig::keras_seed());
    let full = collect(&p, 2, 0);
    let resumed = collect(&p, 2, 6);
    assert_eq!(resumed.len(), full.len() - 6);
    assert!(resumed[..] == full[6..]);
    assert_eq!(resumed[0].3, 6);
}

#[test]
fn stalled_consumer_keeps_memory_bounded() {
    let d = ds(640);
    let cap = 2;
    let p = pipe(&d, 2, 16, cap, &AugmentConfig::keras_seed());
    let mut it = p.epoch(0, 0);
    // Wait until the producer has filled the queue and is blocked (or give up after 10 s).
    let t = Instant::now();
    while it.produced() < cap + 1 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    // cap batches in the channel + 1 blocked in send; never the 40 of the epoch.
    assert_eq!(it.produced(), cap + 1);
    assert!(it.next().unwrap().is_ok());
    let t = Instant::now();
    while it.produced() < cap + 2 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(it.produced(), cap + 2);
}

#[test]
fn dropping_the_consumer_stops_the_producer() {
    let d = ds(2000);
    let p = pipe(&d, 2, 16, 1, &AugmentConfig::keras_seed());
    let mut it = p.epoch(0, 0);
    it.next().unwrap().unwrap();
    let produced_before = it.produced();
    drop(it); // joins the producer; returning at all means it stopped
    assert!(produced_before < p.batches_per_epoch());
    // The pipeline is reusable afterwards.
    assert_eq!(p.epoch(1, 120).count(), 5);
}

#[test]
fn worker_panic_becomes_an_error_not_a_hang() {
    let d = ds(256);
    let mut p = pipe(&d, 2, 32, 2, &AugmentConfig::keras_seed());
    let order = p.epoch_order(0);
    let victim = order[3 * 32 + 5] as usize; // in batch 3
    p.inject_panic_at_index(Some(victim));
    let results: Vec<_> = p.epoch(0, 0).collect();
    assert_eq!(results.len(), 4, "three good batches then the error, then the end");
    assert!(results[..3].iter().all(|r| r.is_ok()));
    match &results[3] {
        Err(DataError::WorkerPanic { batch: 3, message }) => {
            assert!(message.contains("injected"), "{message}")
        }
        other => panic!("expected WorkerPanic for batch 3, got {other:?}"),
    }
}

#[test]
fn eval_batches_are_unaugmented_x_over_255() {
    let d = ds(50);
    let batches: Vec<_> = d.eval_batches(16, true).collect();
    assert_eq!(batches.len(), 3);
    let b = &batches[1];
    assert_eq!(b.indices[0], 16);
    assert_eq!(b.images[5], d.image(16)[5] as f32 / 255.0);
    assert_eq!(d.eval_batches(16, false).last().unwrap().len(), 2);
}

#[test]
fn shards_partition_every_global_batch_in_rank_order() {
    let d = ds(203);
    for (drop_remainder, world) in [(true, 2), (true, 4), (false, 2), (false, 3)] {
        let data = DataConfig { batch_size: 24, workers: 2, drop_remainder, ..Default::default() };
        let aug = AugmentConfig::keras_seed();
        let whole = TwinPipeline::new(d.clone(), &data, &aug, 7).unwrap();
        let whole_bits = collect(&whole, 2, 1);
        let shards: Vec<Bits> = (0..world)
            .map(|r| {
                let p = TwinPipeline::new(d.clone(), &data, &aug, 7).unwrap().with_shard(r, world).unwrap();
                assert_eq!(p.batches_per_epoch(), whole.batches_per_epoch(), "global batch count");
                collect(&p, 2, 1)
            })
            .collect();
        assert_eq!(whole_bits.len(), shards[0].len());
        for (k, w) in whole_bits.iter().enumerate() {
            // Concatenating the ranks' slices in rank order gives back the global batch, bit for bit.
            let (mut a, mut b, mut idx) = (vec![], vec![], vec![]);
            for s in &shards {
                assert_eq!(s[k].3, w.3, "batch index");
                a.extend_from_slice(&s[k].0);
                b.extend_from_slice(&s[k].1);
                idx.extend_from_slice(&s[k].2);
            }
            assert_eq!(idx, w.2, "drop {drop_remainder} world {world} batch {k}: indices");
            assert!(a == w.0 && b == w.1, "drop {drop_remainder} world {world} batch {k}: views");
            // Equal rows per rank on full batches.
            if w.2.len() == 24 {
                assert!(shards.iter().all(|s| s[k].2.len() == 24 / world));
            }
        }
    }
}

#[test]
fn shard_rejects_uneven_global_batches() {
    let d = ds(64);
    let data = DataConfig { batch_size: 10, workers: 1, ..Default::default() };
    let p = || TwinPipeline::new(d.clone(), &data, &AugmentConfig::keras_seed(), 7).unwrap();
    let e = p().with_shard(0, 3).unwrap_err().to_string();
    assert!(e.contains("data.batch_size") && e.contains("world size 3"), "{e}");
    assert!(p().with_shard(2, 2).is_err());
    assert_eq!(p().with_shard(1, 2).unwrap().shard(), (1, 2));
}

#[test]
fn u8_views_are_the_f32_batches_before_to_tensor() {
    // The official (pil-u8) policy on 48x40 images at 24 px: the u8 NHWC views, through
    // ToTensor + Normalize in f32, are the f32 batches bit for bit.
    let (w, h, n) = (48usize, 40usize, 12usize);
    let data: Vec<u8> = (0..n * 3 * w * h).map(|i| ((i * 7919) % 251) as u8).collect();
    let src = Arc::new(bt_data::MemoryImages::new(w, h, data, vec![Some(1); n], Some(2)).unwrap());
    let data = DataConfig {
        batch_size: 5,
        workers: 2,
        image_size: 24,
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
        ..Default::default()
    };
    let aug = AugmentConfig::imagenet_official();
    let f32p = TwinPipeline::new(src.clone(), &data, &aug, 3).unwrap();
    let u8p =
        TwinPipeline::new(src, &DataConfig { workers: 3, ..data.clone() }, &aug, 3).unwrap().with_u8_views().unwrap();
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    let mut batches = 0;
    for (x, y) in f32p.epoch(2, 0).zip(u8p.epoch(2, 0)) {
        let (x, y) = (x.unwrap(), y.unwrap());
        assert!(y.view_a.is_empty() && y.view_b.is_empty());
        for (f, u) in [(&x.view_a, &y.view_a_u8), (&x.view_b, &y.view_b_u8)] {
            assert_eq!(f.len(), u.len());
            let hw = 24 * 24;
            for (k, &v) in f.iter().enumerate() {
                let (img, c, j) = (k / (3 * hw), (k / hw) % 3, k % hw);
                let t = (u[img * 3 * hw + 3 * j + c] as f32 / 255.0 - mean[c]) / std[c];
                assert_eq!(t.to_bits(), v.to_bits(), "value {k}");
            }
        }
        batches += 1;
    }
    assert_eq!(batches, 2);
}

#[test]
fn u8_views_refuse_f32_colour_math() {
    let d = ds(8);
    let p = pipe(&d, 1, 4, 2, &AugmentConfig::keras_seed());
    match p.with_u8_views() {
        Err(DataError::BadConfig { key, .. }) => assert_eq!(key, "augment.view_a.color_math"),
        other => panic!("expected BadConfig, got {other:?}"),
    }
}
