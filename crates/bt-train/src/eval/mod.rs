//! Evaluation of frozen features: weighted kNN ([`knn`]) and linear probes ([`linear`]). Both
//! take features, not models: features of the center crop are computed once per split into a
//! [`FeatureStore`] (bounded memory: chunks in f32 or f16, spilled to disk past
//! `eval.feature_memory_mb`, see [`features`]) and every classifier runs on them, which is what
//! makes a 100-epoch probe or a hyperparameter grid cheap. [`linear_eval`], [`knn_eval`] and
//! [`encoder_evals`] put the two together for a model and a dataset, reporting
//! [`Event::EvalProgress`]; [`save_result`] writes the result next to a run (and refreshes its
//! report).
mod extract;
pub mod features;
pub mod finetune;
pub mod knn;
pub mod linear;
pub mod official;
pub mod resume;

pub use crate::classification::{confusion_png, Classification};
pub use extract::{features, labeled_features, labeled_store, FeatureKind};
pub use features::{Budget, FeatureStore, StoreOptions};
pub use resume::EvalControl;

use crate::atomic::atomic_write;
use crate::error::Result;
use crate::observer::{Event, Observer};
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
pub fn num_classes(train_labels: &[i64], test_labels: &[i64]) -> i64 {
    train_labels.iter().chain(test_labels).copied().max().unwrap_or(-1) + 1
}

/// Frozen labeled features of the training and the evaluation split, `(train, test)`, what
/// every classifier here starts from. The test split is extracted first so that it takes the
/// memory budget first (kNN rereads it for every train chunk).
pub fn both_splits(
    cfg: &Config,
    model: &BarlowTwins,
    data: &Data,
    kind: FeatureKind,
    device: Device,
    obs: &mut dyn Observer,
) -> Result<(FeatureStore, FeatureStore)> {
    let budget = Budget::of(&cfg.eval);
    let opts = StoreOptions::of(&cfg.eval);
    let test =
        labeled_store(model, data.test()?, &cfg.data, kind, device, &budget, opts.clone(), "features test", obs)?;
    let train = labeled_store(model, &data.train, &cfg.data, kind, device, &budget, opts, "features train", obs)?;
    let spilled: Vec<_> =
        [&train, &test].iter().filter_map(|s| s.spill_path()).map(|p| p.display().to_string()).collect();
    tracing::debug!("frozen features: {train:?}, {test:?}");
    if !spilled.is_empty() {
        tracing::info!("frozen features over eval.feature_memory_mb = {}: partly on disk", cfg.eval.feature_memory_mb);
    }
    Ok((train, test))
}

/// Frozen encoder features of the evaluation split `test` alone (the evaluation transform, the
/// whole `eval.feature_memory_mb` budget), for classifiers trained elsewhere: the online probe
/// and the official protocol.
pub fn test_store(
    cfg: &Config,
    model: &BarlowTwins,
    test: &std::sync::Arc<dyn bt_data::ImageSource>,
    device: Device,
    obs: &mut dyn Observer,
) -> Result<FeatureStore> {
    test_store_checked(cfg, model, test, device, obs, &|| Ok(()))
}

/// [`test_store`] that calls `check` before storing each batch and ends with its error (a stop
/// request during the extraction).
pub(crate) fn test_store_checked(
    cfg: &Config,
    model: &BarlowTwins,
    test: &std::sync::Arc<dyn bt_data::ImageSource>,
    device: Device,
    obs: &mut dyn Observer,
    check: &dyn Fn() -> Result<()>,
) -> Result<FeatureStore> {
    let (budget, opts) = (Budget::of(&cfg.eval), StoreOptions::of(&cfg.eval));
    let kind = FeatureKind::Encoder;
    extract::labeled_store_checked(model, test, &cfg.data, kind, device, &budget, opts, "features test", obs, check)
}

