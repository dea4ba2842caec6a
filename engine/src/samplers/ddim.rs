//! DDIM with η = 0 (Song, Meng & Ermon 2021) in the variance-exploding form over the levels
//! and a final 0: x ← D + (σ_{i+1}/σ_i)(x − D), D = D(x; σ_i): deterministic, N evaluations for
//! N levels (Euler's method on the probability-flow ODE in σ, as Karras et al. note).

use candle_core::Result;

use super::{Field, Params, Sampler, Steps, to_zero};
use crate::rng::Rng;

pub struct Ddim {
    /// The levels, descending, then 0.
    pub sigmas: Vec<f64>,
}

impl Ddim {
    pub fn new(p: &Params) -> Option<Self> {
        Some(Ddim { sigmas: to_zero(p.sigmas.as_ref().filter(|s| !s.is_empty())?) })
    }
}

impl Sampler for Ddim {
    fn name(&self) -> &'static str {
        "ddim"
    }
    fn steps(&self) -> u64 {
        (self.sigmas.len() - 1) as u64
    }
    fn sigma_max(&self) -> Option<f64> {
        self.sigmas.first().copied()
    }
    fn run(&self, field: &mut dyn Field, x: &mut [f32], _rng: &mut Rng, steps: &mut Steps) -> Result<()> {
        let mut d = vec![0.0f32; x.len()];
        for w in self.sigmas.windows(2) {
            field.denoise(x, w[0], &mut d)?;
            let r = (w[1] / w[0]) as f32;
            x.iter_mut().zip(&d).for_each(|(xi, di)| *xi = di + r * (*xi - di));
            if !steps.step(x, Some(w[0])) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Gaussian, moments, params};
    use super::super::{build, rho_schedule, sample, start};
    use crate::rng::Rng;

    /// On data N(μ, s²) the exact denoiser is affine, D − μ = k_i (x − μ) with
    /// k_i = s²/(s² + σ_i²), so each DDIM step maps x − μ to c_i (x − μ) with
    /// c_i = k_i + (σ_{i+1}/σ_i)(1 − k_i), and the run is x_N − μ = Π c_i (x_0 − μ): checked per
    /// chain (f32 rounding over 18 steps: 1e-5 relative). With many levels the product tends to
    /// the probability-flow ODE's exact map s/√(s² + σ_max²) (Euler's first-order error: under
    /// 1% at N = 400), so chains started at N(μ, s² + σ_max²) end at N(μ, s²).
    #[test]
    fn ddim_is_the_closed_form_map_of_a_gaussian() {
        let (mu, s) = (0.7, 0.4);
        let sig = rho_schedule(80.0, 0.002, 18, 7.0);
        let ddim = build("ddim", &params(sig.clone())).unwrap();
        let mut rng = Rng::new(5);
        let x0 = start(ddim.as_ref(), 1000, 1, &mut rng);
        let mut x = x0.clone();
        let out = sample(ddim.as_ref(), &mut Gaussian { mu, s }, &mut x, &mut rng, &mut || {}).unwrap();
        assert_eq!((out.nfe, out.diverged), (18, None));
        let mut levels = sig.clone();
        levels.push(0.0);
        let c: f64 = levels
            .windows(2)
            .map(|w| {
                let k = s * s / (s * s + w[0] * w[0]);
                k + w[1] / w[0] * (1.0 - k)
            })
            .product();
        for (a, b) in x.iter().zip(&x0) {
            let want = mu + c * (*b as f64 - mu);
            assert!((*a as f64 - want).abs() < 1e-5 * want.abs().max(1.0), "{a} vs {want}");
        }

        let fine = rho_schedule(80.0, 0.002, 400, 7.0);
        let mut levels = fine.clone();
        levels.push(0.0);
        let c: f64 = levels
            .windows(2)
            .map(|w| {
                let k = s * s / (s * s + w[0] * w[0]);
                k + w[1] / w[0] * (1.0 - k)
            })
            .product();
        let exact = s / (s * s + 80.0f64 * 80.0).sqrt();
        assert!((c / exact - 1.0).abs() < 0.01, "Π c_i = {c} vs the ODE's {exact}");
        // And as a sampler: N(μ, s² + σ_max²) → N(μ, s²) (20,000 chains: SE of the std 0.002).
        let ddim = build("ddim", &params(fine)).unwrap();
        let mut x: Vec<f32> = rng.normals_f32(20_000).into_iter().map(|z| (mu + (s * s + 6400.0f64).sqrt() * z as f64) as f32).collect();
        sample(ddim.as_ref(), &mut Gaussian { mu, s }, &mut x, &mut rng, &mut || {}).unwrap();
        let (m, sd) = moments(&x);
        assert!((m - mu).abs() < 0.01 && (sd - s).abs() < 0.01, "mean {m}, std {sd}");
    }
}
