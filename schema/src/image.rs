//! The image family's validated sections: the image sets ([`ImageData`]), the denoiser nets
//! ([`ImageModel`]: an MLP on the flattened pixels or a U-Net), the denoising objectives
//! ([`ImageObjective`]), each the image variant of a [`crate::trial::Trial`] section
//! (`DataSpec::Images`, `ModelSpec::Image`, `ObjectiveSpec::Denoiser`); the sampler is one type
//! for both families ([`crate::sampler::Sampler`]). The file format and its validation are
//! `form::image`'s.

use std::path::PathBuf;

use crate::caps::{DataCaps, ModelCaps, Net};
use crate::noise::NoiseSpec;

/// The data presets that make a trial an image trial.
pub const IMAGE_PRESETS: [&str; 4] = ["mnist", "fashion", "idx", "shapes3"];

/// The image presets made by code (the engine's `data::shapes`): they read no directory.
pub const GENERATED_PRESETS: [&str; 1] = ["shapes3"];

/// What every image set offers: labels, no exact score.
pub const IMAGE_DATA_CAPS: DataCaps = DataCaps { exact_score: false, labels: true };

#[derive(Debug, Clone, PartialEq)]
pub struct ImageData {
    pub preset: String,
    /// The directory of IDX files; `None`: MNIST's test split compiled into the binary (the
    /// `mnist` preset's default, from the repository's `data/mnist/`), or a generated set's
    /// (`shapes3`) own images.
    pub dir: Option<PathBuf>,
    pub held_out: usize,
    /// Images kept for the digit judge (never trained on by the score model); `None`: 10,000
    /// for a set of at least 50,000 images, else a fifth of the set; 0: the judge trains on
    /// the score model's training part (stated in the metrics and report).
    pub judge: Option<usize>,
    /// Pixels in [−1, 1] (true) or [0, 1] (false).
    pub symmetric: bool,
    pub dequantize: bool,
    /// Train on at most this many images (a stratified subset of the training part), if set.
    pub limit: Option<usize>,
}

/// The image denoiser's network (one variant per kind).
#[derive(Debug, Clone, PartialEq)]
pub enum ImageModel {
    Unet(UnetSpec),
    /// An MLP on the flattened pixels with σ and class embeddings (the CPU workhorse).
    Mlp(ImageMlpSpec),
}

impl ImageModel {
    pub fn class_cond(&self) -> bool {
        match self {
            ImageModel::Unet(u) => u.class_cond,
            ImageModel::Mlp(m) => m.class_cond,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ImageModel::Unet(_) => "unet",
            ImageModel::Mlp(_) => "mlp",
        }
    }

    /// What the net offers beyond D(x; σ, c): the MLP has forward tangents (sliced score
    /// matching), the U-Net none; neither a closed-form trace. Pinned to the engine's nets by
    /// `engine/tests/images.rs`.
    pub fn caps(&self) -> ModelCaps {
        match self {
            ImageModel::Unet(_) => ModelCaps { tangents: false, closed_trace: false, net: Net::Denoiser },
            ImageModel::Mlp(_) => ModelCaps { tangents: true, closed_trace: false, net: Net::Denoiser },
        }
    }
}

/// [c_in·x, Fourier(c_noise), class embedding] → `depth` × (Linear `hidden`, SiLU) → Linear D.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageMlpSpec {
    pub hidden: usize,
    pub depth: usize,
    pub emb: usize,
    pub class_cond: bool,
}

/// A U-Net on 1-channel images (default: 40 channels, mults [1, 2, 2], one block per level,
/// 1.21 M parameters): `channels` at the top level, ×`mults[i]` at level i (each
/// level after the first halves the resolution), `blocks` residual blocks per level, a
/// σ embedding of width `emb`, GroupNorm with `groups` groups, and an optional class embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct UnetSpec {
    pub channels: usize,
    pub mults: Vec<usize>,
    pub blocks: usize,
    pub emb: usize,
    pub groups: usize,
    pub class_cond: bool,
}

