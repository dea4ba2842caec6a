//! Image trials: an image set of shape (C, H, W) — IDX files, or one made by code such as
//! [`crate::data::shapes`], chosen by preset in [`load_set`] — split into training, held-out
//! and judge parts (stratified by class, [`crate::eval::split`]), a U-Net or MLP
//! denoiser trained with one of the image objectives (EDM by default; with an EMA of its
//! weights), sampled by the crate's samplers (`samplers`: the nets are denoisers D(x; σ)).
//!
//! - [`ImageNet`]: a preconditioning around a network; [`unet`] and [`mlp`] are the two;
//!   [`conv`]: the U-Net's convolutions as im2col + gemm on the CPU; [`norm`]: its
//!   GroupNorm + SiLU as one fused CPU op with a hand-derived backward;
//! - [`guided`]: the nets (candle's, or the CPU's plain-buffer passes) with fixed labels and
//!   classifier-free guidance as the samplers' `Field`;
//! - [`objective`]: the training objectives (EDM, multi-σ DSM, VE and VP continuous-time DSM,
//!   SSM) as σ draws, loss weights and parametrisations;
//! - [`run`]: the trial runner (train, evaluate, sample, metrics, sample grid).

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarMap;
use schema::image::ImageData;

use crate::data::idx::{self, IdxError, ImageSet};
use crate::rng::Rng;

pub mod conv;
pub mod guided;
pub mod mlp;
pub mod norm;
pub mod objective;
pub mod run;
pub mod unet;

/// How a network F becomes a denoiser: D(x; σ, c) = c_skip x + c_out F(c_in x; c_noise, c),
/// with c_noise = ln(σ)/4 for every parametrisation (any monotone code of σ would do).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Precond {
    /// EDM: c_skip = σ_d²/(σ² + σ_d²), c_out = σ σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²), so
    /// F's input and target both have unit second moment at every σ when the data's second
    /// moment is σ_d² (EDM's 0.5 fits CIFAR-10 in [−1, 1]; MNIST in [−1, 1] has RMS ≈ 0.96,
    /// which `objective.sigma_data = "data"` measures; with 0.5 F's input and target are off
    /// unit scale by up to that ratio).
    Edm { sigma_data: f64 },
    /// NCSN's score net with its output scaled by 1/σ, S = F/σ, i.e. D = x + σ² S = x + σ F
    /// (c_skip = 1, c_out = σ); the input is scaled as EDM's, c_in = 1/√(σ² + σ_d²).
    Score { sigma_data: f64 },
    /// The VP SDE's ε-prediction: D = x − σ F(x/√(1 + σ²)) (c_skip = 1, c_out = −σ,
    /// c_in = 1/√(1 + σ²) = α, so F reads x_t = α x and predicts ε).
    Eps,
}

/// The per-σ coefficients of a [`Precond`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Coefs {
    pub c_skip: f64,
    pub c_out: f64,
    pub c_in: f64,
    pub c_noise: f64,
}

impl Precond {
    pub fn coefs(&self, sigma: f64) -> Coefs {
        let c_noise = sigma.ln() / 4.0;
        match *self {
            Precond::Edm { sigma_data: sd } => {
                let den = sigma * sigma + sd * sd;
                Coefs { c_skip: sd * sd / den, c_out: sigma * sd / den.sqrt(), c_in: 1.0 / den.sqrt(), c_noise }
            }
            Precond::Score { sigma_data: sd } => Coefs { c_skip: 1.0, c_out: sigma, c_in: 1.0 / (sigma * sigma + sd * sd).sqrt(), c_noise },
            Precond::Eps => Coefs { c_skip: 1.0, c_out: -sigma, c_in: 1.0 / (sigma * sigma + 1.0).sqrt(), c_noise },
        }
    }

    /// The coefficients of each σ of a batch as f32 columns (c_skip, c_out, c_in, c_noise).
    pub fn columns(&self, sigmas: &[f32]) -> [Vec<f32>; 4] {
        let mut out: [Vec<f32>; 4] = Default::default();
        for &s in sigmas {
            let c = self.coefs(s as f64);
            for (col, v) in out.iter_mut().zip([c.c_skip, c.c_out, c.c_in, c.c_noise]) {
                col.push(v as f32);
            }
        }
        out
    }
}

/// A network F behind a [`Precond`]: D(x; σ, c) = c_skip x + c_out F(c_in x; c_noise, c).
pub trait ImageNet {
    fn precond(&self) -> Precond;

    /// F(x; c_noise, labels): x is (N, C, H, W), c_noise (N,), labels (N,) u32 or None.
    fn raw(&self, x: &Tensor, c_noise: &Tensor, labels: Option<&Tensor>) -> Result<Tensor>;

