//! Trials on image sets (MNIST, Fashion-MNIST and other IDX sets; `shapes3`, colour shapes
//! made by the engine) as the file writes them, chosen when `data.preset` names an image set:
//! the raw form, with the sections of every trial (`data`, `model`, `objective`, `train`,
//! `eval`, `sampler`) and the keys that apply to images, and its validation into a [`Trial`]
//! whose data is `DataSpec::Images`. Unknown keys are refused with their dotted path, the kinds
//! are the one lists of both families (`kinds`, `sampler`), and the "X needs Y" checks between
//! data, net and objective go through `caps` (an energy MLP on images, `esm` or `ism` on a
//! denoiser, SSM on the U-Net); a mixture-only key (`train.n_train`) is refused as not
//! applying. Errors are located at file:line:column by `TrialConfig::from_str_at`.
//!
//! ```toml
//! seed = 0
//! [data]       # preset = "mnist" | "fashion" | "idx" (dir required) | "shapes3" (16×16 RGB
//!              #   coloured shapes, 6 classes, generated: no dir; no digit judge)
//! preset = "mnist"
//! dir = "/data/mnist"          # default: $SCORESWEEP_MNIST, else MNIST's test split shipped in
//!                               # the binary (mnist); $SCORESWEEP_FASHION, else
//!                               # /usr/share/datasets/fashion-mnist (fashion); relative to the
//!                               # worker's working directory
//! held_out = 2000               # never trained on, what every metric uses; with `judge`
//!                               # (default: 10,000 of a ≥ 50k set, else a fifth: 2,000 of
//!                               # the 10k test split; 0: the training part) drawn stratified
//!                               # by class by a permutation seeded per data set
//! scale = "sym"                 # pixels in [−1, 1] ("unit": [0, 1]), uniform dequantisation
//! [model]      # kind = "unet": channels, mults, blocks, emb, groups, class_cond
//! kind = "unet" #      | "mlp": hidden, depth, emb, class_cond
//! [objective]  # kind = "edm": σ ~ exp(N(p_mean, p_std²)), EDM preconditioning and weighting
//! kind = "edm" #      | "dsm": NCSN multi-σ DSM, noise = { ladder = "geometric" | "list" | "auto", … }
//!              #        (as toy trials' objective.noise; `auto`: σ₁ from the training images)
//!              #      | "ve": continuous-time DSM, VE SDE (sigma_min 0.01, sigma_max 50)
//!              #      | "vp": continuous-time DSM, VP SDE (beta_min 0.1, beta_max 20, t_min 1e-3)
//!              #      | "ssm" | "ssm_vr": sliced score matching on the ladder (noise; MLP only)
//!              # every kind: sigma_data (0.5, EDM's; "data": the training images' RMS,
//!              # ≈ 0.96 for MNIST in [−1, 1]), label_dropout (classifier-free guidance)
//! [train]      # steps, batch, lr, lr_schedule, warmup (as toy trials), ema (decay), eval_every
//! steps = 2000
//! [eval]       # n: held-out images the metrics use
//! [sampler]    # kind = "heun" (probability-flow ODE, EDM ρ schedule) | "euler_maruyama"
//!              # (reverse VE SDE) | "pc" (predictor–corrector, snr) | "ddim" (η = 0)
//!              # | "annealed_langevin" (steps_per_level, eps: the step at sigma_min, default
//!              # 0.2·sigma_min², below 2·sigma_min²) | "langevin" (eps, at sigma_min) | "none";
//!              # steps, sigma_min, sigma_max, rho, n (images, one tenth per class),

use std::path::PathBuf;

use serde::Deserialize;

