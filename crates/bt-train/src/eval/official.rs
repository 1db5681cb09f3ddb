//! The official linear evaluation, as facebookresearch/barlowtwins `evaluate.py --weights
//! freeze` runs it (the line of each setting in `docs/USAGE.md`):
//!
//! - the encoder frozen and in eval mode (batch norm on its running statistics), a linear layer
//!   on the pooled features, `fc.weight ~ N(0, 0.01)`, `fc.bias = 0`;
//! - training images through `RandomResizedCrop(size)` (scale (0.08, 1), ratio (3/4, 4/3),
//!   bilinear) + `RandomHorizontalFlip()` + `ToTensor` + `Normalize`, freshly drawn every epoch
//!   (our Pillow-exact ops: [`bt_config::ViewConfig::official_linear_train`], on the twin
//!   pipeline's sources, its first view);
//! - test images `Resize(256)` + `CenterCrop(224)` (for another `data.image_size` the same
//!   ratio: [`bt_data::eval::resize_side`]): features computed once, since the encoder is frozen;
//! - `CrossEntropyLoss`, `SGD(momentum 0.9, weight_decay)` ([`bt_optim::Sgd`], PyTorch's update),
//!   `CosineAnnealingLR(epochs)` stepped once per epoch; batch 256, no dropped remainder;
//! - after every epoch top-1 and top-5 on the test split; `evaluate.py` prints the best of each
//!   over the epochs (`best_acc1`/`best_acc5`, what the paper's tables quote): reported as
//!   `best_top1`/`best_top5` beside the last epoch's `test_top1`/`test_top5`;
//! - its state saved after every epoch and picked up again, as `evaluate.py` does with its
//!   `checkpoint.pth` ([`super::resume`]).
use super::resume::{copy_into, EvalControl};
use crate::error::Result;
use crate::observer::{Event, Observer};
use crate::setup::Data;
use bt_config::{AugmentConfig, Config, EvalConfig};
use bt_model::BarlowTwins;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Instant;
use tch::{nn, Device, Tensor};

/// `evaluate.py`'s classifier, `fc = Linear(features, classes)` in a store of its own on
/// `device`: `fc.weight ~ N(0, 0.01)` from libtorch's generator seeded with `seed`, `fc.bias = 0`.
pub(crate) fn fc_layer(features: i64, classes: i64, seed: u64, device: Device) -> (nn::VarStore, nn::Linear) {
    tch::manual_seed(seed as i64);
    let vs = nn::VarStore::new(device);
    let lin = nn::linear(vs.root() / "fc", features, classes, Default::default());
    tch::no_grad(|| {
        let _ = lin.ws.shallow_clone().normal_(0.0, 0.01);
        if let Some(b) = &lin.bs {
            let _ = b.shallow_clone().zero_();
        }
    });
    (vs, lin)
}

/// The same layer from a given weight (`classes x features`) and bias, on their device.
pub(crate) fn fc_from(weight: &Tensor, bias: &Tensor) -> (nn::VarStore, nn::Linear) {
    let vs = nn::VarStore::new(weight.device());
    let s = weight.size();
    let lin = nn::linear(vs.root() / "fc", s[1], s[0], Default::default());
    tch::no_grad(|| {
        lin.ws.shallow_clone().copy_(weight);
        lin.bs.as_ref().expect("a bias").shallow_clone().copy_(bias);
    });
    (vs, lin)
}

/// The classifier and its optimizer.
pub struct OfficialClassifier {
    _vs: nn::VarStore,
    lin: nn::Linear,
    opt: bt_optim::Sgd,
    lr: f64,
    epochs: usize,
}

impl OfficialClassifier {
    /// `features -> classes` ([`fc_layer`]), on `device`, with the `eval.official_*` settings.
    pub fn new(features: i64, classes: i64, e: &EvalConfig, seed: u64, device: Device) -> Result<Self> {
        let (vs, lin) = fc_layer(features, classes, seed, device);
        Self::with_layer(vs, lin, e)
    }

    /// A classifier from given weights (`classes x features`) and bias (tests).
    pub fn from_weights(weight: &Tensor, bias: &Tensor, e: &EvalConfig) -> Result<Self> {
        let (vs, lin) = fc_from(weight, bias);
        Self::with_layer(vs, lin, e)
    }

    fn with_layer(vs: nn::VarStore, lin: nn::Linear, e: &EvalConfig) -> Result<Self> {
        let params = fc_params(&lin);
        let opt = bt_optim::Sgd::new(vec![params], &[e.official_lr], 0.9, e.official_weight_decay)?;
        Ok(Self { _vs: vs, lin, opt, lr: e.official_lr, epochs: e.official_epochs })
    }

