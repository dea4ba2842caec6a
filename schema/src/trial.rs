//! The validated trial: one [`Trial`] type for both model families (score nets on Gaussian
//! mixtures, denoisers on image sets), whose sections are tagged enums spanning both:
//! [`DataSpec`] (a mixture or an image set), [`ModelSpec`] (`mlp`, `energy_mlp`, or an image net),
//! [`ObjectiveSpec`] (score matching on a score net, or a weighted denoising loss on a denoiser),
//! [`TrainSpec`], [`EvalSpec`] and the sampler ([`crate::sampler::Sampler`], one type for both
//! families, `None` for no sampling). Each variant holds only the fields that
//! apply to it, so the engine matches on what a trial is and never on placeholder values; which
//! sections go together ("X needs Y") is [`crate::caps`]'s to check, and validation refuses the
//! rest at the key to change. The file's raw forms and the validation that builds a `Trial` are
//! [`crate::form`]'s; a scheduler benchmark that only sleeps is its own variant,
//! [`TrialConfig::Sleep`].

use serde::Deserialize;

use crate::caps::{DataCaps, ModelCaps, Needs, Net, Points};
use crate::data::MixtureSpec;
use crate::image::{IMAGE_DATA_CAPS, ImageData, ImageModel, ImageObjective};
pub use crate::noise::NoiseSpec;
use crate::sampler::Sampler;
pub use crate::validate::{FieldError, field};

// ---------------------------------------------------------------- plain enums of the file

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Silu,
    Softplus,
    Tanh,
    Relu,
}

impl Activation {
    /// Has a continuous second derivative (needed where ∂S/∂x is differentiated in θ).
    pub fn is_smooth(self) -> bool {
        !matches!(self, Activation::Relu)
    }

    pub fn name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::Softplus => "softplus",
            Activation::Tanh => "tanh",
            Activation::Relu => "relu",
        }
    }
}

/// The score-matching objectives of a score net S(x, σ) on mixture data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectiveKind {
    Esm,
    Ism,
    Ssm,
    SsmVr,
    Dsm,
}

impl ObjectiveKind {
    /// Differentiates ∂S/∂x (a trace or a projection) in θ.
    pub fn needs_jacobian(self) -> bool {
        matches!(self, ObjectiveKind::Ism | ObjectiveKind::Ssm | ObjectiveKind::SsmVr)
    }

    pub fn name(self) -> &'static str {
        match self {
            ObjectiveKind::Esm => "esm",
            ObjectiveKind::Ism => "ism",
            ObjectiveKind::Ssm => "ssm",
            ObjectiveKind::SsmVr => "ssm_vr",
            ObjectiveKind::Dsm => "dsm",
        }
    }

    /// What this objective needs of the model and the data.
    pub fn needs(self) -> Needs {
        let none = Needs { net: Net::Score, exact_score: false, exact_trace: false, tangents: false, noise_ladder: false };
        match self {
            ObjectiveKind::Esm => Needs { exact_score: true, ..none },
            ObjectiveKind::Ism => Needs { exact_trace: true, ..none },
            ObjectiveKind::Ssm | ObjectiveKind::SsmVr => Needs { tangents: true, ..none },
            ObjectiveKind::Dsm => Needs { noise_ladder: true, ..none },
        }
    }
}

/// Distribution of SSM's random projections v.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ProbeDist {
    Rademacher,
    Gaussian,
}

// ---------------------------------------------------------------- the validated trial

/// A validated trial: a scheduler benchmark that only sleeps, or a training trial.
#[derive(Debug, Clone, PartialEq)]
pub enum TrialConfig {
    Sleep(SleepTrial),
    Train(Box<Trial>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SleepTrial {
    pub seed: u64,
    pub name: Option<String>,
    pub seconds: f64,
}

/// A training trial of either family: every section validated, every file-level default
/// resolved, and the sections checked to go together (`caps`): mixture data with a vector
/// model and a score objective; image data with an image net and a denoising objective; either
/// with a sampler of the kinds its family takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    pub seed: u64,
    pub name: Option<String>,
    pub data: DataSpec,
    pub model: ModelSpec,
    pub objective: ObjectiveSpec,
    pub train: TrainSpec,
    pub eval: EvalSpec,
    /// None: `sampler.kind = "none"`.
    pub sampler: Option<Sampler>,
}

impl TrialConfig {
    pub fn seed(&self) -> u64 {
        match self {
            TrialConfig::Sleep(s) => s.seed,
            TrialConfig::Train(t) => t.seed,
        }
    }

