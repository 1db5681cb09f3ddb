//! [`FeatureStore`]: frozen features of one split with bounded memory.
//!
//! ImageNet's train split gives a 1.28M x 2048 feature matrix: 10 GB in f32, more than many
//! machines can hold next to the model. The store never holds it whole:
//!
//! - features arrive batch by batch ([`FeatureStore::push`]) and are converted to the storage
//!   precision at once (on the model's device, before the copy to the host), so no f32 copy of
//!   the matrix ever exists;
//! - rows are grouped in fixed-size chunks (about 32 MiB each); a chunk is kept in memory while
//!   the evaluation's [`Budget`] (`eval.feature_memory_mb`, shared by both splits) has room for
//!   it, and is otherwise appended to a spill file in `eval.feature_dir` (removed when the store
//!   is dropped);
//! - the precision (`eval.feature_precision`) is f32, f16, or `auto`: f32 when the split's f32
//!   matrix fits the budget left, else f16. Raw features are stored (not L2-normalized ones)
//!   because the linear probe standardizes them; kNN normalizes each chunk in f32 after reading
//!   and accumulates similarities in f32, so f16 storage only rounds the inputs (relative error
//!   2^-11 per value). A value outside f16's range (|x| > 65504) is an error, not an `inf`.
//!
//! Why not memory-map one file: libtorch tensors over a mapping would need `unsafe` lifetimes
//! and a page cache we do not control; reading whole chunks (kNN, statistics) and rows (probe
//! batches) with plain reads keeps peak memory at one chunk plus one batch.
use crate::error::{refuse, Error, Result};
use bt_config::{EvalConfig, FeaturePrecision};
use std::cell::Cell;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tch::{Device, Kind, Tensor};

/// Bytes of memory the feature stores of one evaluation may still use (shared by its splits,
/// so the test split, extracted first, stays in memory where possible: kNN rereads it once per
/// train chunk).
#[derive(Debug, Clone)]
pub struct Budget(Rc<Cell<u64>>);

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Self {
        Self(Rc::new(Cell::new(bytes)))
    }
    /// The budget of `eval.feature_memory_mb`.
    pub fn of(cfg: &EvalConfig) -> Self {
        Self::new(cfg.feature_memory_mb as u64 * (1 << 20))
    }
    /// Bytes left.
    pub fn left(&self) -> u64 {
        self.0.get()
    }
    fn take(&self, bytes: u64) -> bool {
        let ok = bytes <= self.0.get();
        if ok {
            self.0.set(self.0.get() - bytes);
        }
        ok
    }
}

/// How a store keeps its rows (see the module doc).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Storage precision.
    pub precision: FeaturePrecision,
    /// Rows per chunk; 0 = about 32 MiB per chunk.
    pub chunk_rows: usize,
    /// Folder of the spill file; empty = the OS temp folder.
    pub dir: PathBuf,
}

impl StoreOptions {
    /// The options of `[eval]`.
    pub fn of(cfg: &EvalConfig) -> Self {
        Self { precision: cfg.feature_precision, chunk_rows: 0, dir: cfg.feature_dir.clone() }
    }
}

enum Chunk {
    Mem(Tensor),
    Disk { offset: u64, rows: i64 },
}

/// The spill file; deleted on drop.
struct Spill {
    path: PathBuf,
    file: File,
    len: u64,
}

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Frozen features (`N x F`) and labels (`N`) of one split, in chunks held in memory or spilled
/// to a file (see the module doc).
pub struct FeatureStore {
    opts: StoreOptions,
    budget: Budget,
    expected_rows: usize,
    kind: Kind,
    dim: i64,
    chunk_rows: i64,
    chunks: Vec<Chunk>,
    pending: Vec<Tensor>,
    pending_rows: i64,
    labels: Vec<i64>,
    mem_bytes: u64,
    spill: Option<Spill>,
}

impl std::fmt::Debug for FeatureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FeatureStore({} x {} {:?}, {} chunks, {} B in memory",
            self.len(),
            self.dim,
            self.kind,
            self.chunks.len(),
            self.mem_bytes
        )?;
        match &self.spill {
            Some(s) => write!(f, ", {} B in {})", s.len, s.path.display()),
            None => write!(f, ")"),
        }
    }
}

