//! Samplers driven by a learned (or any) score: plain Langevin from uniform points in a box (the
//! write-up's "scatter points everywhere"), annealed Langevin over a noise ladder (NCSN:
//! α_i = ε·σ_i²/σ_L², T steps per level, optional final denoising x + σ_L² S(x, σ_L)), and
//! deterministic score ascent x ← x + α S(x), which collapses samples onto the modes.
//! Every Langevin step is x ← x + (α/2) S(x) + √α z, z ~ N(0, I) from the sampler stream.
//! Samplers work on plain row-major f32 buffers through [`Scorer`], so MLP score nets run the
//! allocation-free [`FastForward`] and other models go through candle.

use candle_core::{Device, Result, Tensor};

use crate::fastmlp::FastForward;
use crate::nets::Model;
use crate::rng::Rng;

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
    pub model: &'a Model,
    pub dim: usize,
    pub device: Device,
}

impl Scorer for CandleScorer<'_> {
    fn score(&mut self, x: &[f32], sigma: Option<f32>, out: &mut [f32]) -> Result<()> {
        let n = x.len() / self.dim;
        let xt = Tensor::from_slice(x, (n, self.dim), &self.device)?;
        let sig = sigma.map(|s| Tensor::full(s, (n, 1), &self.device)).transpose()?;
        let s: Vec<f32> = self.model.score(&xt, sig.as_ref())?.detach().flatten_all()?.to_vec1()?;
        out.copy_from_slice(&s);
        Ok(())
    }
}

/// The fastest scorer for a model: the plain forward pass for MLP score nets, candle otherwise.
pub fn scorer_for<'a>(model: &'a Model, device: &Device) -> Result<Box<dyn Scorer + 'a>> {
    Ok(match model {
        Model::Mlp(m) => Box::new(FastForward::new(m)?),
        other => Box::new(CandleScorer { model: other, dim: other.arch().dim, device: device.clone() }),
    })
}

/// n points uniform in [−half, half]^dim.
pub fn uniform_box(n: usize, dim: usize, half: f64, rng: &mut Rng) -> Vec<f32> {
    (0..n * dim).map(|_| ((2.0 * rng.uniform() - 1.0) * half) as f32).collect()
}

fn langevin_steps(scorer: &mut dyn Scorer, x: &mut [f32], sigma: Option<f64>, alpha: f64, steps: usize, rng: &mut Rng, progress: &mut dyn FnMut()) -> Result<()> {
    let mut s = vec![0.0f32; x.len()];
    let (half, noise) = ((alpha / 2.0) as f32, alpha.sqrt());
    for _ in 0..steps {
        scorer.score(x, sigma.map(|v| v as f32), &mut s)?;
        for (xi, si) in x.iter_mut().zip(&s) {
            *xi += half * si + (noise * rng.normal()) as f32;
        }
        progress();
    }
    Ok(())
}

/// Annealed Langevin dynamics over `sigmas` (descending), in place.
#[allow(clippy::too_many_arguments)]
pub fn annealed_langevin(scorer: &mut dyn Scorer, x: &mut [f32], sigmas: &[f64], eps: f64, steps_per_level: usize, denoise: bool, rng: &mut Rng, progress: &mut dyn FnMut()) -> Result<()> {
    let last = *sigmas.last().expect("non-empty ladder");
    for &s in sigmas {
        let alpha = eps * s * s / (last * last);
        langevin_steps(scorer, x, Some(s), alpha, steps_per_level, rng, progress)?;
    }
    if denoise {
        let mut s = vec![0.0f32; x.len()];
        scorer.score(x, Some(last as f32), &mut s)?;
        let c = (last * last) as f32;
        x.iter_mut().zip(&s).for_each(|(xi, si)| *xi += c * si);
    }
    Ok(())
}

/// Plain Langevin with step `alpha` at the score of level `sigma` (None: unconditional model).
pub fn langevin(scorer: &mut dyn Scorer, x: &mut [f32], sigma: Option<f64>, alpha: f64, steps: usize, rng: &mut Rng, progress: &mut dyn FnMut()) -> Result<()> {
    langevin_steps(scorer, x, sigma, alpha, steps, rng, progress)
}

/// Deterministic ascent x ← x + α S(x): no noise, so points pile up at the modes.
pub fn score_ascent(scorer: &mut dyn Scorer, x: &mut [f32], sigma: Option<f64>, alpha: f64, steps: usize, progress: &mut dyn FnMut()) -> Result<()> {
    let mut s = vec![0.0f32; x.len()];
    for _ in 0..steps {
        scorer.score(x, sigma.map(|v| v as f32), &mut s)?;
        x.iter_mut().zip(&s).for_each(|(xi, si)| *xi += alpha as f32 * si);
        progress();
    }
    Ok(())
}
