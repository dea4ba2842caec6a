//! Runs one image trial: load and split the IDX set, train the network with the trial's
//! objective (`super::objective`; AdamW, EMA of the weights) — on the CPU the MLP on the
//! hand-derived step (`train::fast::image`, same draws and loss), otherwise through candle's
//! autograd — evaluate the held-out denoising loss at fixed (σ, noise) draws at
//! every checkpoint, then sample with the EMA weights (one tenth of the images per class for
//! a class-conditional model, with classifier-free guidance when asked) and compute the
//! metrics. Every random number comes from the trial seed's streams.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use schema::image::{ImageModel, ImageObjectiveKind, ImageSampler, ImageSamplerKind, ImageTrial};

use super::guided::{BufferDenoiser, FastGuided, Guided, guided_passes};
use super::objective::{Objective, edm_weight, ssm_losses};
use super::unet::NULL_CLASS;
use super::{ImageNet, Split, init_weights, tensor};
use crate::error::EngineError;
use crate::outcome::{Progress, TrialOutcome, TrialStatus};
use crate::rng::{Rng, Stream};
use crate::samplers::{self, Params, Start};
use crate::train::fast::image::{FastImageMlp, ImageForward, Rows};
use crate::train::fast::unet::FastUnet;

/// σ levels of the held-out denoising loss (spanning EDM's training distribution).
pub const EVAL_SIGMAS: [f64; 5] = [0.05, 0.2, 0.5, 1.0, 2.0];

/// Images per forward pass when evaluating or sampling (bounds memory).
const CHUNK: usize = 500;

/// Images per pass of the U-Net's plain-buffer inference (its activations for this many
/// images stay allocated: about 2 MB per image at 28×28 and 40 channels).
const UNET_PASS: usize = 64;

/// The per-image denoising loss w(σ)·mean‖D(x + σε; σ, c) − x‖² of a batch x (N, 1, H, W) with
/// noise ε, levels σ (N,) and their weights w(σ) (N,) (EDM's λ(σ) for `edm`, see
/// [`super::objective`]).
pub fn edm_losses(net: &dyn ImageNet, x: &Tensor, eps: &Tensor, sigma: &Tensor, weights: &Tensor, labels: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let n = x.dim(0)?;
    let y = (x + eps.broadcast_mul(&sigma.reshape((n, 1, 1, 1))?)?)?;
    let per = (net.denoise(&y, sigma, labels)? - x)?.sqr()?.flatten_from(1)?.mean(D::Minus1)?;
    per * weights
}

/// The EMA of the trainable variables.
struct Ema {
    decay: f64,
    shadow: Vec<(Var, Tensor)>,
}

impl Ema {
    fn new(vars: &[Var], decay: f64) -> candle_core::Result<Self> {
        Ok(Ema { decay, shadow: vars.iter().map(|v| Ok((v.clone(), v.as_tensor().detach().copy()?))).collect::<candle_core::Result<_>>()? })
    }

    /// shadow ← d·shadow + (1 − d)·w with d warmed up as min(decay, (1 + step)/(10 + step)).
    fn update(&mut self, step: u64) -> candle_core::Result<()> {
        let d = self.decay.min((1.0 + step as f64) / (10.0 + step as f64));
        for (v, s) in &mut self.shadow {
            // Detached: otherwise each shadow keeps the previous one (and the weights) alive
            // through candle's graph, and memory grows by a model's size every step.
            *s = ((&*s * d)? + (v.as_tensor().detach() * (1.0 - d))?)?.detach();
        }
        Ok(())
    }

    /// Swaps the shadow weights into the variables (call twice to swap back).
    fn swap(&mut self) -> candle_core::Result<()> {
        for (v, s) in &mut self.shadow {
            let cur = v.as_tensor().detach().copy()?;
            v.set(s)?;
            *s = cur;
        }
        Ok(())
    }
}

/// The training step: candle's autograd (AdamW over the VarMap, [`Ema`]) or a hand-derived
/// step (the MLP's or the U-Net's), which keeps its own weights and EMA and writes them into
/// the VarMap on demand.
enum Trainer {
    Autograd { opt: AdamW, ema: Ema },
    Fast(Box<FastImageMlp>),
    FastUnet(Box<FastUnet>),
}