impl FeatureStore {
    /// An empty store for about `expected_rows` rows (used by `auto` precision to decide whether
    /// f32 fits), drawing memory from `budget`.
    pub fn new(expected_rows: usize, budget: &Budget, opts: StoreOptions) -> Self {
        Self {
            opts,
            budget: budget.clone(),
            expected_rows,
            kind: Kind::Float,
            dim: 0,
            chunk_rows: 0,
            chunks: Vec::new(),
            pending: Vec::new(),
            pending_rows: 0,
            labels: Vec::new(),
            mem_bytes: 0,
            spill: None,
        }
    }

    /// A store over existing f32 features held in memory as one chunk (no copy when `x` is
    /// already f32 on the CPU): the tensor API of the classifiers goes through it.
    ///
    /// # Shapes
    /// `x`: `N x F`, `y`: `N` int64.
    pub fn from_tensors(x: &Tensor, y: &Tensor) -> Result<Self> {
        let x = x.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?;
        let (n, dim) = x.size2()?;
        let mut s = Self::new(
            n as usize,
            &Budget::new(0),
            StoreOptions { precision: FeaturePrecision::F32, chunk_rows: n.max(1) as usize, dir: PathBuf::new() },
        );
        (s.dim, s.chunk_rows) = (dim, n.max(1));
        s.labels = Vec::<i64>::try_from(&y.f_to_device(Device::Cpu)?)?;
        if n > 0 {
            s.chunks.push(Chunk::Mem(x));
        }
        Ok(s)
    }

    /// Appends rows: `features` `B x F` (any float kind, any device), `labels` `B`.
    pub fn push(&mut self, features: &Tensor, labels: &[i64]) -> Result<()> {
        let (b, dim) = features.size2()?;
        if b as usize != labels.len() {
            refuse!("feature store: {b} feature rows but {} labels", labels.len());
        }
        if self.dim == 0 {
            self.start(dim);
        } else if dim != self.dim {
            refuse!("feature store: rows of {dim} features pushed into a store of {}", self.dim);
        }
        let x = features.f_to_kind(self.kind)?;
        let all_finite = |t: &Tensor| t.isfinite().all().int64_value(&[]) != 0;
        if self.kind == Kind::Half && !all_finite(&x) && all_finite(features) {
            refuse!(
                "a frozen feature exceeds f16's range (|x| > 65504): set eval.feature_precision = \"f32\" \
                 (it is {:?} now)",
                self.opts.precision
            );
        }
        self.pending.push(x.f_to_device(Device::Cpu)?);
        self.pending_rows += b;
        self.labels.extend_from_slice(labels);
        while self.pending_rows >= self.chunk_rows {
            self.flush(self.chunk_rows)?;
        }
        Ok(())
    }

    /// Writes the last partial chunk; call once after the last [`push`](Self::push).
    pub fn finish(mut self) -> Result<Self> {
        if self.pending_rows > 0 {
            self.flush(self.pending_rows)?;
        }
        Ok(self)
    }

    fn start(&mut self, dim: i64) {
        self.dim = dim;
        let f32_bytes = self.expected_rows as u64 * dim as u64 * 4;
        self.kind = match self.opts.precision {
            FeaturePrecision::F32 => Kind::Float,
            FeaturePrecision::F16 => Kind::Half,
            FeaturePrecision::Auto if f32_bytes <= self.budget.left() => Kind::Float,
            FeaturePrecision::Auto => Kind::Half,
        };
        let row = (dim as usize * self.kind.elt_size_in_bytes()).max(1);
        self.chunk_rows = match self.opts.chunk_rows {
            0 => ((32usize << 20) / row).max(1) as i64,
            r => r as i64,
        };
    }

    /// Moves the first `rows` pending rows into a chunk, in memory or in the spill file.
    fn flush(&mut self, rows: i64) -> Result<()> {
        let all = Tensor::f_cat(&self.pending, 0)?;
        let chunk = all.f_narrow(0, 0, rows)?.f_contiguous()?;
        let rest = all.f_narrow(0, rows, self.pending_rows - rows)?;
        self.pending = if rest.size()[0] > 0 { vec![rest.f_contiguous()?] } else { Vec::new() };
        self.pending_rows -= rows;
        let bytes = (rows * self.dim) as u64 * self.kind.elt_size_in_bytes() as u64;
        if self.budget.take(bytes) {
            self.mem_bytes += bytes;
            self.chunks.push(Chunk::Mem(chunk));
            return Ok(());
        }
        let mut buf = vec![0u8; bytes as usize];
        chunk.f_copy_data_u8(&mut buf, (rows * self.dim) as usize)?;
        let spill = match &mut self.spill {
            Some(s) => s,
            None => self.spill.insert(create_spill(&self.opts.dir)?),
        };
        (&spill.file)
            .seek(SeekFrom::End(0))
            .and_then(|_| spill.file.write_all(&buf))
            .map_err(|e| Error::io("writing", &spill.path, e))?;
        self.chunks.push(Chunk::Disk { offset: spill.len, rows });
        spill.len += bytes;
        Ok(())
    }

