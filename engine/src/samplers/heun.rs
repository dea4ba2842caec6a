//! EDM's deterministic sampler (Karras et al. 2022, Algorithm 1): the probability-flow ODE
//! dx/dσ = (x − D(x; σ))/σ over the levels and a final 0, with Heun's 2nd-order steps, the last
//! step (to σ = 0) Euler: 2N − 1 evaluations for N levels.

use candle_core::Result;

use super::{Field, Params, Sampler, Steps, to_zero};
use crate::rng::Rng;

pub struct Heun {
    /// The levels, descending, then 0.
    pub sigmas: Vec<f64>,
}

impl Heun {
    pub fn new(p: &Params) -> Option<Self> {
        Some(Heun { sigmas: to_zero(p.sigmas.as_ref().filter(|s| !s.is_empty())?) })
    }
}

/// dx/dσ = (x − D)/σ into `d` (which holds D on entry).
fn slope(x: &[f32], sigma: f64, d: &mut [f32]) {
    let inv = (1.0 / sigma) as f32;
    d.iter_mut().zip(x).for_each(|(di, xi)| *di = (xi - *di) * inv);
}

impl Sampler for Heun {
    fn name(&self) -> &'static str {
        "heun"
    }
    fn steps(&self) -> u64 {
        (self.sigmas.len() - 1) as u64
    }
    fn sigma_max(&self) -> Option<f64> {
        self.sigmas.first().copied()
    }
    fn run(&self, field: &mut dyn Field, x: &mut [f32], _rng: &mut Rng, steps: &mut Steps) -> Result<()> {
        let (mut d, mut d2, mut x_next) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
        for w in self.sigmas.windows(2) {
            let (t, t_next) = (w[0], w[1]);
            field.denoise(x, t, &mut d)?;
            slope(x, t, &mut d);
            let h = (t_next - t) as f32;
            x_next.iter_mut().zip(x.iter().zip(&d)).for_each(|(n, (xi, di))| *n = xi + di * h);
            if t_next > 0.0 {
                field.denoise(&x_next, t_next, &mut d2)?;
                slope(&x_next, t_next, &mut d2);
                let half = (0.5 * (t_next - t)) as f32;
                x.iter_mut().zip(d.iter().zip(&d2)).for_each(|(xi, (a, b))| *xi += (a + b) * half);
            } else {
                x.copy_from_slice(&x_next);
            }
            if !steps.step(x, Some(t)) {
                break;
            }
        }
        Ok(())
    }
}
