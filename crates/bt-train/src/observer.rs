//! Events, not printing: the trainer reports what happens through an [`Observer`] the caller
//! passes, as PyTorch Lightning's callbacks and burn-train's renderers do. `bt-cli` implements
//! one with its progress bar and log lines; the `tensorboard` module's `TensorBoard`
//! is another (enabled by `run.tensorboard`); `()` ignores everything.
use crate::control::StopReason;
use crate::store::Position;
use std::path::Path;

/// Metrics of one logged step (every `run.log_every` steps).
#[derive(Debug, Clone, PartialEq)]
pub struct StepMetrics {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Optimizer steps done.
    pub step: usize,
    /// Barlow Twins loss of this step.
    pub loss: f64,
    /// Its on-diagonal (invariance) term.
    pub invariance: f64,
    /// Its off-diagonal (redundancy) term, before the λ weight.
    pub redundancy: f64,
    /// Learning rate of the weights.
    pub lr: f64,
    /// Twin pairs per second over the steps since the last logged one.
    pub pairs_per_s: f64,
    /// Seconds the loop waited for the data pipeline in that window.
    pub data_wait_s: f64,
}

/// Metrics of one finished epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochMetrics {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Total epochs of the run.
    pub epochs: usize,
    /// Optimizer steps done.
    pub step: usize,
    /// Mean loss over the epoch's applied steps.
    pub loss: f64,
    /// Mean invariance term.
    pub invariance: f64,
    /// Mean redundancy term.
    pub redundancy: f64,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    /// Twin pairs per second over the epoch.
    pub pairs_per_s: f64,
    /// Percentage of the epoch's wall time spent waiting for data.
    pub data_wait_pct: f64,
    /// Wall time of the epoch, seconds.
    pub epoch_s: f64,
    /// Images the data source skipped as unreadable so far (`data.skip_bad_images`).
    pub skipped_images: usize,
}

/// Something that happened in a run.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The run starts (or resumes) at `start`.
    Started {
        /// A one-line description of the run (model, data, device, batch, steps).
        summary: &'a str,
        /// Where it starts.
        start: Position,
        /// Optimizer steps per epoch.
        steps_per_epoch: usize,
        /// Steps of the whole run.
        total_steps: usize,
    },
    /// A step was taken (every step; cheap: no device sync).
    Progress {
        /// Optimizer steps done.
        step: usize,
        /// Steps of the whole run.
        total_steps: usize,
        /// Epoch (1-based).
        epoch: usize,
        /// Epochs of the run.
        epochs: usize,
    },
    /// Metrics of a logged step.
    Step(&'a StepMetrics),
    /// The guard skipped a step (`run.on_nonfinite = "skip"`).
    Skipped {
        /// The step (1-based).
        step: usize,
        /// Why.
        reason: &'a str,
    },
    /// An epoch ended.
    Epoch(&'a EpochMetrics),
    /// A training checkpoint was written.
    Checkpoint {
        /// The file.
        path: &'a Path,
        /// The position it holds.
        position: Position,
    },
    /// An evaluation finished (the kNN monitor during pretraining).
    Evaluated {
        /// `knn`.
        name: &'a str,
        /// Epochs done.
        epoch: usize,
        /// Steps done.
        step: usize,
        /// Top-1 accuracy in `[0, 1]`.
        top1: f64,
        /// Seconds it took.
        seconds: f64,
    },
    /// Progress of an evaluation (`bt_train::eval`): frozen features of a split, kNN over the
    /// train chunks, epochs of a linear probe. Arrives often: cheap to handle.
    EvalProgress {
        /// `features train`, `features test`, `knn` or `linear`.
        stage: &'a str,
        /// Units done (images, train rows, epochs).
        done: usize,
        /// Units of the stage.
        total: usize,
    },
    /// The run stops early (a checkpoint holds the position).
    Stopping {
        /// Why.
        reason: StopReason,
        /// Steps done.
        step: usize,
    },
    /// Something the user should know that does not stop the run (a plot that could not be
    /// refreshed, a resume under a changed config...).
    Warning(&'a str),
    /// The run finished all its epochs.
    Finished {
        /// Steps taken in this invocation.
        steps: usize,
        /// Wall time, seconds.
        wall_s: f64,
        /// Mean loss of the last epoch.
        final_loss: f64,
        /// Fraction of step time spent waiting for data.
        data_wait_fraction: f64,
    },
}

/// Receives a run's [`Event`]s. Implementations must be cheap for [`Event::Progress`] (it
/// arrives every step).
pub trait Observer {
    /// Called on the training thread, in order.
    fn on_event(&mut self, event: &Event<'_>);
}

/// Ignores every event.
impl Observer for () {
    fn on_event(&mut self, _: &Event<'_>) {}
}

impl<O: Observer + ?Sized> Observer for &mut O {
    fn on_event(&mut self, event: &Event<'_>) {
        (**self).on_event(event)
    }
}

impl<O: Observer + ?Sized> Observer for Box<O> {
    fn on_event(&mut self, event: &Event<'_>) {
        (**self).on_event(event)
    }
}

/// Several observers, called in order.
impl<A: Observer, B: Observer> Observer for (A, B) {
    fn on_event(&mut self, event: &Event<'_>) {
        self.0.on_event(event);
        self.1.on_event(event);
    }
}

/// Records every event as a line of text (`Debug`), except [`Event::Progress`] and
/// [`Event::EvalProgress`]. Handy in tests
/// and for users who want a plain log.
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    /// One entry per event.
    pub lines: Vec<String>,
}

impl Observer for Recorder {
    fn on_event(&mut self, event: &Event<'_>) {
        if !matches!(event, Event::Progress { .. } | Event::EvalProgress { .. }) {
            self.lines.push(format!("{event:?}"));
        }
    }
}
