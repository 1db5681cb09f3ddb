//! Weighted k-nearest-neighbour classifier on frozen features, as solo-learn's
//! `WeightedKNNClassifier` and lightly's `knn_predict` (InstDisc's protocol): cosine
//! similarity, the `k` most similar training samples vote for their class with weight
//! `exp(sim / T)`, the class with the largest total wins.
//!
//! [`predict`] holds both matrices whole (the reference); [`predict_store`] streams the train
//! features chunk by chunk from a [`FeatureStore`] and keeps a running top-k per test row, so
//! memory is `O(block x chunk + M x k)`, not `O(M x N)`, and gives the same predictions.
use crate::error::Result;
use crate::eval::features::FeatureStore;
use tch::{Device, Kind, Tensor};

/// Predicted classes of `test` given labelled `train` features.
///
/// # Shapes
/// `train`: `N x F`, `train_labels`: `N` int64 in `0..classes`, `test`: `M x F` -> `M` int64.
/// Test rows are processed in chunks of 256, so memory is `256 x N` similarities at a time.
pub fn predict(
    train: &Tensor,
    train_labels: &Tensor,
    test: &Tensor,
    k: usize,
    temperature: f64,
    classes: i64,
) -> Tensor {
    tch::no_grad(|| {
        let train = normalize(train);
        let test = normalize(test);
        let k = (k as i64).min(train.size()[0]);
        let mut out = Vec::new();
        for chunk in test.split(BLOCK, 0) {
            let sim = chunk.matmul(&train.tr()); // m x N
            let (top_sim, top_idx) = sim.topk(k, 1, true, true); // m x k
            let votes = train_labels.index_select(0, &top_idx.view([-1])).view([-1, k]);
            let weights = (top_sim / temperature).exp();
            let m = chunk.size()[0];
            let scores = Tensor::zeros([m, classes], (Kind::Float, train.device())).scatter_add(1, &votes, &weights);
            out.push(scores.argmax(1, false));
        }
        Tensor::cat(&out, 0)
    })
}

/// Test rows per similarity block (as [`predict`]).
const BLOCK: i64 = 256;

/// [`predict`] over feature stores, on `device`: for each train chunk (read once, normalized in
/// f32) and each block of 256 test rows, the chunk's top-k similarities are merged into the
/// block's running top-k (`topk` of the concatenation), labels carried along; the votes are
/// then those of [`predict`]. `progress(train rows done, train rows)` after each chunk.
///
/// Test chunks are read once per train chunk: keep the test split in memory (it is extracted
/// first, so it takes the memory budget first).
///
/// # Shapes
/// Returns `M x classes` f32 vote totals on the CPU (the predictions are their argmax; top-5
/// and the confusion matrix come from them, see [`crate::classification`]).
pub fn scores_store(
    train: &FeatureStore,
    test: &FeatureStore,
    k: usize,
    temperature: f64,
    classes: i64,
    device: Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    tch::no_grad(|| {
        let k = (k as i64).min(train.len() as i64);
        let train_labels = train.labels_tensor().f_to_device(device)?;
        // Running (similarities, labels) of each test block, sorted by similarity, descending.
        let mut best: Vec<Option<(Tensor, Tensor)>> = Vec::new();
        for c in train.chunks_f32() {
            let (first, chunk) = c?;
            let rows = chunk.size()[0];
            let chunk = normalize(&chunk.f_to_device(device)?);
            let labels = train_labels.narrow(0, first, rows);
            let kc = k.min(rows);
            let mut b = 0;
            for t in test.chunks_f32() {
                for blk in t?.1.split(BLOCK, 0) {
                    let blk = normalize(&blk.f_to_device(device)?);
                    let (sim, idx) = blk.matmul(&chunk.tr()).topk(kc, 1, true, true);
                    let lab = labels.index_select(0, &idx.view([-1])).view([-1, kc]);
                    if b == best.len() {
                        best.push(None);
                    }
                    best[b] = Some(match best[b].take() {
                        None => (sim, lab),
                        Some((s0, l0)) => {
                            let (s, l) = (Tensor::cat(&[s0, sim], 1), Tensor::cat(&[l0, lab], 1));
                            let (s, i) = s.topk(k.min(s.size()[1]), 1, true, true);
                            (s, l.gather(1, &i, false))
                        }
                    });
                    b += 1;
                }
            }
            progress((first + rows) as usize, train.len());
        }
        let mut out = Vec::new();
        for (sim, votes) in best.into_iter().flatten() {
            let weights = (sim / temperature).exp();
            let scores =
                Tensor::zeros([votes.size()[0], classes], (Kind::Float, device)).scatter_add(1, &votes, &weights);
            out.push(scores.to_device(Device::Cpu));
        }
        if out.is_empty() {
            return Ok(Tensor::zeros([test.len() as i64, classes], (Kind::Float, Device::Cpu)));
        }
        Ok(Tensor::cat(&out, 0))
    })
}

/// [`scores_store`]'s argmax: `M` int64 predictions on the CPU.
pub fn predict_store(
    train: &FeatureStore,
    test: &FeatureStore,
    k: usize,
    temperature: f64,
    classes: i64,
    device: Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    Ok(scores_store(train, test, k, temperature, classes, device, progress)?.argmax(1, false))
}

fn normalize(x: &Tensor) -> Tensor {
    let x = x.to_kind(Kind::Float);
    // F.normalize: x / max(||x||, 1e-12).
    let n = x.norm_scalaropt_dim(2.0, [1], true).clamp_min(1e-12);
    x / n
}

