//! The twin-view pipeline: a producer thread fills whole batches with a rayon pool and hands
//! them over a bounded crossbeam channel.
//!
//! - **Determinism.** Batch `b` of epoch `e` holds dataset images `perm_e[b*B..(b+1)*B]` where
//!   `perm_e` is a Fisher-Yates shuffle keyed by `(seed, e)`; each view of image `i` is drawn
//!   from the stream `(seed, e, i, view)`. Nothing depends on the thread count or on which
//!   thread ran a sample, so batches are bit-identical for 1, 2 or 16 workers, and a resumed
//!   run (`start_batch > 0`) gets exactly the batches it would have got.
//! - **Sharding.** [`TwinPipeline::with_shard`]`(rank, world)` keeps the *global* batch size
//!   and batch count of the unsharded pipeline and gives rank `r` the rows
//!   `[r*n/W, (r+1)*n/W)` of every global batch of `n` rows: the W ranks together see exactly
//!   the batches (same images, same augmentations, same order) one process would see, so a
//!   data-parallel run and a single-process run of the same config consume the same samples, and
//!   a checkpoint's `(epoch, batch)` position means the same thing for any world size.
//! - **Bounded memory.** At most `queue_capacity` batches wait in the channel and
//!   [`IN_FLIGHT`] more are being filled (their views share the pool, so a batch boundary never
//!   idles a thread); a slow consumer blocks the producer. Batch buffers are recycled through a
//!   small free list when a [`TwinBatch`] is dropped, so a steady state allocates nothing.
//! - **Shutdown.** Dropping the [`EpochIter`] drops the receiver; the producer's next `send`
//!   fails and it returns; the drop then joins it.
//! - **Panics.** A panic in a worker is caught around the batch and sent as
//!   [`DataError::WorkerPanic`]; if the producer dies anyway, the consumer sees
//!   [`DataError::Disconnected`] for the batch it was waiting for. It never hangs.
use crate::error::{DataError, Result};
use crate::policy::{load_hint, TwinPolicy};
use crate::rng::{stream, SampleRng};
use crate::source::{ImageSource, IntoSource, LoadHint};
use crossbeam_channel::{bounded, Receiver, Sender};
use rayon::prelude::*;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// One step's worth of twin views.
///
/// # Shapes
/// `view_a`, `view_b`: `batch_size x 3 x image_size x image_size` f32, contiguous NCHW
/// ([`TwinBatch::shape`]); `labels`, `indices`: `batch_size`.
#[derive(Debug)]
pub struct TwinBatch {
    /// First views, NCHW f32 (clipped to `[0, 1]` when the policy clips).
    pub view_a: Vec<f32>,
    /// Second views, same images in the same order.
    pub view_b: Vec<f32>,
    /// Class labels (unused by pretraining; kept for monitors); `-1` for unlabeled images.
    pub labels: Vec<i64>,
    /// Dataset indices of the images.
    pub indices: Vec<i64>,
    /// Epoch the batch belongs to.
    pub epoch: u64,
    /// Index of the batch within its epoch.
    pub batch_index: usize,
    /// Images in this batch (the last may be smaller without `drop_remainder`); with a shard,
    /// this rank's rows of the global batch.
    pub batch_size: usize,
    /// Side of the square views (`data.image_size`).
    pub image_size: usize,
    /// With [`TwinPipeline::with_u8_views`]: the first views as u8 NHWC
    /// (`batch_size x image_size x image_size x 3`), the u8 images `ToTensor` + `Normalize` would
    /// have read; `view_a`/`view_b` are then empty. Empty otherwise.
    pub view_a_u8: Vec<u8>,
    /// Second views as u8 NHWC, as `view_a_u8`.
    pub view_b_u8: Vec<u8>,
    recycle: Option<Sender<Vec<f32>>>,
}

impl TwinBatch {
    /// `[batch_size, 3, image_size, image_size]` of each view.
    pub fn shape(&self) -> [usize; 4] {
        [self.batch_size, 3, self.image_size, self.image_size]
    }

    /// Takes the two view buffers out (they are then not recycled).
    pub fn into_views(mut self) -> (Vec<f32>, Vec<f32>) {
        (std::mem::take(&mut self.view_a), std::mem::take(&mut self.view_b))
    }

