//! Evaluation of frozen features: weighted kNN ([`knn`]) and linear probes ([`linear`]). Both
//! take feature tensors, not models: features are computed once
//! ([`setup::features`](crate::setup::features)) and every classifier runs on them, which is
//! what makes a 100-epoch probe or a hyperparameter grid cheap.
pub mod knn;
pub mod linear;

use tch::{Kind, Tensor};

/// Top-1 accuracy of logits (or scores) against labels.
///
/// # Shapes
/// `scores`: `N x C`, `labels`: `N` (int64).
pub fn top1(scores: &Tensor, labels: &Tensor) -> f64 {
    scores.argmax(1, false).eq_tensor(labels).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}