    /// Rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether the store has no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Features per row (0 before the first push).
    pub fn dim(&self) -> i64 {
        self.dim
    }
    /// Storage kind (`Float` or `Half`).
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// Labels, in row order.
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }
    /// Labels as an `N` int64 tensor on the CPU.
    pub fn labels_tensor(&self) -> Tensor {
        Tensor::from_slice(&self.labels)
    }
    /// Number of chunks.
    pub fn num_chunks(&self) -> usize {
        self.chunks.len()
    }
    /// Bytes held in memory.
    pub fn memory_bytes(&self) -> u64 {
        self.mem_bytes
    }
    /// The spill file, if any chunk was spilled.
    pub fn spill_path(&self) -> Option<&Path> {
        self.spill.as_ref().map(|s| s.path.as_path())
    }

    fn rows_of(&self, i: usize) -> i64 {
        match &self.chunks[i] {
            Chunk::Mem(t) => t.size()[0],
            Chunk::Disk { rows, .. } => *rows,
        }
    }

    /// Chunk `i` (`rows x F`, storage kind, CPU); its first row is `i * chunk_rows` of the store.
    pub fn chunk(&self, i: usize) -> Result<Tensor> {
        match &self.chunks[i] {
            Chunk::Mem(t) => Ok(t.shallow_clone()),
            Chunk::Disk { offset, rows } => self.read(*offset, *rows),
        }
    }

    fn read(&self, offset: u64, rows: i64) -> Result<Tensor> {
        let Some(spill) = &self.spill else { refuse!("feature store: a spilled chunk without a spill file") };
        let mut buf = vec![0u8; (rows * self.dim) as usize * self.kind.elt_size_in_bytes()];
        (&spill.file)
            .seek(SeekFrom::Start(offset))
            .and_then(|_| (&spill.file).read_exact(&mut buf))
            .map_err(|e| Error::io("reading", &spill.path, e))?;
        Ok(Tensor::f_from_data_size(&buf, &[rows, self.dim], self.kind)?)
    }

    /// Rows `ix` (in that order) as an `ix.len() x F` f32 tensor on the CPU.
    pub fn gather(&self, ix: &[usize]) -> Result<Tensor> {
        if let Some(&bad) = ix.iter().find(|&&i| i >= self.len()) {
            refuse!("feature store: row {bad} of {}", self.len());
        }
        if self.chunks.len() == 1 {
            if let Chunk::Mem(t) = &self.chunks[0] {
                return Ok(t.f_index_select(0, &index(ix))?.f_to_kind(Kind::Float)?);
            }
        }
        // Rows grouped by chunk (one read per chunk in memory, one per row on disk), then put
        // back in the asked order.
        let cr = self.chunk_rows as usize;
        let mut order: Vec<usize> = (0..ix.len()).collect();
        order.sort_by_key(|&p| ix[p]);
        let mut parts = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let c = ix[order[start]] / cr;
            let end = start + order[start..].iter().take_while(|&&p| ix[p] / cr == c).count();
            let local: Vec<usize> = order[start..end].iter().map(|&p| ix[p] - c * cr).collect();
            parts.push(match &self.chunks[c] {
                Chunk::Mem(t) => t.f_index_select(0, &index(&local))?,
                Chunk::Disk { offset, .. } => {
                    let row_bytes = self.dim as u64 * self.kind.elt_size_in_bytes() as u64;
                    let rows = local
                        .iter()
                        .map(|&r| self.read(offset + r as u64 * row_bytes, 1))
                        .collect::<Result<Vec<_>>>()?;
                    Tensor::f_cat(&rows, 0)?
                }
            });
            start = end;
        }
        let sorted = Tensor::f_cat(&parts, 0)?;
        let mut back = vec![0usize; ix.len()];
        for (k, &p) in order.iter().enumerate() {
            back[p] = k;
        }
        Ok(sorted.f_index_select(0, &index(&back))?.f_to_kind(Kind::Float)?)
    }

    /// `(first row, chunk as f32)` for every chunk in order.
    pub fn chunks_f32(&self) -> impl Iterator<Item = Result<(i64, Tensor)>> + '_ {
        let mut first = 0;
        (0..self.chunks.len()).map(move |i| {
            let start = first;
            first += self.rows_of(i);
            Ok((start, self.chunk(i)?.f_to_kind(Kind::Float)?))
        })
    }
}