    /// Takes the two view buffers out with the handle that gives them back to the pipeline's
    /// free list once their new owner is done with them (the Python binding's arrays do this
    /// when NumPy frees them), so a steady state still allocates nothing.
    pub fn into_views_recycled(mut self) -> (Vec<f32>, Vec<f32>, Recycler) {
        let r = Recycler(self.recycle.take());
        (std::mem::take(&mut self.view_a), std::mem::take(&mut self.view_b), r)
    }
}

/// Gives view buffers back to the [`TwinPipeline`] that made them (see
/// [`TwinBatch::into_views_recycled`]); a later batch overwrites every value before use.
#[derive(Debug, Clone)]
pub struct Recycler(Option<Sender<Vec<f32>>>);

impl Recycler {
    /// Returns `buf` to the free list (dropped when the list is full or the pipeline is gone).
    pub fn recycle(&self, buf: Vec<f32>) {
        if let Some(tx) = &self.0 {
            if !buf.is_empty() {
                let _ = tx.try_send(buf);
            }
        }
    }
}

impl Drop for TwinBatch {
    fn drop(&mut self) {
        if let Some(tx) = &self.recycle {
            for v in [std::mem::take(&mut self.view_a), std::mem::take(&mut self.view_b)] {
                if !v.is_empty() {
                    let _ = tx.try_send(v);
                }
            }
        }
    }
}

/// Batches being filled at once. A batch's views are spread over the pool, but its last few
/// (a large JPEG decodes for tens of milliseconds) would leave the other threads idle at every
/// batch boundary; with the next batch already started they steal its views instead. On 2
/// cores at 224 px this is 1.3x the pairs/s of one batch at a time (`docs/BENCHMARKS.md`).
pub const IN_FLIGHT: usize = 2;

/// Per-channel `(mean, std)` in f32, applied as torchvision's `Normalize`: `(x - m) / s`.
type Norm = ([f32; 3], [f32; 3]);

/// The twin-view pipeline over an image source; see the module doc.
pub struct TwinPipeline {
    source: Arc<dyn ImageSource>,
    policy: Arc<TwinPolicy>,
    seed: u64,
    batch_size: usize,
    drop_remainder: bool,
    queue_capacity: usize,
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
    free: (Sender<Vec<f32>>, Receiver<Vec<f32>>),
    fail_at: Option<usize>,
    shard: (usize, usize),
    image_size: usize,
    norm: Option<Norm>,
    draft: bool,
    u8_out: bool,
}

impl std::fmt::Debug for TwinPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwinPipeline")
            .field("len", &self.source.len())
            .field("image_size", &self.image_size)
            .field("seed", &self.seed)
            .field("batch_size", &self.batch_size)
            .field("threads", &self.threads)
            .field("shard", &self.shard)
            .finish()
    }
}

impl TwinPipeline {
    /// A pipeline over `source` (an `Arc<Dataset>`, `Arc<ImageFolder>`, ... or
    /// `Arc<dyn ImageSource>`) with `data.workers` threads (0 = all cores), `data.batch_size`,
    /// `data.drop_remainder`, `data.queue_capacity`, `data.image_size`, the normalization of
    /// [`bt_config::DataConfig::normalization`], the `augment` policies and the run `seed`.
    pub fn new(
        source: impl IntoSource,
        data: &bt_config::DataConfig,
        augment: &bt_config::AugmentConfig,
        seed: u64,
    ) -> Result<Self> {
        let policy = TwinPolicy::from_config(augment, seed)?;
        Self::with_policy(source, policy, data, seed)
    }

