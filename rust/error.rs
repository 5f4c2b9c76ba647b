//! The core's one error type. Every failure that user input can cause is a variant here;
//! `python.rs` maps each variant to a Python exception in one place.

use std::path::PathBuf;

/// Errors raised by the lmforge core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A path that should be a file does not exist.
    #[error("{0}: no such file")]
    FileNotFound(PathBuf),
    /// A path names a directory where a file was expected.
    #[error("{0}: is a directory, expected a text file (pass the files inside it)")]
    IsADirectory(PathBuf),
    /// Bytes that are not UTF-8, with the source and the byte offset of the first bad byte.
    #[error(
        "{source_name}: invalid UTF-8 at byte offset {offset}; fix the file or pass errors=\"replace\" to substitute U+FFFD"
    )]
    InvalidUtf8 { source_name: String, offset: u64 },
    /// A user-supplied argument is out of range or inconsistent.
    #[error("{0}")]
    InvalidArgument(String),
    /// A pretokenization regex that does not compile.
    #[error("invalid pretokenization pattern {pattern:?}: {message}")]
    InvalidPattern { pattern: String, message: String },
    /// A tokenizer file that is truncated, corrupt or of an unknown version.
    #[error("{path}: not a valid lmforge tokenizer file: {message}")]
    CorruptTokenizer { path: String, message: String },
    /// The input held no text to train on.
    #[error("the training corpus is empty: no pretokens found in {0}")]
    EmptyCorpus(String),
    /// A special token that the caller disallowed occurs in the text to encode.
    #[error(
        "the text contains the disallowed special token '{token}' at character offset {offset}; \
         pass allowed_special={{'{token}'}} (or \"all\") to encode it as its id, or \
         disallowed_special=() to encode it as plain text"
    )]
    DisallowedSpecial { token: String, offset: usize },
    /// Work stopped because the caller asked (e.g. Ctrl-C in Python).
    #[error("interrupted")]
    Interrupted,
}

/// Result alias of the core.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
