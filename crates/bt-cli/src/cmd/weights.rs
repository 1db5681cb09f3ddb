//! `bt-cli import | export | neighbors | duplicates`: published weights in, models out, and
//! search over embeddings (bt-model's `foreign` and `export`, bt-train's `export`, `search`).
use super::eval::Source;
use anyhow::{bail, Context, Result};
use bt_config::{Arch, ModelConfig};
use bt_model::Encoder;
use bt_train::eval::{self, FeatureKind};
use bt_train::search::{self, Embeddings, Tile};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{nn, Device};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ArchArg {
    Resnet18,
    Resnet34,
    Resnet50,
    CifarResnet18,
    CifarResnet34,
    CifarResnet50,
}

impl From<ArchArg> for Arch {
    fn from(a: ArchArg) -> Arch {
        match a {
            ArchArg::Resnet18 => Arch::Resnet18,
            ArchArg::Resnet34 => Arch::Resnet34,
            ArchArg::Resnet50 => Arch::Resnet50,
            ArchArg::CifarResnet18 => Arch::CifarResnet18,
            ArchArg::CifarResnet34 => Arch::CifarResnet34,
            ArchArg::CifarResnet50 => Arch::CifarResnet50,
        }
    }
}

/// `bt-cli import FILE --arch resnet50 --out encoder.safetensors`.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// torch.save file (.pth/.pt), Lightning .ckpt or safetensors.
    pub file: PathBuf,
    /// The encoder architecture the file holds.
    #[arg(long, value_enum)]
    pub arch: ArchArg,
    /// Base width (64 for every published ResNet).
    #[arg(long, default_value_t = 64)]
    pub width: i64,
    /// Output: our encoder checkpoint (torchvision names, safetensors).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn import(a: ImportArgs) -> Result<()> {
    let im = bt_model::foreign::import(&a.file)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig { arch: a.arch.into(), width: a.width, ..ModelConfig::default() };
    let enc = Encoder::try_new(&vs.root(), &cfg)?;
    enc.load_imported(&im)?;
    if let Some(dir) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    enc.save(&a.out)?;
    println!(
        "{}: {:?} file, {:?} layout, {} encoder tensors",
        a.file.display(),
        im.format,
        im.layout,
        im.encoder.len()
    );
    for n in &im.notes {
        println!("  note: {n}");
    }
    if !im.projector.is_empty() {
        println!(
            "  note: the file also has {} projector tensors, not written here (bt-cli pretrain --init {} starts from them)",
            im.projector.len(),
            a.file.display()
        );
    }
    println!("wrote {} ({:?} encoder, {} features)", a.out.display(), cfg.arch, enc.feature_dim());
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// A traced TorchScript module (torch.jit.load, tch::CModule::load, C++ torch::jit::load).
    Torchscript,
    /// ONNX (opset 17) by torch.onnx from torchvision's ResNet with our weights (torchvision
    /// ResNets only): needs the provisioned Python with torch and onnx (.venv; --python or
    /// BT_PYTHON).
    Onnx,
}

/// `bt-cli export (--run DIR | --checkpoint FILE | --weights FILE) --format torchscript|onnx`.
///
/// The exported encoder runs in inference mode (batch norm on running statistics). Its input is
/// `N x 3 x H x W` float32 RGB already normalized: `(pixel / 255 - mean) / std` per channel with
/// the config's `data.mean`/`data.std` (ImageNet's for image folders), at `data.image_size`
/// (resize the shorter side, center-crop, as `bt-cli embed` does); its output the `N x F`
/// encoder features. `<out>.json` beside it records all of that. ONNX needs the provisioned
/// Python (torch + onnx), given by --python, else BT_PYTHON, else .venv/bin/python.
#[derive(clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub src: Source,
    /// torchscript or onnx (onnx needs the provisioned Python with torch and onnx).
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Output file (`encoder.pt`, `encoder.onnx`); `<out>.json` describes the input.
    #[arg(long)]
    pub out: PathBuf,
    /// The Python for ONNX (default: BT_PYTHON, else .venv/bin/python).
    #[arg(long)]
    pub python: Option<PathBuf>,
}

