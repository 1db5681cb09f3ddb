//! `twinloader`: bt-data's twin-view pipeline as a Python iterable of NumPy arrays, for PyTorch
//! training code (`pip install crates/bt-py`; the Python surface is documented in
//! `python/twinloader/__init__.pyi` and `README.md`).
//!
//! # Key design choice: the binding adds no behaviour
//! A [`TwinLoader`] is a [`bt_data::TwinPipeline`] built from the same config tree as `bt-cli`
//! (preset, config file, `--set`-style overrides, then the keyword arguments, which are
//! overrides too), so its batches are the Rust pipeline's bit for bit, for any thread count.
//! Everything Python-specific happens at the edge:
//!
//! - **Zero copy.** A batch's view buffers move into a [`ViewBuffer`] Python object that owns
//!   them; the NumPy arrays are views of it (`base`), so `torch.from_numpy` costs nothing and
//!   the arrays outlive the loader. When NumPy frees the last view, the buffer goes back to the
//!   pipeline's free list ([`bt_data::Recycler`]): a steady state allocates nothing, as in Rust.
//! - **The GIL** is released around every wait: the folder's header scan at construction, each
//!   `next()` (the training step's Python threads run while the batch is produced) and the
//!   shutdown of an abandoned epoch.
//! - **Errors** are Python exceptions carrying the Rust message (file, key, value):
//!   `ValueError` for the config, `twinloader.DataError` (a `RuntimeError`) for the data.
//! - **Sharding** follows `DistributedSampler`'s contract: `batch_size` is per rank, and rank
//!   `r` of `W` gets rows `[r*B, (r+1)*B)` of each global batch of `W*B` rows
//!   ([`bt_data::TwinPipeline::with_shard`]), so the ranks together see exactly the batches of a
//!   single process with batch `W*B`.
use bt_config::{ConfigBuilder, DatasetKind};
use bt_data::{EpochIter, ImageSource, Recycler, TwinBatch, TwinPipeline};
use numpy::{PyArray1, PyArray4};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use std::path::PathBuf;
use std::sync::Arc;

pyo3::create_exception!(
    twinloader,
    DataError,
    PyRuntimeError,
    "A data error from the Rust pipeline (unreadable or missing file, bad dataset layout, worker failure); the message names the file, key or value."
);

fn data_err(e: bt_data::DataError) -> PyErr {
    DataError::new_err(e.to_string())
}

fn config_err(e: bt_config::ConfigError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// `--set`-style overrides from a mapping (`{"data.image_size": 96}`) or a sequence of
/// `"key=value"` strings. Mapping values: `bool` as `true`/`false`, `str` as written, anything
/// else through `str()` (numbers and lists of numbers are then TOML).
fn override_strings(obj: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(d) = obj.downcast::<PyDict>() {
        let mut out = Vec::with_capacity(d.len());
        for (k, v) in d.iter() {
            let k: String = k.extract().map_err(|_| PyValueError::new_err("override keys must be strings"))?;
            let v = if let Ok(b) = v.extract::<bool>() {
                b.to_string()
            } else if let Ok(s) = v.downcast::<PyString>() {
                s.to_cow()?.into_owned()
            } else {
                v.str()?.to_cow()?.into_owned()
            };
            out.push(format!("{k}={v}"));
        }
        return Ok(out);
    }
    if obj.downcast::<PyString>().is_ok() {
        return Ok(vec![obj.extract()?]);
    }
    obj.try_iter()?
        .map(|s| {
            s?.extract::<String>()
                .map_err(|_| PyValueError::new_err("overrides must be a dict or a sequence of \"key=value\" strings"))
        })
        .collect()
}

/// The owner of one view buffer; NumPy arrays of a batch are views of it (their `base`).
/// Dropping it (when the last array is freed) returns the buffer to the pipeline.
#[pyclass(frozen, module = "twinloader")]
pub struct ViewBuffer {
    data: Vec<f32>,
    recycler: Recycler,
}

impl Drop for ViewBuffer {
    fn drop(&mut self) {
        self.recycler.recycle(std::mem::take(&mut self.data));
    }
}

fn view_array<'py>(
    py: Python<'py>,
    data: Vec<f32>,
    shape: [usize; 4],
    recycler: Recycler,
) -> PyResult<Bound<'py, PyAny>> {
    let owner = Bound::new(py, ViewBuffer { data, recycler })?;
    let ptr = owner.get().data.as_ptr();
    // SAFETY: `ptr` points at `shape`'s product of initialized f32s (a TwinBatch view buffer
    // of exactly that length, checked by the caller), owned by `owner`, which becomes the
    // array's base: the heap buffer never moves or changes size while the array lives, since
    // `ViewBuffer` is frozen and releases the Vec only in its own drop.
    let view = unsafe { ndarray::ArrayView4::from_shape_ptr(shape, ptr) };
    let arr = unsafe { PyArray4::<f32>::borrow_from_array(&view, owner.into_any()) };
    Ok(arr.into_any())
}

