//! Frozen features of a dataset: the evaluation transform (resize + center crop) through the
//! model in inference mode, as whole tensors ([`features`]) or into a bounded-memory
//! [`FeatureStore`] ([`labeled_store`]).
use crate::error::{refuse, Result};
use crate::eval::features::{Budget, FeatureStore, StoreOptions};
use crate::observer::{Event, Observer};
use bt_config::DataConfig;
use bt_data::ImageSource;
use bt_model::BarlowTwins;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Which frozen output to extract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureKind {
    /// Encoder output (`N x F`, 512 for ResNet-18/34 at width 64).
    Encoder,
    /// Projector output (`N x D`, the embedding the loss sees).
    Projector,
}

/// Runs `model` over the un-augmented images of `source` (see [`features`]) and hands each
/// batch's features (`B x F` f32 on `device`) and labels to `sink`.
#[allow(clippy::too_many_arguments)]
fn each_feature_batch(
    model: &BarlowTwins,
    source: &Arc<dyn ImageSource>,
    data: &DataConfig,
    kind: FeatureKind,
    batch: usize,
    drop_remainder: bool,
    device: Device,
    mut sink: impl FnMut(Tensor, &[i64]) -> Result<()>,
) -> Result<usize> {
    let mut batches = 0;
    for b in bt_data::eval::eval_batches(source.clone(), data, batch, drop_remainder) {
        let b = b?;
        let s = b.image_size as i64;
        let n = b.len() as i64;
        let f = tch::no_grad(|| -> Result<Tensor> {
            let x = Tensor::f_from_slice(&b.images)?.f_view([n, 3, s, s])?.f_to_device(device)?;
            let f = match kind {
                FeatureKind::Encoder => model.encode(&x, false),
                FeatureKind::Projector => model.forward(&x, false),
            };
            Ok(f.f_to_kind(Kind::Float)?)
        })?;
        sink(f, &b.labels)?;
        batches += 1;
    }
    if batches == 0 {
        refuse!("no full batch of {batch} in a split of {} images", source.len());
    }
    Ok(batches)
}

/// Frozen features (inference mode: BN uses its running statistics) of un-augmented images
/// (the evaluation transform of `data`: resize + center crop to `data.image_size`, see
/// `bt_data::eval`), in source order, on the CPU as f32: `(N x F features, N labels)`; labels
/// are `-1` for unlabeled images.
pub fn features(
    model: &BarlowTwins,
    source: &Arc<dyn ImageSource>,
    data: &DataConfig,
    kind: FeatureKind,
    batch: usize,
    drop_remainder: bool,
    device: Device,
) -> Result<(Tensor, Tensor)> {
    let mut fs = Vec::new();
    let mut ls = Vec::new();
    each_feature_batch(model, source, data, kind, batch, drop_remainder, device, |f, labels| {
        fs.push(f.f_to_device(Device::Cpu)?);
        ls.push(Tensor::f_from_slice(labels)?);
        Ok(())
    })?;
    Ok((Tensor::f_cat(&fs, 0)?, Tensor::f_cat(&ls, 0)?))
}

/// [`features`] of a labeled split: an unlabeled image is an error naming it.
pub fn labeled_features(
    model: &BarlowTwins,
    source: &Arc<dyn ImageSource>,
    data: &DataConfig,
    kind: FeatureKind,
    device: Device,
) -> Result<(Tensor, Tensor)> {
    let (x, y) = features(model, source, data, kind, 256, false, device)?;
    require_labels(source, &Vec::<i64>::try_from(&y)?, 0)?;
    Ok((x, y))
}

/// Refuses the first unlabeled (`-1`) row of `labels`, the dataset rows `first..`, by name.
fn require_labels(source: &Arc<dyn ImageSource>, labels: &[i64], first: usize) -> Result<()> {
    if let Some(i) = labels.iter().position(|&l| l < 0) {
        refuse!(
            "{} has no label: evaluation needs a labeled split (one subfolder per class)",
            source.describe(first + i)
        );
    }
    Ok(())
}

/// [`labeled_features`] into a [`FeatureStore`] (bounded memory: batches go to the store as
/// they are computed), reporting [`Event::EvalProgress`] under `stage` (images done / total).
#[allow(clippy::too_many_arguments)]
pub fn labeled_store(
    model: &BarlowTwins,
    source: &Arc<dyn ImageSource>,
    data: &DataConfig,
    kind: FeatureKind,
    device: Device,
    budget: &Budget,
    opts: StoreOptions,
    stage: &str,
    obs: &mut dyn Observer,
) -> Result<FeatureStore> {
    labeled_store_checked(model, source, data, kind, device, budget, opts, stage, obs, &|| Ok(()))
}

/// [`labeled_store`] that calls `check` before storing each batch and ends with its error (a
/// stop request).
#[allow(clippy::too_many_arguments)]
pub(crate) fn labeled_store_checked(
    model: &BarlowTwins,
    source: &Arc<dyn ImageSource>,
    data: &DataConfig,
    kind: FeatureKind,
    device: Device,
    budget: &Budget,
    opts: StoreOptions,
    stage: &str,
    obs: &mut dyn Observer,
    check: &dyn Fn() -> Result<()>,
) -> Result<FeatureStore> {
    let total = source.len();
    let mut store = FeatureStore::new(total, budget, opts);
    obs.on_event(&Event::EvalProgress { stage, done: 0, total });
    each_feature_batch(model, source, data, kind, 256, false, device, |f, labels| {
        check()?;
        require_labels(source, labels, store.len())?;
        store.push(&f, labels)?;
        obs.on_event(&Event::EvalProgress { stage, done: store.len(), total });
        Ok(())
    })?;
    store.finish()
}
