//! The trial schema: a raw serde form that mirrors the TOML file (`deny_unknown_fields`
//! everywhere, so errors name the exact key), then a validated [`TrialConfig`] whose sections
//! are tagged enums (one variant per data preset, model kind, objective and sampler, each with
//! only the fields that apply), so the engine matches on what a trial is and never on
//! placeholder values. Errors name the dotted key; [`TrialConfig::from_file`] adds the file,
//! line and column.
//!
//! ```toml
//! seed = 0
//! [data]       # preset = "seed1d" | "ncsn2d" | "ring8" | "iso" (dim, components, separation)
//! preset = "ncsn2d"   # | "custom" (weights, means, stds)
//! [model]      # kind = "mlp" | "energy_mlp"; hidden; depth; activation = silu|softplus|tanh|relu; scale_by_sigma
//! kind = "mlp"
//! [objective]  # kind = esm | ism | ssm | ssm_vr | dsm; probes; probe = rademacher|gaussian; trace_chunk
//! kind = "dsm"
//! noise = { ladder = "geometric", sigma_max = 10.0, sigma_min = 0.1, levels = 10 }
//! #       { ladder = "list", sigmas = [1.0, 0.5] } | { ladder = "auto", sigma_min = 0.01, levels = 10 }
//! [train]      # steps, batch, lr, lr_schedule = constant | cosine | linear, warmup (steps),
//!              # eval_every, n_train (fixed training set; default: fresh samples)
//! steps = 3000
//! [eval]       # n, dsm_sigma, c_samples
//! [sampler]    # kind = annealed_langevin | langevin | score_ascent | none; steps_per_level; steps;
//!              # or kind = heun | euler_maruyama | pc (snr) | ddim: `steps` levels of EDM's
//!              # ρ = 7 schedule between the ladder's ends, chains from σ_max z;
//!              # eps (number or "auto": the Langevin step x ← x + εS + √(2ε)z at the smallest
//!              # level, below 2·sigma_min²); n; denoise; box
//! kind = "annealed_langevin"
//! ```
//! A trial with a top-level `[sleep] seconds = x` only sleeps (scheduler benchmarks) and takes
//! no other section: it is its own variant, [`TrialConfig::Sleep`].
//!
//! What validation resolves: every default, the evaluation sizes, the sampler's step counts and
//! initial box, and the capability checks (an objective the model or the data cannot serve is
//! refused here). What depends on data the engine draws (the `auto` ladder's σ₁, hence an
//! `auto` step size and the default evaluation σ) is resolved by the engine's trial plan before
//! any training.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::caps::{self, DataCaps, ModelCaps, Needs};
use crate::data::MixtureSpec;
use crate::image::{ImageTrial, RawImageTrial};
use crate::locate::{line_col, locate};
pub use crate::noise::NoiseSpec;
use crate::noise::{RawNoise, validate_noise};
use crate::sampler::SamplerKind;
pub use crate::validate::{FieldError, field};
use crate::validate::{in_range, langevin_step_is_stable, positive, raw_error, required};

/// A trial file that could not be read or is invalid, located in the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}:1:1: not UTF-8 text (byte {offset} is invalid)", path.display())]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error("{}:{line}:{column}: invalid TOML: {message}", path.display())]
    Syntax { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{}:{line}:{column}: key `{key}`: {message}", path.display())]
    Invalid { path: PathBuf, line: usize, column: usize, key: String, message: String },
}

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

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
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
        let none = Needs { exact_score: false, exact_trace: false, tangents: false, noise_ladder: false };
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

