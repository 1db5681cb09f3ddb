//! Linear probes on frozen features.
//!
//! - [`keras_seed`]: the notebook's protocol, exactly: `Dense(10, softmax,
//!   kernel_regularizer=l2(0.02))` (glorot-uniform kernel, zero bias) on the frozen network's
//!   output, `tfa.optimizers.LAMB()` defaults, 35 epochs, batch 512, drop remainder, data
//!   order from `tf.data`'s `shuffle(1000)` (a 1000-element shuffle buffer, reshuffled every
//!   epoch), test set also shuffled and batched with drop remainder. The reported accuracy is
//!   the last epoch's `val_accuracy`, as the notebook reads it. Which features (the 5000-d
//!   projector output, the notebook's quirk) is the caller's choice.
//! - [`standard`]: features standardized with training statistics, a linear layer trained by
//!   SGD (momentum 0.9) with a per-step cosine schedule; learning rate and weight decay picked
//!   on a validation split carved from train (`eval.val_fraction`), then the classifier is
//!   retrained on all of train with the chosen pair and evaluated once on test.
//!
//! Both read their features from a [`FeatureStore`] (`*_store`): each mini-batch gathers its
//! rows from the chunks (f32 per batch), so the matrix is never copied, standardized or moved
//! whole. The tensor functions wrap their arguments in a one-chunk f32 store, so there is one
//! implementation. The standard probe's mean and standard deviation are accumulated in f64
//! over the chunks (two passes), rounded to f32: a store of any chunking, in memory or spilled,
//! gives the same bits (up to a sum in f64 landing within 1e-16 of an f32 rounding boundary).
use crate::classification::Classification;
use crate::error::Result;
use crate::eval::features::{index, FeatureStore};
use crate::eval::top1;
use bt_config::{EvalConfig, OptimConfig};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

/// `tf.data.Dataset.shuffle(buffer)` order semantics over `0..n`: fill a buffer with the first
/// `buffer` elements; then repeatedly emit a uniformly chosen slot and refill it with the next
/// element; when the input is exhausted, drain the buffer in random order. Unlike a full
/// permutation, an element can only move `buffer` places earlier.
pub fn tf_shuffle_order(n: usize, buffer: usize, rng: &mut impl Rng) -> Vec<usize> {
    let mut buf: Vec<usize> = (0..n.min(buffer)).collect();
    let mut next = buf.len();
    let mut out = Vec::with_capacity(n);
    while !buf.is_empty() {
        let i = rng.gen_range(0..buf.len());
        out.push(buf[i]);
        if next < n {
            buf[i] = next;
            next += 1;
        } else {
            buf.swap_remove(i);
        }
    }
    out
}

/// Correct predictions of `logits` (`B x C`) against `labels` (`B`).
fn correct(logits: &Tensor, labels: &Tensor) -> i64 {
    logits.argmax(1, false).eq_tensor(labels).sum(Kind::Int64).int64_value(&[])
}

/// The notebook's probe. Features are `N x F` f32 on any device (the probe trains there),
/// labels `N` int64.
pub fn keras_seed(
    train_x: &Tensor,
    train_y: &Tensor,
    test_x: &Tensor,
    test_y: &Tensor,
    classes: i64,
    cfg: &EvalConfig,
    seed: u64,
) -> Result<Value> {
    let (train, test) = (FeatureStore::from_tensors(train_x, train_y)?, FeatureStore::from_tensors(test_x, test_y)?);
    keras_seed_store(&train, &test, classes, cfg, seed, train_x.device(), &mut |_, _| {})
}

