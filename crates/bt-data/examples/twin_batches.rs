//! Twin batches without the CLI or libtorch: the synthetic dataset written in the official
//! CIFAR-10 layout, read back, and one epoch of keras-seed twin views.
//!
//! `cargo run --release -p bt-data --example twin_batches [CIFAR_BIN_DIR]`
use bt_data::{synthetic, write_cifar_binary, Cifar10, SizeCheck, TwinPipeline};
use std::sync::Arc;

fn main() -> bt_data::Result<()> {
    let ds = match std::env::args().nth(1) {
        Some(dir) => Cifar10::load(dir)?.train,
        None => {
            let dir = std::env::temp_dir().join("bt-data-example");
            let train = synthetic::generate(2_000, 1, synthetic::Split::Train);
            let test = synthetic::generate(500, 1, synthetic::Split::Test);
            write_cifar_binary(&dir, &train, &test, &synthetic::CLASS_NAMES)?;
            Cifar10::load_with(&dir, SizeCheck::Records)?.train
        }
    };
    let data = bt_config::DataConfig { batch_size: 256, ..Default::default() };
    let augment = bt_config::AugmentConfig::keras_seed();
    let pipe = TwinPipeline::new(Arc::new(ds), &data, &augment, 1024)?;
    let t = std::time::Instant::now();
    let mut pairs = 0;
    for batch in pipe.epoch(0, 0) {
        let b = batch?;
        let mean = b.view_a.iter().sum::<f32>() / b.view_a.len() as f32;
        println!(
            "batch {:3}: {} pairs, view A mean {mean:.3}, first labels {:?}",
            b.batch_index,
            b.batch_size,
            &b.labels[..4]
        );
        pairs += b.batch_size;
    }
    println!("{pairs} pairs in {:.2}s with {} threads", t.elapsed().as_secs_f64(), pipe.threads());
    Ok(())
}
