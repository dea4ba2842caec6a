//! Samplers driven by a learned (or any) score: plain Langevin from uniform points in a box (the
//! write-up's "scatter points everywhere"), annealed Langevin over a noise ladder (NCSN:
//! α_i = ε·σ_i²/σ_L², T steps per level, optional final denoising x + σ_L² S(x, σ_L)), and
//! deterministic score ascent x ← x + α S(x), which collapses samples onto the modes.
//! Every Langevin step is x ← x + (α/2) S(x) + √α z, z ~ N(0, I) from the sampler stream.
//! Every chain runs on a plain row-major f32 buffer through [`Scorer`].

use candle_core::Result;

use super::{Sampler, Scorer};
use crate::rng::Rng;

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
pub fn annealed_langevin(
    scorer: &mut dyn Scorer,
    x: &mut [f32],
    sigmas: &[f64],
    eps: f64,
    steps_per_level: usize,
    denoise: bool,
    rng: &mut Rng,
    progress: &mut dyn FnMut(),
) -> Result<()> {
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

/// NCSN's annealed Langevin over a ladder.
pub struct AnnealedLangevin {
    pub sigmas: Vec<f64>,
    pub eps: f64,
    pub steps_per_level: usize,
    pub denoise: bool,
}

impl Sampler for AnnealedLangevin {
    fn name(&self) -> &'static str {
        "annealed_langevin"
    }
    fn steps(&self) -> u64 {
        (self.sigmas.len() * self.steps_per_level) as u64
    }
    fn run(&self, scorer: &mut dyn Scorer, x: &mut [f32], rng: &mut Rng, progress: &mut dyn FnMut()) -> Result<()> {
        annealed_langevin(scorer, x, &self.sigmas, self.eps, self.steps_per_level, self.denoise, rng, progress)
    }
}

/// Plain Langevin at one σ (or the unconditional score).
pub struct Langevin {
    pub sigma: Option<f64>,
    pub alpha: f64,
    pub steps: usize,
}

impl Sampler for Langevin {
    fn name(&self) -> &'static str {
        "langevin"
    }
    fn steps(&self) -> u64 {
        self.steps as u64
    }
    fn run(&self, scorer: &mut dyn Scorer, x: &mut [f32], rng: &mut Rng, progress: &mut dyn FnMut()) -> Result<()> {
        langevin(scorer, x, self.sigma, self.alpha, self.steps, rng, progress)
    }
}

/// Deterministic score ascent.
pub struct ScoreAscent {
    pub sigma: Option<f64>,
    pub alpha: f64,
    pub steps: usize,
}

impl Sampler for ScoreAscent {
    fn name(&self) -> &'static str {
        "score_ascent"
    }
    fn steps(&self) -> u64 {
        self.steps as u64
    }
    fn run(&self, scorer: &mut dyn Scorer, x: &mut [f32], _rng: &mut Rng, progress: &mut dyn FnMut()) -> Result<()> {
        score_ascent(scorer, x, self.sigma, self.alpha, self.steps, progress)
    }
}
