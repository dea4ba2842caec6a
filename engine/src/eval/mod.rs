//! Evaluators: what a trial measures. At every checkpoint, [`Checkpoint`] evaluators add
//! columns to the curve (loss gaps need the exact score, so they exist only for data that has
//! one); after sampling, [`samples::sample_metrics`]; for energy models with exact data in
//! 1-2D, [`energy::energy_metrics`]. Evaluation sets are drawn once per trial, independent of
//! the model, so every checkpoint is measured on the same points.
//!
//! Image metrics, on plain slices of n×h×w pixels in [−1, 1]: [`classifier`] (a small CNN
//! judge of digits, cached per machine; its penultimate features feed [`fid`], the Fréchet
//! distance), [`by_denoising`] (which class, by a conditional score's denoising loss) and
//! [`png`] (image grids as PNG files); proportions judged against targets carry Wilson 95%
//! intervals ([`interval`]), the FID a bootstrap error next to its equal-n floor
//! ([`fid_bootstrap`]); [`memorisation`] measures copying of training images; [`split`] makes
//! the held-out / judge / training split; [`digits`] puts them together for an image trial.

use candle_core::Result;

use crate::models::ScoreModel;

pub mod by_denoising;
pub mod classifier;
pub mod digits;
pub mod energy;
pub mod fid;
pub mod fid_bootstrap;
pub mod gaps;
pub mod interval;
pub mod memorisation;
pub mod png;
pub mod samples;
pub mod split;

/// Columns measured on the model at every checkpoint.
pub trait Checkpoint {
    fn columns(&self) -> &'static [&'static str];
    /// One value per column.
    fn evaluate(&self, model: &dyn ScoreModel) -> Result<Vec<f64>>;
}
