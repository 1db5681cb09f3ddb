//! Writes the twin views a pretraining run would see, epoch by epoch, as raw little-endian f32
//! files, plus the labeled train/test images (u8, CHW) for evaluation: the input of
//! `bench/demo_torch.py`, which trains the same recipe in plain PyTorch on exactly these views.
//!
//! `cargo run --release -p bt-data --example dump_twins -- OUT_DIR PRESET [key=value ...]`
//!
//! Writes `OUT_DIR/epoch_E.f32` (per batch: view A then view B, `[n, 3, S, S]` each; `n` listed in `meta.json`), `train_u8.bin`/`train_labels.bin`,
//! `test_u8.bin`/`test_labels.bin` and `meta.json` (shapes, normalization, epochs). Only fixed
//! 32x32 datasets (synthetic, CIFAR-10).
use bt_data::TwinPipeline;
use std::io::Write;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, preset, sets @ ..] = args.as_slice() else {
        return Err("usage: dump_twins OUT_DIR PRESET [key=value ...]".into());
    };
    let mut b = bt_config::ConfigBuilder::new();
    b.preset(preset)?;
    for s in sets {
        b.set(s)?;
    }
    let cfg = b.build()?;
    let out = std::path::Path::new(out);
    std::fs::create_dir_all(out)?;
    let (train, test, _) = bt_data::load_from_config(&cfg)?;
    for (name, ds) in [("train", &train), ("test", &test)] {
        std::fs::write(out.join(format!("{name}_u8.bin")), ds.images())?;
        std::fs::write(out.join(format!("{name}_labels.bin")), ds.labels())?;
    }
    let (n_train, n_test) = (train.len(), test.len());
    let pipe = TwinPipeline::new(Arc::new(train), &cfg.data, &cfg.augment, cfg.run.seed)?;
    let mut sizes = Vec::new();
    for e in 0..cfg.run.epochs {
        let mut f = std::io::BufWriter::new(std::fs::File::create(out.join(format!("epoch_{e}.f32")))?);
        sizes.clear();
        for batch in pipe.epoch(e as u64, 0) {
            let b = batch?;
            for v in [&b.view_a, &b.view_b] {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                f.write_all(&bytes)?;
            }
            sizes.push(b.batch_size);
        }
        f.flush()?;
        eprintln!("epoch {e}: {} batches", sizes.len());
    }
    let meta = serde_json::json!({
        "epochs": cfg.run.epochs, "batch_sizes": sizes,
        "image_size": cfg.data.image_size, "n_train": n_train, "n_test": n_test,
        "mean": cfg.data.mean, "std": cfg.data.std, "seed": cfg.run.seed,
    });
    std::fs::write(out.join("meta.json"), serde_json::to_string_pretty(&meta)?)?;
    Ok(())
}
