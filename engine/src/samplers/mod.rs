//! Samplers, for toy and image models alike: given a model as a [`Field`] (the score
//! S(x; σ), or a denoiser D(x; σ) with S = (D − x)/σ²) and noise levels, move chains of
//! row-major f32 points, count the network evaluations they took, and stop at the first
//! non-finite value (the trial is then `diverged`, with the step and σ where it happened).
//!
//! **The Langevin convention** (one, NCSN's, used by every Langevin step here: plain and
//! annealed Langevin and the predictor–corrector's corrector): x ← x + α S(x; σ) + √(2α) z,
//! z ~ N(0, I) from the sampler stream; annealed Langevin takes α_i = ε σ_i²/σ_L² at level i,
//! so ε is the step at the smallest level σ_L. The perturbed score's Hessian is ≥ −I/σ², so a
//! step is stable only for α < 2σ²: validation refuses ε ≥ 2σ_L² where σ_L is known.
//!
//! One file per sampler: [`langevin`], [`annealed_langevin`], [`score_ascent`] (walk a ladder
//! with the score), [`heun`] (probability-flow ODE), [`euler_maruyama`] (reverse VE SDE),
//! [`pc`] (predictor–corrector), [`ddim`] (DDIM with η = 0) (walk EDM's ρ schedule with the
//! denoiser). Adding a sampler: one file here implementing [`Sampler`] with a
//! `new(&Params) -> Option<Self>`, one line in [`build`], one variant in the trial schema.

use candle_core::{Device, Result, Tensor};

use crate::models::{MlpScore, ScoreModel};
use crate::rng::Rng;
use crate::train::fast::FastForward;

pub mod annealed_langevin;
pub mod ddim;
pub mod euler_maruyama;
pub mod heun;
pub mod langevin;
pub mod pc;
pub mod score_ascent;

pub use annealed_langevin::AnnealedLangevin;
pub use langevin::Langevin;
pub use schema::sampler::Start;
pub use score_ascent::ScoreAscent;

/// A model as samplers see it, on row-major f32 points: the score, and the denoiser
/// D(x; σ) = x + σ² S(x; σ) (Tweedie's formula; a denoising net overrides it with its own D and
/// derives S = (D − x)/σ² from it).
pub trait Field {
    /// S(x; σ) into `out` (σ None: a clean-score model).
    fn score(&mut self, x: &[f32], sigma: Option<f64>, out: &mut [f32]) -> Result<()>;

    /// D(x; σ) into `out`.
    fn denoise(&mut self, x: &[f32], sigma: f64, out: &mut [f32]) -> Result<()> {
        self.score(x, Some(sigma), out)?;
        let c = (sigma * sigma) as f32;
        out.iter_mut().zip(x).for_each(|(o, xi)| *o = xi + c * *o);
        Ok(())
    }
}

/// S = (D − x)/σ² from a denoiser's output `d`, in place (the image nets' score).
pub fn score_from_denoised(x: &[f32], sigma: f64, d: &mut [f32]) {
    let inv = (1.0 / (sigma * sigma)) as f32;
    d.iter_mut().zip(x).for_each(|(o, xi)| *o = (*o - xi) * inv);
}

impl Field for FastForward {
    fn score(&mut self, x: &[f32], sigma: Option<f64>, out: &mut [f32]) -> Result<()> {
        FastForward::score(self, x, sigma.map(|v| v as f32), out);
        Ok(())
    }
}

/// A candle score model as a [`Field`].
pub struct CandleScorer<'a> {
    pub model: &'a dyn ScoreModel,
    pub dim: usize,
    pub device: Device,
}

impl Field for CandleScorer<'_> {
    fn score(&mut self, x: &[f32], sigma: Option<f64>, out: &mut [f32]) -> Result<()> {
        let n = x.len() / self.dim;
        let xt = Tensor::from_slice(x, (n, self.dim), &self.device)?;
        let sig = sigma.map(|s| Tensor::full(s as f32, (n, 1), &self.device)).transpose()?;
        let s: Vec<f32> = self.model.score(&xt, sig.as_ref(), None)?.detach().flatten_all()?.to_vec1()?;
        out.copy_from_slice(&s);
        Ok(())
    }
}

/// The fastest field for a toy score model: the plain forward pass for MLP score nets on CPU,
/// candle otherwise.
pub fn scorer_for<'a>(model: &'a dyn ScoreModel, device: &Device) -> Result<Box<dyn Field + 'a>> {
    Ok(match model.as_any().downcast_ref::<MlpScore>() {
        Some(m) if crate::device::fast_paths(device) => Box::new(FastForward::new(m)?),
        _ => Box::new(CandleScorer { model, dim: model.arch().dim, device: device.clone() }),
    })
}

