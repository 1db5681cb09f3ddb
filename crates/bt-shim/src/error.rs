//! The crate's error type.

/// Everything that can go wrong in a shim call. C++ exceptions thrown by libtorch arrive here as
/// [`Error::Torch`] (they are caught on the C++ side and never unwind into Rust).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// libtorch threw (a `c10::Error` or another `std::exception`) inside `op`.
    #[error("{op}: libtorch error: {message}")]
    Torch {
        /// The shim operation, e.g. `"foreach_add_"`.
        op: &'static str,
        /// The exception's message, without the C++ backtrace.
        message: String,
    },
    /// A CUDA-only operation was called where it cannot run: the shim was built without CUDA,
    /// or the process sees no (or not that) CUDA device.
    #[error("{op}: CUDA unavailable: {reason}")]
    CudaUnavailable {
        /// The shim operation.
        op: &'static str,
        /// Why: not built with CUDA, or the device index and the device count.
        reason: String,
    },
    /// Tensor lists of a multi-tensor op differ in length.
    #[error("{op}: list `{list}` has {got} tensors, the first list has {expected}")]
    LengthMismatch {
        /// The shim operation.
        op: &'static str,
        /// Which argument list is off.
        list: &'static str,
        /// Length of the first (self) list.
        expected: usize,
        /// Length of `list`.
        got: usize,
    },
    /// An argument the operation does not support (a dtype for autocast, a device type).
    #[error("{op}: unsupported {what}: {value}")]
    Unsupported {
        /// The shim operation.
        op: &'static str,
        /// What kind of argument, e.g. `"autocast dtype"`.
        what: &'static str,
        /// The offending value, formatted.
        value: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
