//! The engine's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("failed to write {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// An image set that is missing, truncated or fails its checksum (before any training).
    #[error(transparent)]
    Data(#[from] crate::data::idx::IdxError),
    /// Sections that do not go together (validation refuses such trials first: `schema::caps`).
    #[error("invalid trial: {0}")]
    Invalid(String),
    /// A metric that could not be computed (e.g. the digit classifier's cache).
    #[error("metric failed: {0}")]
    Metric(String),
}
