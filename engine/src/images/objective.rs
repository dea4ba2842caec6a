//! The training objectives of image trials (`schema::image::ImageObjectiveKind`) as three
//! choices: how σ is drawn, the loss weight w(σ) and the network's parametrisation
//! ([`Precond`]). Every denoising objective is then the one loss w(σ)·mean_j (D_j − x0_j)² with
//! D(x; σ) = c_skip x + c_out F(c_in x; c_noise), shared by the autograd path
//! ([`edm_losses`]) and the hand-derived step (`train::fast::image`); sliced score matching
//! has its own loss ([`ssm_losses`]) on the same parametrisation. Because every kind ends up as
//! a denoiser D(x; σ) on the VE scale, the samplers (`sample`) need no per-objective code: a
//! VP-trained ε-net is sampled through D(x; σ) = x − σ ε(x/√(1 + σ²), σ), the VE-scale view of
//! x_t = α_t x₀ + √(1 − α_t²) ε with σ = √(1 − α_t²)/α_t.
//!
//! | kind | σ | w(σ) on ‖D − x₀‖² | parametrisation |
//! |---|---|---|---|
//! | `edm` | ln σ ~ N(p_mean, p_std²) | (σ² + σ_d²)/(σ σ_d)² | EDM |
//! | `dsm` | uniform over the ladder | 1/σ² (λ = σ² on the score loss) | S = F/σ |
//! | `ve` | σ_min (σ_max/σ_min)^t, t ~ U(0, 1) | 1/σ² | S = F/σ |
//! | `vp` | σ(t) = √(e^{B(t)} − 1), t ~ U(t_min, 1) | 1/σ² (= ‖ε̂ − ε‖²) | ε-prediction |

use candle_core::{D, Result, Tensor};
use schema::image::{ImageObjective, ImageObjectiveKind, SigmaData};
use schema::trial::NoiseSpec;

use super::{ImageNet, Precond, Split};
use crate::rng::Rng;

/// Training images the `auto` ladder's σ₁ (largest pairwise distance) is measured on: exact
/// O(n²·D) over the first ones (1,000 images of 784 pixels: about 0.4 G multiply-adds).
pub const AUTO_LADDER_IMAGES: usize = 1000;

/// An image objective with its ladder resolved.
#[derive(Clone, Debug)]
pub struct Objective {
    pub kind: ImageObjectiveKind,
    pub sigma_data: f64,
    /// The ladder of `dsm` and `ssm` (σ₁ > … > σ_L).
    pub ladder: Vec<f64>,
}

impl Objective {
    /// Resolves the spec against the training images (the `auto` ladder's σ₁, a measured σ_d).
    pub fn new(spec: &ImageObjective, split: &Split) -> Self {
        let ladder = match &spec.kind {
            ImageObjectiveKind::Dsm { noise } | ImageObjectiveKind::Ssm { noise, .. } => resolve_ladder(noise, split),
            _ => Vec::new(),
        };
        let sigma_data = match spec.sigma_data {
            SigmaData::Value(v) => v,
            SigmaData::Data => crate::eval::split::pixel_rms(&split.to_floats(&split.train_pixels)),
        };
        Objective { kind: spec.kind.clone(), sigma_data, ladder }
    }

    /// The network's parametrisation under this objective.
    pub fn precond(&self) -> Precond {
        let sd = self.sigma_data;
        match self.kind {
            ImageObjectiveKind::Edm { .. } => Precond::Edm { sigma_data: sd },
            ImageObjectiveKind::Dsm { .. } | ImageObjectiveKind::Ve { .. } | ImageObjectiveKind::Ssm { .. } => Precond::Score { sigma_data: sd },
            ImageObjectiveKind::Vp { .. } => Precond::Eps,
        }
    }

    /// One training σ.
    pub fn draw_sigma(&self, rng: &mut Rng) -> f64 {
        match self.kind {
            ImageObjectiveKind::Edm { p_mean, p_std } => (p_mean + p_std * rng.normal()).exp(),
            ImageObjectiveKind::Dsm { .. } | ImageObjectiveKind::Ssm { .. } => self.ladder[rng.below(self.ladder.len())],
            ImageObjectiveKind::Ve { sigma_min, sigma_max } => sigma_min * (sigma_max / sigma_min).powf(rng.uniform()),
            ImageObjectiveKind::Vp { beta_min, beta_max, t_min } => vp_sigma(beta_min, beta_max, t_min + (1.0 - t_min) * rng.uniform()),
        }
    }

    /// The weight w(σ) of the denoising loss mean_j (D_j − x0_j)².
    pub fn weight(&self, sigma: f64) -> f64 {
        match self.kind {
            ImageObjectiveKind::Edm { .. } => edm_weight(sigma, self.sigma_data),
            _ => 1.0 / (sigma * sigma),
        }
    }

