//! Throughput measurement of the twin pipeline, for `bt-cli bench data` and the crate's
//! numbers. Timing lives here and in benchmarks, never in tests.
use crate::error::Result;
use crate::pipeline::TwinPipeline;
use crate::source::ImageSource;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What [`pairs_per_second`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    /// Twin pairs delivered in the timed window.
    pub pairs: usize,
    /// Length of the timed window in seconds.
    pub seconds: f64,
    /// `pairs / seconds`.
    pub pairs_per_second: f64,
    /// Worker threads.
    pub threads: usize,
}

/// Runs the pipeline of `data`/`augment` over `source` with `threads` workers for about
/// `seconds` (after one warm-up batch, which pays for thread start-up and page cache) and
/// reports twin pairs per second at the consumer.
pub fn pairs_per_second(
    source: Arc<dyn ImageSource>,
    data: &bt_config::DataConfig,
    augment: &bt_config::AugmentConfig,
    seed: u64,
    threads: usize,
    seconds: f64,
) -> Result<Throughput> {
    let data = bt_config::DataConfig { workers: threads, ..data.clone() };
    let pipe = TwinPipeline::new(source, &data, augment, seed)?;
    let budget = Duration::from_secs_f64(seconds);
    let (mut pairs, mut start) = (0usize, None::<Instant>);
    let mut epoch = 0;
    'outer: loop {
        for b in pipe.epoch(epoch, 0) {
            let b = b?;
            match start {
                None => start = Some(Instant::now()),
                Some(t) => {
                    pairs += b.batch_size;
                    if t.elapsed() >= budget {
                        break 'outer;
                    }
                }
            }
        }
        epoch += 1;
        if pipe.batches_per_epoch() == 0 {
            break;
        }
    }
    let secs = start.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok(Throughput { pairs, seconds: secs, pairs_per_second: pairs as f64 / secs.max(1e-9), threads: pipe.threads() })
}