/// Top-1, top-5 and confusion of a classifier on every row of `test`: `logits` maps a chunk of
/// features (on `device`) to its `rows x classes` scores.
pub fn classify_store(
    test: &FeatureStore,
    classes: i64,
    device: Device,
    logits: impl Fn(&Tensor) -> Tensor,
) -> Result<Classification> {
    let mut parts = Vec::new();
    for c in test.chunks_f32() {
        let (_, x) = c?;
        parts.push(logits(&x.f_to_device(device)?).f_to_device(Device::Cpu)?);
    }
    Classification::from_scores(&linear::rows(&parts, classes), test.labels())
}

/// kNN top-1 of the encoder features (test vs train, un-augmented): the pretraining monitor.
pub fn knn_top1(cfg: &Config, model: &BarlowTwins, data: &Data, device: Device) -> Result<f64> {
    let (train, test) = both_splits(cfg, model, data, FeatureKind::Encoder, device, &mut ())?;
    knn_top1_of(cfg, &train, &test, device)
}

/// [`knn_top1`] on stores already extracted ([`both_splits`] with `FeatureKind::Encoder`), so
/// that the online probe's evaluation and the monitor share one extraction.
pub fn knn_top1_of(cfg: &Config, train: &FeatureStore, test: &FeatureStore, device: Device) -> Result<f64> {
    Ok(knn_value(cfg, train, test, device, &mut ())?["test_top1"].as_f64().unwrap_or(f64::NAN))
}

/// Linear probe of `model`; the JSON result (what is written to `eval_linear_<protocol>.json`).
/// The notebook's protocol probes the projector output, the standard one the encoder's (both on
/// precomputed frozen features; the probe trains on `device`, reading mini-batches from the
/// feature stores); the official one trains on augmented images through the frozen encoder
/// ([`official`]); `finetune` trains the encoder itself, changing `model` in place
/// ([`finetune`]; call [`finetune::finetune`] directly to keep the classifier and save the
/// fine-tuned network). `ctl` keeps the progress of the two that train for epochs (official,
/// finetune) and stops them on request ([`resume`]); the others run to the end.
pub fn linear_eval(
    cfg: &Config,
    model: &BarlowTwins,
    data: &Data,
    device: Device,
    protocol: LinearProtocol,
    obs: &mut dyn Observer,
    ctl: &EvalControl,
) -> Result<Value> {
    match protocol {
        LinearProtocol::Official => official::official_linear(cfg, model, data, device, obs, ctl),
        LinearProtocol::Finetune => Ok(finetune::finetune(cfg, model, data, device, obs, ctl)?.0),
        LinearProtocol::KerasSeed => frozen_probe(cfg, model, data, device, FeatureKind::Projector, obs),
        LinearProtocol::Standard => frozen_probe(cfg, model, data, device, FeatureKind::Encoder, obs),
    }
}

/// The probes on precomputed frozen features: the notebook's on the projector output, the
/// standard one on the encoder's.
fn frozen_probe(
    cfg: &Config,
    model: &BarlowTwins,
    data: &Data,
    device: Device,
    fk: FeatureKind,
    obs: &mut dyn Observer,
) -> Result<Value> {
    let t = Instant::now();
    let (train, test) = both_splits(cfg, model, data, fk, device, obs)?;
    let classes = num_classes(train.labels(), test.labels());
    let t_feat = t.elapsed().as_secs_f64();
    let mut progress = |done, total| obs.on_event(&Event::EvalProgress { stage: "linear", done, total });
    let (e, seed) = (&cfg.eval, cfg.run.seed);
    let mut v = match fk {
        FeatureKind::Projector => linear::keras_seed_store(&train, &test, classes, e, seed, device, &mut progress)?,
        FeatureKind::Encoder => linear::standard_store(&train, &test, classes, e, seed, device, &mut progress)?,
    };
    v["eval"] = json!("linear");
    v["features"] = json!(format!("{fk:?}").to_lowercase());
    v["features_s"] = json!(t_feat);
    v["feature_storage"] = storage(&train);
    v["wall_s"] = json!(t.elapsed().as_secs_f64());
    name_classes(&mut v, data);
    Ok(v)
}