/// Counts network evaluations (one per call on the whole batch of chains).
struct Counting<'a> {
    inner: &'a mut dyn Field,
    evaluations: u64,
}

impl Field for Counting<'_> {
    fn score(&mut self, x: &[f32], sigma: Option<f64>, out: &mut [f32]) -> Result<()> {
        self.evaluations += 1;
        self.inner.score(x, sigma, out)
    }
    fn denoise(&mut self, x: &[f32], sigma: f64, out: &mut [f32]) -> Result<()> {
        self.evaluations += 1;
        self.inner.denoise(x, sigma, out)
    }
}

/// Where a sampler produced its first non-finite value: the step (1-based, counted over the
/// whole run) and the σ level it started from (None for a clean-score model).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Diverged {
    pub step: u64,
    pub sigma: Option<f64>,
}

impl Diverged {
    /// As a trial's metrics: `sampler_diverged_step` and `sampler_diverged_sigma` (NaN, i.e.
    /// null, for a clean-score model).
    pub fn metrics(&self) -> [(String, f64); 2] {
        [("sampler_diverged_step".into(), self.step as f64), ("sampler_diverged_sigma".into(), self.sigma.unwrap_or(f64::NAN))]
    }
}

/// A sampler's steps as they happen: counts them, reports progress, and stops the run at the
/// first non-finite value.
pub struct Steps<'a> {
    report: &'a mut dyn FnMut(),
    done: u64,
    diverged: Option<Diverged>,
}

impl Steps<'_> {
    /// After a step from level `sigma`: false when a chain holds a non-finite value (the
    /// sampler must then return at once).
    pub fn step(&mut self, x: &[f32], sigma: Option<f64>) -> bool {
        self.done += 1;
        (self.report)();
        if x.iter().all(|v| v.is_finite()) {
            return true;
        }
        self.diverged = Some(Diverged { step: self.done, sigma });
        false
    }
}

/// What a run of a sampler did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    /// Network evaluations.
    pub nfe: u64,
    pub diverged: Option<Diverged>,
}

/// A sampler over chains of row-major points.
pub trait Sampler {
    fn name(&self) -> &'static str;
    /// Steps, for progress.
    fn steps(&self) -> u64;
    /// The first level (σ_0 of [`Start::Noise`]); None for a clean-score sampler.
    fn sigma_max(&self) -> Option<f64>;
    /// Where its chains start.
    fn start(&self) -> Start {
        Start::Noise
    }
    /// Moves the chains in `x` in place, calling `steps.step` after every step (and returning
    /// as soon as it says stop).
    fn run(&self, field: &mut dyn Field, x: &mut [f32], rng: &mut Rng, steps: &mut Steps) -> Result<()>;
}

/// Draws the start of `n` chains of dimension `dim` for `sampler`.
pub fn start(sampler: &dyn Sampler, n: usize, dim: usize, rng: &mut Rng) -> Vec<f32> {
    match (sampler.start(), sampler.sigma_max()) {
        (Start::Box(half), _) => (0..n * dim).map(|_| ((2.0 * rng.uniform() - 1.0) * half) as f32).collect(),
        (Start::Noise, sigma) => {
            let s = sigma.unwrap_or(1.0) as f32;
            rng.normals_f32(n * dim).into_iter().map(|z| z * s).collect()
        }
    }
}

/// Runs `sampler` on the chains `x`, calling `progress` after every step; returns its network
/// evaluations and where it diverged, if it did.
pub fn sample(sampler: &dyn Sampler, field: &mut dyn Field, x: &mut [f32], rng: &mut Rng, progress: &mut dyn FnMut()) -> Result<Sampled> {
    let mut counting = Counting { inner: field, evaluations: 0 };
    let mut steps = Steps { report: progress, done: 0, diverged: None };
    sampler.run(&mut counting, x, rng, &mut steps)?;
    Ok(Sampled { nfe: counting.evaluations, diverged: steps.diverged })
}

/// What a sampler is built from, resolved by the trial runner (toy or image) from its schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// The levels the sampler walks, descending, without a final 0: a toy trial's noise
    /// ladder, or an image trial's EDM ρ schedule; None for a clean-score model.
    pub sigmas: Option<Vec<f64>>,
    /// The Langevin step ε (α at the smallest level; see the convention above), or score
    /// ascent's α.
    pub eps: f64,
    /// Steps of the samplers that stay at one level (plain Langevin, score ascent).
    pub steps: usize,
    /// Langevin steps per level (annealed Langevin).
    pub steps_per_level: usize,
    /// Annealed Langevin ends with the denoising step x ← D(x; σ_L).
    pub denoise: bool,
    /// The predictor–corrector's signal-to-noise ratio.
    pub snr: f64,
    /// Where the Langevin-family chains start (the ODE/SDE samplers start at σ_0 z).
    pub start: Start,
}

