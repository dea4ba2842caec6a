//! Samplers: given a scorer and a noise schedule, move chains of row-major f32 points and
//! count the network evaluations they took. Samplers see a model only through [`Scorer`], so
//! MLP score nets run the allocation-free `FastForward` and other models go through candle.
//!
//! Adding a sampler: one file in this folder implementing [`Sampler`], one variant in
//! `schema::trial::SamplerSpec`, and one line in [`build`].

use candle_core::{Device, Result, Tensor};
use schema::trial::SamplerSpec;

use crate::models::{MlpScore, ScoreModel};
use crate::rng::Rng;
use crate::train::fast::FastForward;

pub mod langevin;

pub use langevin::{AnnealedLangevin, Langevin, ScoreAscent, annealed_langevin, langevin, score_ascent, uniform_box};

/// Anything that evaluates S(x, σ) on row-major points.
pub trait Scorer {
    fn score(&mut self, x: &[f32], sigma: Option<f32>, out: &mut [f32]) -> Result<()>;
}

impl Scorer for FastForward {
    fn score(&mut self, x: &[f32], sigma: Option<f32>, out: &mut [f32]) -> Result<()> {
        FastForward::score(self, x, sigma, out);
        Ok(())
    }
}

/// A candle model as a [`Scorer`].
pub struct CandleScorer<'a> {
    pub model: &'a dyn ScoreModel,
    pub dim: usize,
    pub device: Device,
}

impl Scorer for CandleScorer<'_> {
    fn score(&mut self, x: &[f32], sigma: Option<f32>, out: &mut [f32]) -> Result<()> {
        let n = x.len() / self.dim;
        let xt = Tensor::from_slice(x, (n, self.dim), &self.device)?;
        let sig = sigma.map(|s| Tensor::full(s, (n, 1), &self.device)).transpose()?;
        let s: Vec<f32> = self.model.score(&xt, sig.as_ref(), None)?.detach().flatten_all()?.to_vec1()?;
        out.copy_from_slice(&s);
        Ok(())
    }
}

/// Counts network evaluations (one per call on the whole batch of chains).
pub struct Counting<'a> {
    pub inner: &'a mut dyn Scorer,
    pub evaluations: u64,
}

impl Scorer for Counting<'_> {
    fn score(&mut self, x: &[f32], sigma: Option<f32>, out: &mut [f32]) -> Result<()> {
        self.evaluations += 1;
        self.inner.score(x, sigma, out)
    }
}

/// The fastest scorer for a model: the plain forward pass for MLP score nets on CPU, candle
/// otherwise.
pub fn scorer_for<'a>(model: &'a dyn ScoreModel, device: &Device) -> Result<Box<dyn Scorer + 'a>> {
    Ok(match model.as_any().downcast_ref::<MlpScore>() {
        Some(m) if crate::device::fast_paths(device) => Box::new(FastForward::new(m)?),
        _ => Box::new(CandleScorer { model, dim: model.arch().dim, device: device.clone() }),
    })
}

/// A sampler over chains of row-major points.
pub trait Sampler {
    fn name(&self) -> &'static str;
    /// Steps, for progress.
    fn steps(&self) -> u64;
    /// Moves the chains in `x` in place; calls `progress` once per step.
    fn run(&self, scorer: &mut dyn Scorer, x: &mut [f32], rng: &mut Rng, progress: &mut dyn FnMut()) -> Result<()>;
}

/// Runs `sampler` and returns the number of network evaluations it made.
pub fn sample(sampler: &dyn Sampler, scorer: &mut dyn Scorer, x: &mut [f32], rng: &mut Rng, progress: &mut dyn FnMut()) -> Result<u64> {
    let mut counting = Counting { inner: scorer, evaluations: 0 };
    sampler.run(&mut counting, x, rng, progress)?;
    Ok(counting.evaluations)
}

/// The registry: one line per sampler. `ladder` is the resolved noise schedule (descending;
/// None for unconditional models) and `eps` the resolved step size. None for `kind = "none"`.
pub fn build(spec: &SamplerSpec, ladder: Option<&[f64]>, eps: f64) -> Option<Box<dyn Sampler>> {
    // Plain samplers use the score at the smallest level.
    let clean = ladder.and_then(|s| s.last().copied());
    Some(match spec {
        SamplerSpec::None => return None,
        SamplerSpec::AnnealedLangevin { steps_per_level, denoise, .. } => {
            Box::new(AnnealedLangevin { sigmas: ladder?.to_vec(), eps, steps_per_level: *steps_per_level, denoise: *denoise })
        }
        SamplerSpec::Langevin { steps, .. } => Box::new(Langevin { sigma: clean, alpha: eps, steps: *steps }),
        SamplerSpec::ScoreAscent { steps, .. } => Box::new(ScoreAscent { sigma: clean, alpha: eps, steps: *steps }),
    })
}