    /// `CosineAnnealingLR(optimizer, epochs)` after `epoch` scheduler steps (closed form).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        self.lr * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / self.epochs.max(1) as f64).cos())
    }

    /// Sets the learning rate of 0-based `epoch`.
    pub fn set_epoch(&mut self, epoch: usize) {
        let lr = self.lr_at(epoch);
        self.opt.set_lr(0, lr);
    }

    /// One SGD step on features `h` (`N x F`) and labels `y` (`N`, int64); the batch's loss.
    pub fn step(&mut self, h: &Tensor, y: &Tensor) -> Result<f64> {
        let loss = h.apply(&self.lin).f_cross_entropy_loss::<Tensor>(y, None, tch::Reduction::Mean, -100, 0.0)?;
        self.opt.zero_grad();
        loss.f_backward()?;
        self.opt.step()?;
        Ok(bt_host::read_f64(&loss)?)
    }

    /// Logits of features `h`.
    pub fn logits(&self, h: &Tensor) -> Tensor {
        tch::no_grad(|| h.apply(&self.lin))
    }

    /// The weight (`classes x features`) and bias.
    pub fn parameters(&self) -> (Tensor, Tensor) {
        (self.lin.ws.shallow_clone(), self.lin.bs.as_ref().expect("a bias").shallow_clone())
    }

    /// `fc.weight`, `fc.bias` and the momentum buffers (copies), for a resume file.
    ///
    /// # Errors
    /// libtorch failing to copy.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out =
            fc_params(&self.lin).into_iter().map(|(n, t)| Ok((n, t.f_detach_copy()?))).collect::<Result<Vec<_>>>()?;
        out.extend(self.opt.state()?);
        Ok(out)
    }

    /// Restores what [`state`](Self::state) returned.
    ///
    /// # Errors
    /// A missing or misshapen entry.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        load_fc(&self.lin, tensors)?;
        self.opt.load_state(&momentum_of(tensors))?;
        Ok(())
    }
}

/// The layer's parameters under `evaluate.py`'s names, `fc.weight` and `fc.bias`.
pub(crate) fn fc_params(lin: &nn::Linear) -> Vec<(String, Tensor)> {
    vec![
        ("fc.weight".into(), lin.ws.shallow_clone()),
        ("fc.bias".into(), lin.bs.as_ref().expect("a bias").shallow_clone()),
    ]
}

/// Copies `fc.weight` and `fc.bias` of a resume file into the layer.
pub(crate) fn load_fc(lin: &nn::Linear, tensors: &HashMap<String, Tensor>) -> Result<()> {
    fc_params(lin).iter().try_for_each(|(name, dst)| copy_into(tensors, name, dst, "classifier"))
}

/// The optimizer's entries of a resume file.
pub(crate) fn momentum_of(tensors: &HashMap<String, Tensor>) -> Vec<(String, Tensor)> {
    tensors
        .iter()
        .filter(|(k, _)| k.starts_with(bt_optim::sgd::MOMENTUM_BUFFER))
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect()
}

/// The training side `evaluate.py`'s protocols share (this one and [`super::finetune`]): the
/// twin pipeline's first views of a labeled source under
/// [`AugmentConfig::official_linear`], batches kept whole (no dropped remainder).
pub(crate) struct LabeledViews {
    pipe: bt_data::TwinPipeline,
    src: std::sync::Arc<dyn bt_data::ImageSource>,
    classes: i64,
    needs: &'static str,
    stage: &'static str,
}

impl LabeledViews {
    /// Views of `src` in batches of `batch`, from the run's seed mixed with `tag` (each protocol
    /// its own stream, apart from the pretraining views); `classes` is the classifier's width;
    /// `needs` ends the error of an unlabeled image ("the official protocol needs ..."), `stage`
    /// names the progress events.
    pub(crate) fn new(
        cfg: &Config,
        src: std::sync::Arc<dyn bt_data::ImageSource>,
        batch: usize,
        tag: u64,
        classes: i64,
        needs: &'static str,
        stage: &'static str,
    ) -> Result<Self> {
        let mut dcfg = cfg.data.clone();
        (dcfg.batch_size, dcfg.drop_remainder) = (batch, false);
        let pipe =
            bt_data::TwinPipeline::new(src.clone(), &dcfg, &AugmentConfig::official_linear(), cfg.run.seed ^ tag)?;
        Ok(Self { pipe, src, classes, needs, stage })
    }

