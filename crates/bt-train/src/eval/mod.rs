//! Evaluation of frozen features: weighted kNN ([`knn`]) and linear probes ([`linear`]). Both
//! take feature tensors, not models: features are computed once ([`features`]) and every
//! classifier runs on them, which is what makes a 100-epoch probe or a hyperparameter grid
//! cheap. [`linear_eval`], [`knn_eval`] and [`encoder_evals`] put the two together for a model
//! and a dataset; [`save_result`] writes the result next to a run (and refreshes its report).
pub mod knn;
pub mod linear;

pub use crate::setup::{features, labeled_features, FeatureKind};

use crate::atomic::atomic_write;
use crate::error::Result;
use crate::runfolder::RunFolder;
use crate::setup::Data;
use bt_config::{Config, LinearProtocol};
use bt_model::BarlowTwins;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Top-1 accuracy of logits (or scores) against labels.
///
/// # Shapes
/// `scores`: `N x C`, `labels`: `N` (int64).
pub fn top1(scores: &Tensor, labels: &Tensor) -> f64 {
    scores.argmax(1, false).eq_tensor(labels).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}

/// Number of classes the labels of both splits use (largest label + 1): the classifier's width
/// comes from the data, never from a constant.
pub fn num_classes(train_labels: &Tensor, test_labels: &Tensor) -> i64 {
    let m = |t: &Tensor| if t.numel() == 0 { -1 } else { t.max().int64_value(&[]) };
    m(train_labels).max(m(test_labels)) + 1
}

/// Frozen labeled features of the training and the evaluation split:
/// `(train x, train labels, test x, test labels)`, what every classifier here starts from.
pub fn both_splits(
    cfg: &Config,
    model: &BarlowTwins,
    data: &Data,
    kind: FeatureKind,
    device: Device,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let (tx, ty) = labeled_features(model, &data.train, &cfg.data, kind, device)?;
    let (vx, vy) = labeled_features(model, data.test()?, &cfg.data, kind, device)?;
    Ok((tx, ty, vx, vy))
}

/// kNN top-1 of the encoder features (test vs train, un-augmented): the pretraining monitor.
pub fn knn_top1(cfg: &Config, model: &BarlowTwins, data: &Data, device: Device) -> Result<f64> {
    let (tx, ty, vx, vy) = both_splits(cfg, model, data, FeatureKind::Encoder, device)?;
    Ok(knn::accuracy(&tx, &ty, &vx, &vy, cfg.eval.knn_k, cfg.eval.knn_temperature, num_classes(&ty, &vy)))
}

/// Linear probe of `model`; the JSON result (what is written to `eval_linear_<protocol>.json`).
/// The notebook's protocol probes the projector output, the standard one the encoder's.
pub fn linear_eval(
    cfg: &Config,
    model: &BarlowTwins,
    data: &Data,
    device: Device,
    protocol: LinearProtocol,
) -> Result<Value> {
    let t = Instant::now();
    let fk = match protocol {
        LinearProtocol::KerasSeed => FeatureKind::Projector,
        LinearProtocol::Standard => FeatureKind::Encoder,
    };
    let (tx, ty, vx, vy) = both_splits(cfg, model, data, fk, device)?;
    let classes = num_classes(&ty, &vy);
    let t_feat = t.elapsed().as_secs_f64();
    let mut v = match protocol {
        LinearProtocol::KerasSeed => linear::keras_seed(&tx, &ty, &vx, &vy, classes, &cfg.eval, cfg.run.seed)?,
        LinearProtocol::Standard => linear::standard(&tx, &ty, &vx, &vy, classes, &cfg.eval, cfg.run.seed)?,
    };
    v["eval"] = json!("linear");
    v["features"] = json!(format!("{fk:?}").to_lowercase());
    v["features_s"] = json!(t_feat);
    v["wall_s"] = json!(t.elapsed().as_secs_f64());
    Ok(v)
}

fn knn_value(cfg: &Config, tx: &Tensor, ty: &Tensor, vx: &Tensor, vy: &Tensor) -> Value {
    let acc = knn::accuracy(tx, ty, vx, vy, cfg.eval.knn_k, cfg.eval.knn_temperature, num_classes(ty, vy));
    json!({
        "eval": "knn", "test_top1": acc, "k": cfg.eval.knn_k, "temperature": cfg.eval.knn_temperature,
        "similarity": "cosine", "features": "encoder", "feature_dim": tx.size()[1],
        "n_train": tx.size()[0], "n_test": vx.size()[0],
    })
}

/// kNN evaluation of the encoder features.
pub fn knn_eval(cfg: &Config, model: &BarlowTwins, data: &Data, device: Device) -> Result<Value> {
    let t = Instant::now();
    let (tx, ty, vx, vy) = both_splits(cfg, model, data, FeatureKind::Encoder, device)?;
    let mut v = knn_value(cfg, &tx, &ty, &vx, &vy);
    v["wall_s"] = json!(t.elapsed().as_secs_f64());
    Ok(v)
}

/// Linear (standard) and kNN results from one pass of encoder features (what the demo runs for
/// each of its two encoders).
pub fn encoder_evals(cfg: &Config, model: &BarlowTwins, data: &Data, device: Device) -> Result<(Value, Value)> {
    let t = Instant::now();
    let (tx, ty, vx, vy) = both_splits(cfg, model, data, FeatureKind::Encoder, device)?;
    let t_feat = t.elapsed().as_secs_f64();
    let mut lin = linear::standard(&tx, &ty, &vx, &vy, num_classes(&ty, &vy), &cfg.eval, cfg.run.seed)?;
    lin["eval"] = json!("linear");
    lin["features"] = json!("encoder");
    lin["features_s"] = json!(t_feat);
    Ok((lin, knn_value(cfg, &tx, &ty, &vx, &vy)))
}

/// Writes an evaluation result as `eval_<name>.json` into `run` (and refreshes its
/// `report.md`), or, without a run folder, as `<stem>.eval_<name>.json` beside `weights`.
/// Returns the file written.
pub fn save_result(run: Option<&RunFolder>, weights: &Path, name: &str, value: &Value) -> Result<PathBuf> {
    let path = match run {
        Some(r) => r.eval(name),
        None => {
            let stem = weights.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
            weights.with_file_name(format!("{stem}.eval_{name}.json"))
        }
    };
    atomic_write(&path, serde_json::to_string_pretty(value)?.as_bytes())?;
    if let Some(r) = run {
        crate::report::write(r)?;
    }
    Ok(path)
}
