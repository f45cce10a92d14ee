//! Typed errors of the library. The CLI wraps them with `anyhow` context.

use std::path::PathBuf;

/// Every failure the library reports. Messages name the file, field or value at fault
/// and what was expected, so a user can fix their input without reading the source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    // The cause is part of the message, not a `source`: anyhow's `{:#}` would print it twice.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("{path}: invalid JSON: {cause}")]
    Json {
        path: PathBuf,
        cause: serde_json::Error,
    },

    /// A value in a user-supplied file or option is wrong.
    #[error("{path}: {field}: {message}")]
    InvalidInput {
        path: String,
        field: String,
        message: String,
    },

    /// A model file could not be found locally, in the cache, or on the hub.
    #[error("{0}")]
    ModelNotFound(String),

    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: String, message: String },

    /// A weight is missing or has the wrong shape.
    #[error("{path}: tensor `{name}`: {message}")]
    Weights {
        path: String,
        name: String,
        message: String,
    },

    /// The checkpoint does not make the model asked for: building it would leave the
    /// `missing` tensors randomly initialised, beyond what the task adds.
    #[error("{path}: {message}")]
    CheckpointMismatch {
        path: String,
        missing: Vec<String>,
        message: String,
    },

    /// Anything else with a plain message (plans that cannot work, mismatched models, ...).
    #[error("{0}")]
    Msg(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }

    pub fn invalid(path: impl ToString, field: impl ToString, message: impl ToString) -> Self {
        Error::InvalidInput {
            path: path.to_string(),
            field: field.to_string(),
            message: message.to_string(),
        }
    }

    pub fn msg(message: impl ToString) -> Self {
        Error::Msg(message.to_string())
    }
}

/// `bail!`-style shorthand for [`Error::Msg`].
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::Error::Msg(format!($($arg)*)))
    };
}