impl Drop for FeatureStore {
    fn drop(&mut self) {
        // Memory returns to the evaluation's budget (a store dropped early frees room for the next).
        self.budget.0.set(self.budget.left() + self.mem_bytes);
    }
}

pub(crate) fn index(ix: &[usize]) -> Tensor {
    Tensor::from_slice(&ix.iter().map(|&i| i as i64).collect::<Vec<_>>())
}

fn create_spill(dir: &Path) -> Result<Spill> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = if dir.as_os_str().is_empty() { std::env::temp_dir() } else { dir.to_path_buf() };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
    let name = format!("bt-features-{}-{}.bin", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let path = dir.join(name);
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::io("creating (eval.feature_dir)", &path, e))?;
    tracing::info!("frozen features over eval.feature_memory_mb: spilling to {}", path.display());
    Ok(Spill { path, file, len: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(precision: FeaturePrecision, chunk_rows: usize, dir: &Path) -> StoreOptions {
        StoreOptions { precision, chunk_rows, dir: dir.to_path_buf() }
    }

    fn fill(store: &mut FeatureStore, x: &Tensor, batch: i64) {
        let n = x.size()[0];
        for s in (0..n).step_by(batch as usize) {
            let b = batch.min(n - s);
            let labels: Vec<i64> = (s..s + b).map(|i| i % 7).collect();
            store.push(&x.narrow(0, s, b), &labels).unwrap();
        }
    }

    #[test]
    fn chunks_in_memory_and_on_disk_hold_the_rows_pushed() {
        let dir = tempfile::tempdir().unwrap();
        let x = Tensor::randn([103, 5], (Kind::Float, Device::Cpu));
        // 103 rows of 20 bytes in chunks of 10: 200 B per chunk; a 450 B budget keeps 2 chunks.
        let budget = Budget::new(450);
        let mut s = FeatureStore::new(103, &budget, opts(FeaturePrecision::F32, 10, dir.path()));
        fill(&mut s, &x, 16);
        let s = s.finish().unwrap();
        assert_eq!((s.len(), s.dim(), s.num_chunks(), s.memory_bytes(), budget.left()), (103, 5, 11, 400, 50));
        let path = s.spill_path().unwrap().to_path_buf();
        assert!(path.starts_with(dir.path()) && path.is_file());
        let all = Tensor::cat(&s.chunks_f32().map(|c| c.unwrap().1).collect::<Vec<_>>(), 0);
        assert!(all.equal(&x));
        let ix = [102usize, 0, 57, 11, 11, 3, 99];
        assert!(s.gather(&ix).unwrap().equal(&x.index_select(0, &index(&ix))));
        assert_eq!(s.labels()[57], 57 % 7);
        drop(s);
        assert!(!path.exists(), "the spill file outlives its store");
        assert_eq!(budget.left(), 450, "memory returns to the budget");
    }

    #[test]
    fn auto_precision_is_f32_when_it_fits_else_f16_within_rounding() {
        let dir = tempfile::tempdir().unwrap();
        let x = Tensor::randn([64, 8], (Kind::Float, Device::Cpu)) * 10.0;
        let mut s = FeatureStore::new(64, &Budget::new(64 * 8 * 4), opts(FeaturePrecision::Auto, 0, dir.path()));
        fill(&mut s, &x, 20);
        assert_eq!(s.kind(), Kind::Float);
        let mut h = FeatureStore::new(64, &Budget::new(64 * 8 * 4 - 1), opts(FeaturePrecision::Auto, 0, dir.path()));
        fill(&mut h, &x, 20);
        let h = h.finish().unwrap();
        assert_eq!(h.kind(), Kind::Half);
        let back = h.gather(&(0..64).collect::<Vec<_>>()).unwrap();
        // f16 keeps 11 significant bits: relative error <= 2^-11.
        let rel = ((&back - &x).abs() / x.abs().clamp_min(1e-3)).max().double_value(&[]);
        assert!(rel > 0.0 && rel <= 1.0 / 2048.0, "{rel}");
    }

    #[test]
    fn f16_overflow_is_an_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FeatureStore::new(2, &Budget::new(1 << 20), opts(FeaturePrecision::F16, 0, dir.path()));
        let e = s.push(&Tensor::from_slice(&[1f32, 7e4]).view([1, 2]), &[0]).unwrap_err().to_string();
        assert!(e.contains("eval.feature_precision"), "{e}");
    }
}