    /// As [`TwinPipeline::new`] with an explicit policy.
    pub fn with_policy(
        source: impl IntoSource,
        policy: TwinPolicy,
        data: &bt_config::DataConfig,
        seed: u64,
    ) -> Result<Self> {
        if data.batch_size == 0 {
            return Err(DataError::BadConfig { key: "data.batch_size".into(), reason: "must be > 0".into() });
        }
        let threads = if data.workers == 0 { rayon::current_num_threads() } else { data.workers };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("bt-data-{i}"))
            .build()
            .map_err(|e| DataError::BadConfig { key: "data.workers".into(), reason: e.to_string() })?;
        if !(2..=4096).contains(&data.image_size) {
            return Err(DataError::BadConfig {
                key: "data.image_size".into(),
                reason: format!("{} is outside [2, 4096]", data.image_size),
            });
        }
        let norm = data.normalization().map(|(m, s)| (m.map(|v| v as f32), s.map(|v| v as f32)));
        let draft = data.jpeg_draft && policy.allows_reduced_decode();
        Ok(Self {
            source: source.into_source(),
            policy: Arc::new(policy),
            seed,
            batch_size: data.batch_size,
            drop_remainder: data.drop_remainder,
            queue_capacity: data.queue_capacity,
            pool: Arc::new(pool),
            threads,
            free: bounded(2 * data.queue_capacity + 4),
            fail_at: None,
            shard: (0, 1),
            image_size: data.image_size,
            norm,
            draft,
            u8_out: false,
        })
    }

    /// Batches of u8 NHWC views ([`TwinBatch::view_a_u8`]) instead of normalized f32 NCHW: the
    /// views as the u8 images `ToTensor` + `Normalize` would read, for a consumer that
    /// normalizes on its device (a quarter of the bytes to copy). Same images, crops and
    /// colour ops; `(u8 / 255 - mean) / std` in f32 gives the f32 batches bit for bit.
    ///
    /// # Errors
    /// [`DataError::BadConfig`] (`augment.view_a.color_math` or `view_b`) unless both views
    /// render on u8 (`color_math = "pil-u8"`, the ImageNet presets): the f32 recipes produce
    /// values between the 256 levels, which u8 would round.
    pub fn with_u8_views(mut self) -> Result<Self> {
        for (name, pol) in [("view_a", &self.policy.a), ("view_b", &self.policy.b)] {
            if !pol.renders_u8() {
                return Err(DataError::BadConfig {
                    key: format!("augment.{name}.color_math"),
                    reason: "u8 views need \"pil-u8\" colour math (the ImageNet presets); this policy works in f32"
                        .into(),
                });
            }
        }
        self.u8_out = true;
        Ok(self)
    }

    /// This pipeline as rank `rank` of `world` data-parallel ranks: every global batch (of
    /// `data.batch_size` rows, the same batches as unsharded) is split into `world` contiguous
    /// slices and this rank gets slice `rank`; see the module doc. `world = 1` is the unsharded
    /// pipeline.
    ///
    /// # Errors
    /// [`DataError::BadConfig`] (`data.batch_size`) when `rank >= world` or when the batch size
    /// is not a multiple of `world` (ranks must hold equal rows for the gradient average to be
    /// the full-batch gradient).
    pub fn with_shard(mut self, rank: usize, world: usize) -> Result<Self> {
        if world == 0 || rank >= world {
            return Err(DataError::BadConfig {
                key: "data.batch_size".into(),
                reason: format!("shard rank {rank} of world size {world}: need rank < world"),
            });
        }
        if !self.batch_size.is_multiple_of(world) || self.batch_size < world {
            return Err(DataError::BadConfig {
                key: "data.batch_size".into(),
                reason: format!(
                    "{} (the global batch) is not a positive multiple of the world size {world}: every rank must hold batch_size / world rows",
                    self.batch_size
                ),
            });
        }
        self.shard = (rank, world);
        Ok(self)
    }

    /// `(rank, world)` of this pipeline's shard (`(0, 1)` unsharded).
    pub fn shard(&self) -> (usize, usize) {
        self.shard
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The policies in use.
    pub fn policy(&self) -> &TwinPolicy {
        &self.policy
    }

    /// The image source.
    pub fn source(&self) -> &Arc<dyn ImageSource> {
        &self.source
    }

    /// Side of the square views.
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// Unreadable images the source skipped or replaced so far (for the trainer's metrics).
    pub fn bad_images(&self) -> usize {
        self.source.bad_images()
    }

    /// Batches per epoch (`floor(N / B)` with `drop_remainder`, else `ceil`).
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.source.len();
        if self.drop_remainder {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// The shuffled order of dataset indices in `epoch`.
    pub fn epoch_order(&self, epoch: u64) -> Vec<u32> {
        SampleRng::new(self.seed, epoch, 0, stream::SHUFFLE).permutation(self.source.len())
    }

    /// Test hook (cargo feature `test-hooks`, never in a normal build): make the worker that
    /// handles dataset index `index` panic.
    #[cfg(feature = "test-hooks")]
    pub fn inject_panic_at_index(&mut self, index: Option<usize>) {
        self.fail_at = index;
    }

    /// Starts producing `epoch` from batch `start_batch` (0 for a fresh epoch).
    pub fn epoch(&self, epoch: u64, start_batch: usize) -> EpochIter {
        let nb = self.batches_per_epoch();
        let start = start_batch.min(nb);
        let (tx, rx) = bounded::<Result<TwinBatch>>(self.queue_capacity);
        let produced = Arc::new(AtomicUsize::new(0));
        let worker = Producer {
            source: self.source.clone(),
            policy: self.policy.clone(),
            pool: self.pool.clone(),
            seed: self.seed,
            batch_size: self.batch_size,
            free_tx: self.free.0.clone(),
            free_rx: self.free.1.clone(),
            fail_at: self.fail_at,
            produced: produced.clone(),
            shard: self.shard,
            image_size: self.image_size,
            norm: self.norm,
            draft: self.draft,
            u8_out: self.u8_out,
        };
        let order = self.epoch_order(epoch);
        let handle = std::thread::Builder::new()
            .name("bt-data-producer".into())
            .spawn(move || worker.run(epoch, order, start, nb, tx))
            .expect("spawn the pipeline producer thread");
        EpochIter { rx: Some(rx), handle: Some(handle), next: start, end: nb, produced, done: false }
    }

    /// Builds one batch synchronously on the calling thread (through the pool), bypassing the
    /// channel: for tests and benchmarks of the augmentation itself.
    pub fn make_batch(&self, epoch: u64, batch_index: usize) -> Result<TwinBatch> {
        let order = self.epoch_order(epoch);
        let p = Producer {
            source: self.source.clone(),
            policy: self.policy.clone(),
            pool: self.pool.clone(),
            seed: self.seed,
            batch_size: self.batch_size,
            free_tx: self.free.0.clone(),
            free_rx: self.free.1.clone(),
            fail_at: self.fail_at,
            produced: Arc::new(AtomicUsize::new(0)),
            shard: self.shard,
            image_size: self.image_size,
            norm: self.norm,
            draft: self.draft,
            u8_out: self.u8_out,
        };
        p.fill(epoch, &order, batch_index)
    }
}

struct Producer {
    source: Arc<dyn ImageSource>,
    policy: Arc<TwinPolicy>,
    pool: Arc<rayon::ThreadPool>,
    seed: u64,
    batch_size: usize,
    free_tx: Sender<Vec<f32>>,
    free_rx: Receiver<Vec<f32>>,
    fail_at: Option<usize>,
    produced: Arc<AtomicUsize>,
    shard: (usize, usize),
    image_size: usize,
    norm: Option<Norm>,
    draft: bool,
    u8_out: bool,
}

/// One image's two output slots: f32 CHW (normalized) or u8 HWC.
enum Out<'a> {
    F32(&'a mut [f32], &'a mut [f32]),
    U8(&'a mut [u8], &'a mut [u8]),
}

