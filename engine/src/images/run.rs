//! Runs one image trial: load and split the image set (its shape (C, H, W) sizes everything
//! after), build the net and its trainer (`train::image`: the hand-derived step on CPU, else
//! candle's autograd), train it through the one train loop (`train::run`) with the held-out
//! denoising loss at fixed (σ, noise) draws as its checkpoint value, then sample with the EMA
//! weights (equal runs of each class for a class-conditional model, with classifier-free
//! guidance when asked) and compute the metrics: the digit judge's where the set has it, else
//! `digit_metrics_skipped` = 1; the sample grid for every set. Every random number comes from
//! the trial seed's streams.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use schema::image::ImageModel;
use schema::sampler::StepSize;
use schema::trial::Trial;

use super::guided::{BufferDenoiser, FastGuided, Guided, guided_passes};
use super::objective::{Objective, edm_losses, edm_weight};
use super::unet::NULL_CLASS;
use super::{ImageNet, Split, init_weights, tensor};
use crate::data::Batch;
use crate::error::EngineError;
use crate::outcome::{Progress, TrialOutcome, TrialStatus};
use crate::rng::{Rng, Stream};
use crate::samplers::{self, Params};
use crate::train::fast::image::ImageForward;
use crate::train::fast::unet::FastUnet;
use crate::train::image::ImageSetup;
use crate::train::{self, Checkpoints, Schedule};

/// σ levels of the held-out denoising loss (spanning EDM's training distribution).
pub const EVAL_SIGMAS: [f64; 5] = [0.05, 0.2, 0.5, 1.0, 2.0];

/// Images per forward pass when evaluating or sampling (bounds memory).
const CHUNK: usize = 500;

/// Images per pass of the U-Net's plain-buffer inference (its activations for this many
/// images stay allocated: about 2 MB per image at 28×28 and 40 channels).
const UNET_PASS: usize = 64;

/// Fixed held-out evaluation draws: for each of `n` images one σ from [`EVAL_SIGMAS`] in turn
/// and one noise image.
struct EvalSet {
    x: Vec<f32>,
    labels: Vec<u32>,
    sigmas: Vec<f32>,
    noise: Vec<f32>,
}

impl EvalSet {
    /// The first `n` held-out images (at most all of them) with draws from the seed's
    /// evaluation stream.
    fn draw(split: &Split, n: usize, seed: u64) -> Self {
        let mut erng = Rng::stream(seed, Stream::Eval);
        let n = n.min(split.held_labels.len());
        let d = split.dim();
        EvalSet {
            x: split.to_floats(&split.held_pixels[..n * d]),
            labels: split.held_labels[..n].iter().map(|&l| l as u32).collect(),
            sigmas: (0..n).map(|i| EVAL_SIGMAS[i % EVAL_SIGMAS.len()] as f32).collect(),
            noise: erng.normals_f32(n * d),
        }
    }
}

/// Mean held-out EDM loss over the fixed draws, on images of `shape` (C, H, W).
fn eval_loss(net: &dyn ImageNet, set: &EvalSet, shape: (usize, usize, usize), sd: f64, cond: bool, dev: &Device) -> candle_core::Result<f64> {
    let d = shape.0 * shape.1 * shape.2;
    let n = set.labels.len();
    let mut total = 0.0;
    for start in (0..n).step_by(CHUNK) {
        let end = (start + CHUNK).min(n);
        let x = tensor(&set.x[start * d..end * d], shape, dev)?;
        let e = tensor(&set.noise[start * d..end * d], shape, dev)?;
        let sig = Tensor::from_slice(&set.sigmas[start..end], end - start, dev)?;
        let lam: Vec<f32> = set.sigmas[start..end].iter().map(|&s| edm_weight(s as f64, sd) as f32).collect();
        let labels = if cond { Some(Tensor::from_slice(&set.labels[start..end], end - start, dev)?) } else { None };
        let per = edm_losses(net, &x, &e, &sig, &Tensor::from_vec(lam, end - start, dev)?, labels.as_ref())?;
        total += per.to_dtype(DType::F64)?.to_vec1::<f64>()?.iter().sum::<f64>();
    }
    Ok(total / n as f64)
}