fn batch_tuple<'py>(py: Python<'py>, mut b: TwinBatch, with_indices: bool) -> PyResult<Bound<'py, PyTuple>> {
    let shape = b.shape();
    let labels = std::mem::take(&mut b.labels);
    let indices = std::mem::take(&mut b.indices);
    let mut arrays = Vec::with_capacity(4);
    if !b.view_a_u8.is_empty() {
        // u8 NHWC: the arrays own their (moved, not copied) buffers.
        let nhwc = (shape[0], shape[2], shape[3], 3);
        for v in [std::mem::take(&mut b.view_a_u8), std::mem::take(&mut b.view_b_u8)] {
            let arr = ndarray::Array4::from_shape_vec(nhwc, v)
                .map_err(|e| PyRuntimeError::new_err(format!("internal: u8 view shape: {e}")))?;
            arrays.push(numpy::PyArray4::from_owned_array(py, arr).into_any());
        }
    }
    let (va, vb, recycler) = b.into_views_recycled();
    let n: usize = shape.iter().product();
    if arrays.is_empty() && (va.len() != n || vb.len() != n) {
        return Err(PyRuntimeError::new_err(format!(
            "internal: view buffers of {} and {} values for shape {shape:?}",
            va.len(),
            vb.len()
        )));
    }
    if arrays.is_empty() {
        arrays.push(view_array(py, va, shape, recycler.clone())?);
        arrays.push(view_array(py, vb, shape, recycler)?);
    }
    arrays.push(PyArray1::from_vec(py, labels).into_any());
    if with_indices {
        arrays.push(PyArray1::from_vec(py, indices).into_any());
    }
    PyTuple::new(py, arrays)
}

/// Twin views of an image source for PyTorch training loops; see the Python docstring
/// (`twinloader.TwinLoader`).
#[pyclass(module = "twinloader")]
pub struct TwinLoader {
    pipe: Arc<TwinPipeline>,
    next_epoch: u64,
    per_rank: usize,
    with_indices: bool,
    config_toml: String,
    description: String,
    class_names: Option<Vec<String>>,
}