    /// Whether the loss is a denoising loss (everything but SSM).
    pub fn is_denoising(&self) -> bool {
        !matches!(self.kind, ImageObjectiveKind::Ssm { .. })
    }
}

/// EDM's loss weight λ(σ) = (σ² + σ_d²)/(σ σ_d)².
pub fn edm_weight(sigma: f64, sd: f64) -> f64 {
    (sigma * sigma + sd * sd) / (sigma * sd).powi(2)
}

/// B(t) = ∫₀ᵗ β = β_min t + ½(β_max − β_min) t², so α_t = e^{−B/2}.
pub fn vp_integral(beta_min: f64, beta_max: f64, t: f64) -> f64 {
    beta_min * t + 0.5 * (beta_max - beta_min) * t * t
}

/// The VE-scale σ of VP time t: σ² = 1/α_t² − 1 = e^{B(t)} − 1.
pub fn vp_sigma(beta_min: f64, beta_max: f64, t: f64) -> f64 {
    vp_integral(beta_min, beta_max, t).exp_m1().sqrt()
}

/// The VP time of a VE-scale σ (inverse of [`vp_sigma`]).
pub fn vp_time(beta_min: f64, beta_max: f64, sigma: f64) -> f64 {
    let b = (sigma * sigma).ln_1p();
    let db = beta_max - beta_min;
    if db.abs() < 1e-12 { b / beta_min } else { (-beta_min + (beta_min * beta_min + 2.0 * db * b).sqrt()) / db }
}

/// The ladder of a noise spec; `auto` measures σ₁ on the first [`AUTO_LADDER_IMAGES`] training
/// images (at the centres of their pixel bins) and takes NCSNv2's γ for D pixels.
pub fn resolve_ladder(noise: &NoiseSpec, split: &Split) -> Vec<f64> {
    match noise {
        NoiseSpec::Geometric { sigma_max, sigma_min, levels } => crate::ladder::geometric(*sigma_max, *sigma_min, *levels),
        NoiseSpec::List(v) => v.clone(),
        NoiseSpec::Auto { sigma_min, levels } => {
            let d = split.dim();
            let k = split.n_train().min(AUTO_LADDER_IMAGES);
            let x: Vec<f64> = split.to_floats(&split.train_pixels[..k * d]).into_iter().map(f64::from).collect();
            crate::ladder::auto(&x, d, *sigma_min, *levels).0
        }
    }
}

/// The per-image denoising loss w(σ)·mean‖D(x + σε; σ, c) − x‖² of a batch x (N, 1, H, W) with
/// noise ε, levels σ (N,) and their weights w(σ) (N,) (EDM's λ(σ) for `edm`).
pub fn edm_losses(net: &dyn ImageNet, x: &Tensor, eps: &Tensor, sigma: &Tensor, weights: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
    let n = x.dim(0)?;
    let y = (x + eps.broadcast_mul(&sigma.reshape((n, 1, 1, 1))?)?)?;
    let per = (net.denoise(&y, sigma, labels)? - x)?.sqr()?.flatten_from(1)?.mean(D::Minus1)?;
    per * weights
}