    /// Epoch `epoch` of `epochs`: `step(x, y, batch_index)` gets each batch's images (`N x 3 x S x
    /// S` on `device`) and labels (`N`, int64) and returns its mean loss, or `None` when it
    /// skipped the batch. Returns the mean loss over the rows that trained.
    pub(crate) fn epoch(
        &self,
        epoch: usize,
        epochs: usize,
        device: Device,
        obs: &mut dyn Observer,
        mut step: impl FnMut(&Tensor, &Tensor, usize) -> Result<Option<f64>>,
    ) -> Result<f64> {
        let nb = self.pipe.batches_per_epoch();
        let (mut loss_sum, mut rows) = (0.0, 0usize);
        for (i, b) in self.pipe.epoch(epoch as u64, 0).enumerate() {
            let b = b?;
            if let Some(r) = b.labels.iter().position(|&l| l < 0 || l >= self.classes) {
                crate::error::refuse!(
                    "{} has no label among the {} classes: {}",
                    self.src.describe(b.indices[r] as usize),
                    self.classes,
                    self.needs
                );
            }
            let s = b.image_size as i64;
            let x = Tensor::from_slice(&b.view_a).f_view([b.batch_size as i64, 3, s, s])?.f_to_device(device)?;
            let y = Tensor::from_slice(&b.labels).f_to_device(device)?;
            if let Some(loss) = step(&x, &y, i)? {
                loss_sum += loss * b.batch_size as f64;
                rows += b.batch_size;
            }
            obs.on_event(&Event::EvalProgress { stage: self.stage, done: epoch * nb + i + 1, total: epochs * nb });
        }
        Ok(loss_sum / rows.max(1) as f64)
    }
}

/// The classifier's width: the training source's class count when it has one, at least every
/// label of the test split (its largest label + 1; read from the source, no image decoded).
pub(crate) fn class_count(train: &dyn bt_data::ImageSource, test: &dyn bt_data::ImageSource) -> i64 {
    let test_classes = (0..test.len()).filter_map(|i| test.label(i)).max().map_or(0, |m| m as i64 + 1);
    train.num_classes().map_or(test_classes, |c| (c as i64).max(test_classes))
}

/// `evaluate.py`'s test record over the epochs: the best top-1 and top-5 of any epoch
/// (`best_acc1`/`best_acc5`), the per-epoch history, the last epoch's classification.
pub(crate) struct EpochRecords {
    best1: f64,
    best5: f64,
    history: Vec<Value>,
    last: Option<crate::eval::Classification>,
}

impl EpochRecords {
    pub(crate) fn new() -> Self {
        Self { best1: f64::NAN, best5: f64::NAN, history: Vec::new(), last: None }
    }

    /// The records so far, for a resume file (the last classification is not kept: a resumed
    /// evaluation runs at least one more epoch).
    pub(crate) fn to_json(&self) -> Value {
        json!({"best_top1": self.best1, "best_top5": self.best5, "history": self.history})
    }

    /// What [`to_json`](Self::to_json) wrote.
    pub(crate) fn from_json(v: &Value) -> Self {
        let num = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let history = v["history"].as_array().cloned().unwrap_or_default();
        Self { best1: num("best_top1"), best5: num("best_top5"), history, last: None }
    }

    /// An epoch's test classification and its other fields (`epoch`, `lr`, `loss`, ...).
    pub(crate) fn push(&mut self, c: crate::eval::Classification, mut rec: Value, what: &str) {
        self.best1 = if self.best1.is_nan() { c.top1 } else { self.best1.max(c.top1) };
        self.best5 = if self.best5.is_nan() { c.top5 } else { self.best5.max(c.top5) };
        (rec["test_top1"], rec["test_top5"]) = (json!(c.top1), json!(c.top5));
        tracing::info!("{what} {rec}");
        self.history.push(rec);
        self.last = Some(c);
    }

    /// Adds `best_top1`, `best_top5`, `history` and the last epoch's classification to `v`.
    pub(crate) fn finish(self, v: &mut Value) {
        (v["best_top1"], v["best_top5"], v["history"]) = (json!(self.best1), json!(self.best5), json!(self.history));
        if let Some(c) = self.last {
            crate::eval::linear::merge(v, c.to_json(None));
        }
    }
}

/// The protocol's name in resume files.
const PROTOCOL: &str = "official linear";