use super::kinds::{ModelKind, ObjectiveName};
use crate::caps::{self, Points};
use crate::image::{GENERATED_PRESETS, ImageData, ImageMlpSpec, ImageModel, ImageObjective, ImageObjectiveKind, SigmaData, UnetSpec};
use crate::noise::{NoiseSpec, RawNoise, validate_noise};
use crate::sampler::{Ends, Levels, Method, Sampler, SamplerKind, Start, StepSize};
use crate::trial::{DataSpec, EvalSpec, ModelSpec, ObjectiveSpec, TrainSpec, Trial};
use crate::validate::{FieldError, field, in_range, langevin_step_is_stable, positive};

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawImageTrial {
    #[serde(default)]
    seed: u64,
    name: Option<String>,
    data: RawImageData,
    model: RawImageModel,
    objective: RawImageObjective,
    train: RawImageTrain,
    #[serde(default)]
    eval: RawImageEval,
    sampler: RawImageSampler,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawImageData {
    preset: String,
    dir: Option<String>,
    held_out: Option<usize>,
    judge: Option<usize>,
    scale: Option<String>,
    dequantize: Option<bool>,
    limit: Option<usize>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawImageModel {
    kind: ModelKind,
    hidden: Option<usize>,
    depth: Option<usize>,
    channels: Option<usize>,
    mults: Option<Vec<usize>>,
    blocks: Option<usize>,
    emb: Option<usize>,
    groups: Option<usize>,
    class_cond: Option<bool>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawImageObjective {
    kind: ObjectiveName,
    p_mean: Option<f64>,
    p_std: Option<f64>,
    sigma_data: Option<RawSigmaData>,
    label_dropout: Option<f64>,
    noise: Option<RawNoise>,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    beta_min: Option<f64>,
    beta_max: Option<f64>,
    t_min: Option<f64>,
}

/// `objective.sigma_data`: a number, or `"data"` (measured on the training images).
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum RawSigmaData {
    Value(f64),
    Word(String),
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawImageTrain {
    steps: u64,
    batch: Option<usize>,
    lr: Option<f64>,
    ema: Option<f64>,
    eval_every: Option<u64>,
    /// Mixture data only: refused here by name rather than as an unknown key.
    n_train: Option<usize>,
    lr_schedule: Option<crate::lr::LrDecay>,
    warmup: Option<u64>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawImageEval {
    n: Option<usize>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawImageSampler {
    kind: SamplerKind,
    steps: Option<usize>,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    rho: Option<f64>,
    guidance: Option<f64>,
    snr: Option<f64>,
    steps_per_level: Option<usize>,
    eps: Option<f64>,
    n: Option<usize>,
}

/// The default directory of a preset: `Some(None)` is the embedded MNIST test split, `None` a
/// preset without a default.
fn default_dir(preset: &str) -> Option<Option<PathBuf>> {
    match preset {
        "mnist" => Some(std::env::var_os("SCORESWEEP_MNIST").map(PathBuf::from)),
        "fashion" => Some(Some(std::env::var_os("SCORESWEEP_FASHION").map_or_else(|| PathBuf::from("/usr/share/datasets/fashion-mnist"), PathBuf::from))),
        p if GENERATED_PRESETS.contains(&p) => Some(None),
        _ => None,
    }
}

pub(crate) fn validate(raw: RawImageTrial) -> Result<Trial, FieldError> {
    let d = raw.data;
    let dir = match d.dir {
        Some(_) if GENERATED_PRESETS.contains(&d.preset.as_str()) => {
            return Err(field("data.dir", format!("does not apply to preset `{}` (its images are generated, not read)", d.preset)));
        }
        Some(s) if s.is_empty() => return Err(field("data.dir", "must not be empty")),
        Some(s) => Some(PathBuf::from(s)),
        None => default_dir(&d.preset).ok_or_else(|| field("data.dir", format!("is required for preset `{}`", d.preset)))?,
    };
    let held_out = in_range("data.held_out", d.held_out.unwrap_or(2000), 1, 1_000_000)?;
    let symmetric = match d.scale.as_deref().unwrap_or("sym") {
        "sym" => true,
        "unit" => false,
        other => return Err(field("data.scale", format!("must be \"sym\" ([−1, 1]) or \"unit\" ([0, 1]) (got \"{other}\")"))),
    };
    if let Some(l) = d.limit {
        in_range("data.limit", l, 1, 10_000_000)?;
    }
    if let Some(j) = d.judge {
        in_range("data.judge", j, 0, 1_000_000)?;
    }
    let data = ImageData { preset: d.preset, dir, held_out, judge: d.judge, symmetric, dequantize: d.dequantize.unwrap_or(true), limit: d.limit };

    let data = DataSpec::Images(data);

    let m = raw.model;
    // Every kind parses (one list for both families); one that takes vectors is refused here.
    let takes = if m.kind == ModelKind::EnergyMlp { Points::Vectors } else { Points::Images };
    caps::check_points(m.kind.name(), takes, data.label(), data.points())?;
    let class_cond = m.class_cond.unwrap_or(true);
    let only = |allowed: &[&str]| -> Result<(), FieldError> {
        let given = [
            ("hidden", m.hidden.is_some()),
            ("depth", m.depth.is_some()),
            ("channels", m.channels.is_some()),
            ("mults", m.mults.is_some()),
            ("blocks", m.blocks.is_some()),
            ("groups", m.groups.is_some()),
        ];
        match given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
            Some((k, _)) => Err(field(&format!("model.{k}"), format!("does not apply to kind = \"{}\"", m.kind.name()))),
            None => Ok(()),
        }
    };
    let model = match m.kind {
        // Refused above (`caps::check_points`).
        ModelKind::EnergyMlp => return Err(field("model.kind", "energy_mlp takes vectors")),
        ModelKind::Unet => {
            only(&["channels", "mults", "blocks", "groups"])?;
            let channels = in_range("model.channels", m.channels.unwrap_or(40), 4, 512)?;
            let mults = m.mults.clone().unwrap_or_else(|| vec![1, 2, 2]);
            if mults.is_empty() || mults.len() > 3 || mults.iter().any(|&x| x == 0 || x > 8) {
                return Err(field("model.mults", format!("needs 1 to 3 levels, each a multiplier from 1 to 8 (28×28 images halve at most twice; got {mults:?})")));
            }
            let blocks = in_range("model.blocks", m.blocks.unwrap_or(1), 1, 4)?;
            let emb = in_range("model.emb", m.emb.unwrap_or(4 * channels), 8, 2048)?;
            let groups = in_range("model.groups", m.groups.unwrap_or(8), 1, 64)?;
            if let Some(bad) = std::iter::once(1).chain(mults.iter().copied()).map(|k| k * channels).find(|c| c % groups != 0) {
                return Err(field("model.groups", format!("must divide every level's channel count ({bad} is not a multiple of {groups})")));
            }
            ImageModel::Unet(UnetSpec { channels, mults, blocks, emb, groups, class_cond })
        }
        ModelKind::Mlp => {
            only(&["hidden", "depth"])?;
            ImageModel::Mlp(ImageMlpSpec {
                hidden: in_range("model.hidden", m.hidden.unwrap_or(1024), 8, 8192)?,
                depth: in_range("model.depth", m.depth.unwrap_or(2), 1, 8)?,
                emb: in_range("model.emb", m.emb.unwrap_or(64), 8, 2048)?,
                class_cond,
            })
        }
    };

    let o = raw.objective;
    let given = [
        ("p_mean", o.p_mean.is_some()),
        ("p_std", o.p_std.is_some()),
        ("noise", o.noise.is_some()),
        ("sigma_min", o.sigma_min.is_some()),
        ("sigma_max", o.sigma_max.is_some()),
        ("beta_min", o.beta_min.is_some()),
        ("beta_max", o.beta_max.is_some()),
        ("t_min", o.t_min.is_some()),
    ];
    let only = |allowed: &[&str]| -> Result<(), FieldError> {
        match given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
            Some((k, _)) => Err(field(&format!("objective.{k}"), format!("does not apply to kind = \"{}\"", o.kind.name()))),
            None => Ok(()),
        }
    };
    let model = ModelSpec::Image(model);
    caps::check(o.kind.name(), o.kind.needs_on_images(), model.name(), model.caps(), data.label(), data.caps(), o.noise.is_some())?;
    // Present whenever the objective needs one (`caps::check`).
    let ladder = |o: &RawImageObjective| -> Result<NoiseSpec, FieldError> {
        validate_noise(o.noise.as_ref().ok_or_else(|| field("objective.noise", format!("kind = \"{}\" needs a noise ladder", o.kind.name())))?)
    };
    let kind = match o.kind {
        ObjectiveName::Edm => {
            only(&["p_mean", "p_std"])?;
            let p_mean = o.p_mean.unwrap_or(-1.2);
            if !p_mean.is_finite() {
                return Err(field("objective.p_mean", "must be finite"));
            }
            ImageObjectiveKind::Edm { p_mean, p_std: positive("objective.p_std", o.p_std.unwrap_or(1.2))? }
        }
        ObjectiveName::Dsm => {
            only(&["noise"])?;
            ImageObjectiveKind::Dsm { noise: ladder(&o)? }
        }
        ObjectiveName::Ssm | ObjectiveName::SsmVr => {
            only(&["noise"])?;
            ImageObjectiveKind::Ssm { noise: ladder(&o)?, vr: o.kind == ObjectiveName::SsmVr }
        }
        ObjectiveName::Ve => {
            only(&["sigma_min", "sigma_max"])?;
            let lo = positive("objective.sigma_min", o.sigma_min.unwrap_or(0.01))?;
            let hi = positive("objective.sigma_max", o.sigma_max.unwrap_or(50.0))?;
            if hi <= lo {
                return Err(field("objective.sigma_max", format!("must exceed objective.sigma_min ({hi} ≤ {lo})")));
            }
            ImageObjectiveKind::Ve { sigma_min: lo, sigma_max: hi }
        }
        // Refused above (`caps::check`: a score net's objectives).
        ObjectiveName::Esm | ObjectiveName::Ism => return Err(field("objective.kind", format!("`{}` trains a score net, not a denoiser", o.kind.name()))),
        ObjectiveName::Vp => {
            only(&["beta_min", "beta_max", "t_min"])?;
            let beta_min = positive("objective.beta_min", o.beta_min.unwrap_or(0.1))?;
            let beta_max = positive("objective.beta_max", o.beta_max.unwrap_or(20.0))?;
            if beta_max < beta_min {
                return Err(field("objective.beta_max", format!("must be at least objective.beta_min ({beta_max} < {beta_min})")));
            }
            let t_min = o.t_min.unwrap_or(1e-3);
            if !(t_min > 0.0 && t_min < 1.0) {
                return Err(field("objective.t_min", format!("must be in (0, 1) (got {t_min})")));
            }
            ImageObjectiveKind::Vp { beta_min, beta_max, t_min }
        }
    };
    let label_dropout = o.label_dropout.unwrap_or(if model.class_cond() { 0.1 } else { 0.0 });
    if !(0.0..1.0).contains(&label_dropout) {
        return Err(field("objective.label_dropout", format!("must be in [0, 1) (got {label_dropout})")));
    }
    if label_dropout > 0.0 && !model.class_cond() {
        return Err(field("objective.label_dropout", "needs a class-conditional model (model.class_cond)"));
    }
    let sigma_data = match o.sigma_data {
        None => SigmaData::Value(0.5),
        Some(RawSigmaData::Value(v)) => SigmaData::Value(positive("objective.sigma_data", v)?),
        Some(RawSigmaData::Word(w)) if w == "data" => SigmaData::Data,
        Some(RawSigmaData::Word(w)) => return Err(field("objective.sigma_data", format!("must be a positive number or \"data\" (the training images' RMS) (got \"{w}\")"))),
    };
    let objective = ObjectiveSpec::Denoiser(ImageObjective { kind, sigma_data, label_dropout });

    let t = raw.train;
    if t.steps > 10_000_000 {
        return Err(field("train.steps", format!("must be at most 10000000 (got {})", t.steps)));
    }
    if t.n_train.is_some() {
        return Err(field("train.n_train", format!("applies to mixture data only (image trials train on the training part of data `{}`; see data.limit)", data.label())));
    }
    let ema = t.ema.unwrap_or(0.999);
    if !(0.0..1.0).contains(&ema) {
        return Err(field("train.ema", format!("must be in [0, 1) (got {ema})")));
    }
    let eval_every = t.eval_every.filter(|&e| e > 0).unwrap_or(t.steps.max(1));
    let train = TrainSpec {
        steps: t.steps,
        batch: in_range("train.batch", t.batch.unwrap_or(128), 1, 65_536)?,
        lr: positive("train.lr", t.lr.unwrap_or(1e-3))?,
        lr_schedule: crate::lr::LrSchedule::new(t.lr_schedule, t.warmup, t.steps)?,
        ema,
        eval_every,
        n_train: None,
    };

    let eval_n = in_range("eval.n", raw.eval.n.unwrap_or(held_out), 2, held_out).map_err(|e| field(&e.key, format!("{} (at most data.held_out)", e.message)))?;

    let s = raw.sampler;
    let sigma_min = positive("sampler.sigma_min", s.sigma_min.unwrap_or(0.002))?;
    let sigma_max = positive("sampler.sigma_max", s.sigma_max.unwrap_or(80.0))?;
    if sigma_max <= sigma_min {
        return Err(field("sampler.sigma_max", format!("must exceed sampler.sigma_min ({sigma_max} ≤ {sigma_min})")));
    }
    let steps = in_range("sampler.steps", s.steps.unwrap_or(if s.kind == SamplerKind::Heun { 18 } else { 100 }), 2, 100_000)?;
    // The Langevin step at σ_min: NCSN's 2e-5 at σ_L = 0.01 (0.2 σ_min²) unless given, and
    // below 2σ_min², beyond which no step can be stable.
    let eps = || -> Result<f64, FieldError> {
        let eps = positive("sampler.eps", s.eps.unwrap_or(0.2 * sigma_min * sigma_min))?;
        langevin_step_is_stable("sampler.eps", eps, sigma_min, "sampler.sigma_min")?;
        Ok(eps)
    };
    // None: `kind = "none"` (its other keys are still checked).
    let method = match s.kind {
        SamplerKind::None => None,
        SamplerKind::Heun => Some(Method::Heun),
        SamplerKind::EulerMaruyama => Some(Method::EulerMaruyama),
        SamplerKind::Pc => Some(Method::Pc { snr: positive("sampler.snr", s.snr.unwrap_or(0.16))? }),
        SamplerKind::AnnealedLangevin => Some(Method::AnnealedLangevin {
            steps_per_level: in_range("sampler.steps_per_level", s.steps_per_level.unwrap_or(10), 1, 10_000)?,
            eps: StepSize::Fixed(eps()?),
            denoise: true,
        }),
        // `sampler.steps` steps at σ_min, the schedule's last level.
        SamplerKind::Langevin => Some(Method::Langevin { steps, eps: StepSize::Fixed(eps()?) }),
        SamplerKind::Ddim => Some(Method::Ddim),
        SamplerKind::ScoreAscent => {
            return Err(field("sampler.kind", "score_ascent is a toy-trial sampler; image trials take heun, euler_maruyama, pc, ddim, annealed_langevin, langevin or none"));
        }
    };
    if s.snr.is_some() && s.kind != SamplerKind::Pc {
        return Err(field("sampler.snr", "applies to kind = \"pc\" only"));
    }
    if s.steps_per_level.is_some() && s.kind != SamplerKind::AnnealedLangevin {
        return Err(field("sampler.steps_per_level", "applies to kind = \"annealed_langevin\" only"));
    }
    if s.eps.is_some() && !matches!(s.kind, SamplerKind::AnnealedLangevin | SamplerKind::Langevin) {
        return Err(field("sampler.eps", "applies to kind = \"annealed_langevin\" or \"langevin\" only"));
    }
    let levels = Levels::Rho { steps, rho: positive("sampler.rho", s.rho.unwrap_or(7.0))?, ends: Ends::Sigmas { min: sigma_min, max: sigma_max } };
    let guidance = s.guidance.unwrap_or(1.0);
    if !(guidance.is_finite() && guidance >= 0.0) {
        return Err(field("sampler.guidance", format!("must be a finite number ≥ 0 (got {guidance})")));
    }
    if guidance != 1.0 && label_dropout == 0.0 {
        return Err(field("sampler.guidance", format!("{guidance} needs an unconditional model (1 is the conditional one): train with objective.label_dropout > 0")));
    }
    let n = in_range("sampler.n", s.n.unwrap_or(100), 1, 1_000_000)?;
    if model.class_cond() && n % 10 != 0 {
        return Err(field("sampler.n", format!("must be a multiple of 10 with a class-conditional model (n/10 per class; got {n})")));
    }
    // Plain Langevin starts from uniform pixels in [−1, 1] (the toy trials' "scatter points
    // everywhere"), the others from σ_max z.
    let start = if s.kind == SamplerKind::Langevin { Start::Box(1.0) } else { Start::Noise };
    let sampler = method.map(|method| Sampler { method, n, start, levels, guidance });
    let eval = EvalSpec { n: eval_n, gaps: None };
    Ok(Trial { seed: raw.seed, name: raw.name, data, model, objective, train, eval, sampler })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The capability table of image nets and objectives, through the one `caps::check`.
    #[test]
    fn image_objectives_need_what_caps_declares() {
        let mlp = ModelSpec::Image(ImageModel::Mlp(ImageMlpSpec { hidden: 8, depth: 1, emb: 8, class_cond: true }));
        let unet = ModelSpec::Image(ImageModel::Unet(UnetSpec { channels: 8, mults: vec![1], blocks: 1, emb: 8, groups: 1, class_cond: true }));
        let all = [ObjectiveName::Edm, ObjectiveName::Dsm, ObjectiveName::Ve, ObjectiveName::Vp, ObjectiveName::Ssm, ObjectiveName::SsmVr];
        for kind in all {
            for (model, ladder) in [(&mlp, true), (&mlp, false), (&unet, true), (&unet, false)] {
                let got = caps::check(kind.name(), kind.needs_on_images(), model.name(), model.caps(), "mnist", crate::image::IMAGE_DATA_CAPS, ladder).err().map(|e| e.key);
                let sliced = matches!(kind, ObjectiveName::Ssm | ObjectiveName::SsmVr);
                let want = if sliced && model.name() == "unet" {
                    Some("objective.kind")
                } else if (sliced || kind == ObjectiveName::Dsm) && !ladder {
                    Some("objective.noise")
                } else {
                    None
                };
                assert_eq!(got.as_deref(), want, "{} on {} (ladder: {ladder})", kind.name(), model.name());
            }
        }
    }
}
