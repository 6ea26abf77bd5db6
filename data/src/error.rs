//! Error type shared by the readers of this crate.

use std::path::PathBuf;

/// An error while reading a data file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read (missing, unreadable).
    #[error("{path}: cannot read file: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file is not valid JSON, or does not have the expected structure.
    #[error("{path}: malformed JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying parse error.
        source: serde_json::Error,
    },
    /// The file is not an image that can be decoded.
    #[error("{path}: bad image: {msg}")]
    Image {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The file is not a `.npy` file this reader supports.
    #[error("{path}: bad .npy file: {msg}")]
    Npy {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The file is not a pickle this reader supports.
    #[error("{path}: bad pickle file: {msg}")]
    Pickle {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The file could not be written (folder not creatable, disk full, rename failed, ...).
    #[error("{path}: cannot write file: {source}")]
    Write {
        /// The file (or folder) being written.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file parsed but its content is inconsistent (bad index, unknown category, ...).
    #[error("{path}: invalid content: {msg}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

impl DataError {
    /// An [`DataError::Invalid`] naming `path`.
    pub fn invalid(path: &std::path::Path, msg: impl Into<String>) -> Self {
        DataError::Invalid {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}