    /// The training trial, if this is one.
    pub fn train(&self) -> Option<&Trial> {
        match self {
            TrialConfig::Train(t) => Some(t),
            TrialConfig::Sleep(_) => None,
        }
    }
}

impl Trial {
    /// The noise ladder the objective trains on, if any (`objective.noise`).
    pub fn noise(&self) -> Option<&NoiseSpec> {
        self.objective.noise()
    }

    /// Whether a score net takes σ (a noise ladder is configured).
    pub fn conditional(&self) -> bool {
        self.noise().is_some()
    }
}

/// Where training points come from (one variant per data kind).
#[derive(Debug, Clone, PartialEq)]
pub enum DataSpec {
    /// A Gaussian mixture: a preset (`seed1d`, `ncsn2d`, `ring8`, `iso`) or `custom`.
    Mixture { preset: String, mixture: MixtureSpec },
    /// An image set (`mnist`, `fashion`, `idx`, `shapes3`): see [`crate::image`].
    Images(ImageData),
}

impl DataSpec {
    /// The label in tables (the preset name).
    pub fn label(&self) -> &str {
        match self {
            DataSpec::Mixture { preset, .. } => preset,
            DataSpec::Images(d) => &d.preset,
        }
    }

    pub fn caps(&self) -> DataCaps {
        match self {
            DataSpec::Mixture { .. } => DataCaps { exact_score: true, labels: false },
            DataSpec::Images(_) => IMAGE_DATA_CAPS,
        }
    }

    /// What the data's points are (what a model must take).
    pub fn points(&self) -> Points {
        match self {
            DataSpec::Mixture { .. } => Points::Vectors,
            DataSpec::Images(_) => Points::Images,
        }
    }

    /// The mixture, for mixture data.
    pub fn mixture(&self) -> Option<&MixtureSpec> {
        match self {
            DataSpec::Mixture { mixture, .. } => Some(mixture),
            DataSpec::Images(_) => None,
        }
    }

    /// The image set, for image data.
    pub fn images(&self) -> Option<&ImageData> {
        match self {
            DataSpec::Images(d) => Some(d),
            DataSpec::Mixture { .. } => None,
        }
    }
}

/// Shape of an MLP on vectors (score net or energy net).
#[derive(Debug, Clone, PartialEq)]
pub struct MlpSpec {
    pub hidden: usize,
    pub depth: usize,
    pub activation: Activation,
    /// Multiply the score by 1/σ (NCSNv2's s(x)/σ).
    pub scale_by_sigma: bool,
}

/// The model (one variant per model kind; the image nets grouped as [`ImageModel`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSpec {
    /// S(x, σ) = MLP([x, log σ]) on vectors.
    Mlp(MlpSpec),
    /// S = ∇ₓ q(x, σ) of a scalar MLP energy q on vectors.
    EnergyMlp(MlpSpec),
    /// A denoiser on images: the image MLP (`kind = "mlp"` on image data) or the U-Net.
    Image(ImageModel),
}