/// [`keras_seed`] on feature stores, trained on `dev`; `progress(epochs done, epochs)`.
pub fn keras_seed_store(
    train: &FeatureStore,
    test: &FeatureStore,
    classes: i64,
    cfg: &EvalConfig,
    seed: u64,
    dev: Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Value> {
    let f = train.dim();
    let (train_y, test_y) = (train.labels_tensor().to_device(dev), test.labels_tensor().to_device(dev));
    let b = cfg.linear_batch_size;
    tch::manual_seed(seed as i64);
    // Keras Dense: glorot-uniform kernel (F x 10), zero bias.
    let limit = (6.0 / (f + classes) as f64).sqrt();
    let kernel = Tensor::empty([f, classes], (Kind::Float, dev)).uniform_(-limit, limit).set_requires_grad(true);
    let bias = Tensor::zeros([classes], (Kind::Float, dev)).set_requires_grad(true);
    let mut opt = bt_optim::build(
        &OptimConfig::default(), // tfa.optimizers.LAMB() defaults: lr 1e-3, b1 .9, b2 .999, eps 1e-6
        vec![("dense.kernel".into(), kernel.shallow_clone()), ("dense.bias".into(), bias.shallow_clone())],
    )?;
    let lr = bt_optim::LrPair::same(OptimConfig::default().lr);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6b65_7261_735f_6c69);
    let (n, m) = (train.len(), test.len());
    let mut history = Vec::new();
    let mut val_acc = 0.0;
    for epoch in 0..cfg.linear_epochs {
        let order = tf_shuffle_order(n, 1000, &mut rng);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0.0, 0usize);
        for chunk in order.chunks_exact(b) {
            let ix = index(chunk).to_device(dev);
            let (x, y) = (train.gather(chunk)?.to_device(dev), train_y.index_select(0, &ix));
            let logits = x.matmul(&kernel) + &bias;
            let ce = logits.cross_entropy_for_logits(&y);
            let loss = &ce + cfg.linear_l2 * kernel.pow_tensor_scalar(2).sum(Kind::Float);
            opt.zero_grad();
            loss.backward();
            opt.step(&lr)?;
            loss_sum += loss.double_value(&[]) * chunk.len() as f64;
            correct += top1(&logits.detach(), &y) * chunk.len() as f64;
            seen += chunk.len();
        }
        // Validation: the test set through shuffle(1000).batch(512, drop_remainder=True).
        let vorder = tf_shuffle_order(m, 1000, &mut rng);
        let (mut vc, mut vseen) = (0.0, 0usize);
        tch::no_grad(|| -> Result<()> {
            for chunk in vorder.chunks_exact(b) {
                let ix = index(chunk).to_device(dev);
                let logits = test.gather(chunk)?.to_device(dev).matmul(&kernel) + &bias;
                vc += top1(&logits, &test_y.index_select(0, &ix)) * chunk.len() as f64;
                vseen += chunk.len();
            }
            Ok(())
        })?;
        val_acc = if vseen > 0 { vc / vseen as f64 } else { f64::NAN };
        let rec = json!({
            "epoch": epoch + 1,
            "loss": if seen > 0 { loss_sum / seen as f64 } else { f64::NAN },
            "accuracy": if seen > 0 { correct / seen as f64 } else { f64::NAN },
            "val_accuracy": val_acc,
        });
        tracing::debug!("keras-seed probe {rec}");
        history.push(rec);
        progress(epoch + 1, cfg.linear_epochs);
    }
    // Top-5, per-class accuracy and the confusion matrix of the final classifier over the whole
    // test set (the reported top-1 stays the notebook's: last epoch's shuffled, drop-remainder
    // `val_accuracy`).
    let mut scores = Vec::new();
    let all: Vec<usize> = (0..m).collect();
    for chunk in all.chunks(4096) {
        let logits =
            tch::no_grad(|| -> Result<Tensor> { Ok(test.gather(chunk)?.to_device(dev).matmul(&kernel) + &bias) })?;
        scores.push(logits.to_device(Device::Cpu));
    }
    let summary = Classification::from_scores(&rows(&scores, classes), test.labels())?;
    let mut v = json!({
        "protocol": "keras-seed",
        "epochs": cfg.linear_epochs,
        "batch_size": b,
        "l2": cfg.linear_l2,
        "optimizer": "LAMB (tfa defaults, lr 1e-3)",
        "feature_dim": f,
        "n_train": n,
        "n_test_used": (m / b) * b,
        "history": history,
    });
    merge(&mut v, summary.to_json(None));
    v["full_test_top1"] = json!(summary.top1);
    v["test_top1"] = json!(val_acc);
    Ok(v)
}