/// Runs the official linear protocol on `model`'s encoder; the JSON result
/// (`eval_linear_official.json`).
/// `ctl` keeps its progress after every epoch and stops it on request ([`EvalControl`]).
pub fn official_linear(
    cfg: &Config,
    model: &BarlowTwins,
    data: &Data,
    device: Device,
    obs: &mut dyn Observer,
    ctl: &EvalControl,
) -> Result<Value> {
    let t = Instant::now();
    let e = &cfg.eval;
    let test_src = data.test()?;
    let classes = class_count(data.train.as_ref(), test_src.as_ref());
    let needs = "the official protocol needs a labeled training split";
    let views = LabeledViews::new(
        cfg,
        data.train.clone(),
        e.official_batch_size,
        0x6f66_6669_6369_616c,
        classes,
        needs,
        "official linear",
    )?;
    let mut clf = OfficialClassifier::new(model.feature_dim(), classes, e, cfg.run.seed, device)?;
    let epochs = e.official_epochs;
    let (mut records, mut start) = (EpochRecords::new(), 0);
    if let Some(r) = ctl.load(cfg, PROTOCOL)? {
        clf.load_state(&r.tensors)?;
        (records, start) = (EpochRecords::from_json(&r.records), r.epochs_done);
    }
    // The frozen encoder's test features, once; a stop request ends even this pass.
    let check = || ctl.check_stop(PROTOCOL, start, epochs);
    let test = crate::eval::test_store_checked(cfg, model, test_src, device, obs, &check)?;
    for epoch in start..epochs {
        clf.set_epoch(epoch);
        let loss = views.epoch(epoch, epochs, device, obs, |x, y, _| {
            ctl.check_stop(PROTOCOL, epoch, epochs)?;
            let h = tch::no_grad(|| model.encode(x, false));
            Ok(Some(clf.step(&h, y)?))
        })?;
        let c = crate::eval::classify_store(&test, classes, device, |x| clf.logits(x))?;
        records.push(c, json!({"epoch": epoch + 1, "lr": clf.lr_at(epoch), "loss": loss}), "official linear");
        if epoch + 1 < epochs {
            ctl.save(cfg, PROTOCOL, epoch + 1, &clf.state()?, &records.to_json())?;
        }
    }
    let mut v = json!({
        "eval": "linear",
        "protocol": "official",
        "features": "encoder",
        "feature_dim": model.feature_dim(),
        "epochs": epochs,
        "batch_size": e.official_batch_size,
        "lr": e.official_lr,
        "weight_decay": e.official_weight_decay,
        "optimizer": "SGD momentum 0.9, CosineAnnealingLR per epoch (evaluate.py --weights freeze)",
        "train_transform": "RandomResizedCrop + RandomHorizontalFlip (Pillow bilinear)",
        "test_transform": format!("Resize({}) + CenterCrop({})", bt_data::eval::resize_side(cfg.data.image_size), cfg.data.image_size),
        "n_train": data.train.len(),
    });
    records.finish(&mut v);
    v["wall_s"] = json!(t.elapsed().as_secs_f64());
    crate::eval::name_classes(&mut v, data);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Against `scripts/fixtures/official_linear.py`: torch.optim.SGD(momentum 0.9, weight
    /// decay) + CosineAnnealingLR(3) stepped per epoch, 3 epochs of 2 batches, from the same
    /// initial weights.
    #[test]
    fn sgd_and_the_cosine_schedule_match_pytorch() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/official_linear.safetensors");
        let t: HashMap<String, Tensor> = Tensor::read_safetensors(&p).unwrap().into_iter().collect();
        let e = EvalConfig { official_epochs: 3, official_lr: 0.3, official_weight_decay: 1e-2, ..Default::default() };
        let mut clf = OfficialClassifier::from_weights(&t["w0"], &t["b0"], &e).unwrap();
        let mut lrs = Vec::new();
        for epoch in 0..3 {
            clf.set_epoch(epoch);
            lrs.push(clf.lr_at(epoch));
            for b in 0..2 {
                let (x, y) = (&t[&format!("x_{epoch}_{b}")], &t[&format!("y_{epoch}_{b}")]);
                let loss = clf.step(x, y).unwrap();
                let want = t[&format!("loss_{epoch}_{b}")].double_value(&[0]);
                assert!((loss - want).abs() <= 1e-5 * want.abs().max(1.0), "loss {epoch}/{b}: {loss} vs {want}");
            }
        }
        let want_lr = Vec::<f64>::try_from(&t["lrs"]).unwrap();
        for (a, b) in lrs.iter().zip(&want_lr) {
            assert!((a - b).abs() < 1e-12, "lr {lrs:?} vs {want_lr:?}");
        }
        assert_eq!(lrs.len(), want_lr.len());
        let (w, b) = clf.parameters();
        let dw = (&w - &t["w"]).abs().max().double_value(&[]);
        let db = (&b - &t["b"]).abs().max().double_value(&[]);
        assert!(dw <= 1e-5 && db <= 1e-5, "weights differ from PyTorch by {dw}, bias by {db}");
        assert!(dw.is_finite() && db.is_finite());
    }
}
