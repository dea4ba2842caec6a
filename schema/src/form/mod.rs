//! The trial file: its raw forms and their validation into a [`TrialConfig`], with errors
//! located at file, line and column. A file whose `data.preset` names an image set is read by
//! [`image`]'s form, every other one (mixtures, sleep trials) by [`toy`]'s; both validate into
//! the one [`Trial`](crate::trial::Trial) and share the kind lists ([`kinds`],
//! `sampler::SamplerKind`), so a kind of the other family reaches `caps` and is refused with
//! what it needs. Errors name the dotted key; [`TrialConfig::from_str_at`] adds the place.

use std::path::{Path, PathBuf};

use crate::image::IMAGE_PRESETS;
use crate::locate::{line_col, locate};
use crate::trial::TrialConfig;
use crate::validate::{FieldError, raw_error};

pub mod image;
pub mod kinds;
pub mod toy;

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

impl TrialConfig {
    /// Validate a trial given as a TOML table (a sweep's `[base]` with expansions applied).
    pub fn from_value(v: &toml::Value) -> Result<TrialConfig, FieldError> {
        // An unknown preset is named as such, before either form refuses a key of the other.
        if let Some(p) = v.get("data").and_then(|d| d.get("preset")).and_then(|p| p.as_str())
            && !toy::TOY_PRESETS.contains(&p)
            && !IMAGE_PRESETS.contains(&p)
        {
            return Err(toy::unknown_preset(p));
        }
        if is_image(v) {
            let raw: image::RawImageTrial = serde_path_to_error::deserialize(v.clone()).map_err(raw_error)?;
            return Ok(TrialConfig::Train(Box::new(image::validate(raw)?)));
        }
        let raw: toy::RawTrial = serde_path_to_error::deserialize(v.clone()).map_err(raw_error)?;
        toy::validate(raw)
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
}

/// Whether a trial given as TOML is an image trial (its `data.preset` names an image set).
pub fn is_image(v: &toml::Value) -> bool {
    v.get("data").and_then(|d| d.get("preset")).and_then(|p| p.as_str()).is_some_and(|p| IMAGE_PRESETS.contains(&p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{ImageData, ImageMlpSpec, ImageModel, ImageObjective, ImageObjectiveKind};
    use crate::noise::NoiseSpec;
    use crate::sampler::{Ends, Levels, Method, Sampler, Start, StepSize};
    use crate::trial::{DataSpec, ModelSpec, ObjectiveSpec, SleepTrial, TrainSpec, Trial};

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
        assert_eq!(t.noise(), Some(&NoiseSpec::Geometric { sigma_max: 10.0, sigma_min: 0.1, levels: 10 }));
        assert_eq!(t.eval.n, 100_000);
        let sampler = t.sampler.as_ref().expect("a sampler");
        assert_eq!(sampler.method, Method::AnnealedLangevin { steps_per_level: 100, eps: StepSize::Fixed(2e-5), denoise: true });
        assert_eq!((sampler.n, &sampler.levels, sampler.guidance), (2000, &Levels::Ladder, 1.0));
        match sampler.start {
            Start::Box(half) => assert!((half - (5.0 + 6.0 - 3.0)).abs() < 1e-12),
            other => panic!("{other:?}"),
        }
        let method = |src: &str| TrialConfig::from_str_at(src, Path::new("t.toml")).unwrap().train().unwrap().sampler.as_ref().unwrap().method.clone();
        assert_eq!(method(&GOOD.replace("annealed_langevin", "langevin")), Method::Langevin { steps: 1000, eps: StepSize::Fixed(2e-5) }, "levels × steps_per_level");
        let auto = GOOD.replace("kind = \"annealed_langevin\"", "kind = \"annealed_langevin\"\neps = \"auto\"\nsteps_per_level = 5");
        assert_eq!(method(&auto), Method::AnnealedLangevin { steps_per_level: 5, eps: StepSize::Auto { steps_per_level: 5 }, denoise: true });
        let pc = GOOD.replace("kind = \"annealed_langevin\"", "kind = \"pc\"\nsnr = 0.2");
        let ladder_rho = |steps| Levels::Rho { steps, rho: 7.0, ends: Ends::Ladder };
        let want = Sampler { method: Method::Pc { snr: 0.2 }, n: 2000, start: Start::Noise, levels: ladder_rho(100), guidance: 1.0 };
        assert_eq!(TrialConfig::from_str_at(&pc, Path::new("t.toml")).unwrap().train().unwrap().sampler, Some(want));
        assert!(t.train.lr_schedule.is_constant(), "constant by default");
        let cos = GOOD.replace("steps = 100", "steps = 100\nlr_schedule = \"cosine\"\nwarmup = 10");
        let s = TrialConfig::from_str_at(&cos, Path::new("t.toml")).unwrap().train().unwrap().train.lr_schedule;
        assert_eq!(s, crate::lr::LrSchedule { decay: crate::lr::LrDecay::Cosine, warmup: 10 });
        let heun = GOOD.replace("annealed_langevin", "heun");
        let want = Sampler { method: Method::Heun, n: 2000, start: Start::Noise, levels: ladder_rho(18), guidance: 1.0 };
        assert_eq!(TrialConfig::from_str_at(&heun, Path::new("t.toml")).unwrap().train().unwrap().sampler, Some(want));
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
            (GOOD.replace("kind = \"mlp\"", "kind = 3"), "model.kind", 6, "as a quoted string"),
            (GOOD.replace("steps = 100", "steps = 100\nlr_schedule = 3"), "train.lr_schedule", 12, "as a quoted string"),
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
            // Kinds and keys of the image family, refused by `caps` or as not applying.
            (GOOD.replace("kind = \"mlp\"", "kind = \"unet\""), "model.kind", 6, "model `unet` takes images, and data `ncsn2d` is vectors"),
            (GOOD.replace("kind = \"dsm\"", "kind = \"edm\""), "objective.kind", 8, "`edm` trains a denoiser D(x; σ, c), and model `mlp` on data `ncsn2d` is a score net"),
            (GOOD.replace("steps = 100", "steps = 100\nema = 0.9"), "train.ema", 12, "applies to image data only"),
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

    fn image(src: &str) -> Trial {
        match TrialConfig::from_str_at(src, Path::new("t.toml")).unwrap() {
            TrialConfig::Train(t) if matches!(t.data, DataSpec::Images(_)) => *t,
            other => panic!("not an image trial: {other:?}"),
        }
    }

    fn images(t: &Trial) -> &ImageData {
        t.data.images().expect("image data")
    }

    #[test]
    fn a_good_image_trial_validates_with_its_defaults() {
        let t = image(GOOD_IMAGE);
        assert_eq!(t.seed, 7);
        let d = images(&t);
        assert_eq!((d.preset.as_str(), d.held_out, d.symmetric, d.dequantize), ("mnist", 500, true, true));
        assert_eq!(t.model, ModelSpec::Image(ImageModel::Mlp(ImageMlpSpec { hidden: 64, depth: 2, emb: 64, class_cond: true })));
        let edm = ImageObjective { kind: ImageObjectiveKind::Edm { p_mean: -1.2, p_std: 1.2 }, sigma_data: crate::image::SigmaData::Value(0.5), label_dropout: 0.1 };
        assert_eq!(t.objective, ObjectiveSpec::Denoiser(edm));
        assert_eq!(t.train, TrainSpec { steps: 10, batch: 128, lr: 1e-3, lr_schedule: Default::default(), ema: 0.999, eval_every: 10, n_train: None });
        assert_eq!((t.eval.n, &t.eval.gaps), (500, &None), "every held-out image by default; no exact score, no gaps");
        let edm_rho = |steps| Levels::Rho { steps, rho: 7.0, ends: Ends::Sigmas { min: 0.002, max: 80.0 } };
        let heun = Sampler { method: Method::Heun, n: 20, start: Start::Noise, levels: edm_rho(18), guidance: 1.0 };
        assert_eq!(t.sampler, Some(heun));
        // The Langevin default step: 0.2·σ_min².
        let al = image(&GOOD_IMAGE.replace("kind = \"heun\"", "kind = \"annealed_langevin\""));
        let al = al.sampler.unwrap();
        assert_eq!(al.method, Method::AnnealedLangevin { steps_per_level: 10, eps: StepSize::Fixed(0.2 * 0.002 * 0.002), denoise: true });
        assert_eq!((al.start, al.levels), (Start::Noise, edm_rho(100)));
        let plain = image(&GOOD_IMAGE.replace("kind = \"heun\"", "kind = \"langevin\"\nsteps = 30")).sampler.unwrap();
        assert_eq!((plain.method, plain.start), (Method::Langevin { steps: 30, eps: StepSize::Fixed(0.2 * 0.002 * 0.002) }, Start::Box(1.0)), "from uniform pixels, at σ_min");
        let ssm = image(&GOOD_IMAGE.replace("kind = \"edm\"", "kind = \"ssm_vr\"\nnoise = { ladder = \"list\", sigmas = [1.0, 0.1] }"));
        assert_eq!(ssm.objective.denoiser().unwrap().kind, ImageObjectiveKind::Ssm { noise: NoiseSpec::List(vec![1.0, 0.1]), vr: true });
        assert_eq!(image(&GOOD_IMAGE.replace("kind = \"heun\"", "kind = \"none\"")).sampler, None);
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
            // Kinds and keys of the mixture family, refused by `caps` or as not applying.
            (
                GOOD_IMAGE.replace("kind = \"mlp\"\nhidden = 64", "kind = \"energy_mlp\""),
                "model.kind",
                6,
                1,
                "model `energy_mlp` takes vectors (a Gaussian mixture), and data `mnist` is images",
            ),
            (GOOD_IMAGE.replace("kind = \"edm\"", "kind = \"esm\""), "objective.kind", 9, 1, "needs the exact score of the data, and data `mnist` has none"),
            (GOOD_IMAGE.replace("kind = \"edm\"", "kind = \"ism\""), "objective.kind", 9, 1, "`ism` trains a score net S(x, σ), and model `mlp` on data `mnist` is a denoiser"),
            (GOOD_IMAGE.replace("steps = 10", "steps = 10\nn_train = 100"), "train.n_train", 12, 1, "applies to mixture data only"),
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
        assert_eq!((images(&t).preset.as_str(), images(&t).dir.as_ref()), ("shapes3", None));
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
                assert!(matches!(&got, Ok(TrialConfig::Train(t)) if t.data.images().is_some()), "{}: {edit:?}: {got:?}", path.display());
                checked += 1;
            }
        }
        assert!(checked >= 10, "only {checked} image trials found in {}", dir.display());
    }
}
