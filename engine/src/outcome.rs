//! What a run of the engine reports: [`Progress`] while it runs and a [`TrialOutcome`] at the
//! end, with its [`TrialStatus`]. Shared by the toy runner (`trial`) and the image runner
//! (`images::run`) so that neither imports the other's module (`tests/tidy.rs` checks the
//! engine's modules for import cycles).

use candle_core::Tensor;

/// Reported to the caller during training and sampling.
#[derive(Debug, Clone)]
pub struct Progress {
    pub step: u64,
    pub total_steps: u64,
    pub train_loss: f64,
    /// The latest checkpoint's values (empty between checkpoints).
    pub latest: Vec<(String, f64)>,
}

/// How a run of the engine ended (the attempt's status is derived from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrialStatus {
    Ok,
    Diverged { step: u64 },
    Cancelled,
}

impl std::fmt::Display for TrialStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrialStatus::Ok => "ok",
            TrialStatus::Diverged { .. } => "diverged",
            TrialStatus::Cancelled => "cancelled",
        })
    }
}

impl From<TrialStatus> for schema::Status {
    fn from(s: TrialStatus) -> Self {
        match s {
            TrialStatus::Ok => schema::Status::Done,
            TrialStatus::Diverged { .. } => schema::Status::Diverged,
            TrialStatus::Cancelled => schema::Status::Cancelled,
        }
    }
}

pub struct TrialOutcome {
    pub status: TrialStatus,
    pub metrics: Vec<(String, f64)>,
    pub curve_columns: Vec<String>,
    pub curve_rows: Vec<Vec<f64>>,
    pub samples: Vec<Vec<f32>>,
    pub data_sample: Vec<Vec<f32>>,
    /// Named parameters of the trained model (empty for sleep trials).
    pub weights: Vec<(String, Tensor)>,
    /// Other files the trial made, as (name, media type, bytes): e.g. `samples.png`.
    pub files: Vec<(String, &'static str, Vec<u8>)>,
    /// The device that ran the trial (`cpu`, `cuda:0`; `device::label`).
    pub device: String,
    /// The training step used (`fast_dsm`, `autograd`, …; empty for sleep trials).
    pub trainer: String,
}

impl TrialOutcome {
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
}