impl Trainer {
    fn name(&self) -> &'static str {
        match self {
            Trainer::Autograd { .. } => "autograd",
            Trainer::Fast(_) => "fast_image_mlp",
            Trainer::FastUnet(_) => "fast_unet",
        }
    }

    /// Runs `f` with the EMA weights in the VarMap; the training weights stay where training
    /// reads them.
    fn with_ema_weights<T>(&mut self, varmap: &VarMap, f: impl FnOnce() -> candle_core::Result<T>) -> Result<T, EngineError> {
        match self {
            Trainer::Autograd { ema, .. } => {
                ema.swap()?;
                let out = f();
                ema.swap()?;
                Ok(out?)
            }
            Trainer::Fast(fast) => {
                fast.store_ema(varmap)?;
                Ok(f()?)
            }
            Trainer::FastUnet(fast) => {
                fast.store_ema(varmap)?;
                Ok(f()?)
            }
        }
    }

    /// Leaves the EMA weights in the VarMap (after training).
    fn use_ema_weights(&mut self, varmap: &VarMap) -> Result<(), EngineError> {
        match self {
            Trainer::Autograd { ema, .. } => Ok(ema.swap()?),
            Trainer::Fast(fast) => Ok(fast.store_ema(varmap)?),
            Trainer::FastUnet(fast) => Ok(fast.store_ema(varmap)?),
        }
    }
}

/// Fixed held-out evaluation draws: for each of `n` images one σ from [`EVAL_SIGMAS`] in turn
/// and one noise image.
struct EvalSet {
    x: Vec<f32>,
    labels: Vec<u32>,
    sigmas: Vec<f32>,
    noise: Vec<f32>,
}

