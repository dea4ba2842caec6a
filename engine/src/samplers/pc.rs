//! Predictor–corrector (Song et al. 2021): before each reverse-SDE step (`euler_maruyama`)
//! but the first, one Langevin corrector step at the same level (the convention of
//! `samplers`, x ← x + ε S + √(2ε) z) with ε = 2 (snr ‖z‖/‖S‖)², the norms averaged over the
//! batch: 2N − 1 evaluations for N levels.

use candle_core::Result;

use super::euler_maruyama::predict;
use super::{Field, Params, Sampler, Steps, mean_square, score_from_denoised, to_zero};
use crate::rng::Rng;

pub struct Pc {
    /// The levels, descending, then 0.
    pub sigmas: Vec<f64>,
    pub snr: f64,
}

impl Pc {
    pub fn new(p: &Params) -> Option<Self> {
        Some(Pc { sigmas: to_zero(p.sigmas.as_ref().filter(|s| !s.is_empty())?), snr: p.snr })
    }
}

impl Sampler for Pc {
    fn name(&self) -> &'static str {
        "pc"
    }
    fn steps(&self) -> u64 {
        (self.sigmas.len() - 1) as u64
    }
    fn sigma_max(&self) -> Option<f64> {
        self.sigmas.first().copied()
    }
    fn run(&self, field: &mut dyn Field, x: &mut [f32], rng: &mut Rng, steps: &mut Steps) -> Result<()> {
        let mut s = vec![0.0f32; x.len()];
        for (i, w) in self.sigmas.windows(2).enumerate() {
            let t = w[0];
            if i > 0 {
                field.denoise(x, t, &mut s)?;
                score_from_denoised(x, t, &mut s);
                let z = rng.normals_f32(x.len());
                let eps = 2.0 * self.snr * self.snr * mean_square(&z)? / mean_square(&s)?.max(1e-30);
                let (a, b) = (eps as f32, (2.0 * eps).sqrt() as f32);
                x.iter_mut().zip(s.iter().zip(&z)).for_each(|(xi, (si, zi))| *xi = (*xi + si * a) + zi * b);
            }
            predict(field, x, t, w[1], &mut s, rng)?;
            if !steps.step(x, Some(t)) {
                break;
            }
        }
        Ok(())
    }
}
