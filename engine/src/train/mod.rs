//! Trainers: one optimisation step of an objective on a batch of clean points. candle's
//! autograd ([`autograd::Autograd`]) trains every model with every objective; where a
//! hand-derived step exists for the model and objective ([`fast`]: DSM, SSM/SSM-VR and exact
//! ISM at depth 2 on MLP score nets, on CPU) [`build`] picks it automatically — same loss, same
//! random draws, pinned to autograd by tests.
//!
//! Adding a hand-derived step: its file under `fast/`, a test against autograd in
//! `engine/tests/fastmlp.rs`, and one arm in [`fast_trainer`].

use candle_core::{Device, Result};
use candle_nn::VarMap;

use crate::models::{MlpScore, ScoreModel};
use crate::objectives::{self, ObjectiveKind, TrainObjective};
use crate::rng::Rng;

pub mod autograd;
pub mod fast;

/// A training step for one model, objective and batch size.
pub trait Trainer {
    /// `autograd`, or the hand-derived step's name.
    fn name(&self) -> &'static str;
    /// One step on the clean row-major points `x0`, drawing perturbations and probes from
    /// `rng`; returns the loss before the update.
    fn step(&mut self, x0: &[f64], rng: &mut Rng) -> Result<f64>;
    /// Writes the parameters back into the model's variables (before evaluation or saving).
    fn sync(&mut self) -> Result<()>;
}

/// What a trainer is built from.
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

/// The registry of hand-derived steps: (model type, objective) → step. CPU only.
fn fast_trainer<'a>(s: &TrainSetup<'a>) -> Result<Option<Box<dyn Trainer + 'a>>> {
    if !crate::device::fast_paths(&s.device) {
        return Ok(None);
    }
    let Some(m) = s.model.as_any().downcast_ref::<MlpScore>() else { return Ok(None) };
    let d = m.arch.dim;
    let sigmas = s.objective.sigmas.clone();
    let step: FastStep = match s.objective.kind {
        ObjectiveKind::Dsm => match sigmas.clone() {
            Some(levels) => FastStep::Dsm(Box::new(fast::FastDsm::new(m, s.batch, s.lr)?), levels),
            None => return Ok(None),
        },
        ObjectiveKind::Ssm | ObjectiveKind::SsmVr => FastStep::Ssm(Box::new(fast::FastSsm::new(m, s.objective.kind == ObjectiveKind::SsmVr, s.lr)?)),
        ObjectiveKind::Ism => match fast::FastIsm::new(m, s.lr)? {
            Some(f) => FastStep::Ism(Box::new(f)),
            None => return Ok(None),
        },
        ObjectiveKind::Esm => return Ok(None),
    };
    Ok(Some(Box::new(FastTrainer { step, model: m, varmap: s.varmap, d, sigmas, objective: s.objective.clone() })))
}

enum FastStep {
    Dsm(Box<fast::FastDsm>, Vec<f64>),
    Ssm(Box<fast::FastSsm>),
    Ism(Box<fast::FastIsm>),
}

/// A hand-derived step with the same random draws as the autograd path
/// (`objectives::loss_pieces`).
struct FastTrainer<'a> {
    step: FastStep,
    model: &'a MlpScore,
    varmap: &'a VarMap,
    d: usize,
    sigmas: Option<Vec<f64>>,
    objective: TrainObjective,
}

/// The points an SSM/ISM step trains on: each perturbed at a random ladder level (with its
/// σ), or the clean batch without a ladder.
fn training_points(batch: &[f64], d: usize, sigmas: Option<&[f64]>, rng: &mut Rng) -> (Vec<f32>, Option<Vec<f32>>) {
    match sigmas {
        Some(levels) => {
            let p = objectives::perturb(batch, d, levels, rng);
            (p.xt, Some(p.sigma))
        }
        None => (batch.iter().map(|&v| v as f32).collect(), None),
    }
}

impl Trainer for FastTrainer<'_> {
    fn name(&self) -> &'static str {
        match self.step {
            FastStep::Dsm(..) => "fast_dsm",
            FastStep::Ssm(_) => "fast_ssm",
            FastStep::Ism(_) => "fast_ism",
        }
    }

    fn step(&mut self, x0: &[f64], rng: &mut Rng) -> Result<f64> {
        let d = self.d;
        Ok(match &mut self.step {
            FastStep::Dsm(f, levels) => {
                let p = objectives::perturb(x0, d, levels, rng);
                f.step(&p.xt, &p.eps, &p.sigma)
            }
            FastStep::Ssm(f) => {
                let n = x0.len() / d;
                let (x, sig) = training_points(x0, d, self.sigmas.as_deref(), rng);
                let v = objectives::probe_values(self.objective.probes, n, d, self.objective.probe, rng);
                f.step(&x, &v, sig.as_deref())
            }
            FastStep::Ism(f) => {
                let (x, sig) = training_points(x0, d, self.sigmas.as_deref(), rng);
                f.step(&x, sig.as_deref())
            }
        })
    }

    fn sync(&mut self) -> Result<()> {
        match &self.step {
            FastStep::Dsm(f, _) => f.store(self.model, self.varmap),
            FastStep::Ssm(f) => f.store(self.model, self.varmap),
            FastStep::Ism(f) => f.store(self.model, self.varmap),
        }
    }
}
