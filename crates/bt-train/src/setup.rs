//! What every run needs before it can work: the device, the data (with a message that says how
//! to get it) and the model at its seeded initialization. (Frozen features: `eval::extract`.)
use crate::error::{refuse, Result, ResultExt};
use bt_config::{parse_device, Config, DatasetKind, DeviceSpec};
use bt_data::{Dataset, ImageSource, IntoSource};
use bt_model::BarlowTwins;
use std::path::Path;
use std::sync::Arc;
use tch::{nn, Device};

/// A torch device from `auto|cpu|cuda|cuda:N`; asking for CUDA without it is an error.
pub fn device(s: &str) -> Result<Device> {
    let Some(spec) = parse_device(s) else { refuse!("bad device `{s}`: expected auto, cpu, cuda or cuda:N") };
    Ok(match spec {
        DeviceSpec::Auto => Device::cuda_if_available(),
        DeviceSpec::Cpu => Device::Cpu,
        DeviceSpec::Cuda(i) => {
            if !tch::Cuda::is_available() {
                refuse!("device `{s}`: CUDA is not available on this machine/libtorch (use --device cpu, or run.device = \"cpu\")");
            }
            if i >= tch::Cuda::device_count() as usize {
                refuse!("device `{s}`: only {} CUDA device(s)", tch::Cuda::device_count());
            }
            Device::Cuda(i)
        }
    })
}

/// The data of a run: the images pretraining reads, and the labeled evaluation images the kNN
/// monitor and the probes use. This is the seam for a user's own data: `train` and `test` are
/// any [`ImageSource`] (the built-in readers, `bt_data::MemoryImages`, or the user's type).
#[derive(Clone)]
pub struct Data {
    /// Pretraining images (labels, when present, are used only by evaluation).
    pub train: Arc<dyn ImageSource>,
    /// Labeled evaluation images (`None`: no kNN monitor, no probe).
    pub test: Option<Arc<dyn ImageSource>>,
    /// What was loaded, for logs and reports.
    pub description: String,
    /// What the user should see before training (empty class folders, folder-link loops,
    /// skipped or oversized images: [`bt_data::Sources::warnings`]); the caller shows them.
    pub warnings: Vec<String>,
}

impl Data {
    /// `train` and `test` sources with a description.
    pub fn new(train: impl IntoSource, test: Option<Arc<dyn ImageSource>>, description: impl Into<String>) -> Self {
        Self { train: train.into_source(), test, description: description.into(), warnings: Vec::new() }
    }

    /// The evaluation split, or an error saying the data has none.
    pub fn test(&self) -> Result<&Arc<dyn ImageSource>> {
        match &self.test {
            Some(t) => Ok(t),
            None => refuse!(
                "{}: no labeled evaluation split (image folders: set data.test_dir to a folder with one subfolder per class)",
                self.description
            ),
        }
    }
}

fn cifar_missing(dir: &Path) -> bool {
    !dir.join("data_batch_1.bin").is_file()
}

/// Opens the dataset the config names (any `data.dataset`; image folders are header-scanned
/// here, so a broken file fails before a step). A missing CIFAR-10 folder says how to get it.
pub fn load_data(cfg: &Config) -> Result<Data> {
    if cfg.data.dataset == DatasetKind::Cifar10 && cifar_missing(&cfg.data.dir) {
        refuse!(
            "CIFAR-10 not found in {} (no data_batch_1.bin there).\n  \
             Download it with `cargo xtask fetch-cifar` (163 MB, into data/cifar-10-batches-bin),\n  \
             pass --data DIR if it is elsewhere, or use --synthetic for the embedded synthetic dataset.",
            cfg.data.dir.display()
        );
    }
    let s = bt_data::load_sources(cfg).with_context(|| format!("loading the {:?} dataset", cfg.data.dataset))?;
    let description = match cfg.data.dataset {
        DatasetKind::Synthetic => format!(
            "synthetic shapes ({} train, {} test, seed {})",
            s.train.len(),
            s.test.as_ref().map_or(0, |t| t.len()),
            cfg.run.seed
        ),
        _ => s.description,
    };
    Ok(Data { train: s.train, test: s.test, description, warnings: s.warnings })
}

/// The first `n` images of a dataset (the demo caps CIFAR-10 to stay within its time budget).
pub fn head(ds: &Dataset, n: usize) -> Result<Dataset> {
    let n = n.min(ds.len());
    Ok(Dataset::new(ds.images()[..n * bt_data::IMAGE_BYTES].to_vec(), ds.labels()[..n].to_vec())?)
}

/// The model of a config on a device, initialized from `run.seed` (so "random init" of a config
/// is reproducible and equals the starting point of its pretraining).
pub fn build_model(cfg: &Config, device: Device) -> Result<(nn::VarStore, BarlowTwins)> {
    tch::manual_seed(cfg.run.seed as i64);
    let vs = nn::VarStore::new(device);
    let mut model = BarlowTwins::try_new(&vs.root(), &cfg.model)?;
    model.set_precision(crate::device::resolve_precision(cfg.run.precision, device));
    Ok((vs, model))
}