/// Per-feature mean and standard deviation (population, + 1e-6) of the rows where `keep` is
/// true (all rows when `None`), accumulated in f64 over the chunks, returned as `1 x F` f32.
fn moments(store: &FeatureStore, keep: Option<&[bool]>, dev: Device) -> Result<(Tensor, Tensor)> {
    let rows = |first: i64, chunk: Tensor| -> Tensor {
        match keep {
            None => chunk.to_kind(Kind::Double),
            Some(k) => {
                let local: Vec<usize> = (0..chunk.size()[0] as usize).filter(|&r| k[first as usize + r]).collect();
                chunk.index_select(0, &index(&local)).to_kind(Kind::Double)
            }
        }
    };
    let n = keep.map_or(store.len(), |k| k.iter().filter(|&&b| b).count()).max(1) as f64;
    let mut sum = Tensor::zeros([1, store.dim()], (Kind::Double, Device::Cpu));
    for c in store.chunks_f32() {
        let (first, chunk) = c?;
        sum += rows(first, chunk).sum_dim_intlist([0i64].as_slice(), true, Kind::Double);
    }
    let mean = sum / n;
    let mut sq = Tensor::zeros([1, store.dim()], (Kind::Double, Device::Cpu));
    for c in store.chunks_f32() {
        let (first, chunk) = c?;
        sq += (rows(first, chunk) - &mean).square().sum_dim_intlist([0i64].as_slice(), true, Kind::Double);
    }
    let std = (sq / n).sqrt().to_kind(Kind::Float) + 1e-6;
    Ok((mean.to_kind(Kind::Float).to_device(dev), std.to_device(dev)))
}

/// Rows of a store, standardized with training moments, on the probe's device.
struct Standardized<'a> {
    store: &'a FeatureStore,
    labels: Tensor,
    mean: Tensor,
    std: Tensor,
    dev: Device,
}

impl Standardized<'_> {
    fn batch(&self, ix: &[usize]) -> Result<(Tensor, Tensor)> {
        let x = (self.store.gather(ix)?.to_device(self.dev) - &self.mean) / &self.std;
        Ok((x, self.labels.index_select(0, &index(ix).to_device(self.dev))))
    }
    /// Logits of `lin` on rows `ix` (`len x C` on the CPU), in batches of 4096 rows.
    fn scores(&self, lin: &nn::Linear, ix: &[usize]) -> Result<Tensor> {
        let mut out = Vec::new();
        for b in ix.chunks(4096) {
            let (x, _) = self.batch(b)?;
            out.push(tch::no_grad(|| x.apply(lin)).to_device(Device::Cpu));
        }
        Ok(rows(&out, lin.ws.size()[0]))
    }
    /// Top-1 accuracy of `lin` on rows `ix`, in batches (never the whole split at once).
    fn accuracy(&self, lin: &nn::Linear, ix: &[usize]) -> Result<f64> {
        let mut hits = 0;
        for b in ix.chunks(4096) {
            let (x, y) = self.batch(b)?;
            hits += tch::no_grad(|| correct(&x.apply(lin), &y));
        }
        Ok(hits as f64 / ix.len() as f64)
    }
}

