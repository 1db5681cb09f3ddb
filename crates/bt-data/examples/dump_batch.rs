//! One twin batch of the Rust pipeline written as `.npy` files: the reference the Python
//! binding's tests (`crates/bt-py/tests`) compare with bit for bit.
//!
//! `cargo run --release -p bt-data --example dump_batch -- PRESET DATA OUT EPOCH BATCH RANK WORLD THREADS [KEY=VALUE...]`
//!
//! The config is assembled as `bt-cli` does (preset, then the `--set`-style overrides; `DATA`
//! becomes `data.dir`, with the dataset kind detected unless the config names an image folder
//! or STL-10). `data.batch_size` is the global batch; `RANK`/`WORLD` pick this rank's rows of
//! it. Writes `OUT/view_a.npy`, `OUT/view_b.npy` (f32 NCHW), `OUT/labels.npy` and
//! `OUT/indices.npy` (i64).
use bt_config::DatasetKind;
use std::path::{Path, PathBuf};

fn npy(path: &Path, descr: &str, shape: &[usize], bytes: &[u8]) -> std::io::Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n', padded to a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + bytes.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(bytes);
    std::fs::write(path, out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 8 {
        return Err("usage: dump_batch PRESET DATA OUT EPOCH BATCH RANK WORLD THREADS [KEY=VALUE...]".into());
    }
    let mut b = bt_config::ConfigBuilder::new();
    b.preset(&args[0])?;
    for s in &args[8..] {
        b.set(s)?;
    }
    let mut cfg = b.build()?;
    let data = PathBuf::from(&args[1]);
    if !matches!(cfg.data.dataset, DatasetKind::ImageFolder | DatasetKind::Stl10) {
        cfg.data.dataset = bt_data::detect_kind(&data);
    }
    cfg.data.dir = data;
    let out = PathBuf::from(&args[2]);
    let (epoch, batch): (u64, usize) = (args[3].parse()?, args[4].parse()?);
    let (rank, world): (usize, usize) = (args[5].parse()?, args[6].parse()?);
    cfg.data.workers = args[7].parse()?;
    let sources = bt_data::load_sources(&cfg)?;
    let pipe =
        bt_data::TwinPipeline::new(sources.train, &cfg.data, &cfg.augment, cfg.run.seed)?.with_shard(rank, world)?;
    // Through the channel, as a training loop gets it (not `make_batch`).
    let tb = pipe.epoch(epoch, batch).next().ok_or("no such batch")??;
    std::fs::create_dir_all(&out)?;
    let shape = tb.shape();
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let i64s = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    npy(&out.join("view_a.npy"), "<f4", &shape, &f32s(&tb.view_a))?;
    npy(&out.join("view_b.npy"), "<f4", &shape, &f32s(&tb.view_b))?;
    npy(&out.join("labels.npy"), "<i8", &[tb.batch_size], &i64s(&tb.labels))?;
    npy(&out.join("indices.npy"), "<i8", &[tb.batch_size], &i64s(&tb.indices))?;
    println!("wrote batch {batch} of epoch {epoch} (rank {rank}/{world}, {:?}) to {}", shape, out.display());
    Ok(())
}