/// σ_d of an image objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SigmaData {
    /// A fixed value (the default: 0.5, EDM's).
    Value(f64),
    /// The RMS of the training images' pixels on the trial's scale, measured when the trial
    /// starts (`sigma_data = "data"`).
    Data,
}

/// How an image denoiser is trained: the σ distribution, the loss weight and the network's
/// parametrisation (`kind`), plus what every kind shares.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageObjective {
    pub kind: ImageObjectiveKind,
    /// The data's scale σ_d: EDM's preconditioning and weighting, and the input scaling
    /// 1/√(σ² + σ_d²) of every kind. EDM derives its coefficients for data of second moment
    /// σ_d² (zero mean): 0.5 is its value for CIFAR-10 in [−1, 1]; MNIST in [−1, 1] has an RMS
    /// of about 0.96 (mean −0.74, standard deviation 0.62), which [`SigmaData::Data`] measures.
    pub sigma_data: SigmaData,
    /// Probability of training a batch image without its class (classifier-free guidance).
    pub label_dropout: f64,
}

/// The training objectives of image trials. Every kind is a weighted denoising loss
/// w(σ)·mean‖D(x₀ + σε; σ) − x₀‖² over the pixels, or (SSM) its score-matching counterpart.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageObjectiveKind {
    /// EDM (Karras et al. 2022): ln σ ~ N(p_mean, p_std²), D = c_skip x + c_out F(c_in x),
    /// λ(σ) = (σ² + σ_d²)/(σ σ_d)².
    Edm { p_mean: f64, p_std: f64 },
    /// NCSN's multi-σ DSM: σ uniform over the ladder, S = F/σ, λ(σ) = σ² on the score loss
    /// (w = 1/σ² on the denoiser's).
    Dsm { noise: NoiseSpec },
    /// Continuous-time DSM for the VE SDE (Song et al. 2021): σ = σ_min (σ_max/σ_min)^t,
    /// t ~ U(0, 1), S = F/σ, λ = σ².
    Ve { sigma_min: f64, sigma_max: f64 },
    /// Continuous-time DSM for the VP SDE: β(t) = β_min + t(β_max − β_min), t ~ U(t_min, 1),
    /// x_t = α_t x₀ + √(1 − α_t²) ε, an ε-prediction net ε(x_t, t), λ = 1 − α_t² (the loss
    /// ‖ε(x_t, t) − ε‖²). As a denoiser on the VE scale x = x_t/α_t, σ = √(1 − α_t²)/α_t:
    /// D(x; σ) = x − σ ε(x/√(1 + σ²), t(σ)).
    Vp { beta_min: f64, beta_max: f64, t_min: f64 },
    /// Sliced score matching on the ladder's perturbed images (SSM, or SSM-VR with `vr`),
    /// S = F/σ, λ(σ) = σ²; through the MLP only (forward tangents).
    Ssm { noise: NoiseSpec, vr: bool },
}

impl ImageObjectiveKind {
    /// The noise ladder it trains on (DSM and SSM).
    pub fn noise(&self) -> Option<&NoiseSpec> {
        match self {
            ImageObjectiveKind::Dsm { noise } | ImageObjectiveKind::Ssm { noise, .. } => Some(noise),
            ImageObjectiveKind::Edm { .. } | ImageObjectiveKind::Ve { .. } | ImageObjectiveKind::Vp { .. } => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ImageObjectiveKind::Edm { .. } => "edm",
            ImageObjectiveKind::Dsm { .. } => "dsm",
            ImageObjectiveKind::Ve { .. } => "ve",
            ImageObjectiveKind::Vp { .. } => "vp",
            ImageObjectiveKind::Ssm { vr: false, .. } => "ssm",
            ImageObjectiveKind::Ssm { vr: true, .. } => "ssm_vr",
        }
    }
}
