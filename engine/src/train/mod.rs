//! Training: one [`Trainer`] trait for every model family and one train loop ([`run`]) that
//! drives it — cadence, checkpoints, cancel, divergence, progress and timing live there and
//! nowhere else.
//!
//! Trainers: candle's autograd trains every toy model with every objective
//! ([`autograd::Autograd`]) and every image net ([`image::ImageAutograd`]); where a
//! hand-derived step exists ([`fast`]: DSM, SSM/SSM-VR and exact ISM at depth 2 on toy MLP
//! score nets; the image MLP and the U-Net on every denoising objective), on CPU, the builders
//! ([`build`], [`image::build`]) pick it automatically — same loss, same random draws, pinned
//! to autograd by tests.
//!
//! Adding a hand-derived step: its file under `fast/` with an `impl ToyStep` (toys) or
//! `impl image::ImageStep` (images), a test against autograd in `engine/tests/fastmlp.rs`
//! (or `fastunet.rs`), and one arm in `fast_trainer` (or [`image::build`]).

use candle_core::{Device, Result};
use candle_nn::VarMap;

use crate::data::Batch;
use crate::models::{MlpScore, ScoreModel};
use crate::objectives::{self, ObjectiveKind, TrainObjective};
use crate::rng::Rng;

pub mod autograd;
pub mod fast;
pub mod image;
mod run;

pub use run::{Checkpoints, Schedule, Trained, run};

/// A training step for one model, objective and batch size, whatever the model family.
///
/// Invariants: `step` draws everything random (perturbations, σ, probes, label dropout) from
/// the `rng` it is given, in a fixed order, and updates nothing when the loss is not finite;
/// after `sync` the model's variables hold the weights to evaluate and sample with (the EMA of
/// the weights where the trainer keeps one), after `resume` the ones training continues from.
pub trait Trainer {
    /// `autograd`, or the hand-derived step's name (`fast_dsm`, `fast_unet`, …).
    fn name(&self) -> &'static str;
    /// Training step number `step` (1-based: the EMA's warm-up counts it) on the clean batch,
    /// drawing perturbations and probes from `rng`; returns the loss before the update.
    fn step(&mut self, batch: &Batch, rng: &mut Rng, step: u64) -> Result<f64>;
    /// The learning rate of the steps from now on (the train loop's schedule sets it before
    /// each step unless the schedule is constant; until then the rate the trainer was built
    /// with holds).
    fn set_lr(&mut self, lr: f64) -> Result<()>;
    /// Writes the weights to evaluate into the model's variables.
    fn sync(&mut self) -> Result<()>;
    /// Undoes what `sync` changed that training reads (autograd with an EMA swaps the training
    /// weights back); nothing for the others.
    fn resume(&mut self) -> Result<()> {
        Ok(())
    }
}

/// What a toy trainer is built from.
pub struct TrainSetup<'a> {
    pub model: &'a dyn ScoreModel,
    pub varmap: &'a VarMap,
    pub data: &'a dyn crate::data::DataSource,
    pub objective: TrainObjective,
    pub batch: usize,
    pub lr: f64,
    pub device: Device,
}

/// The hand-derived step where one exists, else candle's autograd.
pub fn build<'a>(setup: TrainSetup<'a>) -> Result<Box<dyn Trainer + 'a>> {
    if let Some(t) = fast_trainer(&setup)? {
        return Ok(t);
    }
    Ok(Box::new(autograd::Autograd::new(setup)?))
}

/// The registry of hand-derived toy steps: (model type, objective) → step. CPU only.
fn fast_trainer<'a>(s: &TrainSetup<'a>) -> Result<Option<Box<dyn Trainer + 'a>>> {
    if !crate::device::fast_paths(&s.device) {
        return Ok(None);
    }
    let Some(m) = s.model.as_any().downcast_ref::<MlpScore>() else { return Ok(None) };
    fn boxed<'a, S: ToyStep + 'a>(step: S, model: &'a MlpScore, s: &TrainSetup<'a>) -> Option<Box<dyn Trainer + 'a>> {
        Some(Box::new(Fast { step, model, varmap: s.varmap, objective: s.objective.clone() }))
    }
    Ok(match s.objective.kind {
        ObjectiveKind::Dsm if s.objective.sigmas.is_some() => boxed(fast::FastDsm::new(m, s.batch, s.lr)?, m, s),
        ObjectiveKind::Ssm | ObjectiveKind::SsmVr => boxed(fast::FastSsm::new(m, s.objective.kind == ObjectiveKind::SsmVr, s.lr)?, m, s),
        ObjectiveKind::Ism => match fast::FastIsm::new(m, s.lr)? {
            Some(f) => boxed(f, m, s),
            None => None,
        },
        ObjectiveKind::Dsm | ObjectiveKind::Esm => None,
    })
}

/// A hand-derived toy step over plain buffers: it draws what the autograd path draws
/// (`objectives::loss_pieces`), in the same order, and writes its weights back on demand.
pub trait ToyStep {
    const NAME: &'static str;
    /// One update on the clean row-major points `x0` (dimension `d`) under `objective`.
    fn train(&mut self, x0: &[f64], d: usize, objective: &TrainObjective, rng: &mut Rng) -> Result<f64>;
    /// Writes the weights into the model's variables.
    fn store(&self, model: &MlpScore, varmap: &VarMap) -> Result<()>;
    /// The Adam learning rate of the next updates.
    fn set_lr(&mut self, lr: f64);
}

/// A [`ToyStep`] with the model whose variables it writes back.
struct Fast<'a, S> {
    step: S,
    model: &'a MlpScore,
    varmap: &'a VarMap,
    objective: TrainObjective,
}

impl<S: ToyStep> Trainer for Fast<'_, S> {
    fn name(&self) -> &'static str {
        S::NAME
    }

    fn step(&mut self, batch: &Batch, rng: &mut Rng, _step: u64) -> Result<f64> {
        self.step.train(&batch.x, self.model.arch.dim, &self.objective, rng)
    }

    fn set_lr(&mut self, lr: f64) -> Result<()> {
        self.step.set_lr(lr);
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.step.store(self.model, self.varmap)
    }
}

/// The points an SSM/ISM step trains on: each perturbed at a random ladder level (with its
/// σ), or the clean batch without a ladder.
pub(crate) fn training_points(batch: &[f64], d: usize, sigmas: Option<&[f64]>, rng: &mut Rng) -> (Vec<f32>, Option<Vec<f32>>) {
    match sigmas {
        Some(levels) => {
            let p = objectives::perturb(batch, d, levels, rng);
            (p.xt, Some(p.sigma))
        }
        None => (batch.iter().map(|&v| v as f32).collect(), None),
    }
}
