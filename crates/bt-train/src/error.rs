//! [`Error`]: what can go wrong in a run, each variant naming the file, key or step involved.
use std::path::PathBuf;

/// Errors of the training library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder operation failed.
    #[error("{op} {}: {error}", path.display())]
    Io {
        /// What was being done (`reading`, `writing`, `creating`...).
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The underlying error (part of the message, so not reported again as `source()`).
        error: std::io::Error,
    },
    /// A checkpoint or tensor file that is missing, damaged or not what it should be.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A run folder, a checkpoint position or a config that the library refuses to start or
    /// continue from (the message says why and what to do instead).
    #[error("{0}")]
    Refused(String),
    /// A non-finite loss or gradient (`run.on_nonfinite = "stop"`), or a loss spike.
    #[error("{0}")]
    Diverged(String),
    /// A stop request ([`crate::StopToken`]) ended an evaluation; `detail` says where and what
    /// keeps its progress.
    #[error("{interrupted} {detail}")]
    Stopped {
        /// The request.
        interrupted: crate::Interrupted,
        /// When it stopped and which file holds what was done.
        detail: String,
    },
    /// An invalid config value.
    #[error(transparent)]
    Config(#[from] bt_config::ConfigError),
    /// The data pipeline or a dataset reader.
    #[error(transparent)]
    Data(#[from] bt_data::DataError),
    /// Building, loading or saving the model.
    #[error(transparent)]
    Model(#[from] bt_model::ModelError),
    /// The loss.
    #[error(transparent)]
    Loss(#[from] bt_loss::LossError),
    /// The optimizer.
    #[error(transparent)]
    Optim(#[from] bt_optim::OptimError),
    /// A collective of a data-parallel run (a lost rank, a timeout).
    #[error(transparent)]
    Dist(#[from] bt_dist::DistError),
    /// A libtorch feature reached through bt-shim (CUDA streams, pinned memory...).
    #[error(transparent)]
    Shim(#[from] bt_shim::Error),
    /// A libtorch operation (out of memory, a shape mismatch...).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// JSON (metrics, evaluation results).
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// An error with what was being done when it happened. Its message includes the inner
    /// error's (so `to_string()` tells the whole story); it reports no separate `source()`, so
    /// chain printers (anyhow's `{:#}`) do not repeat it.
    #[error("{context}: {inner}")]
    Context {
        /// What was being done.
        context: String,
        /// The error.
        inner: Box<Error>,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Self::Io { op, path: path.into(), error }
    }
    /// A damaged or unexpected checkpoint file.
    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Checkpoint { path: path.into(), reason: reason.into() }
    }
    /// The innermost error, through every [`Error::Context`].
    pub fn root(&self) -> &Error {
        match self {
            Self::Context { inner, .. } => inner.root(),
            e => e,
        }
    }
}

/// `.context(...)` for results whose error converts into [`Error`].
pub trait ResultExt<T> {
    /// Wraps the error with what was being done.
    fn context(self, what: impl Into<String>) -> Result<T>;
    /// [`context`](Self::context), with the message built only on error.
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::Context { context: what.into(), inner: Box::new(e.into()) })
    }
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::Context { context: what().into(), inner: Box::new(e.into()) })
    }
}

/// Returns early with [`Error::Refused`] and a formatted message.
macro_rules! refuse {
    ($($arg:tt)*) => { return Err($crate::Error::Refused(format!($($arg)*))) };
}
pub(crate) use refuse;
