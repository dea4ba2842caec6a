//! The samplers: the one list a trial file names (`sampler.kind`, [`SamplerKind`], parsed by
//! both raw forms) and the one validated sampler of both families ([`Sampler`]). A sampler is
//! its [`Method`] (one variant per kind, holding only that kind's parameters) plus what depends
//! on the family: how many chains ([`Sampler::n`]), where they start ([`Start`]), which σ levels
//! they walk ([`Levels`]) and the guidance scale. Validation (`form::toy`, `form::image`)
//! resolves every default and refuses the kinds a family has no use for (`score_ascent` on
//! images).
//! A leaf module: it imports no other schema module.

use serde::Deserialize;

/// The `sampler.kind` of a trial file (`none`: no sampling).
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    AnnealedLangevin,
    Langevin,
    ScoreAscent,
    Heun,
    EulerMaruyama,
    Pc,
    Ddim,
    None,
}

impl SamplerKind {
    /// The name a trial file uses.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::AnnealedLangevin => "annealed_langevin",
            SamplerKind::Langevin => "langevin",
            SamplerKind::ScoreAscent => "score_ascent",
            SamplerKind::Heun => "heun",
            SamplerKind::EulerMaruyama => "euler_maruyama",
            SamplerKind::Pc => "pc",
            SamplerKind::Ddim => "ddim",
            SamplerKind::None => "none",
        }
    }
}

/// A validated sampler of either family (a trial without one has `sampler: None`).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampler {
    pub method: Method,
    /// Chains to run: toy points, or images (a multiple of 10 with a class-conditional model:
    /// n/10 per class).
    pub n: usize,
    /// Where the chains start.
    pub start: Start,
    /// The σ levels the method walks.
    pub levels: Levels,
    /// Classifier-free guidance scale s: D = D_uncond + s (D_cond − D_uncond); 0 is the
    /// unconditional model, 1 the conditional one (and a toy trial's, which has no classes),
    /// s > 1 guided (w = s − 1 in Ho & Salimans' D = (1 + w) D_cond − w D_uncond).
    pub guidance: f64,
}

impl Sampler {
    /// The name a trial file uses (`sampler.kind`), the engine's registry key.
    pub fn name(&self) -> &'static str {
        self.method.name()
    }
}

/// What a sampler does at its levels, with only its own parameters. N is the number of levels.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// NCSN: `steps_per_level` steps x ← x + α_i S + √(2α_i) z at each level with
    /// α_i = ε σ_i²/σ_L², then, with `denoise`, x ← x + σ_L² S(x, σ_L) = D(x; σ_L):
    /// N·steps_per_level (+ 1) evaluations.
    AnnealedLangevin { steps_per_level: usize, eps: StepSize, denoise: bool },
    /// `steps` steps x ← x + α S + √(2α) z (NCSN's convention, as annealed Langevin's) at the
    /// smallest level (or with a clean-score model's unconditional score).
    Langevin { steps: usize, eps: StepSize },
    /// `steps` steps x ← x + α S at the smallest level (toy trials only).
    ScoreAscent { steps: usize, eps: StepSize },
    /// The probability-flow ODE by Heun's 2nd-order steps (EDM Algorithm 1): 2N − 1
    /// evaluations.
    Heun,
    /// The reverse VE SDE by Euler–Maruyama: N evaluations.
    EulerMaruyama,
    /// Reverse-SDE predictor plus one Langevin corrector step at signal-to-noise ratio `snr`.
    Pc { snr: f64 },
    /// DDIM with η = 0: x ← D + (σ_{i+1}/σ_i)(x − D) over the levels and a final 0: N
    /// evaluations.
    Ddim,
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::AnnealedLangevin { .. } => "annealed_langevin",
            Method::Langevin { .. } => "langevin",
            Method::ScoreAscent { .. } => "score_ascent",
            Method::Heun => "heun",
            Method::EulerMaruyama => "euler_maruyama",
            Method::Pc { .. } => "pc",
            Method::Ddim => "ddim",
        }
    }

    /// The Langevin step of the Langevin family (annealed Langevin, Langevin, score ascent).
    pub fn eps(&self) -> Option<StepSize> {
        match self {
            Method::AnnealedLangevin { eps, .. } | Method::Langevin { eps, .. } | Method::ScoreAscent { eps, .. } => Some(*eps),
            Method::Heun | Method::EulerMaruyama | Method::Pc { .. } | Method::Ddim => None,
        }
    }
}

/// A Langevin step size ε (α at the smallest level): a number, or (toy trials, `"auto"`)
/// NCSNv2's rule for the noise ladder walked with `steps_per_level` steps per level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepSize {
    Fixed(f64),
    Auto { steps_per_level: usize },
}

/// Where chains start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Start {
    /// Uniform in [−half, half]^D: a toy trial's `sampler.box` for its Langevin family
    /// ("scatter points everywhere"), [−1, 1] for an image trial's plain Langevin.
    Box(f64),
    /// σ_0 z, z ~ N(0, I), at the first level.
    Noise,
}

/// The σ levels a sampler walks, descending.
#[derive(Debug, Clone, PartialEq)]
pub enum Levels {
    /// The noise ladder the model was trained on (`objective.noise`, resolved when the trial
    /// starts): a toy trial's Langevin family; none for a clean-score model.
    Ladder,
    /// EDM's ρ schedule of `steps` levels from σ_max to σ_min,
    /// σ_i = (σ_max^{1/ρ} + i/(N−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ.
    Rho { steps: usize, rho: f64, ends: Ends },
}

/// The ends σ_max, σ_min of a ρ schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ends {
    /// The noise ladder's largest and smallest σ (a toy trial's ODE/SDE samplers).
    Ladder,
    /// Given in the file (an image trial's `sampler.sigma_min`, `sampler.sigma_max`).
    Sigmas { min: f64, max: f64 },
}
