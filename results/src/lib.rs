//! Results of a sweep: tables (polars), claims and a report, read from the sweep's SQLite state
//! database. This crate knows nothing of candle (Architecture Invariant); it only reads the
//! database the coordinator writes.
//!
//! [`write_all`] is the entry point. It writes into the output directory:
//!
//! | file | content |
//! |---|---|
//! | `trials.parquet`, `trials.csv` | one row per trial: hash, idx, in_sweep, config keys, status, attempts, diverged_step, final metrics, wall_seconds |
//! | `curves.parquet` | one row per checkpoint, with the config keys useful for grouping |
//! | `claims.csv` | `claim, scope, statistic, expected, tolerance, verdict` |
//! | `report.md` | claims, key tables, plot links, sample grids, artifacts, out-of-sweep and failed trials, respawned workers |
//! | `plots/*.svg` | gap per checkpoint with C, samples vs data, a metric vs σ_max |
//!
//! Modules: [`layout`] defines the database (shared with the coordinator), [`state`] reads it,
//! [`table`] builds the frames, [`claims`] checks the
//! claims, [`plots`] draws, [`report`] writes the Markdown, [`optuna`] writes the run as an
//! Optuna journal, [`escape`] makes worker text safe for each of them.

pub mod claims;
mod error;
pub mod escape;
pub mod layout;
pub mod optuna;
pub mod plots;
pub mod report;
pub mod state;
pub mod table;
pub mod targets;

use std::path::Path;

pub use claims::{ClaimRow, Verdict};
pub use error::ResultsError;

/// What [`write_all`] found, for the coordinator to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// (claim, scope, verdict) per claim row; verdict is `pass`, `fail` or `not enough data`.
    pub claims: Vec<(String, String, String)>,
    /// Trials that belong to the current sweep (`in_sweep = 1`).
    pub trials: usize,
    /// Of those, trials finished with a usable result ([`schema::Status::is_success`]).
    pub done: usize,
    /// Of those, trials finished without one ([`schema::Status::is_unusable`]: `failed`,
    /// `timeout`, `diverged`).
    pub failed: usize,
    /// Of those, trials stopped early (`pruned`: their checkpoints are results).
    pub pruned: usize,
    /// Dead local workers replaced, over every run of this database (`events` of kind
    /// `respawn`).
    pub respawns: usize,
}

/// The files [`write_all`] writes, relative to the output directory (plots aside).
pub const FILES: [&str; 5] = ["trials.parquet", "trials.csv", "curves.parquet", "claims.csv", "report.md"];

/// Reads the state database at `db_path` (read-only) and writes the tables, claims, plots and
/// report into `out_dir` (created if missing). Running it again overwrites the same files.
pub fn write_all(db_path: &Path, out_dir: &Path) -> Result<Summary, ResultsError> {
    let state = state::State::load(db_path)?;
    std::fs::create_dir_all(out_dir).map_err(|source| ResultsError::Io { path: out_dir.to_path_buf(), source })?;

    let frame_err = |name: &str| {
        let path = out_dir.join(name);
        move |source| ResultsError::Table { path, source }
    };
    let mut trials = table::trials_frame(&state).map_err(frame_err("trials.parquet"))?;
    table::write_parquet(&mut trials, &out_dir.join("trials.parquet"))?;
    table::write_csv(&mut trials, &out_dir.join("trials.csv"))?;
    let mut curves = table::curves_frame(&state).map_err(frame_err("curves.parquet"))?;
    table::write_parquet(&mut curves, &out_dir.join("curves.parquet"))?;

    // Early stopping: every decision, when the sweep stops trials early.
    let mut files: Vec<&str> = FILES.to_vec();
    if state.adaptive.early_stop.is_some() || !state.decisions.is_empty() {
        let mut decisions = table::decisions_frame(&state).map_err(frame_err("decisions.csv"))?;
        table::write_csv(&mut decisions, &out_dir.join("decisions.csv"))?;
        files.push("decisions.csv");
    }

    let claim_rows = claims::evaluate(&state);
    let mut claims_df = claims::claims_frame(&claim_rows).map_err(frame_err("claims.csv"))?;
    table::write_csv(&mut claims_df, &out_dir.join("claims.csv"))?;

    let plots = plots::write_plots(&state, out_dir)?;
    let md = report::render(&state, &claim_rows, &plots, &files);
    let report_path = out_dir.join("report.md");
    std::fs::write(&report_path, md).map_err(|source| ResultsError::Io { path: report_path, source })?;

    let in_sweep: Vec<&state::Trial> = state.in_sweep().collect();
    Ok(Summary {
        claims: claim_rows.iter().map(|c| (c.claim.to_string(), c.scope.clone(), c.verdict.as_str().to_string())).collect(),
        trials: in_sweep.len(),
        done: in_sweep.iter().filter(|t| t.status.is_success()).count(),
        failed: in_sweep.iter().filter(|t| t.status.is_unusable()).count(),
        pruned: in_sweep.iter().filter(|t| t.status == schema::Status::Pruned).count(),
        respawns: state.count_events("respawn"),
    })
}