/// The name a linear evaluation's result is saved under (`eval_<name>.json`):
/// `linear_keras-seed`, `linear_standard`, `linear_official`, or fine-tuning's
/// [`finetune::result_name`] (its labeled subset in the name).
pub fn linear_result_name(protocol: LinearProtocol, e: &bt_config::EvalConfig) -> String {
    match protocol {
        LinearProtocol::KerasSeed => "linear_keras-seed".into(),
        LinearProtocol::Standard => "linear_standard".into(),
        LinearProtocol::Official => "linear_official".into(),
        LinearProtocol::Finetune => finetune::result_name(e),
    }
}

/// How a store kept its features, for the result file.
fn storage(s: &FeatureStore) -> Value {
    json!({"kind": format!("{:?}", s.kind()).to_lowercase(), "memory_bytes": s.memory_bytes(), "spilled": s.spill_path().is_some()})
}

fn knn_value(
    cfg: &Config,
    train: &FeatureStore,
    test: &FeatureStore,
    device: Device,
    obs: &mut dyn Observer,
) -> Result<Value> {
    let (k, temp) = (cfg.eval.knn_k, cfg.eval.knn_temperature);
    let classes = num_classes(train.labels(), test.labels());
    let mut progress = |done, total| obs.on_event(&Event::EvalProgress { stage: "knn", done, total });
    let scores = knn::scores_store(train, test, k, temp, classes, device, &mut progress)?;
    let mut v = json!({
        "eval": "knn", "k": k, "temperature": temp,
        "similarity": "cosine", "features": "encoder", "feature_dim": train.dim(),
        "n_train": train.len(), "feature_storage": storage(train),
    });
    linear::merge(&mut v, Classification::from_scores(&scores, test.labels())?.to_json(None));
    Ok(v)
}

/// Class names of the evaluation split in label order, when the dataset has them.
fn class_names(data: &Data) -> Option<Vec<String>> {
    data.test.as_ref().and_then(|t| t.class_names()).or_else(|| data.train.class_names())
}

/// Adds `class_names` to a result that has a confusion matrix of the same width.
pub(crate) fn name_classes(v: &mut Value, data: &Data) {
    let width = v["confusion"].as_array().map(Vec::len);
    if let Some(names) = class_names(data).filter(|n| Some(n.len()) == width) {
        v["class_names"] = json!(names);
    }
}

/// kNN evaluation of the encoder features.
pub fn knn_eval(
    cfg: &Config,
    model: &BarlowTwins,
    data: &Data,
    device: Device,
    obs: &mut dyn Observer,
) -> Result<Value> {
    let t = Instant::now();
    let (train, test) = both_splits(cfg, model, data, FeatureKind::Encoder, device, obs)?;
    let mut v = knn_value(cfg, &train, &test, device, obs)?;
    v["wall_s"] = json!(t.elapsed().as_secs_f64());
    name_classes(&mut v, data);
    Ok(v)
}

/// Linear (standard) and kNN results from one pass of encoder features (what the demo runs for
/// each of its two encoders).
pub fn encoder_evals(cfg: &Config, model: &BarlowTwins, data: &Data, device: Device) -> Result<(Value, Value)> {
    let t = Instant::now();
    let (train, test) = both_splits(cfg, model, data, FeatureKind::Encoder, device, &mut ())?;
    let t_feat = t.elapsed().as_secs_f64();
    let classes = num_classes(train.labels(), test.labels());
    let mut lin = linear::standard_store(&train, &test, classes, &cfg.eval, cfg.run.seed, device, &mut |_, _| {})?;
    lin["eval"] = json!("linear");
    lin["features"] = json!("encoder");
    lin["features_s"] = json!(t_feat);
    name_classes(&mut lin, data);
    let mut knn = knn_value(cfg, &train, &test, device, &mut ())?;
    name_classes(&mut knn, data);
    Ok((lin, knn))
}