// ---------------------------------------------------------------- raw form (mirrors the file)

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawTrial {
    #[serde(default)]
    seed: u64,
    name: Option<String>,
    data: Option<RawData>,
    model: Option<RawModel>,
    objective: Option<RawObjective>,
    train: Option<RawTrain>,
    eval: Option<RawEval>,
    sampler: Option<RawSampler>,
    sleep: Option<RawSleep>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawData {
    preset: String,
    dim: Option<usize>,
    components: Option<usize>,
    separation: Option<f64>,
    weights: Option<Vec<f64>>,
    means: Option<Vec<Vec<f64>>>,
    stds: Option<Vec<f64>>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum RawModelKind {
    Mlp,
    EnergyMlp,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawModel {
    kind: RawModelKind,
    #[serde(default = "d_hidden")]
    hidden: usize,
    #[serde(default = "d_depth")]
    depth: usize,
    #[serde(default = "d_act")]
    activation: Activation,
    #[serde(default)]
    scale_by_sigma: bool,
}
fn d_hidden() -> usize {
    128
}
fn d_depth() -> usize {
    2
}
fn d_act() -> Activation {
    Activation::Silu
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawObjective {
    kind: ObjectiveKind,
    noise: Option<RawNoise>,
    #[serde(default = "d_one")]
    probes: usize,
    #[serde(default = "d_probe")]
    probe: ProbeDist,
    #[serde(default = "d_chunk")]
    trace_chunk: usize,
}
fn d_one() -> usize {
    1
}
fn d_probe() -> ProbeDist {
    ProbeDist::Rademacher
}
fn d_chunk() -> usize {
    64
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawTrain {
    steps: u64,
    #[serde(default = "d_batch")]
    batch: usize,
    #[serde(default = "d_lr")]
    lr: f64,
    #[serde(default)]
    eval_every: u64,
    n_train: Option<usize>,
    lr_schedule: Option<crate::lr::LrDecay>,
    warmup: Option<u64>,
}
fn d_batch() -> usize {
    256
}
fn d_lr() -> f64 {
    1e-3
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawEval {
    n: Option<usize>,
    dsm_sigma: Option<f64>,
    c_samples: Option<usize>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum RawEps {
    Value(f64),
    Word(String),
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawSampler {
    kind: SamplerKind,
    #[serde(default = "d_spl")]
    steps_per_level: usize,
    steps: Option<usize>,
    eps: Option<RawEps>,
    #[serde(default = "d_n")]
    n: usize,
    #[serde(default = "d_true")]
    denoise: bool,
    #[serde(rename = "box")]
    box_half: Option<f64>,
    snr: Option<f64>,
}
fn d_spl() -> usize {
    100
}
fn d_n() -> usize {
    2000
}
fn d_true() -> bool {
    true
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawSleep {
    seconds: f64,
}

// ---------------------------------------------------------------- validated form

/// The toy data presets (Gaussian mixtures).
pub const TOY_PRESETS: [&str; 5] = ["seed1d", "ncsn2d", "ring8", "iso", "custom"];

/// The error for a `data.preset` that names no data set, listing the ones there are.
fn unknown_preset(name: &str) -> FieldError {
    let images = crate::image::IMAGE_PRESETS.join(", ");
    field("data.preset", format!("unknown preset `{name}` (expected {}; image sets: {images})", TOY_PRESETS.join(", ")))
}

/// A validated trial: a scheduler benchmark that only sleeps, or a training trial.
#[derive(Debug, Clone, PartialEq)]
pub enum TrialConfig {
    Sleep(SleepTrial),
    Train(Box<TrainTrial>),
    /// An image trial (`data.preset` = mnist, fashion, idx or shapes3): see [`crate::image`].
    Image(Box<ImageTrial>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SleepTrial {
    pub seed: u64,
    pub name: Option<String>,
    pub seconds: f64,
}

/// A training trial: every section validated and every file-level default resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainTrial {
    pub seed: u64,
    pub name: Option<String>,
    pub data: DataSpec,
    pub model: ModelSpec,
    pub objective: ObjectiveSpec,
    /// The noise ladder (`objective.noise`); with one, the model is noise-conditional.
    pub noise: Option<NoiseSpec>,
    pub train: TrainSpec,
    pub eval: EvalSpec,
    pub sampler: SamplerSpec,
}

/// Where training points come from (one variant per data kind).
#[derive(Debug, Clone, PartialEq)]
pub enum DataSpec {
    /// A Gaussian mixture: a preset (`seed1d`, `ncsn2d`, `ring8`, `iso`) or `custom`.
    Mixture { preset: String, mixture: MixtureSpec },
}

impl DataSpec {
    pub fn dim(&self) -> usize {
        match self {
            DataSpec::Mixture { mixture, .. } => mixture.dim,
        }
    }

    /// The label in tables (the preset name).
    pub fn label(&self) -> &str {
        match self {
            DataSpec::Mixture { preset, .. } => preset,
        }
    }

    pub fn caps(&self) -> DataCaps {
        match self {
            DataSpec::Mixture { .. } => DataCaps { exact_score: true, labels: false },
        }
    }
}

/// Shape of an MLP (score net or energy net).
#[derive(Debug, Clone, PartialEq)]
pub struct MlpSpec {
    pub hidden: usize,
    pub depth: usize,
    pub activation: Activation,
    /// Multiply the score by 1/σ (NCSNv2's s(x)/σ).
    pub scale_by_sigma: bool,
}

/// The score model (one variant per model kind).
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSpec {
    /// S(x, σ) = MLP([x, log σ]).
    Mlp(MlpSpec),
    /// S = ∇ₓ q(x, σ) of a scalar MLP energy q.
    EnergyMlp(MlpSpec),
}

impl ModelSpec {
    pub fn name(&self) -> &'static str {
        match self {
            ModelSpec::Mlp(_) => "mlp",
            ModelSpec::EnergyMlp(_) => "energy_mlp",
        }
    }

    /// What this model kind computes; the engine's model registry is tested against it.
    pub fn caps(&self) -> ModelCaps {
        match self {
            ModelSpec::Mlp(m) => ModelCaps { tangents: true, closed_trace: m.depth <= 2 },
            ModelSpec::EnergyMlp(_) => ModelCaps { tangents: true, closed_trace: false },
        }
    }

    pub fn mlp(&self) -> &MlpSpec {
        match self {
            ModelSpec::Mlp(m) | ModelSpec::EnergyMlp(m) => m,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObjectiveSpec {
    pub kind: ObjectiveKind,
    /// SSM probes per point and their distribution (also used to evaluate L_SSM).
    pub probes: usize,
    pub probe: ProbeDist,
    /// Basis tangents per chunk for the exact trace (bounds memory).
    pub trace_chunk: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainSpec {
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    /// How the rate changes over the steps (default constant).
    pub lr_schedule: crate::lr::LrSchedule,
    /// Evaluate every this many steps (and at step 0 and at the end).
    pub eval_every: u64,
    pub n_train: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EvalSpec {
    pub n: usize,
    /// σ of the DSM gap; None: the middle level of the ladder (resolved by the engine's plan).
    pub dsm_sigma: Option<f64>,
    pub c_samples: usize,
}

/// A Langevin step size: a number, or NCSNv2's rule for the ladder (`"auto"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepSize {
    Fixed(f64),
    Auto,
}

/// Where chains start: n points uniform in [−box, box]^D.
#[derive(Debug, Clone, PartialEq)]
pub struct Init {
    pub n: usize,
    pub box_half: f64,
}

/// How samples are drawn (one variant per sampler).
#[derive(Debug, Clone, PartialEq)]
pub enum SamplerSpec {
    None,
    /// NCSN: `steps_per_level` steps at each level with α_i = ε σ_i²/σ_L², then optionally
    /// x + σ_L² S(x, σ_L).
    AnnealedLangevin {
        init: Init,
        steps_per_level: usize,
        eps: StepSize,
        denoise: bool,
    },
    /// `steps` steps x ← x + α S + √(2α) z (NCSN's convention, as annealed Langevin's) at the
    /// smallest σ (or the unconditional score).
    Langevin {
        init: Init,
        steps: usize,
        eps: StepSize,
        steps_per_level: usize,
    },
    /// `steps` steps x ← x + α S.
    ScoreAscent {
        init: Init,
        steps: usize,
        eps: StepSize,
        steps_per_level: usize,
    },
    /// The probability-flow ODE by Heun's steps (EDM) over `steps` levels of EDM's ρ = 7
    /// schedule between the ladder's largest and smallest σ, from σ_max z: 2·steps − 1
    /// evaluations.
    Heun {
        n: usize,
        steps: usize,
    },
    /// The reverse VE SDE by Euler–Maruyama over the same schedule: `steps` evaluations.
    EulerMaruyama {
        n: usize,
        steps: usize,
    },
    /// Euler–Maruyama plus one Langevin corrector step at signal-to-noise ratio `snr`.
    Pc {
        n: usize,
        steps: usize,
        snr: f64,
    },
    /// DDIM (η = 0) over the same schedule: `steps` evaluations.
    Ddim {
        n: usize,
        steps: usize,
    },
}

impl SamplerSpec {
    pub fn name(&self) -> &'static str {
        match self {
            SamplerSpec::None => "none",
            SamplerSpec::AnnealedLangevin { .. } => "annealed_langevin",
            SamplerSpec::Langevin { .. } => "langevin",
            SamplerSpec::ScoreAscent { .. } => "score_ascent",
            SamplerSpec::Heun { .. } => "heun",
            SamplerSpec::EulerMaruyama { .. } => "euler_maruyama",
            SamplerSpec::Pc { .. } => "pc",
            SamplerSpec::Ddim { .. } => "ddim",
        }
    }
}

/// Largest accepted sizes, to refuse trials that could not fit in memory.
const MAX_DIM: usize = 4096;
const MAX_HIDDEN: usize = 8192;
const MAX_POINTS: usize = 10_000_000;

/// The most memory a trial may need by [`check_memory`]'s estimate: 64 GiB. Each size has its
/// own limit; this bounds their product (`data.dim` 4096 with `eval.n` 10⁷ is 164 GB of f32
/// points, which would kill the worker by OOM instead of being refused here).
pub const MAX_TRIAL_MEMORY_BYTES: u64 = 64 << 30;

/// Refuses a trial whose estimated memory is over [`MAX_TRIAL_MEMORY_BYTES`], naming its
/// largest set of points: the estimate is that set as f32 points of dimension `dim`, twice (the
/// points and one working copy of the same shape), plus the model's parameters with their
/// gradients and two AdamW moments (4 × f32 each). A lower bound of what the engine holds,
/// meant to catch the products that cannot fit anywhere, not to pack memory tightly.
fn check_memory(dim: usize, sets: &[(&'static str, usize)], hidden: usize, depth: usize) -> Result<(), FieldError> {
    let Some(&(key, n)) = sets.iter().max_by_key(|(_, n)| *n) else { return Ok(()) };
    let points = 2 * 4 * (n as u128) * (dim as u128);
    let params = (hidden as u128) * (hidden as u128) * (depth as u128) + 2 * (hidden as u128) * (dim as u128 + 1);
    let bytes = points + 16 * params;
    if bytes > MAX_TRIAL_MEMORY_BYTES as u128 {
        return Err(field(
            key,
            format!(
                "the trial would need about {:.1} GB ({n} points of dimension {dim} as f32, with a working copy, and the model), more than the {} GiB a trial may use: lower {key} or data.dim",
                bytes as f64 / 1e9,
                MAX_TRIAL_MEMORY_BYTES >> 30
            ),
        ));
    }
    Ok(())
}

impl TrialConfig {
    /// Validate a trial given as a TOML table (a sweep's `[base]` with expansions applied).
    pub fn from_value(v: &toml::Value) -> Result<TrialConfig, FieldError> {
        // An unknown preset is named as such, before the toy schema refuses an image key.
        if let Some(p) = v.get("data").and_then(|d| d.get("preset")).and_then(|p| p.as_str())
            && !TOY_PRESETS.contains(&p)
            && !crate::image::IMAGE_PRESETS.contains(&p)
        {
            return Err(unknown_preset(p));
        }
        if crate::image::is_image(v) {
            let raw: RawImageTrial = serde_path_to_error::deserialize(v.clone()).map_err(raw_error)?;
            return Ok(TrialConfig::Image(Box::new(crate::image::validate(raw)?)));
        }
        let raw: RawTrial = serde_path_to_error::deserialize(v.clone()).map_err(raw_error)?;
        validate(raw)
    }

    /// Parse and validate a trial file; errors carry file, line, column and key.
    pub fn from_file(path: &Path) -> Result<TrialConfig, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        let src = String::from_utf8(bytes).map_err(|e| ConfigError::NotUtf8 { path: path.to_path_buf(), offset: e.utf8_error().valid_up_to() })?;
        Self::from_str_at(&src, path)
    }

    /// As [`from_file`](Self::from_file) for source text already read from `path`.
    pub fn from_str_at(src: &str, path: &Path) -> Result<TrialConfig, ConfigError> {
        let value: toml::Value = toml::from_str(src).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(src, s.start)).unwrap_or((1, 1));
            ConfigError::Syntax { path: path.to_path_buf(), line, column, message: e.message().to_string() }
        })?;
        Self::from_value(&value).map_err(|e| {
            let (line, column) = locate(src, &e.key).unwrap_or((1, 1));
            ConfigError::Invalid { path: path.to_path_buf(), line, column, key: e.key, message: e.message }
        })
    }

    pub fn seed(&self) -> u64 {
        match self {
            TrialConfig::Sleep(s) => s.seed,
            TrialConfig::Train(t) => t.seed,
            TrialConfig::Image(t) => t.seed,
        }
    }

    /// The training trial, if this is one.
    pub fn train(&self) -> Option<&TrainTrial> {
        match self {
            TrialConfig::Train(t) => Some(t),
            TrialConfig::Sleep(_) | TrialConfig::Image(_) => None,
        }
    }
}

impl TrainTrial {
    /// Whether the score net takes σ (a noise ladder is configured).
    pub fn conditional(&self) -> bool {
        self.noise.is_some()
    }
}

fn validate(raw: RawTrial) -> Result<TrialConfig, FieldError> {
    if let Some(s) = &raw.sleep {
        let seconds = positive("sleep.seconds", s.seconds)?;
        if seconds > 86_400.0 {
            return Err(field("sleep.seconds", "must be at most one day"));
        }
        let others = [
            ("data", raw.data.is_some()),
            ("model", raw.model.is_some()),
            ("objective", raw.objective.is_some()),
            ("train", raw.train.is_some()),
            ("eval", raw.eval.is_some()),
            ("sampler", raw.sampler.is_some()),
        ];
        if let Some((k, _)) = others.iter().find(|(_, set)| *set) {
            return Err(field(k, "does not apply to a sleep trial ([sleep] takes no other section)"));
        }
        return Ok(TrialConfig::Sleep(SleepTrial { seed: raw.seed, name: raw.name, seconds }));
    }
    let data = validate_data(&required("data", raw.data)?)?;
    let dim = data.dim();

    let m = required("model", raw.model)?;
    in_range("model.hidden", m.hidden, 1, MAX_HIDDEN)?;
    in_range("model.depth", m.depth, 1, 16)?;
    let mlp = MlpSpec { hidden: m.hidden, depth: m.depth, activation: m.activation, scale_by_sigma: m.scale_by_sigma };
    let model = match m.kind {
        RawModelKind::Mlp => ModelSpec::Mlp(mlp),
        RawModelKind::EnergyMlp => {
            if !m.activation.is_smooth() {
                return Err(field("model.activation", format!("energy_mlp needs a smooth activation (its score uses a' and a''); `{}` is not", m.activation.name())));
            }
            ModelSpec::EnergyMlp(mlp)
        }
    };

    let o = required("objective", raw.objective)?;
    if o.kind.needs_jacobian() && !m.activation.is_smooth() {
        return Err(field("model.activation", format!("objective `{}` differentiates ∂S/∂x in θ and needs a smooth activation; `{}` is not", o.kind.name(), m.activation.name())));
    }
    in_range("objective.probes", o.probes, 1, 1024)?;
    in_range("objective.trace_chunk", o.trace_chunk, 1, MAX_DIM)?;
    let noise = o.noise.as_ref().map(validate_noise).transpose()?;
    caps::check(o.kind.name(), o.kind.needs(), model.name(), model.caps(), data.label(), data.caps(), noise.is_some())?;
    if m.scale_by_sigma && noise.is_none() {
        return Err(field("model.scale_by_sigma", "needs a noise ladder (objective.noise)"));
    }
    let objective = ObjectiveSpec { kind: o.kind, probes: o.probes, probe: o.probe, trace_chunk: o.trace_chunk };

    let t = required("train", raw.train)?;
    if t.steps > 10_000_000 {
        return Err(field("train.steps", format!("must be at most 10000000 (got {})", t.steps)));
    }
    in_range("train.batch", t.batch, 1, 1 << 20)?;
    positive("train.lr", t.lr)?;
    if let Some(n) = t.n_train {
        in_range("train.n_train", n, 2, MAX_POINTS)?;
    }
    let eval_every = if t.eval_every == 0 { t.steps.max(1) } else { t.eval_every };
    let lr_schedule = crate::lr::LrSchedule::new(t.lr_schedule, t.warmup, t.steps)?;
    let train = TrainSpec { steps: t.steps, batch: t.batch, lr: t.lr, lr_schedule, eval_every, n_train: t.n_train };

    let e = raw.eval.unwrap_or_default();
    let n_eval = in_range("eval.n", e.n.unwrap_or(if dim <= 2 { 100_000 } else { 20_000 }), 2, MAX_POINTS)?;
    if let Some(s) = e.dsm_sigma {
        positive("eval.dsm_sigma", s)?;
        if noise.is_none() {
            return Err(field("eval.dsm_sigma", "needs a noise-conditional model (objective.noise)"));
        }
    }
    let c_samples = in_range("eval.c_samples", e.c_samples.unwrap_or(200_000), 2, MAX_POINTS)?;
    let eval = EvalSpec { n: n_eval, dsm_sigma: e.dsm_sigma, c_samples };

    let raw_sampler = required("sampler", raw.sampler)?;
    let sampler = validate_sampler(&raw_sampler, &data, noise.as_ref())?;
    let sets = [("eval.n", n_eval), ("eval.c_samples", c_samples), ("train.n_train", t.n_train.unwrap_or(0)), ("sampler.n", raw_sampler.n), ("train.batch", t.batch)];
    check_memory(dim, &sets, m.hidden, m.depth)?;
    Ok(TrialConfig::Train(Box::new(TrainTrial { seed: raw.seed, name: raw.name, data, model, objective, noise, train, eval, sampler })))
}

fn validate_sampler(s: &RawSampler, data: &DataSpec, noise: Option<&NoiseSpec>) -> Result<SamplerSpec, FieldError> {
    in_range("sampler.steps_per_level", s.steps_per_level, 1, 1_000_000)?;
    in_range("sampler.n", s.n, 1, MAX_POINTS)?;
    let eps = match &s.eps {
        None => StepSize::Fixed(if s.kind == SamplerKind::ScoreAscent { 0.1 } else { 2e-5 }),
        Some(RawEps::Value(v)) => StepSize::Fixed(positive("sampler.eps", *v)?),
        Some(RawEps::Word(w)) if w == "auto" => {
            if noise.is_none() {
                return Err(field("sampler.eps", "\"auto\" needs a noise ladder (objective.noise)"));
            }
            StepSize::Auto
        }
        Some(RawEps::Word(w)) => return Err(field("sampler.eps", format!("must be a positive number or \"auto\" (got \"{w}\")"))),
    };
    use SamplerKind as K;
    let ode_sde = matches!(s.kind, K::Heun | K::EulerMaruyama | K::Pc | K::Ddim);
    if ode_sde {
        if noise.is_none() {
            return Err(field("sampler.kind", "the ODE/SDE samplers need a noise ladder (objective.noise)"));
        }
        for (key, set) in [("sampler.eps", s.eps.is_some()), ("sampler.box", s.box_half.is_some())] {
            if set {
                return Err(field(key, "applies to the Langevin samplers only (the ODE/SDE ones start at σ_max z)"));
            }
        }
    } else if s.kind != K::None
        && let (StepSize::Fixed(eps), Some(sigma_min)) = (eps, noise.map(NoiseSpec::sigma_min))
    {
        // Every Langevin-family sampler steps at the ladder's smallest level: a fixed step
        // must be stable there (NCSNv2's "auto" rule is, by construction).
        langevin_step_is_stable("sampler.eps", eps, sigma_min, "objective.noise.sigma_min")?;
    }
    if s.snr.is_some() && s.kind != K::Pc {
        return Err(field("sampler.snr", "applies to kind = \"pc\" only"));
    }
    let levels = noise.map_or(1, NoiseSpec::levels);
    let ode_steps = || in_range("sampler.steps", s.steps.unwrap_or(if s.kind == K::Heun { 18 } else { 100 }), 2, 100_000);
    let steps = in_range("sampler.steps", s.steps.unwrap_or(levels * s.steps_per_level), 1, 100_000_000)?;
    let DataSpec::Mixture { mixture, .. } = data;
    let box_half = positive("sampler.box", s.box_half.unwrap_or_else(|| mixture.extent() - 3.0 * mixture.max_std()))?;
    let init = Init { n: s.n, box_half };
    Ok(match s.kind {
        SamplerKind::None => SamplerSpec::None,
        SamplerKind::AnnealedLangevin => {
            if noise.is_none() {
                return Err(field("sampler.kind", "annealed_langevin needs a noise ladder (objective.noise)"));
            }
            SamplerSpec::AnnealedLangevin { init, steps_per_level: s.steps_per_level, eps, denoise: s.denoise }
        }
        SamplerKind::Langevin => SamplerSpec::Langevin { init, steps, eps, steps_per_level: s.steps_per_level },
        SamplerKind::ScoreAscent => SamplerSpec::ScoreAscent { init, steps, eps, steps_per_level: s.steps_per_level },
        SamplerKind::Heun => SamplerSpec::Heun { n: s.n, steps: ode_steps()? },
        SamplerKind::EulerMaruyama => SamplerSpec::EulerMaruyama { n: s.n, steps: ode_steps()? },
        SamplerKind::Pc => SamplerSpec::Pc { n: s.n, steps: ode_steps()?, snr: positive("sampler.snr", s.snr.unwrap_or(0.16))? },
        SamplerKind::Ddim => SamplerSpec::Ddim { n: s.n, steps: ode_steps()? },
    })
}

fn validate_data(d: &RawData) -> Result<DataSpec, FieldError> {
    let only = |allowed: &[&str]| -> Result<(), FieldError> {
        let given = [
            ("dim", d.dim.is_some()),
            ("components", d.components.is_some()),
            ("separation", d.separation.is_some()),
            ("weights", d.weights.is_some()),
            ("means", d.means.is_some()),
            ("stds", d.stds.is_some()),
        ];
        for (k, set) in given {
            if set && !allowed.contains(&k) {
                return Err(field(&format!("data.{k}"), format!("does not apply to preset `{}`", d.preset)));
            }
        }
        Ok(())
    };
    let mix = match d.preset.as_str() {
        "seed1d" => {
            only(&[])?;
            MixtureSpec::seed1d()
        }
        "ncsn2d" => {
            only(&[])?;
            MixtureSpec::ncsn2d()
        }
        "ring8" => {
            only(&[])?;
            MixtureSpec::ring8()
        }
        "iso" => {
            only(&["dim", "components", "separation"])?;
            let dim = in_range("data.dim", required("data.dim", d.dim)?, 1, MAX_DIM)?;
            let k = in_range("data.components", d.components.unwrap_or(2.min(dim)), 1, dim)?;
            let sep = positive("data.separation", d.separation.unwrap_or(4.0))?;
            MixtureSpec::iso(dim, k, sep)
        }
        "custom" => {
            only(&["weights", "means", "stds"])?;
            let w = required("data.weights", d.weights.clone())?;
            let means = required("data.means", d.means.clone())?;
            let stds = required("data.stds", d.stds.clone())?;
            if w.is_empty() {
                return Err(field("data.weights", "must not be empty"));
            }
            if means.len() != w.len() || stds.len() != w.len() {
                return Err(field("data.means", format!("weights, means and stds need one entry per component ({}, {}, {})", w.len(), means.len(), stds.len())));
            }
            let dim = means[0].len();
            in_range("data.means", dim, 1, MAX_DIM)?;
            for (i, m) in means.iter().enumerate() {
                if m.len() != dim || m.iter().any(|v| !v.is_finite()) {
                    return Err(field(&format!("data.means[{i}]"), format!("must be {dim} finite numbers")));
                }
            }
            for (i, &x) in w.iter().enumerate() {
                positive(&format!("data.weights[{i}]"), x)?;
            }
            for (i, &x) in stds.iter().enumerate() {
                positive(&format!("data.stds[{i}]"), x)?;
            }
            let total: f64 = w.iter().sum();
            if (total - 1.0).abs() > 1e-6 {
                return Err(field("data.weights", format!("must sum to 1 (got {total})")));
            }
            MixtureSpec { dim, weights: w, means, stds }
        }
        other => return Err(unknown_preset(other)),
    };
    Ok(DataSpec::Mixture { preset: d.preset.clone(), mixture: mix })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{ImageMlpSpec, ImageModel, ImageObjective, ImageObjectiveKind, ImageSampler, ImageSamplerKind, ImageTrain, ImageTrial, Schedule, is_image};

    const GOOD: &str = r#"
seed = 3
[data]
preset = "ncsn2d"
[model]
kind = "mlp"
[objective]
kind = "dsm"
noise = { ladder = "geometric", sigma_max = 10.0, sigma_min = 0.1, levels = 10 }
[train]
steps = 100
[sampler]
kind = "annealed_langevin"
"#;

    fn check_err(src: &str, key: &str, line: usize, msg_part: &str) {
        let e = TrialConfig::from_str_at(src, Path::new("t.toml")).unwrap_err();
        match &e {
            ConfigError::Invalid { key: k, line: l, message, .. } => {
                assert_eq!(k, key, "{e}");
                assert_eq!(*l, line, "{e}");
                assert!(message.contains(msg_part), "{e}");
            }
            ConfigError::Syntax { line: l, message, .. } => {
                assert_eq!(key, "<syntax>", "{e}");
                assert_eq!(*l, line, "{e}");
                assert!(message.contains(msg_part), "{e}");
            }
            other => panic!("unexpected {other}"),
        }
        assert!(e.to_string().starts_with("t.toml:"), "{e}");
    }

    #[test]
    fn good_trial_validates_into_its_variants() {
        let c = TrialConfig::from_str_at(GOOD, Path::new("t.toml")).unwrap();
        let t = c.train().expect("a training trial");
        assert_eq!(t.seed, 3);
        assert_eq!(t.noise, Some(NoiseSpec::Geometric { sigma_max: 10.0, sigma_min: 0.1, levels: 10 }));
        assert_eq!(t.eval.n, 100_000);
        match &t.sampler {
            SamplerSpec::AnnealedLangevin { steps_per_level, eps, init, denoise } => {
                assert_eq!((*steps_per_level, *eps, *denoise), (100, StepSize::Fixed(2e-5), true));
                assert_eq!(init.n, 2000);
                assert!((init.box_half - (5.0 + 6.0 - 3.0)).abs() < 1e-12);
            }
            other => panic!("{other:?}"),
        }
        let plain = GOOD.replace("annealed_langevin", "langevin");
        match TrialConfig::from_str_at(&plain, Path::new("t.toml")).unwrap().train().unwrap().sampler {
            SamplerSpec::Langevin { steps, .. } => assert_eq!(steps, 1000, "levels × steps_per_level"),
            ref other => panic!("{other:?}"),
        }
        let pc = GOOD.replace("kind = \"annealed_langevin\"", "kind = \"pc\"\nsnr = 0.2");
        let want = SamplerSpec::Pc { n: 2000, steps: 100, snr: 0.2 };
        assert_eq!(TrialConfig::from_str_at(&pc, Path::new("t.toml")).unwrap().train().unwrap().sampler, want);
        assert!(t.train.lr_schedule.is_constant(), "constant by default");
        let cos = GOOD.replace("steps = 100", "steps = 100\nlr_schedule = \"cosine\"\nwarmup = 10");
        let s = TrialConfig::from_str_at(&cos, Path::new("t.toml")).unwrap().train().unwrap().train.lr_schedule;
        assert_eq!(s, crate::lr::LrSchedule { decay: crate::lr::LrDecay::Cosine, warmup: 10 });
        let heun = GOOD.replace("annealed_langevin", "heun");
        assert_eq!(TrialConfig::from_str_at(&heun, Path::new("t.toml")).unwrap().train().unwrap().sampler, SamplerSpec::Heun { n: 2000, steps: 18 });
    }

    /// Table of bad inputs: (edit of GOOD, expected key, line, message fragment).
    #[test]
    fn bad_trials_are_located() {
        let cases: Vec<(String, &str, usize, &str)> = vec![
            (GOOD.replace("sigma_min = 0.1", "sigma_min = -0.1"), "objective.noise.sigma_min", 9, "positive"),
            (GOOD.replace("ladder = \"geometric\", sigma_max = 10.0, sigma_min = 0.1, levels = 10", "ladder = \"list\", sigmas = []"), "objective.noise.sigmas", 9, "empty"),
            (GOOD.replace("kind = \"dsm\"", "kind = \"ism\"").replace("kind = \"mlp\"", "kind = \"mlp\"\nactivation = \"relu\""), "model.activation", 7, "smooth"),
            (GOOD.replace("steps = 100", "steps = 100\nlearning_rate = 0.1"), "train.learning_rate", 12, "unknown field"),
            (GOOD.replace("preset = \"ncsn2d\"", "preset = \"moons\""), "data.preset", 4, "unknown preset"),
            (GOOD.replace("steps = 100", "steps = \"many\""), "train.steps", 11, "invalid type"),
            (GOOD.replace("steps = 100", "steps = 100\nlr_schedule = \"exponential\""), "train.lr_schedule", 12, "unknown variant `exponential`"),
            (GOOD.replace("steps = 100", "steps = 100\nwarmup = 500"), "train.warmup", 12, "at most train.steps (100)"),
            (GOOD.replace("[train]\nsteps = 100\n", ""), "train", 1, "required"),
            (GOOD.replace("seed = 3", "seed = = 3"), "<syntax>", 2, ""),
            (GOOD.replace("noise = { ladder = \"geometric\", sigma_max = 10.0, sigma_min = 0.1, levels = 10 }", ""), "objective.noise", 7, "needs a noise ladder"),
            (GOOD.replace("[sampler]", "[sleep]\nseconds = 1\n[sampler]"), "data", 3, "sleep"),
            // A Langevin step of 2σ_min² = 0.02 or more cannot be stable.
            (GOOD.replace("kind = \"annealed_langevin\"", "kind = \"annealed_langevin\"\neps = 0.03"), "sampler.eps", 14, "cannot be stable"),
            (GOOD.replace("kind = \"annealed_langevin\"", "kind = \"heun\"\neps = 0.001"), "sampler.eps", 14, "Langevin samplers only"),
            (GOOD.replace("kind = \"annealed_langevin\"", "kind = \"heun\"\nsnr = 0.1"), "sampler.snr", 14, "pc"),
        ];
        for (src, key, line, msg) in cases {
            check_err(&src, key, line, msg);
        }
    }

    #[test]
    fn sleep_trials_need_nothing_else() {
        let v: toml::Value = toml::from_str("[sleep]\nseconds = 0.5").unwrap();
        assert_eq!(TrialConfig::from_value(&v).unwrap(), TrialConfig::Sleep(SleepTrial { seed: 0, name: None, seconds: 0.5 }));
    }

    #[test]
    fn files_that_are_not_utf8_are_refused_with_the_file() {
        let dir = std::env::temp_dir().join(format!("schema-utf8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.toml");
        std::fs::write(&p, b"seed = 1\n# \xff\xfe\n").unwrap();
        let e = TrialConfig::from_file(&p).unwrap_err();
        assert!(matches!(e, ConfigError::NotUtf8 { offset: 11, .. }), "{e}");
        assert!(e.to_string().contains("bad.toml:1:1"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A small image trial (`crate::image`); its line numbers are the table's below.
    const GOOD_IMAGE: &str = r#"seed = 7
[data]
preset = "mnist"
held_out = 500
[model]
kind = "mlp"
hidden = 64
[objective]
kind = "edm"
[train]
steps = 10
[sampler]
kind = "heun"
n = 20
"#;

    fn image(src: &str) -> ImageTrial {
        match TrialConfig::from_str_at(src, Path::new("t.toml")).unwrap() {
            TrialConfig::Image(t) => *t,
            other => panic!("not an image trial: {other:?}"),
        }
    }

    #[test]
    fn a_good_image_trial_validates_with_its_defaults() {
        let t = image(GOOD_IMAGE);
        assert_eq!(t.seed, 7);
        assert_eq!((t.data.preset.as_str(), t.data.held_out, t.data.symmetric, t.data.dequantize), ("mnist", 500, true, true));
        assert_eq!(t.model, ImageModel::Mlp(ImageMlpSpec { hidden: 64, depth: 2, emb: 64, class_cond: true }));
        assert_eq!(t.objective, ImageObjective { kind: ImageObjectiveKind::Edm { p_mean: -1.2, p_std: 1.2 }, sigma_data: crate::image::SigmaData::Value(0.5), label_dropout: 0.1 });
        assert_eq!(t.train, ImageTrain { steps: 10, batch: 128, lr: 1e-3, lr_schedule: Default::default(), ema: 0.999, eval_every: 10 });
        assert_eq!(t.eval_n, 500, "every held-out image by default");
        assert_eq!(t.sampler, ImageSampler { kind: ImageSamplerKind::Heun, schedule: Schedule { steps: 18, sigma_min: 0.002, sigma_max: 80.0, rho: 7.0 }, guidance: 1.0, n: 20 });
        // The Langevin default step: 0.2·σ_min².
        let al = image(&GOOD_IMAGE.replace("kind = \"heun\"", "kind = \"annealed_langevin\""));
        assert_eq!(al.sampler.kind, ImageSamplerKind::AnnealedLangevin { steps_per_level: 10, eps: 0.2 * 0.002 * 0.002 });
        let ssm = image(&GOOD_IMAGE.replace("kind = \"edm\"", "kind = \"ssm_vr\"\nnoise = { ladder = \"list\", sigmas = [1.0, 0.1] }"));
        assert_eq!(ssm.objective.kind, ImageObjectiveKind::Ssm { noise: NoiseSpec::List(vec![1.0, 0.1]), vr: true });
    }

    /// Table of bad image trials: (edit of GOOD_IMAGE, key, line, column, message fragment). Each
    /// error reads `t.toml:LINE:COLUMN: key `KEY`: message`, as the toy trials' do.
    #[test]
    fn bad_image_trials_are_located_at_file_line_column() {
        let unet = |s: &str| s.replace("kind = \"mlp\"\nhidden = 64", "kind = \"unet\"");
        let cases: Vec<(String, &str, usize, usize, &str)> = vec![
            (GOOD_IMAGE.replace("kind = \"mlp\"", "kind = \"transformer\""), "model.kind", 6, 1, "unknown variant `transformer`"),
            (GOOD_IMAGE.replace("kind = \"edm\"", "kind = \"flow\""), "objective.kind", 9, 1, "unknown variant `flow`"),
            (GOOD_IMAGE.replace("kind = \"heun\"", "kind = \"score_ascent\""), "sampler.kind", 13, 1, "toy-trial sampler"),
            (GOOD_IMAGE.replace("kind = \"heun\"", "kind = \"dpm\""), "sampler.kind", 13, 1, "unknown variant `dpm`"),
            (GOOD_IMAGE.replace("hidden = 64", "hidden = 64\nchannels = 8"), "model.channels", 8, 1, "does not apply to kind = \"mlp\""),
            (GOOD_IMAGE.replace("hidden = 64", "hidden = 4"), "model.hidden", 7, 1, "between 8 and 8192"),
            (GOOD_IMAGE.replace("held_out = 500", "held_out = 500\nscale = \"wide\""), "data.scale", 5, 1, "\"sym\""),
            (GOOD_IMAGE.replace("kind = \"edm\"", "kind = \"edm\"\nsigma_min = 0.1"), "objective.sigma_min", 10, 1, "does not apply to kind = \"edm\""),
            (GOOD_IMAGE.replace("kind = \"edm\"", "kind = \"ve\"\nsigma_min = 5.0\nsigma_max = 1.0"), "objective.sigma_max", 11, 1, "must exceed"),
            (GOOD_IMAGE.replace("steps = 10", "steps = 10\nema = 1.5"), "train.ema", 12, 1, "[0, 1)"),
            (GOOD_IMAGE.replace("steps = 10", "steps = 10\nlr_schedule = \"step\""), "train.lr_schedule", 12, 1, "unknown variant `step`"),
            (GOOD_IMAGE.replace("steps = 10", "steps = 10\nwarmup = 11"), "train.warmup", 12, 1, "at most train.steps"),
            (GOOD_IMAGE.replace("n = 20", "n = 25"), "sampler.n", 14, 1, "multiple of 10"),
            (GOOD_IMAGE.replace("n = 20", "n = 20\nguidance = 2.0").replace("kind = \"edm\"", "kind = \"edm\"\nlabel_dropout = 0.0"), "sampler.guidance", 16, 1, "label_dropout"),
            (GOOD_IMAGE.replace("kind = \"heun\"", "kind = \"langevin\"\neps = 1e-5"), "sampler.eps", 14, 1, "cannot be stable"),
            (GOOD_IMAGE.replace("kind = \"heun\"", "kind = \"heun\"\nsnr = 0.1"), "sampler.snr", 14, 1, "pc"),
            (GOOD_IMAGE.replace("n = 20", "n = 20\ncolour = true"), "sampler.colour", 15, 1, "unknown field"),
            (unet(GOOD_IMAGE).replace("[model]\nkind = \"unet\"", "[model]\nkind = \"unet\"\ngroups = 3"), "model.groups", 7, 1, "divide"),
            // The capability checks (`caps`): sliced score matching needs forward tangents,
            // which the U-Net lacks; DSM and SSM need a noise ladder.
            (
                unet(GOOD_IMAGE).replace("kind = \"edm\"", "kind = \"ssm\"\nnoise = { ladder = \"list\", sigmas = [1.0] }"),
                "objective.kind",
                8,
                1,
                "forward-mode tangents J·v, and model `unet` has none",
            ),
            (GOOD_IMAGE.replace("kind = \"edm\"", "kind = \"dsm\""), "objective.noise", 8, 2, "dsm needs a noise ladder"),
            (GOOD_IMAGE.replace("kind = \"edm\"", "kind = \"ssm\""), "objective.noise", 8, 2, "ssm needs a noise ladder"),
        ];
        for (src, key, line, column, msg) in cases {
            let e = TrialConfig::from_str_at(&src, Path::new("t.toml")).unwrap_err();
            match &e {
                ConfigError::Invalid { key: k, line: l, column: c, message, .. } => {
                    assert_eq!((k.as_str(), *l, *c), (key, line, column), "{e}");
                    assert!(message.contains(msg), "{e}");
                }
                other => panic!("{key}: unexpected {other}"),
            }
            assert!(e.to_string().starts_with(&format!("t.toml:{line}:{column}: key `{key}`: ")), "{e}");
        }
    }

    /// `shapes3` is an image preset without a directory: a trial naming it validates with
    /// `dir` unset, and one giving a `dir` is refused at that key.
    #[test]
    fn shapes3_is_an_image_preset_without_a_directory() {
        let t = image(&GOOD_IMAGE.replace("preset = \"mnist\"", "preset = \"shapes3\""));
        assert_eq!((t.data.preset.as_str(), t.data.dir.as_ref()), ("shapes3", None));
        let e = TrialConfig::from_str_at(&GOOD_IMAGE.replace("preset = \"mnist\"", "preset = \"shapes3\"\ndir = \"/x\""), Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().starts_with("t.toml:4:1: key `data.dir`: does not apply to preset `shapes3`"), "{e}");
        let e = TrialConfig::from_str_at(&GOOD_IMAGE.replace("preset = \"mnist\"", "preset = \"cifar\""), Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().starts_with("t.toml:3:1: key `data.preset`: unknown preset `cifar`") && e.to_string().contains("shapes3"), "{e}");
    }

    /// Every committed image sweep's base, and the base with each of its grid values, zip
    /// columns and variants applied, validates (the sweep expansion itself is the
    /// coordinator's; here each edit is applied alone).
    #[test]
    fn committed_image_sweeps_validate() {
        fn set(t: &mut toml::Table, dotted: &str, v: toml::Value) {
            let mut parts: Vec<&str> = dotted.split('.').collect();
            let last = parts.pop().unwrap();
            let mut cur = t;
            for p in parts {
                cur = cur.entry(p).or_insert_with(|| toml::Value::Table(toml::Table::new())).as_table_mut().unwrap();
            }
            cur.insert(last.to_string(), v);
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sweeps");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let sweep: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let base = sweep["base"].as_table().unwrap().clone();
            if !is_image(&toml::Value::Table(base.clone())) {
                continue;
            }
            let mut edits: Vec<Vec<(String, toml::Value)>> = vec![vec![]];
            if let Some(grid) = sweep.get("grid").and_then(|g| g.as_table()) {
                for (k, vs) in grid {
                    edits.extend(vs.as_array().unwrap().iter().map(|v| vec![(k.clone(), v.clone())]));
                }
            }
            for z in sweep.get("zip").and_then(|z| z.as_array()).into_iter().flatten() {
                let z = z.as_table().unwrap();
                let n = z.values().next().map_or(0, |v| v.as_array().unwrap().len());
                edits.extend((0..n).map(|i| z.iter().map(|(k, vs)| (k.clone(), vs.as_array().unwrap()[i].clone())).collect()));
            }
            for v in sweep.get("variants").and_then(|v| v.as_array()).into_iter().flatten() {
                edits.push(v.as_table().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect());
            }
            for edit in edits {
                let mut t = base.clone();
                for (k, v) in &edit {
                    set(&mut t, k, v.clone());
                }
                let got = TrialConfig::from_value(&toml::Value::Table(t));
                assert!(matches!(got, Ok(TrialConfig::Image(_))), "{}: {edit:?}: {got:?}", path.display());
                checked += 1;
            }
        }
        assert!(checked >= 10, "only {checked} image trials found in {}", dir.display());
    }
}
