//! Trials on Gaussian mixtures (and sleep trials) as the file writes them: a raw serde form
//! that mirrors the TOML (`deny_unknown_fields` everywhere, so errors name the exact key) and
//! its validation into a [`Trial`] whose data is `DataSpec::Mixture`. A model or objective
//! kind of the image family (`unet`, `edm`, …) parses and is refused by `caps` at its key;
//! an image-only key (`train.ema`) is refused as not applying.
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

use serde::Deserialize;

use super::kinds::{ModelKind, ObjectiveName};
use crate::caps::{self, Points};
use crate::data::MixtureSpec;
use crate::noise::{NoiseSpec, RawNoise, validate_noise};
use crate::sampler::{Ends, Levels, Method, Sampler, SamplerKind, Start, StepSize};
use crate::trial::{Activation, DataSpec, EvalSpec, GapEval, MlpSpec, ModelSpec, ObjectiveSpec, ProbeDist, ScoreObjective, SleepTrial, TrainSpec, Trial, TrialConfig};
use crate::validate::{FieldError, field, in_range, langevin_step_is_stable, positive, required};

// ---------------------------------------------------------------- raw form (mirrors the file)

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrial {
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

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawModel {
    kind: ModelKind,
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
    kind: ObjectiveName,
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
    /// Image trials only: refused here by name rather than as an unknown key.
    ema: Option<f64>,
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

/// The mixture data presets.
pub const TOY_PRESETS: [&str; 5] = ["seed1d", "ncsn2d", "ring8", "iso", "custom"];

/// The error for a `data.preset` that names no data set, listing the ones there are.
pub(crate) fn unknown_preset(name: &str) -> FieldError {
    let images = crate::image::IMAGE_PRESETS.join(", ");
    field("data.preset", format!("unknown preset `{name}` (expected {}; image sets: {images})", TOY_PRESETS.join(", ")))
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

pub(crate) fn validate(raw: RawTrial) -> Result<TrialConfig, FieldError> {
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
    let (data, mixture) = validate_data(&required("data", raw.data)?)?;
    let dim = mixture.dim;

    let m = required("model", raw.model)?;
    // Every kind parses (one list for both families); one that takes images is refused here.
    let takes = if m.kind == ModelKind::Unet { Points::Images } else { Points::Vectors };
    caps::check_points(m.kind.name(), takes, data.label(), data.points())?;
    in_range("model.hidden", m.hidden, 1, MAX_HIDDEN)?;
    in_range("model.depth", m.depth, 1, 16)?;
    let mlp = MlpSpec { hidden: m.hidden, depth: m.depth, activation: m.activation, scale_by_sigma: m.scale_by_sigma };
    let model = match m.kind {
        // Refused above (`caps::check_points`); the U-Net's keys are not in this form.
        ModelKind::Unet => return Err(field("model.kind", "the U-Net takes images")),
        ModelKind::Mlp => ModelSpec::Mlp(mlp),
        ModelKind::EnergyMlp => {
            if !m.activation.is_smooth() {
                return Err(field("model.activation", format!("energy_mlp needs a smooth activation (its score uses a' and a''); `{}` is not", m.activation.name())));
            }
            ModelSpec::EnergyMlp(mlp)
        }
    };

    let o = required("objective", raw.objective)?;
    if o.kind.score_kind().is_some_and(|k| k.needs_jacobian()) && !m.activation.is_smooth() {
        return Err(field("model.activation", format!("objective `{}` differentiates ∂S/∂x in θ and needs a smooth activation; `{}` is not", o.kind.name(), m.activation.name())));
    }
    in_range("objective.probes", o.probes, 1, 1024)?;
    in_range("objective.trace_chunk", o.trace_chunk, 1, MAX_DIM)?;
    let noise = o.noise.as_ref().map(validate_noise).transpose()?;
    caps::check(o.kind.name(), o.kind.needs_on_vectors(), model.name(), model.caps(), data.label(), data.caps(), noise.is_some())?;
    // A denoiser's objective is refused above (`caps::check`: the models here are score nets).
    let kind = o.kind.score_kind().ok_or_else(|| field("objective.kind", format!("`{}` trains a denoiser, not a score net", o.kind.name())))?;
    if m.scale_by_sigma && noise.is_none() {
        return Err(field("model.scale_by_sigma", "needs a noise ladder (objective.noise)"));
    }
    let objective = ScoreObjective { kind, noise: noise.clone(), probes: o.probes, probe: o.probe, trace_chunk: o.trace_chunk };

    let t = required("train", raw.train)?;
    if t.steps > 10_000_000 {
        return Err(field("train.steps", format!("must be at most 10000000 (got {})", t.steps)));
    }
    in_range("train.batch", t.batch, 1, 1 << 20)?;
    positive("train.lr", t.lr)?;
    if t.ema.is_some() {
        return Err(field("train.ema", format!("applies to image data only (the trainers of data `{}` keep no moving average of the weights)", data.label())));
    }
    if let Some(n) = t.n_train {
        in_range("train.n_train", n, 2, MAX_POINTS)?;
    }
    let eval_every = if t.eval_every == 0 { t.steps.max(1) } else { t.eval_every };
    let lr_schedule = crate::lr::LrSchedule::new(t.lr_schedule, t.warmup, t.steps)?;
    let train = TrainSpec { steps: t.steps, batch: t.batch, lr: t.lr, lr_schedule, eval_every, n_train: t.n_train, ema: 0.0 };

    let e = raw.eval.unwrap_or_default();
    let n_eval = in_range("eval.n", e.n.unwrap_or(if dim <= 2 { 100_000 } else { 20_000 }), 2, MAX_POINTS)?;
    if let Some(s) = e.dsm_sigma {
        positive("eval.dsm_sigma", s)?;
        if noise.is_none() {
            return Err(field("eval.dsm_sigma", "needs a noise-conditional model (objective.noise)"));
        }
    }
    let c_samples = in_range("eval.c_samples", e.c_samples.unwrap_or(200_000), 2, MAX_POINTS)?;
    let eval = EvalSpec { n: n_eval, gaps: Some(GapEval { dsm_sigma: e.dsm_sigma, c_samples }) };

    let raw_sampler = required("sampler", raw.sampler)?;
    let sampler = validate_sampler(&raw_sampler, &mixture, noise.as_ref())?;
    let sets = [("eval.n", n_eval), ("eval.c_samples", c_samples), ("train.n_train", t.n_train.unwrap_or(0)), ("sampler.n", raw_sampler.n), ("train.batch", t.batch)];
    check_memory(dim, &sets, m.hidden, m.depth)?;
    let objective = ObjectiveSpec::Score(objective);
    Ok(TrialConfig::Train(Box::new(Trial { seed: raw.seed, name: raw.name, data, model, objective, train, eval, sampler })))
}

fn validate_sampler(s: &RawSampler, mixture: &MixtureSpec, noise: Option<&NoiseSpec>) -> Result<Option<Sampler>, FieldError> {
    in_range("sampler.steps_per_level", s.steps_per_level, 1, 1_000_000)?;
    in_range("sampler.n", s.n, 1, MAX_POINTS)?;
    let eps = match &s.eps {
        None => StepSize::Fixed(if s.kind == SamplerKind::ScoreAscent { 0.1 } else { 2e-5 }),
        Some(RawEps::Value(v)) => StepSize::Fixed(positive("sampler.eps", *v)?),
        Some(RawEps::Word(w)) if w == "auto" => {
            if noise.is_none() {
                return Err(field("sampler.eps", "\"auto\" needs a noise ladder (objective.noise)"));
            }
            StepSize::Auto { steps_per_level: s.steps_per_level }
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
    let box_half = positive("sampler.box", s.box_half.unwrap_or_else(|| mixture.extent() - 3.0 * mixture.max_std()))?;
    let langevin = |method: Method| Sampler { method, n: s.n, start: Start::Box(box_half), levels: Levels::Ladder, guidance: 1.0 };
    // The ODE/SDE samplers walk EDM's ρ = 7 schedule between the ladder's ends from σ_max z.
    let ode_sde = |method: Method| -> Result<Sampler, FieldError> {
        Ok(Sampler { method, n: s.n, start: Start::Noise, levels: Levels::Rho { steps: ode_steps()?, rho: 7.0, ends: Ends::Ladder }, guidance: 1.0 })
    };
    Ok(Some(match s.kind {
        SamplerKind::None => return Ok(None),
        SamplerKind::AnnealedLangevin => {
            if noise.is_none() {
                return Err(field("sampler.kind", "annealed_langevin needs a noise ladder (objective.noise)"));
            }
            langevin(Method::AnnealedLangevin { steps_per_level: s.steps_per_level, eps, denoise: s.denoise })
        }
        SamplerKind::Langevin => langevin(Method::Langevin { steps, eps }),
        SamplerKind::ScoreAscent => langevin(Method::ScoreAscent { steps, eps }),
        SamplerKind::Heun => ode_sde(Method::Heun)?,
        SamplerKind::EulerMaruyama => ode_sde(Method::EulerMaruyama)?,
        SamplerKind::Pc => {
            let steps = ode_steps()?;
            let snr = positive("sampler.snr", s.snr.unwrap_or(0.16))?;
            Sampler { method: Method::Pc { snr }, n: s.n, start: Start::Noise, levels: Levels::Rho { steps, rho: 7.0, ends: Ends::Ladder }, guidance: 1.0 }
        }
        SamplerKind::Ddim => ode_sde(Method::Ddim)?,
    }))
}

fn validate_data(d: &RawData) -> Result<(DataSpec, MixtureSpec), FieldError> {
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
    Ok((DataSpec::Mixture { preset: d.preset.clone(), mixture: mix.clone() }, mix))
}
