//! NCSN's annealed Langevin dynamics over a noise ladder σ_1 > … > σ_L: `steps_per_level`
//! Langevin steps (the convention of `samplers`) at each level with α_i = ε σ_i²/σ_L², then
//! optionally the denoising step x ← D(x; σ_L) = x + σ_L² S(x; σ_L).

use candle_core::Result;

use super::langevin::steps_at;
use super::{Field, Params, Sampler, Start, Steps};
use crate::rng::Rng;

pub struct AnnealedLangevin {
    /// The ladder, descending.
    pub sigmas: Vec<f64>,
    pub eps: f64,
    pub steps_per_level: usize,
    pub denoise: bool,
    pub start: Start,
}

impl AnnealedLangevin {
    /// None without a ladder.
    pub fn new(p: &Params) -> Option<Self> {
        let sigmas = p.sigmas.clone().filter(|s| !s.is_empty())?;
        Some(AnnealedLangevin { sigmas, eps: p.eps, steps_per_level: p.steps_per_level, denoise: p.denoise, start: p.start })
    }
}

impl Sampler for AnnealedLangevin {
    fn name(&self) -> &'static str {
        "annealed_langevin"
    }
    fn steps(&self) -> u64 {
        (self.sigmas.len() * self.steps_per_level) as u64
    }
    fn sigma_max(&self) -> Option<f64> {
        self.sigmas.first().copied()
    }
    fn start(&self) -> Start {
        self.start
    }
    fn run(&self, field: &mut dyn Field, x: &mut [f32], rng: &mut Rng, steps: &mut Steps) -> Result<()> {
        let last = *self.sigmas.last().expect("a ladder");
        for &s in &self.sigmas {
            let alpha = self.eps * s * s / (last * last);
            if !steps_at(field, x, Some(s), alpha, self.steps_per_level, rng, steps)? {
                return Ok(());
            }
        }
        if self.denoise {
            let mut d = vec![0.0f32; x.len()];
            field.denoise(x, last, &mut d)?;
            x.copy_from_slice(&d);
            steps.step(x, Some(last));
        }
        Ok(())
    }
}