/// [`eval_loss`] through a plain-buffer forward pass (the CPU's).
fn eval_loss_buffers(fwd: &mut dyn BufferDenoiser, set: &EvalSet, d: usize, sd: f64, cond: bool) -> f64 {
    let n = set.labels.len();
    let mut total = 0.0;
    for start in (0..n).step_by(CHUNK) {
        let end = (start + CHUNK).min(n);
        let x = &set.x[start * d..end * d];
        let sig = &set.sigmas[start..end];
        let y: Vec<f32> = (0..(end - start) * d).map(|j| x[j] + sig[j / d] * set.noise[start * d + j]).collect();
        let labels: Vec<u32> = if cond { set.labels[start..end].to_vec() } else { vec![NULL_CLASS; end - start] };
        let mut out = vec![0.0f32; y.len()];
        fwd.denoise(&y, sig, &labels, &mut out);
        for (i, (o, x)) in out.chunks_exact(d).zip(x.chunks_exact(d)).enumerate() {
            let se: f64 = o.iter().zip(x).map(|(a, b)| ((a - b) * (a - b)) as f64).sum();
            total += edm_weight(sig[i] as f64, sd) * se / d as f64;
        }
    }
    total / n as f64
}

/// The plain-buffer forward pass of a trial's net on the CPU for images of shape (C, H, W)
/// (its weights as the VarMap holds them now), or None elsewhere.
fn buffer_net(
    model: &ImageModel,
    precond: super::Precond,
    (c, h, w): (usize, usize, usize),
    varmap: &VarMap,
    dev: &Device,
) -> candle_core::Result<Option<Box<dyn BufferDenoiser>>> {
    if !crate::device::fast_paths(dev) {
        return Ok(None);
    }
    Ok(Some(match model {
        ImageModel::Mlp(spec) => Box::new(ImageForward::new(spec, c * h * w, precond, varmap)?),
        ImageModel::Unet(spec) => Box::new(FastUnet::inference(spec, precond, c, h, w, varmap, UNET_PASS)?),
    }))
}