fn python(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("BT_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(".venv/bin/python"))
}

pub fn export(a: ExportArgs) -> Result<()> {
    let mut src = a.src.clone();
    // Tracing happens on the CPU in f32, whatever the config's device.
    src.device = Some("cpu".into());
    let l = src.load()?;
    if let Some(dir) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let files = match a.format {
        ExportFormat::Torchscript => bt_train::export::torchscript(&l.cfg, l.model.encoder(), &l.weights, &a.out)?,
        ExportFormat::Onnx => {
            let py = python(a.python.as_deref());
            bt_train::export::onnx(&l.cfg, l.model.encoder(), &l.weights, &a.out, &py)?
        }
    };
    let s = l.cfg.data.image_size;
    println!(
        "wrote {} ({:?} encoder, input N x 3 x {s} x {s} normalized as {} says, output N x {})",
        files[0].display(),
        l.cfg.model.arch,
        files[1].display(),
        l.model.encoder().feature_dim()
    );
    Ok(())
}

/// `bt-cli neighbors --embeddings v.npy (--row N | --query IMAGE --weights/--run ...) --k 8`.
#[derive(clap::Args)]
pub struct NeighborsArgs {
    /// Embeddings from `bt-cli embed` (`X.npy`, with `X.files.txt` beside it).
    #[arg(long)]
    pub embeddings: PathBuf,
    /// Query by a row of the embeddings (its own row is left out of the answer).
    #[arg(long, conflicts_with = "query", required_unless_present = "query")]
    pub row: Option<usize>,
    /// Query by an image file, embedded with the model named by --run/--checkpoint/--weights
    /// (and --preset for --weights), the same way `embed` made the vectors.
    #[arg(long)]
    pub query: Option<PathBuf>,
    #[command(flatten)]
    pub src: Source,
    /// How many neighbours.
    #[arg(long, default_value_t = 8)]
    pub k: usize,
    /// Contact sheet PNG: the query, then the neighbours with their cosine similarity.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Tile side of the contact sheet, pixels.
    #[arg(long, default_value_t = 160)]
    pub tile: u32,
}

pub fn neighbors(a: NeighborsArgs) -> Result<()> {
    if a.k == 0 {
        bail!("--k must be at least 1");
    }
    let e = Embeddings::open(&a.embeddings)?;
    let (q, exclude, query_file) = match (a.row, &a.query) {
        (Some(r), _) => {
            if r >= e.len() {
                bail!("--row {r}: {} has {} rows", a.embeddings.display(), e.len());
            }
            (e.unit.get(r as i64), Some(r), PathBuf::from(&e.names[r]))
        }
        (None, Some(img)) => {
            if !a.src.given() {
                bail!("--query needs the model that made the embeddings: --run DIR, --checkpoint FILE or --weights FILE (with --preset)");
            }
            (embed_one(&a.src, img)?, None, img.clone())
        }
        (None, None) => bail!("pass --row N or --query IMAGE"),
    };
    let nn = e.nearest(&q, a.k, exclude)?;
    println!("query {}", query_file.display());
    for (rank, (row, sim)) in nn.iter().enumerate() {
        println!("{:>3}  {sim:.4}  {}", rank + 1, e.names[*row]);
    }
    if let Some(out) = &a.out {
        let mut tiles = vec![Tile { file: query_file, caption: "query".into() }];
        tiles.extend(nn.iter().enumerate().map(|(i, (row, sim))| Tile {
            file: PathBuf::from(&e.names[*row]),
            caption: format!("{}  {sim:.3}", i + 1),
        }));
        search::contact_sheet(&tiles, a.tile, out)?;
        println!("contact sheet: {}", out.display());
    }
    Ok(())
}

/// The encoder features of one image file, through the evaluation transform `embed` uses.
fn embed_one(src: &Source, img: &Path) -> Result<tch::Tensor> {
    let l = src.load()?;
    let abs = std::fs::canonicalize(img).with_context(|| format!("query image {}", img.display()))?;
    // A one-line file list: the folder reader (and so the transform) `embed` used.
    let list = std::env::temp_dir().join(format!("bt-query-{}.txt", std::process::id()));
    std::fs::write(&list, format!("{}\n", abs.display())).with_context(|| format!("writing {}", list.display()))?;
    let opts = bt_data::FolderOptions { key: "--query".into(), file_list: Some(list.clone()), ..Default::default() };
    let opened = bt_data::ImageFolder::open(&list, &opts);
    let _ = std::fs::remove_file(&list);
    let ds: Arc<dyn bt_data::ImageSource> = Arc::new(opened?);
    let (x, _) = eval::features(&l.model, &ds, &l.cfg.data, FeatureKind::Encoder, 1, false, l.device)?;
    Ok(x.get(0))
}

/// `bt-cli duplicates --embeddings v.npy --threshold T [--out groups.csv|groups.json]`.
#[derive(clap::Args)]
pub struct DuplicatesArgs {
    /// Embeddings from `bt-cli embed` (`X.npy`, with `X.files.txt` beside it).
    #[arg(long)]
    pub embeddings: PathBuf,
    /// Cosine similarity at or above which two images are near-duplicates. It depends on the
    /// encoder: read the score of a known pair (an image and its resized copy) off `neighbors`.
    #[arg(long)]
    pub threshold: f32,
    /// Write the groups: `.csv` (group,row,file) or `.json`.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn duplicates(a: DuplicatesArgs) -> Result<()> {
    if !(-1.0..=1.0).contains(&a.threshold) {
        bail!("--threshold {} is not a cosine similarity in [-1, 1]", a.threshold);
    }
    let e = Embeddings::open(&a.embeddings)?;
    let groups = e.duplicates(a.threshold)?;
    for (g, rows) in groups.iter().enumerate() {
        println!("group {g} ({} images):", rows.len());
        for &r in rows {
            println!("  {}", e.names[r]);
        }
    }
    let dup: usize = groups.iter().map(|g| g.len()).sum();
    println!("{} group(s), {dup} of {} images, at cosine >= {}", groups.len(), e.len(), a.threshold);
    if let Some(out) = &a.out {
        let text = match out.extension().and_then(|x| x.to_str()) {
            Some("csv") => search::groups_csv(&groups, &e.names),
            Some("json") => serde_json::to_string_pretty(&search::groups_json(&groups, &e.names))? + "\n",
            _ => bail!("--out {}: the name must end in .csv or .json", out.display()),
        };
        std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
