//! Samplers driven by a learned (or any) score: plain Langevin from uniform points in a box (the
//! write-up's "scatter points everywhere"), annealed Langevin over a noise ladder (NCSN:
//! α_i = ε·σ_i²/σ_L², T steps per level, optional final denoising x + σ_L² S(x, σ_L)), and
//! deterministic score ascent x ← x + α S(x), which collapses samples onto the modes.
//! Every Langevin step is x ← x + (α/2) S(x) + √α z, z ~ N(0, I) from the sampler stream.

use candle_core::{Device, Result, Tensor};

use crate::nets::Model;
use crate::rng::Rng;

/// n points uniform in [−half, half]^dim.
pub fn uniform_box(n: usize, dim: usize, half: f64, rng: &mut Rng, dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..n * dim).map(|_| ((2.0 * rng.uniform() - 1.0) * half) as f32).collect();
    Tensor::from_vec(v, (n, dim), dev)
}

fn sigma_col(sigma: Option<f64>, n: usize, dev: &Device) -> Result<Option<Tensor>> {
    sigma.map(|s| Tensor::full(s as f32, (n, 1), dev)).transpose()
}

fn langevin_steps(model: &Model, x: Tensor, sigma: Option<f64>, alpha: f64, steps: usize, rng: &mut Rng, progress: &mut dyn FnMut()) -> Result<Tensor> {
    let (n, d) = x.dims2()?;
    let dev = x.device().clone();
    let sig = sigma_col(sigma, n, &dev)?;
    let mut x = x;
    let noise_scale = alpha.sqrt();
    for _ in 0..steps {
        let s = model.score(&x, sig.as_ref())?.detach();
        let z = Tensor::from_vec(rng.normals_f32(n * d), (n, d), &dev)?;
        x = ((x + s.affine(alpha / 2.0, 0.0)?)? + z.affine(noise_scale, 0.0)?)?.detach();
        progress();
    }
    Ok(x)
}

/// Annealed Langevin dynamics over `sigmas` (descending).
pub fn annealed_langevin(
    model: &Model,
    init: Tensor,
    sigmas: &[f64],
    eps: f64,
    steps_per_level: usize,
    denoise: bool,
    rng: &mut Rng,
    progress: &mut dyn FnMut(),
) -> Result<Tensor> {
    let last = *sigmas.last().expect("non-empty ladder");
    let mut x = init;
    for &s in sigmas {
        let alpha = eps * s * s / (last * last);
        x = langevin_steps(model, x, Some(s), alpha, steps_per_level, rng, progress)?;
    }
    if denoise {
        let n = x.dim(0)?;
        let sig = sigma_col(Some(last), n, x.device())?;
        let s = model.score(&x, sig.as_ref())?.detach();
        x = (x + s.affine(last * last, 0.0)?)?;
    }
    Ok(x)
}

/// Plain Langevin with step `alpha` at the score of level `sigma` (None: unconditional model).
pub fn langevin(model: &Model, init: Tensor, sigma: Option<f64>, alpha: f64, steps: usize, rng: &mut Rng, progress: &mut dyn FnMut()) -> Result<Tensor> {
    langevin_steps(model, init, sigma, alpha, steps, rng, progress)
}

/// Deterministic ascent x ← x + α S(x): no noise, so points pile up at the modes.
pub fn score_ascent(model: &Model, init: Tensor, sigma: Option<f64>, alpha: f64, steps: usize, progress: &mut dyn FnMut()) -> Result<Tensor> {
    let n = init.dim(0)?;
    let sig = sigma_col(sigma, n, init.device())?;
    let mut x = init;
    for _ in 0..steps {
        let s = model.score(&x, sig.as_ref())?.detach();
        x = (x + s.affine(alpha, 0.0)?)?.detach();
        progress();
    }
    Ok(x)
}