/// Mean held-out EDM loss over the fixed draws.
fn eval_loss(net: &dyn ImageNet, set: &EvalSet, h: usize, w: usize, sd: f64, cond: bool, dev: &Device) -> candle_core::Result<f64> {
    let d = h * w;
    let n = set.labels.len();
    let mut total = 0.0;
    for start in (0..n).step_by(CHUNK) {
        let end = (start + CHUNK).min(n);
        let x = tensor(&set.x[start * d..end * d], h, w, dev)?;
        let e = tensor(&set.noise[start * d..end * d], h, w, dev)?;
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

/// The plain-buffer forward pass of a trial's net on the CPU (its weights as the VarMap holds
/// them now), or None elsewhere.
fn buffer_net(model: &ImageModel, precond: super::Precond, h: usize, w: usize, varmap: &VarMap, dev: &Device) -> candle_core::Result<Option<Box<dyn BufferDenoiser>>> {
    if !crate::device::fast_paths(dev) {
        return Ok(None);
    }
    Ok(Some(match model {
        ImageModel::Mlp(spec) => Box::new(ImageForward::new(spec, h * w, precond, varmap)?),
        ImageModel::Unet(spec) => Box::new(FastUnet::inference(spec, precond, h, w, varmap, UNET_PASS)?),
    }))
}

/// What the sampler of an image trial is built from: EDM's ρ schedule as its levels, chains
/// from σ_max z (plain Langevin: uniform in [−1, 1], over the pixel range, the toy trials'
/// "scatter points everywhere").
fn sampler_params(s: &ImageSampler) -> Params {
    let sch = &s.schedule;
    let mut p = Params {
        sigmas: Some(samplers::rho_schedule(sch.sigma_max, sch.sigma_min, sch.steps, sch.rho)),
        eps: 0.0,
        steps: sch.steps,
        steps_per_level: 1,
        denoise: true,
        snr: 0.0,
        start: Start::Noise,
    };
    match s.kind {
        ImageSamplerKind::Pc { snr } => p.snr = snr,
        ImageSamplerKind::AnnealedLangevin { steps_per_level, eps } => (p.steps_per_level, p.eps) = (steps_per_level, eps),
        ImageSamplerKind::Langevin { eps } => (p.eps, p.start) = (eps, Start::Box(1.0)),
        _ => {}
    }
    p
}

/// Runs an image trial on `dev`.
pub fn run_image_trial(cfg: &ImageTrial, dev: Device, progress: &mut dyn FnMut(&Progress), cancel: &AtomicBool) -> Result<TrialOutcome, EngineError> {
    let t_setup = Instant::now();
    let split: Split = super::load(&cfg.data)?;
    let (h, w, d) = (split.h, split.w, split.dim());
    let cond = cfg.model.class_cond();
    let varmap = VarMap::new();
    let objective = Objective::new(&cfg.objective, &split);
    let sd = objective.sigma_data;
    let precond = objective.precond();
    let net = super::build(&cfg.model, precond, h, w, &varmap, &dev)?;
    init_weights(&varmap, &mut Rng::stream(cfg.seed, Stream::Init))?;
    if cond && let Some(&bad) = split.train_labels.iter().chain(&split.held_labels).find(|&&l| l as u32 >= NULL_CLASS) {
        let message = format!("label {bad}: class-conditional image models take labels 0 to 9");
        return Err(EngineError::Data(crate::data::idx::IdxError::Corrupt { path: super::data_origin(&cfg.data), message }));
    }

    // The fixed evaluation draws over the held-out images.
    let mut erng = Rng::stream(cfg.seed, Stream::Eval);
    let n_eval = cfg.eval_n.min(split.held_labels.len());
    let eval = EvalSet {
        x: split.to_floats(&split.held_pixels[..n_eval * d]),
        labels: split.held_labels[..n_eval].iter().map(|&l| l as u32).collect(),
        sigmas: (0..n_eval).map(|i| EVAL_SIGMAS[i % EVAL_SIGMAS.len()] as f32).collect(),
        noise: erng.normals_f32(n_eval * d),
    };
    let setup_seconds = t_setup.elapsed().as_secs_f64();

    let mut trng = Rng::stream(cfg.seed, Stream::Train);
    let columns: Vec<String> = ["step", "train_loss", "eval_loss"].iter().map(|s| s.to_string()).collect();
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let mut status = TrialStatus::Ok;
    let (mut loss_sum, mut loss_n, mut last_loss) = (0.0, 0usize, f64::NAN);
    let mut eval_seconds = 0.0;
    let t_train = Instant::now();
    let b = cfg.train.batch;
    let mut steps_done = 0;
    // The trainer: the hand-derived step for the MLP on CPU, else candle's autograd.
    let mut trainer = match &cfg.model {
        ImageModel::Mlp(spec) if crate::device::fast_paths(&dev) && objective.is_denoising() => {
            Trainer::Fast(Box::new(FastImageMlp::new(spec, d, &varmap, b, cfg.train.lr, cfg.train.ema)?))
        }
        ImageModel::Unet(spec) if crate::device::fast_paths(&dev) && objective.is_denoising() => {
            Trainer::FastUnet(Box::new(FastUnet::trainer(spec, precond, h, w, &varmap, b, cfg.train.lr, cfg.train.ema)?))
        }
        _ => {
            let vars = varmap.all_vars();
            let opt = AdamW::new(vars.clone(), ParamsAdamW { lr: cfg.train.lr, weight_decay: 0.0, ..Default::default() })?;
            Trainer::Autograd { opt, ema: Ema::new(&vars, cfg.train.ema)? }
        }
    };
    let checkpoint = |step: u64, train_loss: f64, trainer: &mut Trainer, eval_seconds: &mut f64| -> Result<Vec<f64>, EngineError> {
        let t = Instant::now();
        let l = trainer.with_ema_weights(&varmap, || match buffer_net(&cfg.model, precond, h, w, &varmap, &dev)? {
            Some(mut fwd) => Ok(eval_loss_buffers(fwd.as_mut(), &eval, d, sd, cond)),
            None => eval_loss(net.as_ref(), &eval, h, w, sd, cond, &dev),
        })?;
        *eval_seconds += t.elapsed().as_secs_f64();
        Ok(vec![step as f64, train_loss, l])
    };
    rows.push(checkpoint(0, f64::NAN, &mut trainer, &mut eval_seconds)?);
    for step in 1..=cfg.train.steps {
        if cancel.load(Ordering::Relaxed) {
            status = TrialStatus::Cancelled;
            break;
        }
        let (x, mut labels) = split.batch(b, &mut trng);
        for l in &mut labels {
            if cfg.objective.label_dropout > 0.0 && trng.uniform() < cfg.objective.label_dropout {
                *l = NULL_CLASS;
            }
        }
        let sigmas: Vec<f32> = (0..b).map(|_| objective.draw_sigma(&mut trng) as f32).collect();
        let weights: Vec<f32> = sigmas.iter().map(|&s| objective.weight(s as f64) as f32).collect();
        let eps = trng.normals_f32(b * d);
        let lv = match &mut trainer {
            Trainer::Fast(f) => f.step(&x, &eps, &labels, &Rows::new(&precond, sigmas, weights), step),
            Trainer::FastUnet(f) => f.step(&x, &eps, &labels, &Rows::new(&precond, sigmas, weights), step),
            Trainer::Autograd { opt, ema } => {
                let x = tensor(&x, h, w, &dev)?;
                let e = tensor(&eps, h, w, &dev)?;
                let sig = Tensor::from_vec(sigmas, b, &dev)?;
                let lab = if cond { Some(Tensor::from_vec(labels, b, &dev)?) } else { None };
                let loss = match objective.kind {
                    ImageObjectiveKind::Ssm { vr, .. } => {
                        let v: Vec<f32> = (0..b * d).map(|_| trng.rademacher() as f32).collect();
                        let xt = (&x + e.broadcast_mul(&sig.reshape((b, 1, 1, 1))?)?)?;
                        ssm_losses(net.as_ref(), &xt, &tensor(&v, h, w, &dev)?, &sig, vr, lab.as_ref())?.mean_all()?
                    }
                    _ => edm_losses(net.as_ref(), &x, &e, &sig, &Tensor::from_vec(weights, b, &dev)?, lab.as_ref())?.mean_all()?,
                };
                let lv = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                if lv.is_finite() {
                    opt.backward_step(&loss)?;
                    ema.update(step)?;
                }
                lv
            }
        };
        if !lv.is_finite() {
            status = TrialStatus::Diverged { step };
            break;
        }
        steps_done = step;
        loss_sum += lv;
        loss_n += 1;
        last_loss = lv;
        if step % cfg.train.eval_every == 0 || step == cfg.train.steps {
            let mean = loss_sum / loss_n.max(1) as f64;
            (loss_sum, loss_n) = (0.0, 0);
            let row = checkpoint(step, mean, &mut trainer, &mut eval_seconds)?;
            progress(&Progress { step, total_steps: cfg.train.steps, train_loss: mean, latest: vec![("eval_loss".into(), row[2])] });
            rows.push(row);
        } else if step % 10 == 0 {
            progress(&Progress { step, total_steps: cfg.train.steps, train_loss: lv, latest: vec![] });
        }
    }
    let train_seconds = (t_train.elapsed().as_secs_f64() - eval_seconds).max(0.0);

    let mut metrics: Vec<(String, f64)> = vec![
        ("steps_done".into(), steps_done as f64),
        ("train_loss".into(), last_loss),
        ("eval_loss".into(), rows.last().map_or(f64::NAN, |r| r[2])),
        ("parameters".into(), super::parameters(&varmap) as f64),
        ("n_train".into(), split.n_train() as f64),
        ("n_held_out".into(), split.held_labels.len() as f64),
        ("n_judge".into(), split.judge_labels.len() as f64),
        ("sigma_data".into(), sd),
        ("train_images_per_second".into(), (steps_done as f64 * b as f64) / train_seconds.max(1e-9)),
        ("train_seconds".into(), train_seconds),
        ("eval_seconds".into(), eval_seconds),
        ("setup_seconds".into(), setup_seconds),
    ];
    metrics.extend(crate::eval::split::split_metrics(split.seed, split.classes, &split.train_labels, &split.held_labels, &split.judge_labels));
    if let Some(&top) = objective.ladder.first() {
        metrics.extend([("ladder_levels".into(), objective.ladder.len() as f64), ("ladder_sigma_max".into(), top)]);
    }

    // Sampling with the EMA weights.
    trainer.use_ema_weights(&varmap)?;
    let trainer_name = trainer.name();
    // The plain-buffer forward pass on CPU (the EMA weights, now in the VarMap).
    let mut fast_forward = buffer_net(&cfg.model, precond, h, w, &varmap, &dev)?;
    let mut samples_out: Vec<Vec<f32>> = Vec::new();
    let mut labels_out: Vec<u32> = Vec::new();
    let sampler = samplers::build(cfg.sampler.name(), &sampler_params(&cfg.sampler));
    let (mut t_sample, mut nfe) = (None, 0);
    if let (TrialStatus::Ok, Some(sampler)) = (status, sampler) {
        t_sample = Some(Instant::now());
        let n = cfg.sampler.n;
        let labels: Vec<u32> = if cond { (0..n).map(|i| (i / (n / 10)) as u32).collect() } else { vec![NULL_CLASS; n] };
        let mut srng = Rng::stream(cfg.seed, Stream::Sampler);
        // An unconditional model has no null class to guide with: its one pass is its model.
        let scale = if cond { cfg.sampler.guidance } else { 1.0 };
        for start in (0..n).step_by(CHUNK) {
            let end = (start + CHUNK).min(n);
            let m = end - start;
            let mut x = samplers::start(sampler.as_ref(), m, d, &mut srng);
            let sampled = match fast_forward.as_deref_mut() {
                Some(fwd) => {
                    let mut den = FastGuided { fwd, labels: labels[start..end].to_vec(), s: scale };
                    samplers::sample(sampler.as_ref(), &mut den, &mut x, &mut srng, &mut || {})?
                }
                None => {
                    let mut den = Guided {
                        net: net.as_ref(),
                        shape: [m, 1, h, w],
                        labels: if cond { Some(Tensor::from_slice(&labels[start..end], m, &dev)?) } else { None },
                        null: if cond { Some(Tensor::full(NULL_CLASS, m, &dev)?) } else { None },
                        s: scale,
                        device: dev.clone(),
                    };
                    samplers::sample(sampler.as_ref(), &mut den, &mut x, &mut srng, &mut || {})?
                }
            };
            // Network passes: a guided evaluation with 0 < s ≠ 1 takes two.
            nfe = sampled.nfe * guided_passes(scale) as u64;
            if let Some(at) = sampled.diverged {
                // Non-finite images: the trial diverged while sampling; no sample metrics.
                status = TrialStatus::Diverged { step: steps_done };
                metrics.extend(at.metrics());
                break;
            }
            samples_out.extend(x.chunks(d).map(|c| c.to_vec()));
            if cancel.load(Ordering::Relaxed) {
                status = TrialStatus::Cancelled;
                break;
            }
        }
        labels_out = labels;
    }
    if let Some(t) = t_sample.filter(|_| !matches!(status, TrialStatus::Diverged { .. })) {
        let secs = t.elapsed().as_secs_f64();
        let flat: Vec<f64> = samples_out.iter().flatten().map(|&v| v as f64).collect();
        let real: Vec<f64> = eval.x.iter().map(|&v| v as f64).collect();
        let moments = |v: &[f64]| {
            let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
            (m, (v.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / v.len().max(1) as f64).sqrt())
        };
        let ((sm, ss), (rm, rs)) = (moments(&flat), moments(&real));
        let (lo, hi) = if split.symmetric { (-1.0, 1.0) } else { (0.0, 1.0) };
        metrics.extend([
            ("nfe".into(), nfe as f64),
            ("sample_seconds".into(), secs),
            ("images_per_second_sampling".into(), samples_out.len() as f64 / secs.max(1e-9)),
            ("pixel_mean".into(), sm),
            ("pixel_std".into(), ss),
            ("real_pixel_mean".into(), rm),
            ("real_pixel_std".into(), rs),
            ("pixels_in_range".into(), flat.iter().filter(|&&v| (lo - 0.05..=hi + 0.05).contains(&v)).count() as f64 / flat.len().max(1) as f64),
        ]);
    }
    let mut files: Vec<(String, &'static str, Vec<u8>)> = Vec::new();
    if status == TrialStatus::Ok {
        let t = Instant::now();
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
            &mut files,
        )?);
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
        curve_columns: columns,
        curve_rows: rows,
        samples: samples_out,
        data_sample,
        weights,
        files,
        device: crate::device::label(&dev),
        trainer: trainer_name.into(),
    })
}