    /// F and its forward tangent J_F·v at x along v (both (N, C, H, W)): the networks that
    /// can train with sliced score matching (the MLP).
    fn raw_tangent(&self, _x: &Tensor, _v: &Tensor, _c_noise: &Tensor, _labels: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        Err(candle_core::Error::Msg("this network has no forward tangents (sliced score matching needs model.kind = \"mlp\")".into()))
    }

    /// The preconditioned denoiser D(x; σ, labels); `sigma` is (N,).
    fn denoise(&self, x: &Tensor, sigma: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let n = sigma.dim(0)?;
        let [c_skip, c_out, c_in, c_noise] = self.precond().columns(&sigma.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        let dev = x.device();
        let col = |v: Vec<f32>| Tensor::from_vec(v, (n, 1, 1, 1), dev);
        let f = self.raw(&x.broadcast_mul(&col(c_in)?)?, &Tensor::from_vec(c_noise, n, dev)?, labels)?;
        x.broadcast_mul(&col(c_skip)?)? + f.broadcast_mul(&col(c_out)?)?
    }
}

/// The network a trial's model spec names for c×h×w images (NCHW), its weights in `varmap`.
pub fn build(spec: &schema::image::ImageModel, precond: Precond, c: usize, h: usize, w: usize, varmap: &VarMap, dev: &Device) -> Result<Box<dyn ImageNet>> {
    Ok(match spec {
        schema::image::ImageModel::Unet(u) => Box::new(unet::Unet::new(u, precond, c, h, w, varmap, dev)?),
        schema::image::ImageModel::Mlp(m) => Box::new(mlp::ImageMlp::new(m, precond, c * h * w, varmap, dev)?),
    })
}

/// Number of trainable parameters.
pub fn parameters(varmap: &VarMap) -> usize {
    varmap.all_vars().iter().map(|v| v.elem_count()).sum()
}

/// Fourier features [sin(c·f_k), cos(c·f_k)] of c_noise (N,) with `freq` (1, K): (N, 2K).
pub fn fourier(c_noise: &Tensor, freq: &Tensor) -> Result<Tensor> {
    let arg = c_noise.unsqueeze(1)?.broadcast_mul(freq)?;
    Tensor::cat(&[arg.sin()?, arg.cos()?], 1)
}

/// K frequencies 10000^(−k/K).
pub fn frequencies(k: usize, dev: &Device) -> Result<Tensor> {
    Tensor::from_vec(frequency_values(k), (1, k), dev)
}

/// The values of [`frequencies`] (shared with the hand-derived step).
pub fn frequency_values(k: usize) -> Vec<f32> {
    (0..k).map(|i| (-(i as f64) / k as f64 * 10000f64.ln()).exp() as f32).collect()
}

/// An image set split for a trial ([`crate::eval::split`]): the training part, the held-out
/// part and the judge's part, stratified by class by a permutation seeded per data set.
pub struct Split {
    /// The image shape (C, H, W): every image is C·H·W bytes, channel-major.
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub classes: usize,
    /// Whether the digit judge's metrics apply ([`ImageSet::digit_judge`]).
    pub digit_judge: bool,
    pub train_pixels: Vec<u8>,
    pub train_labels: Vec<u8>,
    pub held_pixels: Vec<u8>,
    pub held_labels: Vec<u8>,
    /// The digit judge's training images (never trained on by the score model; empty when
    /// `data.judge = 0`: the judge then trains on the training part).
    pub judge_pixels: Vec<u8>,
    pub judge_labels: Vec<u8>,
    /// The seed of the split's permutation ([`crate::eval::split::split_seed`]).
    pub seed: u32,
    pub symmetric: bool,
    pub dequantize: bool,
}

/// The image sets by preset: one line per set made by code; every other preset (`mnist`,
/// `fashion`, `idx`) reads IDX files from `spec.dir` (or the embedded MNIST test split).
pub fn load_set(spec: &ImageData) -> std::result::Result<ImageSet, IdxError> {
    match spec.preset.as_str() {
        "shapes3" => Ok(crate::data::shapes::shapes3()),
        _ => match &spec.dir {
            Some(dir) => idx::load_dir(dir),
            None => idx::load_embedded_mnist(),
        },
    }
}

/// Loads the trial's image set ([`load_set`]) and splits it.
pub fn load(spec: &ImageData) -> std::result::Result<Split, IdxError> {
    split(load_set(spec)?, spec).map_err(|message| IdxError::Corrupt { path: data_origin(spec), message })
}

/// Where a trial's images come from, for messages: the directory, the embedded copy or the
/// generator.
pub fn data_origin(spec: &ImageData) -> std::path::PathBuf {
    match &spec.dir {
        Some(dir) => dir.clone(),
        None if schema::image::GENERATED_PRESETS.contains(&spec.preset.as_str()) => format!("<generated>/{}", spec.preset).into(),
        None => idx::EMBEDDED_MNIST_ORIGIN.into(),
    }
}

/// Splits a loaded set by the trial's data spec ([`crate::eval::split::stratified`]).
pub fn split(set: ImageSet, spec: &ImageData) -> std::result::Result<Split, String> {
    use crate::eval::split as sp;
    let d = set.dim();
    // A set without the digit judge keeps no judge part unless asked.
    let judge = spec.judge.unwrap_or_else(|| if set.digit_judge { sp::default_judge(set.n) } else { 0 });
    let seed = sp::split_seed(set.n, set.shape(), &set.labels);
    let parts = sp::stratified(&set.labels, spec.held_out, judge, spec.limit, seed)?;
    let pixels = |idx: &[usize]| -> Vec<u8> { idx.iter().flat_map(|&i| set.pixels[i * d..(i + 1) * d].iter().copied()).collect() };
    let labels = |idx: &[usize]| -> Vec<u8> { idx.iter().map(|&i| set.labels[i]).collect() };
    Ok(Split {
        c: set.c,
        h: set.h,
        w: set.w,
        classes: set.classes().max(1),
        digit_judge: set.digit_judge,
        train_pixels: pixels(&parts.train),
        train_labels: labels(&parts.train),
        held_pixels: pixels(&parts.held),
        held_labels: labels(&parts.held),
        judge_pixels: pixels(&parts.judge),
        judge_labels: labels(&parts.judge),
        seed,
        symmetric: spec.symmetric,
        dequantize: spec.dequantize,
    })
}

impl Split {
    /// Values per image: C·H·W.
    pub fn dim(&self) -> usize {
        self.c * self.h * self.w
    }

