//! What every run needs before it can work: the device, the data (with a message that says how
//! to get it), the model at its seeded initialization, and frozen features of a dataset.
use crate::error::{refuse, Result, ResultExt};
use bt_config::{parse_device, Config, DatasetKind, DeviceSpec};
use bt_data::Dataset;
use bt_model::BarlowTwins;
use std::path::Path;
use std::sync::Arc;
use tch::{nn, Device, Kind, Tensor};

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

/// Train and test splits of the configured dataset.
pub struct Data {
    /// Training split.
    pub train: Arc<Dataset>,
    /// Test split.
    pub test: Arc<Dataset>,
    /// What was loaded, for logs and reports.
    pub description: String,
}

fn cifar_missing(dir: &Path) -> bool {
    !dir.join("data_batch_1.bin").is_file()
}

/// Loads the dataset the config names. A missing CIFAR-10 folder says how to get it.
pub fn load_data(cfg: &Config) -> Result<Data> {
    if cfg.data.dataset == DatasetKind::Cifar10 && cifar_missing(&cfg.data.dir) {
        refuse!(
            "CIFAR-10 not found in {} (no data_batch_1.bin there).\n  \
             Download it with `cargo xtask fetch-cifar` (163 MB, into data/cifar-10-batches-bin),\n  \
             pass --data DIR if it is elsewhere, or use --synthetic for the embedded synthetic dataset.",
            cfg.data.dir.display()
        );
    }
    let (train, test, _) =
        bt_data::load_from_config(cfg).with_context(|| format!("loading the {:?} dataset", cfg.data.dataset))?;
    let description = match cfg.data.dataset {
        DatasetKind::Cifar10 => format!("CIFAR-10 from {} ({} train, {} test)", cfg.data.dir.display(), train.len(), test.len()),
        DatasetKind::Synthetic => format!("synthetic shapes ({} train, {} test, seed {})", train.len(), test.len(), cfg.run.seed),
    };
    Ok(Data { train: Arc::new(train), test: Arc::new(test), description })
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
    model.set_precision(cfg.run.precision);
    Ok((vs, model))
}

/// Which frozen output to extract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureKind {
    /// Encoder output (`N x F`, 512 for ResNet-18/34 at width 64).
    Encoder,
    /// Projector output (`N x D`, the embedding the loss sees).
    Projector,
}

/// Frozen features (inference mode: BN uses its running statistics) of un-augmented images, in
/// dataset order, on the CPU as f32: `(N x F features, N labels)`.
pub fn features(
    model: &BarlowTwins,
    ds: &Dataset,
    kind: FeatureKind,
    batch: usize,
    drop_remainder: bool,
    device: Device,
) -> Result<(Tensor, Tensor)> {
    let mut fs = Vec::new();
    let mut ls = Vec::new();
    tch::no_grad(|| {
        for b in ds.eval_batches(batch, drop_remainder) {
            let n = b.len() as i64;
            let x = Tensor::from_slice(&b.images).view([n, 3, 32, 32]).to_device(device);
            let f = match kind {
                FeatureKind::Encoder => model.encode(&x, false),
                FeatureKind::Projector => model.forward(&x, false),
            };
            fs.push(f.to_kind(Kind::Float).to_device(Device::Cpu));
            ls.push(Tensor::from_slice(&b.labels));
        }
    });
    if fs.is_empty() {
        refuse!("no full batch of {batch} in a split of {} images", ds.len());
    }
    Ok((Tensor::cat(&fs, 0), Tensor::cat(&ls, 0)))
}
