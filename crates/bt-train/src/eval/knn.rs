//! Weighted k-nearest-neighbour classifier on frozen features, as solo-learn's
//! `WeightedKNNClassifier` and lightly's `knn_predict` (InstDisc's protocol): cosine
//! similarity, the `k` most similar training samples vote for their class with weight
//! `exp(sim / T)`, the class with the largest total wins.
use tch::{Kind, Tensor};

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
        for chunk in test.split(256, 0) {
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