    /// The image shape (C, H, W).
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.c, self.h, self.w)
    }

    pub fn n_train(&self) -> usize {
        self.train_labels.len()
    }

    /// A pixel value v ∈ [0, 256) (byte plus dequantisation offset) on the trial's scale.
    fn scale(&self, v: f32) -> f32 {
        let u = v / 256.0;
        if self.symmetric { 2.0 * u - 1.0 } else { u }
    }

    /// Bytes to floats at the centre of each byte's bin (held-out images, deterministic).
    pub fn to_floats(&self, bytes: &[u8]) -> Vec<f32> {
        bytes.iter().map(|&b| self.scale(b as f32 + 0.5)).collect()
    }

    /// A training batch of `n` images (uniformly dequantised: byte + U(0, 1)) and labels.
    pub fn batch(&self, n: usize, rng: &mut Rng) -> (Vec<f32>, Vec<u32>) {
        let d = self.dim();
        let mut x = Vec::with_capacity(n * d);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let i = rng.below(self.n_train());
            labels.push(self.train_labels[i] as u32);
            for &b in &self.train_pixels[i * d..(i + 1) * d] {
                let off = if self.dequantize { rng.uniform() as f32 } else { 0.5 };
                x.push(self.scale(b as f32 + off));
            }
        }
        (x, labels)
    }
}

/// Draws every weight of `varmap` from `rng` (sorted by name, so the same seed gives the same
/// net): weights uniform in ±1/√fan_in (PyTorch's default for conv and linear layers), biases
/// likewise by their layer's fan-in, embeddings N(0, 1), GroupNorm scales 1 and shifts 0.
pub fn init_weights(varmap: &VarMap, rng: &mut Rng) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let values: Vec<f32> = if name.contains("norm") {
            let one = name.ends_with("weight");
            vec![if one { 1.0 } else { 0.0 }; n]
        } else if name.contains("class_emb") {
            (0..n).map(|_| rng.normal() as f32).collect()
        } else {
            let fan_in = if name.ends_with("bias") {
                let w = name.trim_end_matches("bias").to_string() + "weight";
                data.get(&w).map_or(1, |v| v.dims()[1..].iter().product::<usize>())
            } else {
                dims[1..].iter().product::<usize>()
            }
            .max(1);
            let b = 1.0 / (fan_in as f64).sqrt();
            (0..n).map(|_| ((2.0 * rng.uniform() - 1.0) * b) as f32).collect()
        };
        var.set(&Tensor::from_vec(values, dims, var.device())?.to_dtype(DType::F32)?)?;
    }
    Ok(())
}

/// Images of shape (C, H, W), channel-major each, as a (N, C, H, W) tensor.
pub fn tensor(x: &[f32], (c, h, w): (usize, usize, usize), dev: &Device) -> Result<Tensor> {
    Tensor::from_slice(x, (x.len() / (c * h * w), c, h, w), dev)
}
