//! Plain Langevin dynamics at one level (the smallest of the ladder, or a clean-score model's
//! S(x)): `steps` steps of the one Langevin step of this crate, [`step`], from uniform points
//! in a box (the write-up's "scatter points everywhere").

use candle_core::Result;

use super::{Field, Params, Sampler, Start, Steps};
use crate::rng::Rng;

/// One Langevin step, NCSN's convention (see the module `samplers`):
/// x ← x + α s + √(2α) z with the score `s` at x and z ~ N(0, I) from `rng`.
pub fn step(x: &mut [f32], s: &[f32], alpha: f64, rng: &mut Rng) {
    let (a, noise) = (alpha as f32, (2.0 * alpha).sqrt());
    for (xi, si) in x.iter_mut().zip(s) {
        *xi += a * si + (noise * rng.normal()) as f32;
    }
}

/// `steps` Langevin steps of size α at level `sigma` (None: a clean-score model); false when
/// `steps` said stop.
pub fn steps_at(field: &mut dyn Field, x: &mut [f32], sigma: Option<f64>, alpha: f64, n: usize, rng: &mut Rng, steps: &mut Steps) -> Result<bool> {
    let mut s = vec![0.0f32; x.len()];
    for _ in 0..n {
        field.score(x, sigma, &mut s)?;
        step(x, &s, alpha, rng);
        if !steps.step(x, sigma) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Plain Langevin with step α at the score of level `sigma`.
pub struct Langevin {
    pub sigma: Option<f64>,
    pub alpha: f64,
    pub steps: usize,
    pub start: Start,
}

impl Langevin {
    pub fn new(p: &Params) -> Option<Self> {
        Some(Langevin { sigma: p.clean(), alpha: p.eps, steps: p.steps, start: p.start })
    }
}

impl Sampler for Langevin {
    fn name(&self) -> &'static str {
        "langevin"
    }
    fn steps(&self) -> u64 {
        self.steps as u64
    }
    fn sigma_max(&self) -> Option<f64> {
        self.sigma
    }
    fn start(&self) -> Start {
        self.start
    }
    fn run(&self, field: &mut dyn Field, x: &mut [f32], rng: &mut Rng, steps: &mut Steps) -> Result<()> {
        steps_at(field, x, self.sigma, self.alpha, self.steps, rng, steps)?;
        Ok(())
    }
}