#[pymethods]
impl TwinLoader {
    #[new]
    #[pyo3(signature = (data=None, preset="imagenet-resnet50", *, config=None, overrides=None, image_size=None,
        batch_size=None, threads=None, seed=None, drop_last=None, rank=0, world_size=1, return_indices=false,
        dtype="float32"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        data: Option<PathBuf>,
        preset: &str,
        config: Option<PathBuf>,
        overrides: Option<Bound<'_, PyAny>>,
        image_size: Option<usize>,
        batch_size: Option<usize>,
        threads: Option<usize>,
        seed: Option<u64>,
        drop_last: Option<bool>,
        rank: usize,
        world_size: usize,
        return_indices: bool,
        dtype: &str,
    ) -> PyResult<Self> {
        let u8_views = match dtype {
            "float32" => false,
            "uint8" => true,
            other => {
                return Err(PyValueError::new_err(format!(
                    "dtype = {other:?}: \"float32\" (NCHW, normalized) or \"uint8\" (NHWC, not normalized)"
                )))
            }
        };
        if world_size == 0 || rank >= world_size {
            return Err(PyValueError::new_err(format!(
                "rank {rank} of world_size {world_size}: need 0 <= rank < world_size"
            )));
        }
        let mut b = ConfigBuilder::new();
        b.preset(preset).map_err(config_err)?;
        if let Some(path) = &config {
            b.file(path).map_err(config_err)?;
        }
        if let Some(o) = &overrides {
            for s in override_strings(o)? {
                b.set(&s).map_err(config_err)?;
            }
        }
        // The keyword arguments are overrides too: same checks, same messages.
        let mut kw = Vec::new();
        if let Some(s) = image_size {
            kw.push(format!("data.image_size={s}"));
        }
        if let Some(n) = batch_size {
            if n == 0 {
                return Err(PyValueError::new_err("batch_size = 0: must be at least 1"));
            }
            kw.push(format!("data.batch_size={}", n * world_size));
        }
        if let Some(t) = threads {
            kw.push(format!("data.workers={t}"));
        }
        if let Some(s) = seed {
            kw.push(format!("run.seed={s}"));
        }
        if let Some(d) = drop_last {
            kw.push(format!("data.drop_remainder={d}"));
        }
        for s in &kw {
            b.set(s).map_err(config_err)?;
        }
        let mut cfg = b.build().map_err(config_err)?;
        if let Some(d) = data {
            // As bt-cli's `--data`: a file is a file list of an image folder; a folder's kind
            // is detected unless the config names an image folder or STL-10 already.
            if d.is_file() {
                cfg.data.dataset = DatasetKind::ImageFolder;
                cfg.data.file_list = d.clone();
                cfg.data.dir = d.parent().map(|p| p.to_path_buf()).unwrap_or_default();
            } else {
                if !matches!(cfg.data.dataset, DatasetKind::ImageFolder | DatasetKind::Stl10) {
                    cfg.data.dataset = bt_data::detect_kind(&d);
                }
                cfg.data.dir = d;
            }
        }
        if cfg.data.batch_size % world_size != 0 {
            return Err(PyValueError::new_err(format!(
                "data.batch_size = {} (the global batch) is not a multiple of world_size {world_size}",
                cfg.data.batch_size
            )));
        }
        let per_rank = cfg.data.batch_size / world_size;
        // The header scan reads every file of a folder: no Python thread should wait for it.
        let (pipe, sources) = py
            .allow_threads(|| -> bt_data::Result<_> {
                let s = bt_data::load_sources(&cfg)?;
                let pipe = TwinPipeline::new(s.train.clone(), &cfg.data, &cfg.augment, cfg.run.seed)?
                    .with_shard(rank, world_size)?;
                let pipe = if u8_views { pipe.with_u8_views()? } else { pipe };
                Ok((pipe, s))
            })
            .map_err(data_err)?;
        Ok(Self {
            pipe: Arc::new(pipe),
            next_epoch: 0,
            per_rank,
            with_indices: return_indices,
            config_toml: cfg.to_toml(),
            description: sources.description,
            class_names: sources.class_names,
        })
    }

    /// Batches per epoch (the same on every rank).
    fn __len__(&self) -> usize {
        self.pipe.batches_per_epoch()
    }

    /// Starts the next epoch (the one `set_epoch` named, else the one after the last).
    fn __iter__(mut slf: PyRefMut<'_, Self>) -> Epoch {
        let e = slf.next_epoch;
        slf.next_epoch = e + 1;
        Epoch::start(&slf, e, 0)
    }

    /// The epoch the next `iter()` produces (as `DistributedSampler.set_epoch`).
    fn set_epoch(&mut self, epoch: u64) {
        self.next_epoch = epoch;
    }

    /// Batches `start_batch..` of `epoch` (resuming mid-epoch gives the batches a full epoch
    /// would have given there). Does not change what `iter()` produces next.
    #[pyo3(signature = (epoch, start_batch=0))]
    fn iter_epoch(&self, epoch: u64, start_batch: usize) -> Epoch {
        Epoch::start(self, epoch, start_batch)
    }

    /// The epoch the next `iter()` produces.
    #[getter]
    fn epoch(&self) -> u64 {
        self.next_epoch
    }

    /// Rows per batch on this rank.
    #[getter]
    fn batch_size(&self) -> usize {
        self.per_rank
    }

    /// Side of the square views.
    #[getter]
    fn image_size(&self) -> usize {
        self.pipe.image_size()
    }

    /// Augmentation threads.
    #[getter]
    fn threads(&self) -> usize {
        self.pipe.threads()
    }

    /// `rank` of this loader's shard.
    #[getter]
    fn rank(&self) -> usize {
        self.pipe.shard().0
    }

    /// `world_size` of this loader's shard.
    #[getter]
    fn world_size(&self) -> usize {
        self.pipe.shard().1
    }

    /// Images in the source (all ranks).
    #[getter]
    fn num_images(&self) -> usize {
        self.pipe.source().len()
    }

    /// Class names in label order, when the source has them.
    #[getter]
    fn class_names(&self) -> Option<Vec<String>> {
        self.class_names.clone()
    }

    /// Unreadable images skipped or replaced so far (`data.skip_bad_images = true`).
    #[getter]
    fn bad_images(&self) -> usize {
        self.pipe.bad_images()
    }

    /// The effective config as TOML (what `bt-cli config` prints for the same settings).
    #[getter]
    fn config(&self) -> String {
        self.config_toml.clone()
    }

    /// One line about the source.
    #[getter]
    fn description(&self) -> String {
        self.description.clone()
    }

    fn __repr__(&self) -> String {
        let (r, w) = self.pipe.shard();
        format!(
            "TwinLoader({}, image_size={}, batch_size={}, rank={r}, world_size={w}, threads={}, batches={})",
            self.description,
            self.pipe.image_size(),
            self.per_rank,
            self.pipe.threads(),
            self.pipe.batches_per_epoch()
        )
    }
}