impl Params {
    /// The parameters of a trial's sampler `s`: its levels from the trial's resolved noise
    /// `ladder` (descending; None for a clean-score model) or its own ρ schedule, and the
    /// resolved Langevin step `eps` (0 for the samplers without one).
    pub fn of(s: &schema::sampler::Sampler, ladder: Option<&[f64]>, eps: f64) -> Params {
        use schema::sampler::{Ends, Levels, Method};
        let sigmas = match s.levels {
            Levels::Ladder => ladder.map(<[f64]>::to_vec),
            Levels::Rho { steps, rho, ends: Ends::Ladder } => ladder.map(|l| rho_schedule(l[0], l[l.len() - 1], steps, rho)),
            Levels::Rho { steps, rho, ends: Ends::Sigmas { min, max } } => Some(rho_schedule(max, min, steps, rho)),
        };
        let mut p = Params { sigmas, eps, steps: 0, steps_per_level: 1, denoise: false, snr: 0.0, start: s.start };
        match s.method {
            Method::AnnealedLangevin { steps_per_level, denoise, .. } => (p.steps_per_level, p.denoise) = (steps_per_level, denoise),
            Method::Langevin { steps, .. } | Method::ScoreAscent { steps, .. } => p.steps = steps,
            Method::Pc { snr } => p.snr = snr,
            Method::Heun | Method::EulerMaruyama | Method::Ddim => {}
        }
        p
    }

    /// The smallest level: where the samplers that stay at one level take the score.
    pub fn clean(&self) -> Option<f64> {
        self.sigmas.as_ref().and_then(|s| s.last().copied())
    }
}

/// The registry: one line per sampler, by its schema name. None for `none`, for an unknown
/// name, or for a sampler that needs noise levels the trial does not have (validation
/// refuses both before a trial runs).
pub fn build(name: &str, p: &Params) -> Option<Box<dyn Sampler>> {
    Some(match name {
        "langevin" => Box::new(Langevin::new(p)?),
        "annealed_langevin" => Box::new(AnnealedLangevin::new(p)?),
        "score_ascent" => Box::new(ScoreAscent::new(p)?),
        "heun" => Box::new(heun::Heun::new(p)?),
        "euler_maruyama" => Box::new(euler_maruyama::EulerMaruyama::new(p)?),
        "pc" => Box::new(pc::Pc::new(p)?),
        "ddim" => Box::new(ddim::Ddim::new(p)?),
        _ => return None,
    })
}

/// EDM's ρ schedule σ_i = (σ_max^{1/ρ} + i/(N−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i < N
/// (descending, without the final 0 that the ODE/SDE samplers add).
pub fn rho_schedule(sigma_max: f64, sigma_min: f64, n: usize, rho: f64) -> Vec<f64> {
    let (a, b) = (sigma_max.powf(1.0 / rho), sigma_min.powf(1.0 / rho));
    (0..n).map(|i| (a + i as f64 / (n - 1).max(1) as f64 * (b - a)).powf(rho)).collect()
}

/// The levels with a final 0 (the ODE/SDE samplers' last step denoises fully).
pub(crate) fn to_zero(sigmas: &[f64]) -> Vec<f64> {
    let mut s = sigmas.to_vec();
    s.push(0.0);
    s
}

