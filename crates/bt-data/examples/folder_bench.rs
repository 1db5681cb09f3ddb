//! Decode and twin-pipeline throughput on a folder of JPEGs at 224 px with the official
//! Barlow Twins recipe (numbers in the crate doc):
//! `cargo run --release -p bt-data --example folder_bench -- DIR [SECONDS]`
use bt_data::{bench, decode, FolderOptions, ImageFolder, ImageSource};
use std::sync::Arc;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: folder_bench DIR [SECONDS]")?;
    let secs: f64 = std::env::args().nth(2).map_or(Ok(5.0), |s| s.parse())?;
    let t = Instant::now();
    let folder = Arc::new(ImageFolder::open(&dir, &FolderOptions { image_size: 224, ..Default::default() })?);
    println!("header scan: {} files in {:.2}s", folder.len(), t.elapsed().as_secs_f64());
    // Decoder choice, one thread, first 200 files from the page cache.
    let files: Vec<Vec<u8>> = folder.files().iter().take(200).map(std::fs::read).collect::<Result<_, _>>()?;
    for (name, k) in [("image/zune-jpeg full", 1u32), ("jpeg-decoder 1/2", 2), ("jpeg-decoder 1/4", 4)] {
        let t = Instant::now();
        for b in &files {
            decode::decode(b, bt_data::LoadHint { max_reduction: k, ..bt_data::LoadHint::FULL })?;
        }
        println!("{name}: {:.1} ms/image", t.elapsed().as_secs_f64() * 1e3 / files.len() as f64);
    }
    let t = Instant::now();
    for b in &files {
        jpeg_decoder::Decoder::new(&b[..]).decode()?;
    }
    println!("jpeg-decoder full: {:.1} ms/image", t.elapsed().as_secs_f64() * 1e3 / files.len() as f64);
    let aug = bt_config::AugmentConfig::imagenet_official();
    for draft in [true, false] {
        for threads in [1, 2] {
            let data = bt_config::DataConfig {
                dataset: bt_config::DatasetKind::ImageFolder,
                image_size: 224,
                batch_size: 64,
                jpeg_draft: draft,
                ..Default::default()
            };
            let src: Arc<dyn ImageSource> = folder.clone();
            let r = bench::pairs_per_second(src, &data, &aug, 0, threads, secs)?;
            println!(
                "pipeline 224px official recipe, jpeg_draft={draft}, {threads} thread(s): {:.1} pairs/s ({} pairs in {:.1}s)",
                r.pairs_per_second, r.pairs, r.seconds
            );
        }
    }
    Ok(())
}