/// torchvision `Normalize` on one CHW view: `(x - mean[c]) / std[c]` in f32.
fn normalize(view: &mut [f32], (mean, std): Norm) {
    let hw = view.len() / 3;
    for (c, plane) in view.chunks_exact_mut(hw).enumerate() {
        for v in plane.iter_mut() {
            *v = (*v - mean[c]) / std[c];
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}

thread_local! {
    /// A pool thread's u8 view buffer (see `Producer::views`).
    static U8_VIEW: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Producer {
    fn buffer(&self, len: usize) -> Vec<f32> {
        let mut v = self.free_rx.try_recv().unwrap_or_default();
        // Every value is overwritten by the fill, so a recycled buffer needs no clearing.
        v.resize(len, 0.0);
        v
    }

    /// Both views of dataset image `i` into `a` and `b`: native size first (crops are sampled
    /// on it), then one decode, reduced when both crops allow it.
    fn views(&self, epoch: u64, i: usize, out: Out<'_>) -> Result<()> {
        let src = &*self.source;
        let (early, native) = match src.dims(i) {
            Some(d) => (None, d),
            None => {
                let im = src.load(i, LoadHint::FULL)?;
                let d = (im.width, im.height);
                (Some(im), d)
            }
        };
        let (pa, pb) = self.policy.sample_pair_for(self.seed, epoch, i as u64, native.1, native.0);
        let img = match early {
            Some(im) => im,
            None => {
                let hint = if self.draft { load_hint(&[pa.crop, pb.crop], self.image_size) } else { LoadHint::FULL };
                src.load(i, hint)?
            }
        };
        let (a, b) = match out {
            Out::F32(a, b) => (a, b),
            Out::U8(a, b) => {
                // CHW from the policy, interleaved to HWC (the layout of a decoded image).
                for (pol, p, out) in [(&self.policy.a, &pa, a), (&self.policy.b, &pb, b)] {
                    U8_VIEW.with_borrow_mut(|v| {
                        v.resize(out.len(), 0);
                        pol.render_u8(&img, native, p, v, self.image_size);
                        let hw = out.len() / 3;
                        for (c, plane) in v.chunks_exact(hw).enumerate() {
                            for (j, &x) in plane.iter().enumerate() {
                                out[3 * j + c] = x;
                            }
                        }
                    });
                }
                return Ok(());
            }
        };
        for (pol, p, out) in [(&self.policy.a, &pa, a), (&self.policy.b, &pb, b)] {
            if pol.renders_u8() {
                // PIL images until the end: the view stays u8 in a per-thread buffer, and
                // ToTensor + Normalize is one table lookup per value into the batch.
                U8_VIEW.with_borrow_mut(|v| {
                    v.resize(out.len(), 0);
                    pol.render_u8(&img, native, p, v, self.image_size);
                    crate::pil_color::to_tensor(v, out, self.norm);
                });
            } else {
                pol.render(&img, native, p, out, self.image_size);
                if let Some(n) = self.norm {
                    normalize(out, n);
                }
            }
        }
        Ok(())
    }

    fn fill(&self, epoch: u64, order: &[u32], b: usize) -> Result<TwinBatch> {
        let lo = b * self.batch_size;
        let hi = (lo + self.batch_size).min(order.len());
        // This rank's contiguous slice of the global batch (all of it when unsharded).
        let (r, w) = self.shard;
        let global = hi - lo;
        let idx = &order[lo + r * global / w..lo + (r + 1) * global / w];
        let n = idx.len();
        let per = 3 * self.image_size * self.image_size;
        let (mut view_a, mut view_b) =
            if self.u8_out { (Vec::new(), Vec::new()) } else { (self.buffer(n * per), self.buffer(n * per)) };
        let (mut view_a_u8, mut view_b_u8) =
            if self.u8_out { (vec![0u8; n * per], vec![0u8; n * per]) } else { (Vec::new(), Vec::new()) };
        let fail_at = self.fail_at;
        let check = |i: usize| {
            if fail_at == Some(i) {
                panic!("injected failure at dataset index {i}");
            }
        };
        // Small views: a few per task amortize rayon's overhead; large ones (decode + resize,
        // milliseconds each) balance better one by one. Neither changes the output.
        let min_len = if per <= 3 * 64 * 64 { 4 } else { 1 };
        self.pool.install(|| {
            if self.u8_out {
                view_a_u8
                    .par_chunks_mut(per)
                    .zip(view_b_u8.par_chunks_mut(per))
                    .zip(idx.par_iter())
                    .with_min_len(min_len)
                    .try_for_each(|((a, bv), &i)| {
                        check(i as usize);
                        self.views(epoch, i as usize, Out::U8(a, bv))
                    })
            } else {
                view_a
                    .par_chunks_mut(per)
                    .zip(view_b.par_chunks_mut(per))
                    .zip(idx.par_iter())
                    .with_min_len(min_len)
                    .try_for_each(|((a, bv), &i)| {
                        check(i as usize);
                        self.views(epoch, i as usize, Out::F32(a, bv))
                    })
            }
        })?;
        Ok(TwinBatch {
            view_a,
            view_b,
            labels: idx.iter().map(|&i| self.source.label(i as usize).map_or(-1, |l| l as i64)).collect(),
            indices: idx.iter().map(|&i| i as i64).collect(),
            epoch,
            batch_index: b,
            batch_size: n,
            image_size: self.image_size,
            view_a_u8,
            view_b_u8,
            recycle: Some(self.free_tx.clone()),
        })
    }

    /// Fills batches `start..end` in order, [`IN_FLIGHT`] at a time on the pool, and sends
    /// each when it and all before it are done. Returns when the consumer is gone, after the
    /// first error, or at the end; in every case only after the batches it started are done
    /// (so nothing runs on the pool once the [`EpochIter`] is dropped).
    fn run(self, epoch: u64, order: Vec<u32>, start: usize, end: usize, tx: Sender<Result<TwinBatch>>) {
        type Filled = std::thread::Result<Result<TwinBatch>>;
        let me = Arc::new(self);
        let order = Arc::new(order);
        let mut pending: VecDeque<(usize, Receiver<Filled>)> = VecDeque::with_capacity(IN_FLIGHT);
        let mut next = start;
        let mut open = true;
        while open {
            while next < end && pending.len() < IN_FLIGHT {
                let (done_tx, done_rx) = bounded::<Filled>(1);
                let (p, o, b) = (me.clone(), order.clone(), next);
                me.pool.spawn(move || {
                    // A full `done_rx` is impossible (one send); a dropped one means shutdown.
                    let _ = done_tx.send(std::panic::catch_unwind(AssertUnwindSafe(|| p.fill(epoch, &o, b))));
                });
                pending.push_back((b, done_rx));
                next += 1;
            }
            let Some((b, done_rx)) = pending.pop_front() else { break };
            let sent = match done_rx.recv() {
                Ok(Ok(Ok(batch))) => {
                    me.produced.fetch_add(1, Ordering::SeqCst);
                    tx.send(Ok(batch)).is_ok() // Err: consumer gone, a normal shutdown
                }
                Ok(Ok(Err(e))) => {
                    let _ = tx.send(Err(e));
                    false
                }
                Ok(Err(p)) => {
                    let _ = tx.send(Err(DataError::WorkerPanic { batch: b, message: panic_message(&*p) }));
                    false
                }
                // The job was dropped unrun (the pool is going away): the consumer sees
                // `Disconnected` when the producer ends.
                Err(_) => false,
            };
            open = sent;
        }
        // Wait for the batches still being filled; their results are dropped (buffers go back
        // to the free list).
        for (_, done_rx) in pending {
            let _ = done_rx.recv();
        }
    }
}

/// The batches of one epoch, in order; see [`TwinPipeline::epoch`].
#[derive(Debug)]
pub struct EpochIter {
    rx: Option<Receiver<Result<TwinBatch>>>,
    handle: Option<JoinHandle<()>>,
    next: usize,
    end: usize,
    produced: Arc<AtomicUsize>,
    done: bool,
}

impl EpochIter {
    /// Batches produced so far by the worker side (delivered or waiting in the channel).
    pub fn produced(&self) -> usize {
        self.produced.load(Ordering::SeqCst)
    }

    /// Batches left to deliver.
    pub fn remaining(&self) -> usize {
        if self.done {
            0
        } else {
            self.end - self.next
        }
    }
}

impl Iterator for EpochIter {
    type Item = Result<TwinBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.next >= self.end {
            return None;
        }
        let rx = self.rx.as_ref()?;
        match rx.recv() {
            Ok(Ok(b)) => {
                self.next += 1;
                Some(Ok(b))
            }
            Ok(Err(e)) => {
                self.done = true;
                Some(Err(e))
            }
            Err(_) => {
                self.done = true;
                Some(Err(DataError::Disconnected { batch: self.next }))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining()))
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        // Receiver first, so a producer blocked in `send` wakes up with an error and returns.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