/// Sliced score matching per image on perturbed images `xt` (N, 1, H, W) at levels σ (N,)
/// with one probe `v` per image, through F's forward tangent, for S = F(c_in x; c_noise)/σ
/// (c_in from `net`'s [`Precond::Score`]) and λ(σ) = σ²:
/// σ²[(vᵀS)² + 2 vᵀ(∂S/∂x)v] = (vᵀF)² + 2 σ c_in vᵀ J_F v (SSM), ‖F‖² in place of (vᵀF)²
/// (SSM-VR), divided by the number of pixels.
pub fn ssm_losses(net: &dyn ImageNet, xt: &Tensor, v: &Tensor, sigma: &Tensor, vr: bool, labels: Option<&Tensor>) -> Result<Tensor> {
    let n = sigma.dim(0)?;
    let [_, _, c_in, c_noise] = net.precond().columns(&sigma.to_vec1::<f32>()?);
    let dev = xt.device();
    let c_in = Tensor::from_vec(c_in, n, dev)?;
    let col = |t: &Tensor| t.reshape((n, 1, 1, 1));
    let (f, jv) = net.raw_tangent(&xt.broadcast_mul(&col(&c_in)?)?, &v.broadcast_mul(&col(&c_in)?)?, &Tensor::from_vec(c_noise, n, dev)?, labels)?;
    let dim = f.elem_count() / n;
    let flat = |t: &Tensor| t.reshape((n, dim));
    let first = if vr { flat(&f)?.sqr()?.sum(D::Minus1)? } else { (flat(&f)? * flat(v)?)?.sum(D::Minus1)?.sqr()? };
    // vᵀ J_F (c_in v): the tangent was pushed along c_in·v, so σ·(v · jv) carries c_in once.
    let vjv = ((flat(v)? * flat(&jv)?)?.sum(D::Minus1)? * sigma)?;
    (first + (vjv * 2.0)?)? / dim as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The VP perturbation kernel: x_t = α_t x₀ + s_t ε with α_t = exp(−½∫₀ᵗβ) and
    /// s_t = √(1 − α_t²), computed here by the trapezoid rule on β(t) (independent of
    /// `vp_integral`), equals the VE-scale view x_t = α(σ)(x₀ + σ ε), α(σ) = 1/√(1 + σ²), with
    /// σ = vp_sigma(t); and vp_time inverts vp_sigma. Sampled: 200,000 draws of x_t from x₀ = 1.3
    /// match mean α_t x₀ and std s_t (SE ≈ s_t/447, so 0.01·s_t is > 4 SE).
    #[test]
    fn vp_kernel_matches_the_closed_form() {
        let (bmin, bmax) = (0.1, 20.0);
        let mut rng = Rng::new(5);
        for t in [1e-3, 0.05, 0.3, 0.7, 1.0] {
            let steps = 10_000;
            let h = t / steps as f64;
            let integral: f64 = (0..steps).map(|i| 0.5 * h * ((bmin + (i as f64 * h) * (bmax - bmin)) + (bmin + ((i + 1) as f64 * h) * (bmax - bmin)))).sum();
            let alpha = (-0.5 * integral).exp();
            let s = (1.0 - alpha * alpha).sqrt();
            let sigma = vp_sigma(bmin, bmax, t);
            let a = 1.0 / (1.0 + sigma * sigma).sqrt();
            assert!((a - alpha).abs() < 1e-9 && (a * sigma - s).abs() < 1e-9, "t = {t}: α {a} vs {alpha}, α σ {} vs {s}", a * sigma);
            assert!((vp_time(bmin, bmax, sigma) - t).abs() < 1e-9 * t.max(1.0), "t = {t}");
            let x0 = 1.3;
            let xs: Vec<f64> = (0..200_000).map(|_| a * (x0 + sigma * rng.normal())).collect();
            let m = xs.iter().sum::<f64>() / xs.len() as f64;
            let sd = (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / xs.len() as f64).sqrt();
            assert!((m - alpha * x0).abs() < 0.01 * s.max(1e-3) + 1e-6, "t = {t}: mean {m} vs {}", alpha * x0);
            assert!((sd - s).abs() < 0.01 * s, "t = {t}: std {sd} vs {s}");
        }
    }

    /// The parametrisations turn each objective's optimal network into the same optimal
    /// denoiser: on data N(μ, s²) (per pixel), E[x₀ | x] = μ + s²/(s² + σ²)(x − μ) on the VE
    /// scale. The optimal F is written in each objective's own terms — EDM's target
    /// (x₀ − c_skip x)/c_out, NCSN's score times σ, and VP's E[ε | x_t] from the VP kernel — and
    /// D = c_skip x + c_out F must give the posterior mean.
    #[test]
    fn each_parametrisation_maps_its_optimum_to_the_posterior_mean() {
        let (mu, s) = (0.3, 0.6);
        for &sigma in &[0.01, 0.2, 1.0, 7.0, 80.0] {
            for &x in &[-2.0, 0.1, 1.7] {
                let post = mu + s * s / (s * s + sigma * sigma) * (x - mu);
                // EDM: F* = (E[x₀|x] − c_skip x)/c_out.
                let c = Precond::Edm { sigma_data: 0.5 }.coefs(sigma);
                let f_edm = (post - c.c_skip * x) / c.c_out;
                // NCSN: F* = σ ∇log p_σ(x) = −σ (x − μ)/(s² + σ²).
                let f_score = -sigma * (x - mu) / (s * s + sigma * sigma);
                // VP: x_t = α x, E[ε | x_t] = s_t (x_t − α μ)/(α² s² + s_t²), s_t = α σ.
                let alpha = 1.0 / (1.0 + sigma * sigma).sqrt();
                let (xt, st) = (alpha * x, alpha * sigma);
                let f_eps = st * (xt - alpha * mu) / (alpha * alpha * s * s + st * st);
                for (p, f) in [(Precond::Edm { sigma_data: 0.5 }, f_edm), (Precond::Score { sigma_data: 0.5 }, f_score), (Precond::Eps, f_eps)] {
                    let c = p.coefs(sigma);
                    let d = c.c_skip * x + c.c_out * f;
                    assert!((d - post).abs() < 1e-9 * (1.0 + post.abs()), "{p:?} σ = {sigma}, x = {x}: D = {d} vs {post}");
                }
                // VP's network reads x_t: c_in x = α x.
                assert!((Precond::Eps.coefs(sigma).c_in * x - xt).abs() < 1e-12);
            }
        }
    }
}
