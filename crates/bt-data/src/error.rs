//! The crate's error type.
use std::path::PathBuf;

/// Errors from reading datasets, building policies and running the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A dataset file that does not exist.
    #[error("missing dataset file {}: expected the official CIFAR-10 binary layout (data_batch_1..5.bin, test_batch.bin, batches.meta.txt)", path.display())]
    MissingFile {
        /// The file.
        path: PathBuf,
    },
    /// Any other I/O failure on a file.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A batch file whose size is not what the layout requires.
    #[error("{} has {size} bytes, expected {expected}", path.display())]
    BadSize {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// What was expected, in words.
        expected: String,
    },
    /// A record whose label byte is not a class index.
    #[error("{}: record {record} (byte offset {offset}) has label {label}, expected 0..=9", path.display())]
    BadLabel {
        /// The file.
        path: PathBuf,
        /// Record index within the file.
        record: usize,
        /// Byte offset of the label byte within the file.
        offset: u64,
        /// The label found.
        label: u8,
    },
    /// A missing or malformed `batches.meta.txt`.
    #[error("malformed class-name file {}: {reason}", path.display())]
    BadMeta {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Buffers whose sizes do not agree (e.g. images vs labels).
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    Shape {
        /// What was being built.
        what: String,
        /// Expected size.
        expected: usize,
        /// Actual size.
        got: usize,
    },
    /// A config value the data side cannot use.
    #[error("bad data config `{key}`: {reason}")]
    BadConfig {
        /// Dotted config key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A worker panicked while producing a batch.
    #[error("augmentation worker panicked while producing batch {batch}: {message}")]
    WorkerPanic {
        /// Batch index within the epoch.
        batch: usize,
        /// The panic message.
        message: String,
    },
    /// The producer thread went away before the epoch was complete.
    #[error("pipeline producer stopped unexpectedly before batch {batch}")]
    Disconnected {
        /// The first batch that was not delivered.
        batch: usize,
    },
    /// An image file that cannot be read: not an image, an unsupported format, truncated, or
    /// failing to decode.
    #[error("unreadable image {}: {reason} (set data.skip_bad_images = true to skip such files)", path.display())]
    BadImage {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A dataset folder or list that yields no usable images, or not the images a key needs.
    #[error("`{key}` = {}: {reason}", path.display())]
    BadFolder {
        /// The config key naming the folder or file.
        key: String,
        /// The folder or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing a preview image failed.
    #[error("cannot write image {}: {message}", path.display())]
    ImageWrite {
        /// The file.
        path: PathBuf,
        /// The encoder's message.
        message: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, DataError>;