/// Top-1 accuracy of [`predict`].
pub fn accuracy(
    train: &Tensor,
    train_labels: &Tensor,
    test: &Tensor,
    test_labels: &Tensor,
    k: usize,
    temperature: f64,
    classes: i64,
) -> f64 {
    let p = predict(train, train_labels, test, k, temperature, classes);
    p.eq_tensor(test_labels).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::features::{Budget, StoreOptions};
    use bt_config::FeaturePrecision;
    use std::path::Path;

    /// Predictions of solo-learn's algorithm in PyTorch, from `scripts/fixtures/knn.py`.
    #[test]
    fn matches_pytorch_reference() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/knn_ref.safetensors");
        let t: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&p).unwrap().into_iter().collect();
        for (case, k, temp) in [("a", 20usize, 0.07f64), ("b", 200, 0.1), ("c", 1, 0.5)] {
            let pred = predict(&t["train"], &t["train_labels"], &t["test"], k, temp, 5);
            let want = &t[&format!("pred_{case}")];
            let diff = pred.ne_tensor(want).sum(Kind::Int64).int64_value(&[]);
            assert_eq!(diff, 0, "case {case} (k={k}, T={temp}): {diff} predictions differ");
        }
    }

    fn store(x: &Tensor, y: &Tensor, precision: FeaturePrecision, chunk_rows: usize, budget: u64) -> FeatureStore {
        let opts = StoreOptions { precision, chunk_rows, dir: std::env::temp_dir() };
        let mut s = FeatureStore::new(x.size()[0] as usize, &Budget::new(budget), opts);
        let labels = Vec::<i64>::try_from(y).unwrap();
        for (i, b) in x.split(100, 0).iter().enumerate() {
            s.push(b, &labels[i * 100..i * 100 + b.size()[0] as usize]).unwrap();
        }
        s.finish().unwrap()
    }

    /// Clustered synthetic features: 10 classes, noisy enough that kNN errs on some rows.
    fn clusters(n: i64, seed: i64) -> (Tensor, Tensor) {
        tch::manual_seed(seed);
        let centers = Tensor::randn([10, 32], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(10, [n], (Kind::Int64, Device::Cpu));
        (centers.index_select(0, &y) + Tensor::randn([n, 32], (Kind::Float, Device::Cpu)) * 1.2, y)
    }

    #[test]
    fn streamed_knn_equals_the_whole_matrix_one() {
        let (x, y) = clusters(2300, 5);
        let (tx, ty) = (x.narrow(0, 0, 1700), y.narrow(0, 0, 1700));
        let (vx, vy) = (x.narrow(0, 1700, 600), y.narrow(0, 1700, 600));
        let mut calls = Vec::new();
        for (k, temp) in [(200usize, 0.1f64), (20, 0.07), (1, 0.5), (5000, 0.1)] {
            let want = predict(&tx, &ty, &vx, k, temp, 10);
            // f32, chunks of 300 train rows (the last one partial), partly spilled to disk.
            let (tr, te) = (
                store(&tx, &ty, FeaturePrecision::F32, 300, 300 * 32 * 4 * 2),
                store(&vx, &vy, FeaturePrecision::F32, 256, 1 << 30),
            );
            assert!(tr.spill_path().is_some() && tr.num_chunks() == 6);
            let got = predict_store(&tr, &te, k, temp, 10, Device::Cpu, &mut |d, t| calls.push((d, t))).unwrap();
            let diff = got.ne_tensor(&want).sum(Kind::Int64).int64_value(&[]);
            assert_eq!(diff, 0, "k={k}, T={temp}: {diff} of 600 predictions differ");
            // f16: the inputs are rounded to 11 significant bits; predictions may flip only
            // where two classes' vote totals are within rounding: at most 1% of test rows here.
            let (tr, te) =
                (store(&tx, &ty, FeaturePrecision::F16, 300, 0), store(&vx, &vy, FeaturePrecision::F16, 0, 0));
            let got = predict_store(&tr, &te, k, temp, 10, Device::Cpu, &mut |_, _| {}).unwrap();
            let diff = got.ne_tensor(&want).sum(Kind::Int64).int64_value(&[]);
            assert!(diff <= 6, "f16, k={k}, T={temp}: {diff} of 600 predictions differ");
        }
        assert_eq!(calls.last(), Some(&(1700, 1700)));
        let acc = accuracy(&tx, &ty, &vx, &vy, 20, 0.07, 10);
        assert!(acc > 0.5 && acc < 1.0, "the data must be neither trivial nor hopeless: {acc}");
    }

    #[test]
    fn weights_beat_majority_when_near_neighbour_is_much_closer() {
        // One training point of class 1 identical to the query, two of class 0 at 90 degrees:
        // a majority vote says 0; exp(1/0.1) >> 2 exp(0/0.1) says 1.
        let train = Tensor::from_slice(&[1f32, 0., 0., 1., 0., 1.]).view([3, 2]);
        let labels = Tensor::from_slice(&[1i64, 0, 0]);
        let q = Tensor::from_slice(&[1f32, 0.]).view([1, 2]);
        assert_eq!(predict(&train, &labels, &q, 3, 0.1, 2).int64_value(&[0]), 1);
        // With a huge temperature the weights are ~equal and the majority wins.
        assert_eq!(predict(&train, &labels, &q, 3, 1e6, 2).int64_value(&[0]), 0);
    }
}