/// Runs an image trial on `dev`.
pub fn run_image_trial(cfg: &Trial, dev: Device, progress: &mut dyn FnMut(&Progress), cancel: &AtomicBool) -> Result<TrialOutcome, EngineError> {
    let (Some(data), Some(model), Some(denoiser)) = (cfg.data.images(), cfg.model.image(), cfg.objective.denoiser()) else {
        return Err(EngineError::Invalid("an image trial needs image data, an image net and a denoising objective (schema::caps refuses the rest)".into()));
    };
    let t_setup = Instant::now();
    let split: Split = super::load(data)?;
    let (shape, d) = (split.shape(), split.dim());
    let (c, h, w) = shape;
    let (cond, b) = (cfg.model.class_cond(), cfg.train.batch);
    let varmap = VarMap::new();
    let objective = Objective::new(denoiser, &split);
    let sd = objective.sigma_data;
    let precond = objective.precond();
    let net = super::build(model, precond, c, h, w, &varmap, &dev)?;
    init_weights(&varmap, &mut Rng::stream(cfg.seed, Stream::Init))?;
    if cond && let Some(&bad) = split.train_labels.iter().chain(&split.held_labels).find(|&&l| l as u32 >= NULL_CLASS) {
        let message = format!("label {bad}: class-conditional image models take labels 0 to 9");
        return Err(EngineError::Data(crate::data::idx::IdxError::Corrupt { path: super::data_origin(data), message }));
    }
    let eval = EvalSet::draw(&split, cfg.eval.n, cfg.seed);
    let setup_seconds = t_setup.elapsed().as_secs_f64();

    let mut trainer = train::image::build(ImageSetup {
        model,
        net: net.as_ref(),
        varmap: &varmap,
        objective: objective.clone(),
        label_dropout: denoiser.label_dropout,
        shape,
        batch: b,
        lr: cfg.train.lr,
        ema: cfg.train.ema,
        device: dev.clone(),
    })?;
    // The held-out loss on the EMA weights (which `sync` leaves in the VarMap).
    let mut evaluate = || -> candle_core::Result<Vec<f64>> {
        Ok(vec![match buffer_net(model, precond, shape, &varmap, &dev)? {
            Some(mut fwd) => eval_loss_buffers(fwd.as_mut(), &eval, d, sd, cond),
            None => eval_loss(net.as_ref(), &eval, shape, sd, cond, &dev)?,
        }])
    };
    let mut batches = |rng: &mut Rng| {
        let (x, labels) = split.batch(b, rng);
        Batch { x: x.into_iter().map(f64::from).collect(), labels }
    };
    let trained = train::run(
        trainer.as_mut(),
        Schedule { steps: cfg.train.steps, eval_every: cfg.train.eval_every, lr: cfg.train.lr, lr_schedule: cfg.train.lr_schedule },
        &mut batches,
        &mut Rng::stream(cfg.seed, Stream::Train),
        Checkpoints { columns: vec!["eval_loss".into()], evaluate: &mut evaluate },
        progress,
        cancel,
    )?;
    let trainer_name = trainer.name();
    drop(trainer);
    let (steps_done, train_seconds) = (trained.steps_done, trained.train_seconds);
    let mut status = trained.status;

    let mut metrics: Vec<(String, f64)> = vec![
        ("steps_done".into(), steps_done as f64),
        ("train_loss".into(), trained.last_loss),
        ("eval_loss".into(), trained.last("eval_loss").unwrap_or(f64::NAN)),
        ("parameters".into(), super::parameters(&varmap) as f64),
        ("n_train".into(), split.n_train() as f64),
        ("n_held_out".into(), split.held_labels.len() as f64),
        ("n_judge".into(), split.judge_labels.len() as f64),
        ("sigma_data".into(), sd),
        ("train_images_per_second".into(), (steps_done as f64 * b as f64) / train_seconds.max(1e-9)),
        ("train_seconds".into(), train_seconds),
        ("eval_seconds".into(), trained.eval_seconds),
        ("setup_seconds".into(), setup_seconds),
    ];
    metrics.extend(crate::eval::split::split_metrics(split.seed, split.classes, &split.train_labels, &split.held_labels, &split.judge_labels));
    if let Some(&top) = objective.ladder.first() {
        metrics.extend([("ladder_levels".into(), objective.ladder.len() as f64), ("ladder_sigma_max".into(), top)]);
    }

    // Sampling with the EMA weights (the train loop leaves them in the VarMap), on the CPU
    // through the plain-buffer forward pass.
    let mut fast_forward = buffer_net(model, precond, shape, &varmap, &dev)?;
    let mut samples_out: Vec<Vec<f32>> = Vec::new();
    let mut labels_out: Vec<u32> = Vec::new();
    if status == TrialStatus::Ok
        && let Some(sampled) = sample(cfg, net.as_ref(), fast_forward.as_mut().map(|f| f.as_mut() as &mut dyn BufferDenoiser), shape, split.classes, &dev, cancel)?
    {
        (samples_out, labels_out) = (sampled.images, sampled.labels);
        if let Some(at) = sampled.diverged {
            // Non-finite images: the trial diverged while sampling; no sample metrics.
            status = TrialStatus::Diverged { step: steps_done };
            metrics.extend(at.metrics());
        } else {
            if sampled.cancelled {
                status = TrialStatus::Cancelled;
            }
            let per_second = samples_out.len() as f64 / sampled.seconds.max(1e-9);
            metrics.extend([("nfe".into(), sampled.nfe as f64), ("sample_seconds".into(), sampled.seconds), ("images_per_second_sampling".into(), per_second)]);
            metrics.extend(pixel_metrics(&samples_out, &eval.x, split.symmetric));
        }
    }
    let mut files: Vec<(String, &'static str, Vec<u8>)> = Vec::new();
    if status == TrialStatus::Ok {
        let t = Instant::now();
        if split.digit_judge {
            metrics.extend(crate::eval::digits::digit_metrics(
                cfg,
                &split,
                net.as_ref(),
                fast_forward.as_mut().map(|f| f.as_mut() as &mut dyn BufferDenoiser),
                &eval.x,
                &eval.labels,
                &samples_out,
                &labels_out,
                &dev,
            )?);
        } else {
            // The judge tells digits apart: its metrics mean nothing for other classes.
            metrics.push(("digit_metrics_skipped".into(), 1.0));
            metrics.extend(crate::eval::digits::memorisation(&split, &eval.x, &samples_out));
        }
        files.extend(crate::eval::digits::sample_grid(&split, cfg.model.class_cond(), &samples_out, &labels_out));
        metrics.push(("metrics_seconds".into(), t.elapsed().as_secs_f64()));
    }
    let weights: Vec<(String, Tensor)> = {
        let data = varmap.data().lock().expect("varmap lock");
        let mut v: Vec<(String, Tensor)> = data.iter().map(|(k, var)| (k.clone(), var.as_tensor().clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let data_sample: Vec<Vec<f32>> = eval.x.chunks(d).take(100).map(|c| c.to_vec()).collect();
    Ok(TrialOutcome {
        status,
        metrics,
        curve_columns: trained.columns,
        curve_rows: trained.rows,
        samples: samples_out,
        data_sample,
        weights,
        files,
        device: crate::device::label(&dev),
        trainer: trainer_name.into(),
    })
}

/// What sampling produced.
struct SampledImages {
    images: Vec<Vec<f32>>,
    /// The class each image was asked for (the null class for an unconditional model).
    labels: Vec<u32>,
    /// Network passes per image (a guided evaluation with 0 < s ≠ 1 takes two).
    nfe: u64,
    seconds: f64,
    /// Where a chunk went non-finite (sampling stopped there).
    diverged: Option<samplers::Diverged>,
    /// Cancelled between chunks.
    cancelled: bool,
}

/// Samples `sampler.n` images of `shape` (C, H, W) in chunks of [`CHUNK`] (None without a
/// sampler), through the plain-buffer pass `fast` where there is one, else the candle net; a
/// class-conditional model gets the `classes` in equal runs.
#[allow(clippy::too_many_arguments)]
fn sample(
    cfg: &Trial,
    net: &dyn ImageNet,
    mut fast: Option<&mut dyn BufferDenoiser>,
    (c, h, w): (usize, usize, usize),
    classes: usize,
    dev: &Device,
    cancel: &AtomicBool,
) -> Result<Option<SampledImages>, EngineError> {
    let Some(spec) = &cfg.sampler else { return Ok(None) };
    // An image trial's Langevin step is a number (validation resolves its default).
    let eps = match spec.method.eps() {
        Some(StepSize::Fixed(eps)) => eps,
        Some(StepSize::Auto { .. }) | None => 0.0,
    };
    let Some(sampler) = samplers::build(spec.name(), &Params::of(spec, None, eps)) else { return Ok(None) };
    let t = Instant::now();
    let d = c * h * w;
    let cond = cfg.model.class_cond();
    let n = spec.n;
    let labels: Vec<u32> = if cond { class_runs(n, classes) } else { vec![NULL_CLASS; n] };
    let mut srng = Rng::stream(cfg.seed, Stream::Sampler);
    // An unconditional model has no null class to guide with: its one pass is its model.
    let scale = if cond { spec.guidance } else { 1.0 };
    let mut out = SampledImages { images: Vec::new(), labels: Vec::new(), nfe: 0, seconds: 0.0, diverged: None, cancelled: false };
    for start in (0..n).step_by(CHUNK) {
        let end = (start + CHUNK).min(n);
        let m = end - start;
        let mut x = samplers::start(sampler.as_ref(), m, d, &mut srng);
        let sampled = match fast.as_deref_mut() {
            Some(fwd) => {
                let mut den = FastGuided { fwd, labels: labels[start..end].to_vec(), s: scale };
                samplers::sample(sampler.as_ref(), &mut den, &mut x, &mut srng, &mut || {})?
            }
            None => {
                let mut den = Guided {
                    net,
                    shape: [m, c, h, w],
                    labels: if cond { Some(Tensor::from_slice(&labels[start..end], m, dev)?) } else { None },
                    null: if cond { Some(Tensor::full(NULL_CLASS, m, dev)?) } else { None },
                    s: scale,
                    device: dev.clone(),
                };
                samplers::sample(sampler.as_ref(), &mut den, &mut x, &mut srng, &mut || {})?
            }
        };
        out.nfe = sampled.nfe * guided_passes(scale) as u64;
        if sampled.diverged.is_some() {
            out.diverged = sampled.diverged;
            break;
        }
        out.images.extend(x.chunks(d).map(|c| c.to_vec()));
        if cancel.load(Ordering::Relaxed) {
            out.cancelled = true;
            break;
        }
    }
    out.labels = labels;
    out.seconds = t.elapsed().as_secs_f64();
    Ok(Some(out))
}

/// The requested class of each of `n` samples of a model of `classes` classes: image i asks
/// for ⌊i·classes/n⌋, equal runs in class order (for 10 classes and n a multiple of 10, the
/// first n/10 ask for 0, and so on).
fn class_runs(n: usize, classes: usize) -> Vec<u32> {
    (0..n).map(|i| (i * classes / n.max(1)) as u32).collect()
}

/// Pixel statistics of the samples against the held-out images `real`, and the fraction of
/// sample pixels within 0.05 of the pixel range.
fn pixel_metrics(samples: &[Vec<f32>], real: &[f32], symmetric: bool) -> Vec<(String, f64)> {
    let flat: Vec<f64> = samples.iter().flatten().map(|&v| v as f64).collect();
    let real: Vec<f64> = real.iter().map(|&v| v as f64).collect();
    let moments = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
        (m, (v.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / v.len().max(1) as f64).sqrt())
    };
    let ((sm, ss), (rm, rs)) = (moments(&flat), moments(&real));
    let (lo, hi) = if symmetric { (-1.0, 1.0) } else { (0.0, 1.0) };
    vec![
        ("pixel_mean".into(), sm),
        ("pixel_std".into(), ss),
        ("real_pixel_mean".into(), rm),
        ("real_pixel_std".into(), rs),
        ("pixels_in_range".into(), flat.iter().filter(|&&v| (lo - 0.05..=hi + 0.05).contains(&v)).count() as f64 / flat.len().max(1) as f64),
    ]
}