/// Where [`save_result`] writes the result `name`: `eval_<name>.json` in `run`, or
/// `<stem>.eval_<name>.json` beside `weights`.
pub fn result_path(run: Option<&RunFolder>, weights: &Path, name: &str) -> PathBuf {
    match run {
        Some(r) => r.eval(name),
        None => {
            let stem = weights.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
            weights.with_file_name(format!("{stem}.eval_{name}.json"))
        }
    }
}

/// Writes an evaluation result as `eval_<name>.json` into `run` (and refreshes its
/// `report.md`), or, without a run folder, as `<stem>.eval_<name>.json` beside `weights`;
/// a result with a confusion matrix also gets it drawn beside, as `..._confusion.png`.
/// Returns the JSON file written.
pub fn save_result(run: Option<&RunFolder>, weights: &Path, name: &str, value: &Value) -> Result<PathBuf> {
    let path = result_path(run, weights, name);
    atomic_write(&path, serde_json::to_string_pretty(value)?.as_bytes())?;
    if let Some(c) = Classification::from_json(value) {
        let names: Option<Vec<String>> = serde_json::from_value(value["class_names"].clone()).ok();
        let title = format!(
            "{} {} top-1 {:.2}% top-5 {:.2}%",
            value["eval"].as_str().unwrap_or("eval"),
            value["protocol"].as_str().unwrap_or(""),
            100.0 * c.top1,
            100.0 * c.top5
        );
        let png = confusion_png(&path);
        let img = c.confusion_image(&title, names.as_deref());
        atomic_write(&png, &crate::plot::png_bytes(&img, &png)?)?;
    }
    if let Some(r) = run {
        crate::report::write(r)?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::{build_model, load_data};
    use bt_config::FeaturePrecision;

    /// Watches the spill folder while the evaluation runs.
    #[derive(Default)]
    struct Watch {
        dir: PathBuf,
        stages: Vec<String>,
        files_during_knn: usize,
        last: (usize, usize),
    }

    impl Observer for Watch {
        fn on_event(&mut self, e: &Event<'_>) {
            if let Event::EvalProgress { stage, done, total } = e {
                if self.stages.last().map(String::as_str) != Some(*stage) {
                    self.stages.push(stage.to_string());
                }
                if *stage == "knn" {
                    let n = std::fs::read_dir(&self.dir).map_or(0, |d| d.count());
                    self.files_during_knn = self.files_during_knn.max(n);
                }
                self.last = (*done, *total);
            }
        }
    }

    #[test]
    fn a_zero_budget_spills_to_eval_feature_dir_gives_the_same_knn_and_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = Config::preset("demo").unwrap();
        (cfg.data.synthetic_train, cfg.data.synthetic_test) = (300, 100);
        cfg.eval.feature_precision = FeaturePrecision::F32;
        cfg.eval.feature_dir = tmp.path().join("spill");
        let data = load_data(&cfg).unwrap();
        let (_vs, model) = build_model(&cfg, Device::Cpu).unwrap();
        let in_memory = knn_eval(&cfg, &model, &data, Device::Cpu, &mut ()).unwrap();
        assert_eq!(in_memory["feature_storage"]["spilled"], json!(false), "{in_memory}");
        cfg.eval.feature_memory_mb = 0;
        let mut w = Watch { dir: cfg.eval.feature_dir.clone(), ..Default::default() };
        let spilled = knn_eval(&cfg, &model, &data, Device::Cpu, &mut w).unwrap();
        assert_eq!(spilled["feature_storage"]["spilled"], json!(true), "{spilled}");
        assert_eq!(spilled["test_top1"], in_memory["test_top1"]);
        assert_eq!(w.stages, ["features test", "features train", "knn"]);
        assert_eq!(w.last, (300, 300));
        assert_eq!(w.files_during_knn, 2, "one spill file per split while kNN runs");
        assert_eq!(std::fs::read_dir(&cfg.eval.feature_dir).unwrap().count(), 0, "spill files left behind");
    }
}
