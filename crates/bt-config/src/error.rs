//! [`ConfigError`]: every error names the dotted key, the value and what is allowed.
use std::path::PathBuf;

/// Errors from assembling or validating a [`Config`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key that the schema does not have.
    #[error("unknown config key `{key}`{}", hint_suffix(.hint))]
    UnknownKey {
        /// Dotted path of the key.
        key: String,
        /// Nearby valid keys.
        hint: String,
    },
    /// A value of the wrong type or an unknown enum variant.
    #[error("bad value for `{key}`: {value} ({reason})")]
    BadValue {
        /// Dotted path of the key.
        key: String,
        /// The offending value as written.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A value outside its allowed range.
    #[error("`{key}` = {value} is out of range: {allowed}")]
    OutOfRange {
        /// Dotted path of the key.
        key: String,
        /// The offending value.
        value: String,
        /// What is allowed.
        allowed: String,
    },
    /// A `--set` argument that is not `key=value`.
    #[error("malformed override `{0}`: expected dotted.key=value, e.g. optim.lr=0.002")]
    MalformedOverride(String),
    /// A preset name that is not shipped.
    #[error("unknown preset `{name}`; available presets: {available}")]
    UnknownPreset {
        /// The requested name.
        name: String,
        /// Comma-separated list of shipped presets.
        available: String,
    },
    /// A config file that cannot be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A config file that is not valid TOML.
    #[error("config file {} is not valid TOML: {message}", path.display())]
    Parse {
        /// The file (or `<preset NAME>`).
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
}

fn hint_suffix(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!("; valid keys here: {hint}")
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ConfigError>;
