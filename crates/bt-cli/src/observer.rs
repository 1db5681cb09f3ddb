//! bt-cli's [`Observer`]: the progress bar and the log lines of a run.
use crate::progress::Bar;
use bt_train::{Event, Observer};

/// Draws the bar (when stderr is a terminal; one per evaluation stage too) and logs the run's
/// milestones with tracing.
#[derive(Default)]
pub struct CliObserver {
    bar: Option<Bar>,
    last_msg: String,
    eval_stage: String,
}

impl Observer for CliObserver {
    fn on_event(&mut self, event: &Event<'_>) {
        match event {
            Event::Started { summary, start, total_steps, .. } => {
                tracing::info!("{summary}");
                if start.step > 0 {
                    tracing::info!("resuming at epoch {}, batch {}, step {}", start.epochs_done, start.batch_in_epoch, start.step);
                }
                self.bar = Some(Bar::new(*total_steps as u64, start.step as u64));
            }
            Event::Progress { step, epoch, epochs, .. } => {
                if let Some(b) = &self.bar {
                    b.update(*step as u64, format!("epoch {epoch}/{epochs}"), self.last_msg.clone());
                }
            }
            Event::Step(m) => self.last_msg = format!("loss {:.2} | {:.0} pairs/s", m.loss, m.pairs_per_s),
            Event::Skipped { step, reason } => tracing::warn!("skipping step {step}: {reason}"),
            Event::Epoch(m) => tracing::info!(
                "epoch {}/{}: loss {:.3} (invariance {:.3}, redundancy {:.2}), lr {:.2e}, {:.0} pairs/s, data wait {:.1}%, {:.1}s",
                m.epoch,
                m.epochs,
                m.loss,
                m.invariance,
                m.redundancy,
                m.lr,
                m.pairs_per_s,
                m.data_wait_pct,
                m.epoch_s
            ),
            Event::Checkpoint { path, position } => {
                tracing::info!("checkpoint {} written (step {})", path.display(), position.step)
            }
            Event::Evaluated { name, epoch, top1, seconds, .. } => {
                tracing::info!("{name} monitor after epoch {epoch}: top-1 {:.2}% ({seconds:.1}s)", 100.0 * top1)
            }
            Event::EvalProgress { stage, done, total } => {
                if self.eval_stage != *stage {
                    (self.eval_stage, self.bar) = (stage.to_string(), Some(Bar::new(*total as u64, 0)));
                }
                if let Some(b) = &self.bar {
                    b.update(*done as u64, stage.to_string(), String::new());
                }
            }
            Event::Stopping { .. } => self.bar = None,
            Event::Warning(w) => tracing::warn!("{w}"),
            Event::Finished { steps, wall_s, final_loss, data_wait_fraction } => {
                self.bar = None;
                tracing::info!(
                    "done: {steps} steps in {wall_s:.1}s, final epoch loss {final_loss:.3}, data wait {:.2}% of step time",
                    100.0 * data_wait_fraction
                );
            }
            _ => {}
        }
    }
}