/// The mean square of `v`, summed as candle sums (so the corrector's step size has the same
/// bits as a tensor's `sqr().mean_all()`).
pub(crate) fn mean_square(v: &[f32]) -> Result<f64> {
    Ok(Tensor::from_slice(v, v.len(), &Device::Cpu)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The exact denoiser of data N(μ, s²I): E[x₀ | x] = μ + s²/(s² + σ²)(x − μ).
    pub struct Gaussian {
        pub mu: f64,
        pub s: f64,
    }

    impl Field for Gaussian {
        fn score(&mut self, x: &[f32], sigma: Option<f64>, out: &mut [f32]) -> Result<()> {
            let v = self.s * self.s + sigma.unwrap_or(0.0).powi(2);
            out.iter_mut().zip(x).for_each(|(o, &xi)| *o = ((self.mu - xi as f64) / v) as f32);
            Ok(())
        }
        fn denoise(&mut self, x: &[f32], sigma: f64, out: &mut [f32]) -> Result<()> {
            let k = self.s * self.s / (self.s * self.s + sigma * sigma);
            out.iter_mut().zip(x).for_each(|(o, &xi)| *o = (self.mu + k * (xi as f64 - self.mu)) as f32);
            Ok(())
        }
    }

    /// (mean, standard deviation) of scalar samples.
    pub fn moments(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let m = v.iter().map(|&a| a as f64).sum::<f64>() / n;
        (m, (v.iter().map(|&a| (a as f64 - m).powi(2)).sum::<f64>() / n).sqrt())
    }

    pub fn params(sigmas: Vec<f64>) -> Params {
        Params { sigmas: Some(sigmas), eps: 0.0, steps: 0, steps_per_level: 1, denoise: true, snr: 0.16, start: Start::Noise }
    }

    /// Every ODE/SDE sampler and annealed Langevin reproduces the data's mean and standard
    /// deviation from the exact denoiser, and counts its evaluations. 20,000 scalar samples:
    /// the SE of the mean is s/141 ≈ 0.003 and of the std ≈ 0.002; the tolerances leave room
    /// for the schedule's discretisation (Heun's truncation error on this ODE, integrated
    /// exactly in 1D: +5.9% in the std at N = 18, +1.0% at N = 40, so N = 40 here).
    #[test]
    fn samplers_reproduce_a_gaussian_from_its_exact_denoiser() {
        let (mu, s) = (0.7, 0.4);
        // (sampler, levels N, σ_min, evaluations, tolerance of the mean, of the std). Annealed
        // Langevin's α = ε σ_i²/σ_min² must keep α/(s² + σ_i²) < 2 at every level, so it runs
        // to σ_min = 0.1 with ε = 0.2 σ_min² (NCSN's 2e-5 at 0.01), and its final denoising
        // step shrinks the std to s²/√(s² + σ_min²) = 0.388.
        let cases = [
            ("heun", 40, 0.002, 79, 0.02, 0.012),
            ("euler_maruyama", 200, 0.002, 200, 0.02, 0.03),
            ("pc", 100, 0.002, 199, 0.02, 0.03),
            ("annealed_langevin", 20, 0.1, 2001, 0.02, 0.03),
        ];
        for (name, n, sigma_min, want_nfe, tol_mu, tol_s) in cases {
            let mut p = params(rho_schedule(80.0, sigma_min, n, 7.0));
            p.steps_per_level = 100;
            p.eps = 0.2 * sigma_min * sigma_min;
            let sampler = build(name, &p).unwrap();
            let mut rng = Rng::new(3);
            let mut x = start(sampler.as_ref(), 20_000, 1, &mut rng);
            let out = sample(sampler.as_ref(), &mut Gaussian { mu, s }, &mut x, &mut rng, &mut || {}).unwrap();
            let (m, sd) = moments(&x);
            assert!((m - mu).abs() < tol_mu, "{name}: mean {m} vs {mu}");
            assert!((sd - s).abs() < tol_s, "{name}: std {sd} vs {s}");
            assert_eq!((out.nfe, out.diverged), (want_nfe, None), "{name}: evaluations");
        }
    }

    /// A step that cannot be stable (α = 5σ_L², the image default ε = 2e-5 of old at
    /// σ_min = 0.002) ends the run at the first non-finite value, naming the step and σ.
    #[test]
    fn a_non_finite_sample_stops_the_run_and_says_where() {
        let mut p = params(rho_schedule(80.0, 0.002, 18, 7.0));
        p.steps_per_level = 10;
        p.eps = 2e-5;
        let sampler = build("annealed_langevin", &p).unwrap();
        let mut rng = Rng::new(1);
        let mut x = start(sampler.as_ref(), 100, 4, &mut rng);
        let mut calls = 0;
        let out = sample(sampler.as_ref(), &mut Gaussian { mu: 0.0, s: 1e-3 }, &mut x, &mut rng, &mut || calls += 1).unwrap();
        let d = out.diverged.expect("diverges");
        assert_eq!((d.step, out.nfe, calls), (out.nfe, out.nfe, out.nfe), "stops at the first bad step");
        // α_i/σ_i² = ε/σ_L² = 5 at every level, so each step multiplies a chain's distance to
        // the data by about |1 − 5σ²/(s² + σ²)| ≈ 4: from σ_0 = 80, f32 overflows after about
        // 60 steps (4⁶⁰·80 ≈ 10³⁸), i.e. in the 7th of 18 levels; σ is the level of that step.
        assert!((40..100).contains(&d.step), "diverged at step {}", d.step);
        assert_eq!(d.sigma, Some(p.sigmas.as_ref().unwrap()[(d.step as usize - 1) / 10]));
        assert!(x.iter().any(|v| !v.is_finite()));
    }

    #[test]
    fn rho_schedule_runs_from_sigma_max_to_sigma_min() {
        let s = rho_schedule(80.0, 0.002, 18, 7.0);
        assert_eq!(s.len(), 18);
        assert!((s[0] - 80.0).abs() < 1e-9 && (s[17] - 0.002).abs() < 1e-12);
        assert!(s.windows(2).all(|w| w[0] > w[1]));
    }
}