/// Trains a linear layer on rows `rows` with SGD (momentum 0.9) and a per-step cosine
/// schedule from `lr` to 0; `epoch_done()` after each epoch.
#[allow(clippy::too_many_arguments)]
fn train_sgd(
    tr: &Standardized,
    rows: &[usize],
    classes: i64,
    epochs: usize,
    batch: usize,
    lr: f64,
    wd: f64,
    seed: u64,
    epoch_done: &mut dyn FnMut(),
) -> Result<nn::Linear> {
    tch::manual_seed(seed as i64);
    let vs = nn::VarStore::new(tr.dev);
    let lin = nn::linear(vs.root(), tr.store.dim(), classes, Default::default());
    let mut opt = nn::Sgd { momentum: 0.9, dampening: 0.0, wd, nesterov: false }.build(&vs, lr)?;
    let n = rows.len();
    let steps_per_epoch = n.div_ceil(batch);
    let total = (epochs * steps_per_epoch).max(1) as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut step = 0usize;
    for _ in 0..epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks(batch) {
            opt.set_lr(lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total).cos()));
            let ix: Vec<usize> = chunk.iter().map(|&i| rows[i]).collect();
            let (x, y) = tr.batch(&ix)?;
            let loss = x.apply(&lin).cross_entropy_for_logits(&y);
            opt.backward_step(&loss);
            step += 1;
        }
        epoch_done();
    }
    // `lin` keeps its tensors alive after `vs` is dropped (shared storage).
    Ok(lin)
}

/// Learning rates and weight decays of the validation grid (SGD on standardized features).
pub const GRID_LR: [f64; 3] = [0.3, 0.1, 0.03];
/// See [`GRID_LR`].
pub const GRID_WD: [f64; 2] = [0.0, 5e-4];

/// The standard probe. Features `N x F` f32 (CPU or CUDA: the probe trains there), labels `N`
/// int64.
pub fn standard(
    train_x: &Tensor,
    train_y: &Tensor,
    test_x: &Tensor,
    test_y: &Tensor,
    classes: i64,
    cfg: &EvalConfig,
    seed: u64,
) -> Result<Value> {
    let (train, test) = (FeatureStore::from_tensors(train_x, train_y)?, FeatureStore::from_tensors(test_x, test_y)?);
    standard_store(&train, &test, classes, cfg, seed, train_x.device(), &mut |_, _| {})
}

/// [`standard`] on feature stores, trained on `dev`; `progress(epochs done, epochs)` over the
/// grid and the final fit.
pub fn standard_store(
    train: &FeatureStore,
    test: &FeatureStore,
    classes: i64,
    cfg: &EvalConfig,
    seed: u64,
    dev: Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Value> {
    let n = train.len();
    let n_val = ((n as f64) * cfg.val_fraction).round() as usize;
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x7374_616e_6461_7264));
    let (val_ix, fit_ix) = (&perm[..n_val], &perm[n_val..]);
    let (epochs, batch) = (cfg.linear_epochs, cfg.linear_batch_size);
    let fits = if n_val > 0 { GRID_LR.len() * GRID_WD.len() + 1 } else { 1 };
    let (mut done, total) = (0, fits * epochs);
    let mut tick = || {
        done += 1;
        progress(done, total)
    };
    let labels = train.labels_tensor().to_device(dev);

    let mut grid = Vec::new();
    let (mut best_lr, mut best_wd, mut best_val) = (GRID_LR[1], GRID_WD[0], f64::NAN);
    if n_val > 0 {
        let mut keep = vec![true; n];
        for &i in val_ix {
            keep[i] = false;
        }
        let (mean, std) = moments(train, Some(&keep), dev)?;
        let fit = Standardized { store: train, labels: labels.shallow_clone(), mean, std, dev };
        for &lr in &GRID_LR {
            for &wd in &GRID_WD {
                let lin = train_sgd(&fit, fit_ix, classes, epochs, batch, lr, wd, seed, &mut tick)?;
                let acc = fit.accuracy(&lin, val_ix)?;
                tracing::debug!("standard probe grid lr {lr} wd {wd}: val top-1 {acc:.4}");
                grid.push(json!({"lr": lr, "weight_decay": wd, "val_top1": acc}));
                if best_val.is_nan() || acc > best_val {
                    (best_lr, best_wd, best_val) = (lr, wd, acc);
                }
            }
        }
    }
    let (mean, std) = moments(train, None, dev)?;
    let all: Vec<usize> = (0..n).collect();
    let tr = Standardized { store: train, labels, mean, std, dev };
    let lin = train_sgd(&tr, &all, classes, epochs, batch, best_lr, best_wd, seed, &mut tick)?;
    let train_acc = tr.accuracy(&lin, &all)?;
    let te = Standardized { store: test, labels: test.labels_tensor().to_device(dev), ..tr };
    let test_ix: Vec<usize> = (0..test.len()).collect();
    let summary = Classification::from_scores(&te.scores(&lin, &test_ix)?, test.labels())?;
    let mut v = json!({
        "protocol": "standard",
        "train_top1": train_acc,
        "val_top1": if best_val.is_nan() { Value::Null } else { json!(best_val) },
        "lr": best_lr,
        "weight_decay": best_wd,
        "grid": grid,
        "epochs": epochs,
        "batch_size": batch,
        "optimizer": "SGD momentum 0.9, cosine per step, standardized features",
        "feature_dim": train.dim(),
        "n_train": n - n_val,
        "n_val": n_val,
    });
    merge(&mut v, summary.to_json(None));
    Ok(v)
}

