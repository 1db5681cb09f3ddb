//! `[eval]`: evaluation protocols.
use serde::{Deserialize, Serialize};

/// Linear-probe protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinearProtocol {
    /// The notebook's: frozen whole twin network, 5000-d projector output, Dense(10) softmax
    /// with L2 0.02, LAMB defaults, 35 epochs, batch 512, drop remainder.
    KerasSeed,
    /// Frozen encoder features, linear classifier, cosine schedule, hyperparameters chosen on a
    /// validation split of train.
    Standard,
}

/// Evaluation (`[eval]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Linear-probe protocol.
    pub linear_protocol: LinearProtocol,
    /// Linear-probe epochs.
    pub linear_epochs: usize,
    /// Linear-probe batch size.
    pub linear_batch_size: usize,
    /// `keras-seed` probe: L2 factor on the Dense kernel.
    pub linear_l2: f64,
    /// `standard` probe: fraction of train held out for hyperparameter choice.
    pub val_fraction: f64,
    /// kNN neighbours.
    pub knn_k: usize,
    /// kNN vote temperature.
    pub knn_temperature: f64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            linear_protocol: LinearProtocol::KerasSeed,
            linear_epochs: 35,
            linear_batch_size: 512,
            linear_l2: 0.02,
            val_fraction: 0.1,
            knn_k: 200,
            knn_temperature: 0.1,
        }
    }
}