impl ModelSpec {
    pub fn name(&self) -> &'static str {
        match self {
            ModelSpec::Mlp(_) => "mlp",
            ModelSpec::EnergyMlp(_) => "energy_mlp",
            ModelSpec::Image(m) => m.name(),
        }
    }

    /// What this model kind computes; the engine's model registries are tested against it.
    pub fn caps(&self) -> ModelCaps {
        match self {
            ModelSpec::Mlp(m) => ModelCaps { tangents: true, closed_trace: m.depth <= 2, net: Net::Score },
            ModelSpec::EnergyMlp(_) => ModelCaps { tangents: true, closed_trace: false, net: Net::Score },
            ModelSpec::Image(m) => m.caps(),
        }
    }

    /// Whether the model takes a class label (image nets with `class_cond`).
    pub fn class_cond(&self) -> bool {
        match self {
            ModelSpec::Mlp(_) | ModelSpec::EnergyMlp(_) => false,
            ModelSpec::Image(m) => m.class_cond(),
        }
    }

    /// The image net, for image trials.
    pub fn image(&self) -> Option<&ImageModel> {
        match self {
            ModelSpec::Image(m) => Some(m),
            ModelSpec::Mlp(_) | ModelSpec::EnergyMlp(_) => None,
        }
    }
}

/// How the model is trained: score matching on a score net, or a denoising loss on a denoiser
/// (`caps::Net` pairs each with its models).
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectiveSpec {
    /// ESM, ISM, SSM, SSM-VR or DSM on a score net S(x, σ) (mixture data).
    Score(ScoreObjective),
    /// EDM, DSM, VE, VP or SSM on a denoiser D(x; σ, c) (image data): see [`ImageObjective`].
    Denoiser(ImageObjective),
}

impl ObjectiveSpec {
    pub fn name(&self) -> &'static str {
        match self {
            ObjectiveSpec::Score(s) => s.kind.name(),
            ObjectiveSpec::Denoiser(d) => d.kind.name(),
        }
    }

    /// The noise ladder it trains on, if any.
    pub fn noise(&self) -> Option<&NoiseSpec> {
        match self {
            ObjectiveSpec::Score(s) => s.noise.as_ref(),
            ObjectiveSpec::Denoiser(d) => d.kind.noise(),
        }
    }

    /// Whether it reports the SSM loss at checkpoints (score nets trained by SSM or SSM-VR).
    pub fn is_score_ssm(&self) -> bool {
        matches!(self, ObjectiveSpec::Score(ScoreObjective { kind: ObjectiveKind::Ssm | ObjectiveKind::SsmVr, .. }))
    }

    /// The score objective, for mixture trials.
    pub fn score(&self) -> Option<&ScoreObjective> {
        match self {
            ObjectiveSpec::Score(s) => Some(s),
            ObjectiveSpec::Denoiser(_) => None,
        }
    }

    /// The denoising objective, for image trials.
    pub fn denoiser(&self) -> Option<&ImageObjective> {
        match self {
            ObjectiveSpec::Denoiser(d) => Some(d),
            ObjectiveSpec::Score(_) => None,
        }
    }
}

/// Score matching on a score net.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreObjective {
    pub kind: ObjectiveKind,
    /// The noise ladder (`objective.noise`); with one, the score net is noise-conditional.
    pub noise: Option<NoiseSpec>,
    /// SSM probes per point and their distribution (also used to evaluate L_SSM).
    pub probes: usize,
    pub probe: ProbeDist,
    /// Basis tangents per chunk for the exact trace (bounds memory).
    pub trace_chunk: usize,
}

/// The training run, both families.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSpec {
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    /// How the rate changes over the steps (default constant).
    pub lr_schedule: crate::lr::LrSchedule,
    /// Evaluate every this many steps (and at step 0 and at the end).
    pub eval_every: u64,
    /// A fixed training set of this many points drawn once (mixture data only; None: fresh
    /// points every step, or an image set's training part).
    pub n_train: Option<usize>,
    /// EMA decay of the weights used for sampling and metrics (image trials; 0: none, as for
    /// every mixture trial).
    pub ema: f64,
}

/// What the metrics are measured on.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSpec {
    /// Evaluation points (mixture data) or held-out images (at most `data.held_out`).
    pub n: usize,
    /// The loss-gap checkpoints' settings: with data that has an exact score (mixtures) only.
    pub gaps: Option<GapEval>,
}

/// The ESM/ISM and DSM gaps' settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GapEval {
    /// σ of the DSM gap; None: the middle level of the ladder (resolved by the engine's plan).
    pub dsm_sigma: Option<f64>,
    /// Monte Carlo draws of the score-norm constants.
    pub c_samples: usize,
}