/// The row blocks `parts` stacked (`0 x classes` when there are none).
pub(crate) fn rows(parts: &[Tensor], classes: i64) -> Tensor {
    if parts.is_empty() {
        Tensor::zeros([0, classes], (Kind::Float, Device::Cpu))
    } else {
        Tensor::cat(parts, 0)
    }
}

/// Adds the fields of `extra` (an object) to `v` (an object), replacing those present.
pub(crate) fn merge(v: &mut Value, extra: Value) {
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    const CLASSES: i64 = 10;

    fn blobs(n: i64, f: i64, seed: i64, spread: f64) -> (Tensor, Tensor) {
        tch::manual_seed(seed);
        let centers = Tensor::randn([CLASSES, f], (Kind::Float, Device::Cpu)) * 3.0;
        let y = Tensor::randint(CLASSES, [n], (Kind::Int64, Device::Cpu));
        let x = centers.index_select(0, &y) + Tensor::randn([n, f], (Kind::Float, Device::Cpu)) * spread;
        (x, y)
    }

    #[test]
    fn tf_shuffle_is_a_permutation_with_bounded_displacement() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let o = tf_shuffle_order(5000, 1000, &mut rng);
        let mut s = o.clone();
        s.sort();
        assert_eq!(s, (0..5000).collect::<Vec<_>>());
        // Output position p can only hold elements < p + 1000 (the buffer has seen no more).
        assert!(o.iter().enumerate().all(|(p, &e)| e < p + 1000));
        assert_ne!(o, (0..5000).collect::<Vec<_>>());
    }

    #[test]
    fn probes_separate_easy_blobs_and_fail_on_shuffled_labels() {
        // One draw split in two: train and test share the class centers even when another test
        // thread uses libtorch's global generator between calls (seeding twice would not do).
        let (all_x, all_y) = blobs(1600, 16, 0, 1.0);
        let (x, tx) = (all_x.narrow(0, 0, 1200), all_x.narrow(0, 1200, 400));
        let (y, ty) = (all_y.narrow(0, 0, 1200), all_y.narrow(0, 1200, 400));
        let cfg = EvalConfig { linear_epochs: 10, linear_batch_size: 128, ..Default::default() };
        let s = standard(&x, &y, &tx, &ty, CLASSES, &cfg, 3).unwrap();
        assert!(s["test_top1"].as_f64().unwrap() > 0.95, "{s}");
        assert_eq!(s["grid"].as_array().unwrap().len(), GRID_LR.len() * GRID_WD.len());
        // LAMB at lr 1e-3 moves each weight tensor by ~0.1% of its norm per step: it needs
        // about a thousand steps (the notebook: 97 x 35 = 3395).
        let kcfg = EvalConfig { linear_epochs: 30, linear_batch_size: 32, ..Default::default() };
        let k = keras_seed(&x, &y, &tx, &ty, CLASSES, &kcfg, 3).unwrap();
        assert!(k["test_top1"].as_f64().unwrap() > 0.8, "{k}");
        assert_eq!(k["history"].as_array().unwrap().len(), 30);
        // Labels unrelated to the features: chance level.
        let noise_y = Tensor::randint(CLASSES, [400], (Kind::Int64, Device::Cpu));
        let s = standard(&x, &y, &tx, &noise_y, CLASSES, &cfg, 3).unwrap();
        assert!(s["test_top1"].as_f64().unwrap() < 0.25, "{s}");
    }

    fn store(
        x: &Tensor,
        y: &Tensor,
        precision: bt_config::FeaturePrecision,
        chunk_rows: usize,
        budget: u64,
    ) -> FeatureStore {
        use crate::eval::features::{Budget, StoreOptions};
        let opts = StoreOptions { precision, chunk_rows, dir: std::env::temp_dir() };
        let mut s = FeatureStore::new(x.size()[0] as usize, &Budget::new(budget), opts);
        let labels = Vec::<i64>::try_from(y).unwrap();
        for (i, b) in x.split(64, 0).iter().enumerate() {
            s.push(b, &labels[i * 64..i * 64 + b.size()[0] as usize]).unwrap();
        }
        s.finish().unwrap()
    }

    #[test]
    fn probes_on_chunked_and_spilled_stores_equal_the_tensor_probes() {
        use bt_config::FeaturePrecision::{F16, F32};
        // Overlapping blobs: accuracies well below 100%, so a changed bit could show.
        let (all_x, all_y) = blobs(1000, 16, 7, 3.0);
        let (x, tx) = (all_x.narrow(0, 0, 800), all_x.narrow(0, 800, 200));
        let (y, ty) = (all_y.narrow(0, 0, 800), all_y.narrow(0, 800, 200));
        let cfg = EvalConfig { linear_epochs: 3, linear_batch_size: 64, ..Default::default() };
        let want_s = standard(&x, &y, &tx, &ty, CLASSES, &cfg, 5).unwrap();
        let want_k = keras_seed(&x, &y, &tx, &ty, CLASSES, &cfg, 5).unwrap();
        let acc = want_s["test_top1"].as_f64().unwrap();
        assert!(acc > 0.3 && acc < 0.99, "{want_s}");
        // In memory in chunks of 100 rows (the last partial); all spilled; half spilled.
        for (chunk_rows, budget) in [(100usize, u64::MAX), (100, 0), (128, 4 * 128 * 16 * 4)] {
            let (tr, te) = (store(&x, &y, F32, chunk_rows, budget), store(&tx, &ty, F32, chunk_rows, budget));
            assert_eq!(tr.spill_path().is_some(), budget < u64::MAX);
            let mut epochs = 0;
            let s = standard_store(&tr, &te, CLASSES, &cfg, 5, Device::Cpu, &mut |d, t| epochs = d.max(t)).unwrap();
            assert_eq!(s, want_s, "standard, chunks of {chunk_rows}, budget {budget}");
            assert_eq!(epochs, 3 * (GRID_LR.len() * GRID_WD.len() + 1));
            let k = keras_seed_store(&tr, &te, CLASSES, &cfg, 5, Device::Cpu, &mut |_, _| {}).unwrap();
            assert_eq!(k, want_k, "keras-seed, chunks of {chunk_rows}, budget {budget}");
        }
        // f16: rounding of the inputs only; the accuracy moves by at most 2 of 200 test rows.
        let (tr, te) = (store(&x, &y, F16, 100, 0), store(&tx, &ty, F16, 100, 0));
        let s = standard_store(&tr, &te, CLASSES, &cfg, 5, Device::Cpu, &mut |_, _| {}).unwrap();
        let d = (s["test_top1"].as_f64().unwrap() - acc).abs();
        assert!(d <= 0.01 + 1e-12, "f16 moved the standard probe by {d}: {s}");
    }
}
