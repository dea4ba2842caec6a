//! Image trials: the IDX reader on generated, corrupt and real files (MNIST's test split,
//! checked against its published MD5s), the stratified held-out / judge / training split, image-trial validation errors, and a short training run that lowers the held-out
//! denoising loss and samples with the counted number of evaluations.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use engine::data::idx::{self, IdxError};
use engine::outcome::TrialStatus;
use engine::trial;
use schema::TrialConfig;

fn idx_bytes(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(payload);
    b
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A directory with a 6-image 4×3 "training" split (raw) and a 4-image "test" split (gzip).
fn small_set(dir: &Path) {
    let train: Vec<u8> = (0..6 * 12).map(|i| i as u8).collect();
    std::fs::write(dir.join("train-images-idx3-ubyte"), idx_bytes(&[6, 4, 3], &train)).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), idx_bytes(&[6], &[0, 1, 2, 3, 4, 5])).unwrap();
    let test: Vec<u8> = (0..4 * 12).map(|i| 200 + (i % 50) as u8).collect();
    std::fs::write(dir.join("t10k-images-idx3-ubyte.gz"), gz(&idx_bytes(&[4, 4, 3], &test))).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte.gz"), gz(&idx_bytes(&[4], &[6, 7, 8, 9]))).unwrap();
}

