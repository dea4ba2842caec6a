//! The reverse VE SDE by Euler–Maruyama over the levels and a final 0:
//! x ← x + (σ_i² − σ_{i+1}²) S(x; σ_i) + √(σ_i² − σ_{i+1}²) z, the last step (to σ = 0) without
//! noise: N evaluations for N levels. [`predict`] is also the predictor of `pc`.

use candle_core::Result;

use super::{Field, Params, Sampler, Steps, score_from_denoised, to_zero};
use crate::rng::Rng;

pub struct EulerMaruyama {
    /// The levels, descending, then 0.
    pub sigmas: Vec<f64>,
}

impl EulerMaruyama {
    pub fn new(p: &Params) -> Option<Self> {
        Some(EulerMaruyama { sigmas: to_zero(p.sigmas.as_ref().filter(|s| !s.is_empty())?) })
    }
}

/// One reverse-SDE step from σ = `t` to `t_next`; `s` is scratch space.
pub fn predict(field: &mut dyn Field, x: &mut [f32], t: f64, t_next: f64, s: &mut [f32], rng: &mut Rng) -> Result<()> {
    field.denoise(x, t, s)?;
    score_from_denoised(x, t, s);
    let var = t * t - t_next * t_next;
    let v = var as f32;
    x.iter_mut().zip(s.iter()).for_each(|(xi, si)| *xi += si * v);
    if t_next > 0.0 {
        let sd = var.sqrt() as f32;
        let z = rng.normals_f32(x.len());
        x.iter_mut().zip(&z).for_each(|(xi, zi)| *xi += zi * sd);
    }
    Ok(())
}

impl Sampler for EulerMaruyama {
    fn name(&self) -> &'static str {
        "euler_maruyama"
    }
    fn steps(&self) -> u64 {
        (self.sigmas.len() - 1) as u64
    }
    fn sigma_max(&self) -> Option<f64> {
        self.sigmas.first().copied()
    }
    fn run(&self, field: &mut dyn Field, x: &mut [f32], rng: &mut Rng, steps: &mut Steps) -> Result<()> {
        let mut s = vec![0.0f32; x.len()];
        for w in self.sigmas.windows(2) {
            predict(field, x, w[0], w[1], &mut s, rng)?;
            if !steps.step(x, Some(w[0])) {
                break;
            }
        }
        Ok(())
    }
}