/// The batches of one epoch: `(view_a, view_b, labels[, indices])` per `next()`.
#[pyclass(module = "twinloader")]
pub struct Epoch {
    inner: Option<EpochIter>,
    with_indices: bool,
}

impl Epoch {
    fn start(l: &TwinLoader, epoch: u64, start_batch: usize) -> Self {
        Self { inner: Some(l.pipe.epoch(epoch, start_batch)), with_indices: l.with_indices }
    }
}

#[pymethods]
impl Epoch {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let Some(it) = self.inner.as_mut() else { return Ok(None) };
        // The wait for the producer, without the GIL: the caller's other threads run meanwhile.
        match py.allow_threads(|| it.next()) {
            None => {
                self.close(py);
                Ok(None)
            }
            Some(Ok(b)) => batch_tuple(py, b, self.with_indices).map(Some),
            Some(Err(e)) => {
                self.close(py);
                Err(data_err(e))
            }
        }
    }

    /// Batches left in this epoch.
    fn __len__(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.remaining())
    }

    /// Stops the epoch now (the producer finishes the batches it started, then exits).
    fn close(&mut self, py: Python<'_>) {
        if let Some(it) = self.inner.take() {
            py.allow_threads(move || drop(it));
        }
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        if let Some(it) = self.inner.take() {
            // Joining the producer waits for the batches in flight: without the GIL.
            Python::with_gil(|py| py.allow_threads(move || drop(it)));
        }
    }
}

/// The native half of the `twinloader` package.
#[pymodule]
fn _twinloader(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<TwinLoader>()?;
    m.add_class::<Epoch>()?;
    m.add_class::<ViewBuffer>()?;
    m.add("DataError", m.py().get_type::<DataError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