#[test]
fn reads_raw_and_gzip_splits_training_first() {
    let dir = tempfile::tempdir().unwrap();
    small_set(dir.path());
    let set = idx::load_dir(dir.path()).unwrap();
    assert_eq!((set.n, set.h, set.w, set.classes()), (10, 4, 3, 10));
    assert_eq!(set.labels, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(set.pixels[12], 12, "second training image");
    assert_eq!(set.pixels[6 * 12], 200, "first test image follows the training split");
}

#[test]
fn corrupt_missing_and_mismatched_files_name_the_file() {
    type Break = fn(&Path);
    let cases: Vec<(&str, Break, &str)> = vec![
        ("truncated payload", |d| std::fs::write(d.join("train-images-idx3-ubyte"), idx_bytes(&[6, 4, 3], &[0; 70])).unwrap(), "train-images-idx3-ubyte"),
        ("label count", |d| std::fs::write(d.join("train-labels-idx1-ubyte"), idx_bytes(&[5], &[0; 5])).unwrap(), "train-labels-idx1-ubyte"),
        ("bad gzip", |d| std::fs::write(d.join("t10k-images-idx3-ubyte.gz"), [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap(), "t10k-images-idx3-ubyte.gz"),
        ("missing labels", |d| std::fs::remove_file(d.join("t10k-labels-idx1-ubyte.gz")).unwrap(), "t10k-labels-idx1-ubyte"),
        ("wrong magic", |d| std::fs::write(d.join("train-images-idx3-ubyte"), b"PK\x03\x04 not idx").unwrap(), "train-images-idx3-ubyte"),
        ("checksum", |d| std::fs::write(d.join("MD5SUMS"), "0123456789abcdef0123456789abcdef  train-labels-idx1-ubyte\n").unwrap(), "checksum mismatch"),
    ];
    for (what, breaker, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        small_set(dir.path());
        breaker(dir.path());
        let err = idx::load_dir(dir.path()).expect_err(what).to_string();
        assert!(err.contains(want), "{what}: {err}");
    }
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(idx::load_dir(empty.path()), Err(IdxError::Empty { .. })));
}

/// MNIST's test split as the repository ships it (`data/mnist/`).
fn mnist_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist")
}

/// The real split: 10,000 digits of 28×28, checked against MD5SUMS, about 1,000 per class.
#[test]
fn real_mnist_test_split_loads_with_checksums() {
    let set = idx::load_dir(&mnist_dir()).unwrap();
    assert_eq!((set.n, set.h, set.w, set.classes()), (10_000, 28, 28, 10));
    for c in 0..10u8 {
        let k = set.labels.iter().filter(|&&l| l == c).count();
        assert!((850..1150).contains(&k), "class {c}: {k} digits");
    }
    let mean = set.pixels.iter().map(|&p| p as f64).sum::<f64>() / set.pixels.len() as f64;
    assert!((mean - 33.3).abs() < 1.0, "MNIST's mean pixel is about 33.3, got {mean}");
}

/// The split of issue 19: MNIST's test file is ordered (its first 5,000 digits from the cleaner
/// writers), so a held-out tail is another population. The stratified split holds out images
/// from both halves in proportion (within 4 binomial SE of half), every class at its share of
/// the set (within one image; the judge's within 1.5), with the judge's part disjoint from the
/// training part, the same on every call; `data.judge = 0` gives the judge no part of its own.
#[test]
fn mnist_split_is_stratified_and_spans_the_file() {
    use engine::eval::split::class_counts;
    let set = idx::load_embedded_mnist().unwrap();
    let spec = |judge: Option<usize>, limit: Option<usize>| schema::image::ImageData {
        preset: "mnist".into(),
        dir: None,
        held_out: 2000,
        judge,
        symmetric: true,
        dequantize: true,
        limit,
    };
    let s = engine::images::split(set.clone(), &spec(None, None)).unwrap();
    assert_eq!((s.held_labels.len(), s.judge_labels.len(), s.n_train()), (2000, 2000, 6000));
    let all = class_counts(&set.labels, 10);
    for (part, labels) in [("held", &s.held_labels), ("judge", &s.judge_labels), ("train", &s.train_labels)] {
        let got = class_counts(labels, 10);
        for c in 0..10 {
            let exact = labels.len() as f64 * all[c] as f64 / set.n as f64;
            assert!((got[c] as f64 - exact).abs() <= 1.5, "{part}, class {c}: {} vs {exact}", got[c]);
        }
    }
    // Which images went where: find each held-out image's index in the file by its pixels.
    let d = set.dim();
    let index: std::collections::HashMap<&[u8], usize> = set.pixels.chunks(d).enumerate().map(|(i, p)| (p, i)).collect();
    let held: Vec<usize> = s.held_pixels.chunks(d).map(|p| index[p]).collect();
    let first_half = held.iter().filter(|&&i| i < 5000).count() as f64;
    assert!((first_half - 1000.0).abs() < 4.0 * 500f64.sqrt(), "{first_half} of 2,000 held-out digits from the cleaner writers");
    // The three parts together hold every image of the file once.
    let covered: std::collections::HashSet<usize> = s.held_pixels.chunks(d).chain(s.judge_pixels.chunks(d)).chain(s.train_pixels.chunks(d)).map(|p| index[p]).collect();
    assert_eq!(covered.len(), index.len());
    let again = engine::images::split(set.clone(), &spec(None, None)).unwrap();
    assert_eq!((again.held_pixels, again.seed), (s.held_pixels.clone(), s.seed));
    let no_judge = engine::images::split(set.clone(), &spec(Some(0), Some(3000))).unwrap();
    assert_eq!((no_judge.judge_labels.len(), no_judge.n_train()), (0, 3000));
    assert_eq!(no_judge.held_pixels, s.held_pixels, "the held-out part does not depend on the judge's size");
    assert!(engine::images::split(set, &spec(Some(8000), None)).err().unwrap().contains("too few"));
}

/// `objective.sigma_data = "data"` measures σ_d as the training images' RMS: MNIST in
/// [−1, 1] is about 0.96 (not EDM's 0.5), computed here independently from the raw bytes of
/// the whole file (the training part is a stratified 60% of it, so the two agree to 1%).
#[test]
fn sigma_data_is_measured_from_the_training_images() {
    use engine::images::objective::Objective;
    let set = idx::load_embedded_mnist().unwrap();
    let whole = (set.pixels.iter().map(|&b| ((b as f64 + 0.5) / 128.0 - 1.0).powi(2)).sum::<f64>() / set.pixels.len() as f64).sqrt();
    assert!((whole - 0.96).abs() < 0.01, "MNIST's RMS in [−1, 1]: {whole}");
    let src = image_trial_with("kind = \"mlp\"", "kind = \"edm\"\nsigma_data = \"data\"", 1, "kind = \"heun\"");
    let cfg = TrialConfig::from_str_at(&src, Path::new("t.toml")).unwrap();
    let cfg = cfg.train().expect("a training trial");
    let split = engine::images::load(cfg.data.images().expect("image data")).unwrap();
    let o = Objective::new(cfg.objective.denoiser().expect("a denoising objective"), &split);
    assert!((o.sigma_data - whole).abs() < 0.01 * whole, "{} vs {whole}", o.sigma_data);
    assert_eq!(o.precond(), engine::images::Precond::Edm { sigma_data: o.sigma_data });
}

fn image_trial(extra_model: &str, steps: u64, sampler: &str) -> String {
    image_trial_with(extra_model, "kind = \"edm\"", steps, sampler)
}

fn image_trial_with(extra_model: &str, objective: &str, steps: u64, sampler: &str) -> String {
    let every = (steps / 5).max(1);
    format!(
        "seed = 2\n[data]\npreset = \"mnist\"\nheld_out = 1000\nlimit = 3000\n[model]\n{extra_model}\n[objective]\n{objective}\n[train]\nsteps = {steps}\nbatch = 64\nlr = 1e-3\neval_every = {every}\n[eval]\nn = 500\n[sampler]\n{sampler}\n"
    )
}

/// Every objective trains the MLP: a short run lowers the held-out denoising loss (EDM's
/// weighting at fixed (σ, noise) draws, the same yardstick for every objective) by a clear
/// margin, on the trainer it should use (the hand-derived step for the denoising losses,
/// autograd through the forward tangents for SSM), and samples finite images through the
/// objective's own parametrisation. The `auto` ladder measures σ₁ on the training images:
/// MNIST digits in [−1, 1] lie 10–30 apart, and NCSNv2's γ for 784 pixels gives dozens of levels.
#[test]
fn every_objective_lowers_the_held_out_loss() {
    // (objective, trainer, bound on held-out loss after / before). Measured: 0.86, 0.84, 0.86,
    // 0.53, 0.62 — the NCSN-style S = F/σ nets must first learn the identity part that EDM's
    // c_skip gives for free, and NCSN's λ = σ² spends much of the loss on small σ.
    let cases = [
        ("kind = \"dsm\"\nnoise = { ladder = \"geometric\", sigma_max = 20.0, sigma_min = 0.01, levels = 30 }", "fast_image_mlp", 0.92),
        ("kind = \"dsm\"\nnoise = { ladder = \"auto\", sigma_min = 0.01 }", "fast_image_mlp", 0.92),
        ("kind = \"ve\"\nsigma_min = 0.01\nsigma_max = 20.0", "fast_image_mlp", 0.92),
        ("kind = \"vp\"", "fast_image_mlp", 0.7),
        ("kind = \"ssm_vr\"\nnoise = { ladder = \"geometric\", sigma_max = 20.0, sigma_min = 0.05, levels = 20 }", "autograd", 0.8),
    ];
    for (objective, trainer, factor) in cases {
        let src = image_trial_with("kind = \"mlp\"\nhidden = 1024\ndepth = 1", objective, 100, "kind = \"heun\"\nsteps = 4\nsigma_max = 20.0\nn = 10");
        let cfg = TrialConfig::from_str_at(&src, Path::new("obj.toml")).unwrap();
        let o = trial::run_trial(&cfg, &candle_core::Device::Cpu, &mut |_| {}, &AtomicBool::new(false)).unwrap();
        assert_eq!(o.status, TrialStatus::Ok, "{objective}");
        assert_eq!(o.trainer, trainer, "{objective}");
        let (first, last) = (o.curve_rows[0][2], o.metric("eval_loss").unwrap());
        assert!(last < factor * first, "{objective}: held-out loss {first} → {last}");
        // The objective's own loss, mean of the first 20 steps vs the last 20: it falls too
        // (SSM's crosses zero, so by a margin; the denoising losses relative to their start).
        let (t0, t1) = (o.curve_rows[1][1], o.curve_rows[5][1]);
        let fell = if trainer == "autograd" { t1 < t0 - 0.1 } else { t1 < 0.97 * t0 };
        assert!(fell, "{objective}: training loss {t0} → {t1}");
        assert!(o.samples.iter().flatten().all(|v| v.is_finite()), "{objective}");
        if objective.contains("auto") {
            let (top, levels) = (o.metric("ladder_sigma_max").unwrap(), o.metric("ladder_levels").unwrap());
            assert!((10.0..40.0).contains(&top) && levels > 20.0, "{objective}: σ₁ = {top}, {levels} levels");
        }
    }
}

/// A short EDM run of the class-conditional MLP lowers the held-out loss at fixed (σ, noise)
/// draws, samples 20 images with 2N − 1 = 9 Heun evaluations, and gives the same numbers again.
#[test]
fn short_training_lowers_the_held_out_loss_and_is_deterministic() {
    let src = image_trial("kind = \"mlp\"\nhidden = 256", 150, "kind = \"heun\"\nsteps = 5\nn = 20");
    let cfg = TrialConfig::from_str_at(&src, Path::new("img.toml")).unwrap();
    let run = || trial::run_trial(&cfg, &candle_core::Device::Cpu, &mut |_| {}, &AtomicBool::new(false)).unwrap();
    let o = run();
    assert_eq!(o.status, TrialStatus::Ok);
    assert_eq!(o.trainer, "fast_image_mlp", "the MLP trains on the hand-derived step on CPU");
    let first = o.curve_rows[0][2];
    let last = o.metric("eval_loss").unwrap();
    assert!(last < 0.6 * first, "held-out EDM loss {first} → {last}");
    assert_eq!(o.metric("nfe"), Some(9.0));
    assert_eq!(o.samples.len(), 20);
    assert!(o.samples.iter().all(|s| s.len() == 784 && s.iter().all(|v| v.is_finite())));
    assert_eq!(o.metric("n_train"), Some(3000.0));
    // The digit metrics: the cached classifier (trained on the 3,000 training digits) reads
    // held-out digits well; the rest are fractions; the grid travels as a PNG file.
    assert!(o.metric("classifier_accuracy").unwrap() > 0.9, "{:?}", o.metric("classifier_accuracy"));
    // Each with its Wilson 95% interval around it and its count.
    for (k, n) in [("class_match", 20.0), ("which_digit_accuracy", 500.0), ("classifier_accuracy", 500.0)] {
        let (p, lo, hi) = (o.metric(k).unwrap(), o.metric(&format!("{k}_lo")).unwrap(), o.metric(&format!("{k}_hi")).unwrap());
        assert!((0.0..=1.0).contains(&p) && lo <= p && p <= hi && (0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi), "{k}: {p} [{lo}, {hi}]");
        assert_eq!(o.metric(&format!("{k}_n")), Some(n), "{k}");
        let (wlo, whi) = engine::eval::interval::wilson((p * n).round() as usize, n as usize);
        assert_eq!((lo, hi), (wlo, whi), "{k}");
    }
    assert!(o.metric("fid").unwrap() > o.metric("fid_real_floor").unwrap(), "150 steps do not reach real digits");
    // The split and the judge are recorded: a disjoint judge part of 2,000 (a fifth of the
    // 10,000), per-class counts that add up to each part.
    assert_eq!((o.metric("judge_n"), o.metric("judge_disjoint"), o.metric("n_judge")), (Some(2000.0), Some(1.0), Some(2000.0)));
    for (part, n) in [("train", 3000.0), ("held", 1000.0), ("judge", 2000.0)] {
        assert_eq!((0..10).map(|c| o.metric(&format!("split_{part}_{c}")).unwrap()).sum::<f64>(), n, "{part}");
    }
    assert!(o.metric("split_seed").is_some());
    // FID at equal n with its bootstrap error and the ratio's interval; memorisation.
    assert_eq!(o.metric("fid_n"), Some(20.0));
    assert!(o.metric("fid_se").unwrap() > 0.0 && o.metric("fid_real_floor_se").unwrap() > 0.0);
    let (r, rlo, rhi) = (o.metric("fid_over_floor").unwrap(), o.metric("fid_over_floor_lo").unwrap(), o.metric("fid_over_floor_hi").unwrap());
    assert!(rlo <= r && r < rhi && (r - o.metric("fid").unwrap() / o.metric("fid_real_floor").unwrap()).abs() < 1e-9);
    assert_eq!(o.metric("memorisation_n"), Some(20.0));
    assert!((0.0..=1.0).contains(&o.metric("memorisation").unwrap()) && o.metric("nn_distance_ratio").unwrap() > 0.0);
    assert!(o.files.iter().any(|(name, kind, bytes)| name == "samples.png" && *kind == "image/png" && bytes.starts_with(b"\x89PNG")));
    let again = run();
    assert_eq!(o.metric("eval_loss"), again.metric("eval_loss"), "same seed, same metrics");
    assert_eq!(o.samples, again.samples);
}

/// The samplers image trials gained run end to end through the registry: DDIM (N
/// evaluations for N levels) and plain Langevin at σ_min (one per step), with finite images.
#[test]
fn image_trials_sample_with_ddim_and_plain_langevin() {
    for (sampler, nfe) in [("kind = \"ddim\"\nsteps = 6\nn = 10", 6.0), ("kind = \"langevin\"\nsteps = 7\nsigma_min = 0.1\nn = 10", 7.0)] {
        let src = image_trial("kind = \"mlp\"\nhidden = 64", 3, sampler);
        let cfg = TrialConfig::from_str_at(&src, Path::new("s.toml")).unwrap();
        let o = trial::run_trial(&cfg, &candle_core::Device::Cpu, &mut |_| {}, &AtomicBool::new(false)).unwrap();
        assert_eq!(o.status, TrialStatus::Ok, "{sampler}");
        assert_eq!(o.metric("nfe"), Some(nfe), "{sampler}");
        assert!(o.samples.len() == 10 && o.samples.iter().flatten().all(|v| v.is_finite()), "{sampler}");
    }
}

/// The U-Net trains on its hand-derived step (a few steps: shapes, gradients and the EMA swap).
#[test]
fn unet_trial_runs_end_to_end() {
    let src = image_trial("kind = \"unet\"\nchannels = 8\nmults = [1, 2]\ngroups = 4\nclass_cond = false", 3, "kind = \"euler_maruyama\"\nsteps = 3\nn = 10");
    let cfg = TrialConfig::from_str_at(&src, Path::new("unet.toml")).unwrap();
    let o = trial::run_trial(&cfg, &candle_core::Device::Cpu, &mut |_| {}, &AtomicBool::new(false)).unwrap();
    assert_eq!(o.status, TrialStatus::Ok);
    assert_eq!(o.trainer, "fast_unet", "the U-Net trains on the hand-derived step on CPU");
    assert_eq!((o.metric("steps_done"), o.metric("nfe")), (Some(3.0), Some(3.0)));
    assert!(o.metric("eval_loss").unwrap().is_finite());
}

#[test]
fn image_trials_refuse_bad_keys_by_name() {
    let base = |m: &str, o: &str, s: &str| format!("[data]\npreset = \"mnist\"\ndir = \"/nonexistent\"\n[model]\n{m}\n[objective]\n{o}\n[train]\nsteps = 1\n[sampler]\n{s}\n");
    let cases = [
        (base("kind = \"unet\"\nhidden = 3", "kind = \"edm\"", "kind = \"heun\""), "model.hidden"),
        (base("kind = \"unet\"\nmults = [1, 2, 2, 2]", "kind = \"edm\"", "kind = \"heun\""), "model.mults"),
        (base("kind = \"unet\"\nchannels = 30", "kind = \"edm\"", "kind = \"heun\""), "model.groups"),
        (base("kind = \"mlp\"", "kind = \"ncsn\"", "kind = \"heun\""), "objective.kind"),
        (base("kind = \"mlp\"", "kind = \"dsm\"", "kind = \"heun\""), "objective.noise"),
        (base("kind = \"mlp\"", "kind = \"dsm\"\nnoise = { ladder = \"list\", sigmas = [1.0, 2.0] }", "kind = \"heun\""), "objective.noise.sigmas"),
        (base("kind = \"mlp\"", "kind = \"edm\"\nbeta_min = 0.1", "kind = \"heun\""), "objective.beta_min"),
        (base("kind = \"mlp\"", "kind = \"ve\"\nsigma_min = 5.0\nsigma_max = 1.0", "kind = \"heun\""), "objective.sigma_max"),
        (base("kind = \"mlp\"", "kind = \"vp\"\nt_min = 1.5", "kind = \"heun\""), "objective.t_min"),
        (base("kind = \"mlp\"", "kind = \"vp\"\nnoise = { ladder = \"auto\" }", "kind = \"heun\""), "objective.noise"),
        (base("kind = \"unet\"", "kind = \"ssm\"\nnoise = { ladder = \"auto\" }", "kind = \"heun\""), "objective.kind"),
        (base("kind = \"mlp\"\nclass_cond = false", "kind = \"edm\"\nlabel_dropout = 0.2", "kind = \"heun\""), "objective.label_dropout"),
        (base("kind = \"mlp\"", "kind = \"edm\"\nlabel_dropout = 0.0", "kind = \"heun\"\nguidance = 2.0"), "sampler.guidance"),
        (base("kind = \"mlp\"", "kind = \"edm\"", "kind = \"heun\"\nn = 15"), "sampler.n"),
        (base("kind = \"mlp\"", "kind = \"edm\"", "kind = \"heun\"\nsnr = 0.1"), "sampler.snr"),
        (base("kind = \"mlp\"", "kind = \"edm\"", "kind = \"heun\"\neps = 0.1"), "sampler.eps"),
        (base("kind = \"mlp\"", "kind = \"edm\"", "kind = \"annealed_langevin\"\nsteps_per_level = 0"), "sampler.steps_per_level"),
        (base("kind = \"mlp\"", "kind = \"edm\"", "kind = \"heun\"\nsigma_min = 100.0"), "sampler.sigma_max"),
        (base("kind = \"mlp\"", "kind = \"edm\"", "kind = \"dpm\""), "sampler.kind"),
        // A Langevin step of 2σ_min² or more cannot be stable (the old default 2e-5 at 0.002).
        (base("kind = \"mlp\"", "kind = \"edm\"", "kind = \"annealed_langevin\"\neps = 2e-5"), "sampler.eps"),
        (base("kind = \"mlp\"", "kind = \"edm\"", "kind = \"langevin\"\nsigma_min = 0.1\neps = 0.03"), "sampler.eps"),
        (base("kind = \"mlp\"", "kind = \"edm\"", "kind = \"ddim\"\neps = 1e-6"), "sampler.eps"),
        (base("kind = \"mlp\"\nwidth = 3", "kind = \"edm\"", "kind = \"heun\""), "model.width"),
        (base("kind = \"mlp\"", "kind = \"edm\"\nsigma_data = \"rms\"", "kind = \"heun\""), "objective.sigma_data"),
        (base("kind = \"mlp\"", "kind = \"edm\"\nsigma_data = -0.5", "kind = \"heun\""), "objective.sigma_data"),
    ];
    for (src, key) in cases {
        let err = TrialConfig::from_str_at(&src, Path::new("bad.toml")).expect_err(key).to_string();
        assert!(err.starts_with("bad.toml:") && err.contains(&format!("key `{key}`")), "{key}: {err}");
    }
    // A missing data directory is found before training, naming the directory.
    let cfg = TrialConfig::from_str_at(&base("kind = \"mlp\"", "kind = \"edm\"", "kind = \"heun\""), Path::new("t.toml")).unwrap();
    let err = trial::run_trial(&cfg, &candle_core::Device::Cpu, &mut |_| {}, &AtomicBool::new(false)).err().expect("no data").to_string();
    assert!(err.contains("/nonexistent"), "{err}");
}

/// Each image net offers what `schema::image::ImageModel::caps` declares for it: forward
/// tangents (sliced score matching) exactly where `tangents` is set.
#[test]
fn image_model_caps_match_the_nets() {
    use candle_core::{Device, Tensor};
    use schema::image::{ImageMlpSpec, ImageModel, UnetSpec};
    let dev = Device::Cpu;
    let models = [
        ImageModel::Mlp(ImageMlpSpec { hidden: 8, depth: 1, emb: 8, class_cond: true }),
        ImageModel::Unet(UnetSpec { channels: 8, mults: vec![1, 2], blocks: 1, emb: 8, groups: 4, class_cond: true }),
    ];
    for model in models {
        let varmap = candle_nn::VarMap::new();
        let net = engine::images::build(&model, engine::images::Precond::Score { sigma_data: 0.5 }, 1, 8, 8, &varmap, &dev).unwrap();
        let x = Tensor::ones((2, 1, 8, 8), candle_core::DType::F32, &dev).unwrap();
        let c_noise = Tensor::zeros(2, candle_core::DType::F32, &dev).unwrap();
        let labels = Tensor::new(&[1u32, 2], &dev).unwrap();
        let tangent = net.raw_tangent(&x, &x, &c_noise, Some(&labels));
        assert_eq!(tangent.is_ok(), model.caps().tangents, "{}: {:?}", model.name(), tangent.err());
        assert!(!model.caps().closed_trace, "no image net has a closed-form trace");
    }
}
