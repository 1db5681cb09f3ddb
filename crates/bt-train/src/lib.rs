//! The Barlow Twins training loop as a library: what `bt-cli pretrain`, `eval` and `embed` do,
//! for Rust programs that want it without the command line.
//!
//! # The loop in a screen
//! [`Trainer::pretrain`] takes a [`Config`](bt_config::Config), the training and test images
//! (a `bt_data` source), a device and a [`RunFolder`]. It builds the model from `run.seed`,
//! the flat LAMB/LARS optimizer and the schedule, then for every batch of the twin pipeline
//! (two augmented views per image, made on a rayon pool while the previous step runs):
//!
//! 1. uploads both views (CUDA: pinned memory on a side stream, see [`device`]);
//! 2. forwards each view through encoder + projector and computes the cross-correlation loss
//!    (data-parallel: over the global batch, [`dist`]);
//! 3. backpropagates, averages gradients across ranks, and lets the [`guard`] check the loss
//!    terms and every gradient for non-finite values (stop, or skip the step) before the
//!    optimizer touches the weights;
//! 4. steps the optimizer at the schedule's learning rate for this step index (steps 2-4 are
//!    one [`step::StaticStep`]: fixed buffers, no host transfer, replayed from a CUDA graph on
//!    CUDA with `run.cuda_graph`);
//! 5. every `run.log_every` steps writes a `metrics.jsonl` record and emits [`Event::Step`];
//!    after every step it polls the caller's [`StopToken`] and `run.max_steps`.
//!
//! At every epoch end it writes the epoch record, redraws `loss.png`, writes a checkpoint
//! (`run.checkpoint_every`), and runs the kNN monitor (`run.knn_every`). A checkpoint is one
//! sealed safetensors file (model, optimizer state, [`Position`], config hash): batches are keyed
//! by `(seed, epoch, index)` and the schedule by step, so [`Trainer::pretrain`] with `resume`
//! continues bit-exactly where the checkpoint was written. [`start::decide`] picks fresh start
//! or resume for a folder and refuses what would destroy a run.
//!
//! The library prints nothing, installs no signal handler and does not tune the allocator:
//! progress goes to the caller's [`Observer`], stops come through the caller's [`StopToken`].
//! Evaluation ([`eval`]: linear probes and kNN on frozen features) and the embedding writers
//! ([`embed`]) take models and datasets from the same [`setup`] helpers.
//!
//! # Example
//! `cargo run --release -p bt-train --example train_custom`: pretrain on images made in
//! memory, stop after N steps, resume bit-exactly from the checkpoint, evaluate with kNN.
#![deny(missing_docs)]
// `Error` wraps every library crate's error by value (some carry paths and messages); errors end
// a run or a command, never a hot loop, so their size costs nothing worth a Box per variant.
#![allow(clippy::result_large_err)]

pub mod atomic;
pub mod checkpoint;
pub mod classification;
pub mod control;
pub mod demo;
pub mod device;
pub mod dist;
pub mod embed;
mod error;
pub mod eval;
pub mod export;
pub mod guard;
pub mod metrics;
pub mod modecheck;
pub mod observer;
pub mod perf;
pub mod plot;
pub mod probe;
pub mod report;
pub mod runfolder;
pub mod search;
pub mod selftest;
pub mod setup;
pub mod start;
pub mod step;
pub mod store;
pub mod tensorboard;
pub mod tensors;
pub mod train;

pub use control::{Interrupted, Stop, StopReason, StopToken};
pub use error::{Error, Result, ResultExt};
pub use observer::{EpochMetrics, Event, Observer, Recorder, StepMetrics};
pub use runfolder::RunFolder;
pub use store::Position;
pub use train::{Outcome, Trainer};
