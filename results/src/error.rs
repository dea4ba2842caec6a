//! The error type of the results crate: every failure names the file it concerns.

use std::path::PathBuf;

/// Everything that can go wrong while turning a state database into tables, claims and a report.
///
/// Messages are lowercase fragments that read well after "failed to write results: …".
#[derive(thiserror::Error, Debug)]
pub enum ResultsError {
    /// The state database could not be opened read-only.
    #[error("could not open state database {path}")]
    OpenDb {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The state database is in another layout than this crate reads.
    #[error(transparent)]
    Layout(#[from] crate::layout::LayoutError),
    /// A query against the state database failed (missing table, wrong column type, …).
    #[error("could not read {what} from state database {path}")]
    Query {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// A JSON column of the state database did not parse.
    #[error("invalid {column} of trial {trial} in state database {path}")]
    Json {
        path: PathBuf,
        column: &'static str,
        trial: String,
        #[source]
        source: serde_json::Error,
    },
    /// A JSON column parsed but has the wrong shape (e.g. config_json is not an object).
    #[error("invalid {column} of trial {trial} in state database {path}: {detail}")]
    Shape { path: PathBuf, column: &'static str, trial: String, detail: String },
    /// Creating or writing an output file failed.
    #[error("could not write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// polars refused to build or write a table.
    #[error("could not write table {path}")]
    Table {
        path: PathBuf,
        #[source]
        source: polars::error::PolarsError,
    },
    /// plotters failed to draw a plot (its error types are generic, so the message is kept).
    #[error("could not draw plot {path}: {message}")]
    Plot { path: PathBuf, message: String },
}
