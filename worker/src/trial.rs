//! Runs one trial: resolve the noise ladder, build the model, train with the objective while
//! evaluating loss gaps at checkpoints, sample, and compute metrics. Also writes a trial's
//! outputs (metrics.json, curve.csv, samples.csv, model.safetensors).
//!
//! Loss gaps: at every checkpoint, on one fixed evaluation sample, L_ESM, L_ISM, their per-point
//! difference (mean and standard error) and C = E‖∇log p‖² computed independently of the model
//! (quadrature in 1-2D, a separate Monte Carlo sample otherwise). For noise-conditional models,
//! likewise L_DSM(σ) − L_ESM_σ against C_DSM(σ) = D/σ² − E_{p_σ}‖∇log p_σ‖².

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};

use crate::fastmlp::{FastDsm, FastIsm, FastSsm};
use crate::config::{ModelKind, NoiseSpec, SamplerKind, TrialConfig};
use crate::ladder;
use crate::metrics;
use crate::mixture::{mean_se, Mixture};
use crate::nets::{Arch, EnergyNet, MlpScore, Model};
use crate::objectives::{self, ObjectiveKind, TrainObjective};
use crate::rng::{Rng, Stream};
use crate::samplers;

/// Points per evaluation chunk (bounds eval memory to chunk·(1+trace_chunk)·H floats per layer).
const EVAL_CHUNK: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("failed to write {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// Reported to the caller during training and sampling.
#[derive(Debug, Clone)]
pub struct Progress {
    pub step: u64,
    pub total_steps: u64,
    pub train_loss: f64,
    /// The latest checkpoint's values (empty between checkpoints).
    pub latest: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrialStatus {
    Ok,
    Diverged { step: u64 },
    Cancelled,
}

impl std::fmt::Display for TrialStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrialStatus::Ok => "ok",
            TrialStatus::Diverged { .. } => "diverged",
            TrialStatus::Cancelled => "cancelled",
        })
    }
}

pub struct TrialOutcome {
    pub status: TrialStatus,
    pub metrics: Vec<(String, f64)>,
    pub curve_columns: Vec<String>,
    pub curve_rows: Vec<Vec<f64>>,
    pub samples: Vec<Vec<f32>>,
    pub data_sample: Vec<Vec<f32>>,
    /// Named parameters of the trained model (empty for sleep trials).
    pub weights: Vec<(String, Tensor)>,
}

impl TrialOutcome {
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
}

/// The fixed evaluation sample on clean data, with exact scores.
pub struct EvalSet {
    pub xs: Vec<Tensor>,
    pub targets: Vec<Tensor>,
}

impl EvalSet {
    pub fn new(points: &[f64], scores: &[f64], dim: usize, dev: &Device) -> candle_core::Result<Self> {
        let mut xs = Vec::new();
        let mut targets = Vec::new();
        for (p, s) in points.chunks(EVAL_CHUNK * dim).zip(scores.chunks(EVAL_CHUNK * dim)) {
            xs.push(crate::nets::points(p, dim, dev)?);
            targets.push(crate::nets::points(s, dim, dev)?);
        }
        Ok(EvalSet { xs, targets })
    }
}

/// The fixed evaluation sample on p_σ for the DSM constant: x̃ = x₀ + σε, ε, ∇log p_σ(x̃).
pub struct DsmEvalSet {
    pub sigma: f64,
    pub xs: Vec<Tensor>,
    pub eps: Vec<Tensor>,
    pub targets: Vec<Tensor>,
}

/// Values of one evaluation.
#[derive(Debug, Clone, Default)]
pub struct GapStats {
    pub l_esm: f64,
    pub l_ism: f64,
    pub gap: f64,
    pub gap_se: f64,
}

fn to_f64(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    Ok(t.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
}

/// L_ESM, L_ISM and their per-point difference on the evaluation set, with the model at σ.
pub fn eval_esm_ism(model: &Model, set: &EvalSet, sigma: Option<f64>, trace_chunk: usize) -> candle_core::Result<GapStats> {
    let (mut esm, mut ism, mut gap) = (Vec::new(), Vec::new(), Vec::new());
    for (x, target) in set.xs.iter().zip(&set.targets) {
        let n = x.dim(0)?;
        let sig = sigma.map(|s| Tensor::full(s as f32, (n, 1), x.device())).transpose()?;
        let (s, tr) = model.score_and_trace(x, sig.as_ref(), trace_chunk)?;
        let e = to_f64(&objectives::esm_terms(&s, target)?)?;
        let i = to_f64(&objectives::ism_terms(&s, &tr)?)?;
        gap.extend(e.iter().zip(&i).map(|(a, b)| a - b));
        esm.extend(e);
        ism.extend(i);
    }
    let (g, gse) = mean_se(&gap);
    Ok(GapStats { l_esm: mean_se(&esm).0, l_ism: mean_se(&ism).0, gap: g, gap_se: gse })
}

/// L_DSM(σ), L_ESM_σ and their per-point difference (mean, se) on the p_σ evaluation set.
pub fn eval_dsm(model: &Model, set: &DsmEvalSet) -> candle_core::Result<GapStats> {
    let (mut dsm, mut esm, mut gap) = (Vec::new(), Vec::new(), Vec::new());
    for ((x, eps), target) in set.xs.iter().zip(&set.eps).zip(&set.targets) {
        let n = x.dim(0)?;
        let sig = Tensor::full(set.sigma as f32, (n, 1), x.device())?;
        let s = model.score(x, Some(&sig))?;
        let d = to_f64(&objectives::dsm_terms(&s, eps, &sig)?)?;
        let e = to_f64(&objectives::esm_terms(&s, target)?)?;
        gap.extend(d.iter().zip(&e).map(|(a, b)| a - b));
        dsm.extend(d);
        esm.extend(e);
    }
    let (g, gse) = mean_se(&gap);
    Ok(GapStats { l_esm: mean_se(&esm).0, l_ism: mean_se(&dsm).0, gap: g, gap_se: gse })
}

/// SSM (or SSM-VR) on the evaluation set with fixed probes: (mean, se).
fn eval_ssm(model: &Model, set: &EvalSet, sigma: Option<f64>, obj: &TrainObjective, seed: u64) -> candle_core::Result<(f64, f64)> {
    let mut rng = Rng::stream(seed, Stream::Probes);
    let mut vals = Vec::new();
    for x in &set.xs {
        let (n, d) = x.dims2()?;
        let sig = sigma.map(|s| Tensor::full(s as f32, (n, 1), x.device())).transpose()?;
        let v = objectives::probes(obj.probes, n, d, obj.probe, &mut rng, x.device())?;
        let tg = model.tangents(x, sig.as_ref(), &crate::nets::Probes::Vectors(&v))?;
        vals.extend(to_f64(&objectives::ssm_terms(&tg, &v, obj.kind == ObjectiveKind::SsmVr)?)?);
    }
    Ok(mean_se(&vals))
}

/// C_DSM(σ) = D/σ² − E_{p_σ}‖∇log p_σ‖² and its standard error.
pub fn dsm_constant(mix: &Mixture, sigma: f64, n_mc: usize, rng: &mut Rng) -> (f64, f64) {
    let (c, se) = mix.perturbed(sigma).score_norm_constant(n_mc, rng);
    (mix.dim as f64 / (sigma * sigma) - c, se)
}

/// Builds the p_σ evaluation set of n points.
pub fn dsm_eval_set(mix: &Mixture, sigma: f64, n: usize, rng: &mut Rng, dev: &Device) -> candle_core::Result<DsmEvalSet> {
    let d = mix.dim;
    let x0 = mix.sample(n, rng);
    let eps: Vec<f64> = (0..n * d).map(|_| rng.normal()).collect();
    let xt: Vec<f64> = x0.iter().zip(&eps).map(|(a, e)| a + sigma * e).collect();
    let target = mix.perturbed(sigma).scores(&xt);
    let mut set = DsmEvalSet { sigma, xs: Vec::new(), eps: Vec::new(), targets: Vec::new() };
    for ((x, e), t) in xt.chunks(EVAL_CHUNK * d).zip(eps.chunks(EVAL_CHUNK * d)).zip(target.chunks(EVAL_CHUNK * d)) {
        set.xs.push(crate::nets::points(x, d, dev)?);
        set.eps.push(crate::nets::points(e, d, dev)?);
        set.targets.push(crate::nets::points(t, d, dev)?);
    }
    Ok(set)
}

/// The σ ladder (descending) and its ratio γ, or None for unconditional trials.
pub fn resolve_ladder(cfg: &TrialConfig, train_set: Option<&[f64]>) -> Option<(Vec<f64>, f64)> {
    let ratio = |s: &[f64]| if s.len() > 1 { (s[0] / s[s.len() - 1]).powf(1.0 / (s.len() - 1) as f64) } else { 1.0 };
    match cfg.objective.noise.as_ref()? {
        NoiseSpec::Geometric { sigma_max, sigma_min, levels } => {
            let s = ladder::geometric(*sigma_max, *sigma_min, *levels);
            let g = ratio(&s);
            Some((s, g))
        }
        NoiseSpec::List(s) => Some((s.clone(), ratio(s))),
        NoiseSpec::Auto { sigma_min, levels } => {
            // σ₁ is exact over at most 4000 training points (O(n²·D)).
            let d = cfg.mixture.dim;
            let owned;
            let pts = match train_set {
                Some(t) => &t[..t.len().min(4000 * d)],
                None => {
                    owned = cfg.mixture.sample(2000, &mut Rng::stream(cfg.seed, Stream::Ladder));
                    &owned[..]
                }
            };
            let (s, g, _) = ladder::auto(pts, d, *sigma_min, *levels);
            Some((s, g))
        }
    }
}

fn build_model(cfg: &TrialConfig, varmap: &VarMap, dev: &Device) -> candle_core::Result<Model> {
    let arch = Arch {
        dim: cfg.mixture.dim,
        hidden: cfg.model.hidden,
        depth: cfg.model.depth,
        activation: cfg.model.activation,
        conditional: cfg.conditional(),
        scale_by_sigma: cfg.model.scale_by_sigma,
    };
    let mut rng = Rng::stream(cfg.seed, Stream::Init);
    Ok(match cfg.model.kind {
        ModelKind::Mlp => Model::Mlp(MlpScore::new(arch, varmap, &mut rng, dev)?),
        ModelKind::EnergyMlp => Model::Energy(EnergyNet::new(arch, varmap, &mut rng, dev)?),
    })
}

fn sleep_trial(seconds: f64, progress: &mut dyn FnMut(&Progress), cancel: &AtomicBool) -> TrialOutcome {
    let start = Instant::now();
    let total = (seconds * 1000.0).ceil() as u64;
    let mut status = TrialStatus::Ok;
    loop {
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed >= seconds {
            break;
        }
        if cancel.load(Ordering::Relaxed) {
            status = TrialStatus::Cancelled;
            break;
        }
        progress(&Progress { step: (elapsed * 1000.0) as u64, total_steps: total, train_loss: 0.0, latest: vec![] });
        std::thread::sleep(std::time::Duration::from_secs_f64((seconds - elapsed).min(0.05)));
    }
    TrialOutcome {
        status,
        metrics: vec![("slept_seconds".into(), start.elapsed().as_secs_f64())],
        curve_columns: vec!["step".into()],
        curve_rows: vec![],
        samples: vec![],
        data_sample: vec![],
        weights: vec![],
    }
}

/// The points an SSM/ISM fast step trains on: each perturbed at a random ladder level (with
/// its σ), or the clean batch without a ladder — the same draws as the autograd path
/// (`objectives::loss_pieces`).
fn training_points(batch: &[f64], d: usize, sigmas: Option<&[f64]>, rng: &mut Rng) -> (Vec<f32>, Option<Vec<f32>>) {
    match sigmas {
        Some(levels) => {
            let p = objectives::perturb(batch, d, levels, rng);
            (p.xt, Some(p.sigma))
        }
        None => (batch.iter().map(|&v| v as f32).collect(), None),
    }
}

/// A hand-derived training step replacing candle autograd for MLP score nets.
enum Fast {
    Dsm(FastDsm),
    Ssm(FastSsm),
    Ism(FastIsm),
}

/// Runs one trial on the calling thread (CPU heavy: call it off any async executor). Checks
/// `cancel` between steps.
pub fn run_trial(cfg: &TrialConfig, progress: &mut dyn FnMut(&Progress), cancel: &AtomicBool) -> Result<TrialOutcome, EngineError> {
    if let Some(s) = cfg.sleep {
        return Ok(sleep_trial(s, progress, cancel));
    }
    let dev = Device::Cpu;
    let mix = &cfg.mixture;
    let d = mix.dim;
    let seed = cfg.seed;

    // Training data: a fixed set of n_train points, or fresh exact samples every step.
    let mut train_rng = Rng::stream(seed, Stream::Train);
    let train_set = cfg.train.n_train.map(|n| mix.sample(n, &mut train_rng));
    let ladder = resolve_ladder(cfg, train_set.as_deref());
    let sigmas = ladder.as_ref().map(|(s, _)| s.clone());
    let sigma_clean = sigmas.as_ref().map(|s| *s.last().expect("non-empty"));

    let varmap = VarMap::new();
    let model = build_model(cfg, &varmap, &dev)?;
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW { lr: cfg.train.lr, weight_decay: 0.0, ..Default::default() })?;

    // Evaluation sets and constants, all independent of the model.
    let t_eval0 = Instant::now();
    let mut eval_rng = Rng::stream(seed, Stream::Eval);
    let eval_pts = mix.sample(cfg.eval.n, &mut eval_rng);
    let eval_set = EvalSet::new(&eval_pts, &mix.scores(&eval_pts), d, &dev)?;
    let mut c_rng = Rng::stream(seed, Stream::Constant);
    let (c_true, c_se) = mix.score_norm_constant(cfg.eval.c_samples, &mut c_rng);
    let dsm_sigma = sigmas.as_ref().map(|s| cfg.eval.dsm_sigma.unwrap_or(s[s.len() / 2]));
    let dsm = match dsm_sigma {
        Some(sig) => {
            let set = dsm_eval_set(mix, sig, cfg.eval.n, &mut eval_rng, &dev)?;
            let (c, se) = dsm_constant(mix, sig, cfg.eval.c_samples, &mut c_rng);
            Some((set, c, se))
        }
        None => None,
    };
    let mut eval_seconds = t_eval0.elapsed().as_secs_f64();

    let train_obj = TrainObjective {
        kind: cfg.objective.kind,
        sigmas: sigmas.clone(),
        probes: cfg.objective.probes,
        probe: cfg.objective.probe,
        trace_chunk: cfg.objective.trace_chunk,
    };
    let is_ssm = matches!(cfg.objective.kind, ObjectiveKind::Ssm | ObjectiveKind::SsmVr);
    let mut columns: Vec<String> = ["step", "train_loss", "l_esm", "l_ism", "gap", "gap_se", "c_true", "c_se"].map(String::from).to_vec();
    if dsm.is_some() {
        columns.extend(["l_dsm", "l_esm_sigma", "dsm_gap", "dsm_gap_se", "c_dsm", "c_dsm_se", "dsm_sigma"].map(String::from));
    }
    if is_ssm {
        columns.extend(["l_ssm", "l_ssm_se"].map(String::from));
    }
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let mut evaluate = |step: u64, train_loss: f64| -> candle_core::Result<Vec<f64>> {
        let t0 = Instant::now();
        let g = eval_esm_ism(&model, &eval_set, sigma_clean, cfg.objective.trace_chunk)?;
        let mut row = vec![step as f64, train_loss, g.l_esm, g.l_ism, g.gap, g.gap_se, c_true, c_se];
        if let (Some((set, c, se)), Some(sig)) = (&dsm, dsm_sigma) {
            let h = eval_dsm(&model, set)?;
            row.extend([h.l_ism, h.l_esm, h.gap, h.gap_se, *c, *se, sig]);
        }
        if is_ssm {
            let (m, se) = eval_ssm(&model, &eval_set, sigma_clean, &train_obj, seed)?;
            row.extend([m, se]);
        }
        eval_seconds += t0.elapsed().as_secs_f64();
        Ok(row)
    };

    // DSM, SSM(-VR) and (depth-2) exact ISM on MLPs train with hand-derived steps (same
    // losses, see fastmlp).
    let mut fast = match (&model, cfg.objective.kind) {
        (Model::Mlp(m), ObjectiveKind::Dsm) => Some(Fast::Dsm(FastDsm::new(m, cfg.train.batch, cfg.train.lr)?)),
        (Model::Mlp(m), ObjectiveKind::Ssm | ObjectiveKind::SsmVr) => Some(Fast::Ssm(FastSsm::new(m, cfg.objective.kind == ObjectiveKind::SsmVr, cfg.train.lr)?)),
        (Model::Mlp(m), ObjectiveKind::Ism) => FastIsm::new(m, cfg.train.lr)?.map(Fast::Ism),
        _ => None,
    };
    let sync = |fast: &Option<Fast>| -> candle_core::Result<()> {
        match (fast, &model) {
            (Some(Fast::Dsm(f)), Model::Mlp(m)) => f.store(m, &varmap),
            (Some(Fast::Ssm(f)), Model::Mlp(m)) => f.store(m, &varmap),
            (Some(Fast::Ism(f)), Model::Mlp(m)) => f.store(m, &varmap),
            _ => Ok(()),
        }
    };

    let t_train = Instant::now();
    let vars = varmap.all_vars();
    let mut status = TrialStatus::Ok;
    let mut last_loss = f64::NAN;
    let mut steps_done = 0;
    for step in 0..=cfg.train.steps {
        if step % cfg.train.eval_every == 0 || step == cfg.train.steps {
            sync(&fast)?;
            let row = evaluate(step, last_loss)?;
            let latest: Vec<(String, f64)> = columns.iter().cloned().zip(row.iter().cloned()).skip(1).collect();
            let finite = row[2..].iter().all(|v| v.is_finite());
            rows.push(row);
            progress(&Progress { step, total_steps: cfg.train.steps, train_loss: last_loss, latest });
            if !finite {
                status = TrialStatus::Diverged { step };
                break;
            }
        }
        if step == cfg.train.steps {
            break;
        }
        if cancel.load(Ordering::Relaxed) {
            status = TrialStatus::Cancelled;
            break;
        }
        let batch: Vec<f64> = match &train_set {
            Some(t) => {
                let n = t.len() / d;
                (0..cfg.train.batch).flat_map(|_| {
                    let i = train_rng.below(n);
                    t[i * d..(i + 1) * d].to_vec()
                }).collect()
            }
            None => mix.sample(cfg.train.batch, &mut train_rng),
        };
        if let Some(f) = fast.as_mut() {
            let loss = match f {
                Fast::Dsm(f) => {
                    let p = objectives::perturb(&batch, d, sigmas.as_deref().expect("dsm has a ladder"), &mut train_rng);
                    f.step(&p.xt, &p.eps, &p.sigma)
                }
                Fast::Ssm(f) => {
                    let n = batch.len() / d;
                    let (x, sig) = training_points(&batch, d, sigmas.as_deref(), &mut train_rng);
                    let v = objectives::probe_values(cfg.objective.probes, n, d, cfg.objective.probe, &mut train_rng);
                    f.step(&x, &v, sig.as_deref())
                }
                Fast::Ism(f) => {
                    let (x, sig) = training_points(&batch, d, sigmas.as_deref(), &mut train_rng);
                    f.step(&x, sig.as_deref())
                }
            };
            last_loss = loss;
            if !loss.is_finite() {
                status = TrialStatus::Diverged { step };
                break;
            }
            steps_done = step + 1;
            progress(&Progress { step: steps_done, total_steps: cfg.train.steps, train_loss: loss, latest: vec![] });
            continue;
        }
        let mut loss = 0.0;
        let mut grads: Option<GradStore> = None;
        objectives::loss_pieces(&model, &train_obj, mix, &batch, &mut train_rng, &dev, &mut |piece| {
            loss += piece.to_scalar::<f32>()? as f64;
            let g = piece.backward()?;
            match &mut grads {
                None => grads = Some(g),
                Some(acc) => {
                    for v in &vars {
                        if let Some(gv) = g.get(v.as_tensor()) {
                            let sum = match acc.get(v.as_tensor()) {
                                Some(a) => (a + gv)?,
                                None => gv.clone(),
                            };
                            acc.insert(v.as_tensor(), sum);
                        }
                    }
                }
            }
            Ok(())
        })?;
        last_loss = loss;
        if !loss.is_finite() {
            status = TrialStatus::Diverged { step };
            break;
        }
        opt.step(grads.as_ref().expect("at least one loss piece"))?;
        steps_done = step + 1;
        progress(&Progress { step: steps_done, total_steps: cfg.train.steps, train_loss: loss, latest: vec![] });
    }
    sync(&fast)?;
    let train_seconds = t_train.elapsed().as_secs_f64() - (eval_seconds - t_eval0.elapsed().as_secs_f64()).max(0.0);

    let mut metrics: Vec<(String, f64)> = Vec::new();
    if let Some(last) = rows.last() {
        for (k, v) in columns.iter().zip(last).skip(2) {
            metrics.push((k.clone(), *v));
        }
    }
    metrics.push(("steps_done".into(), steps_done as f64));
    if let Some((s, g)) = &ladder {
        metrics.push(("levels".into(), s.len() as f64));
        metrics.push(("sigma_max_used".into(), s[0]));
        metrics.push(("sigma_min_used".into(), *s.last().expect("non-empty")));
        metrics.push(("gamma".into(), *g));
    }

    // Sampling and sample metrics.
    let t_sample = Instant::now();
    let mut samples_out = Vec::new();
    let mut data_out = Vec::new();
    if status == TrialStatus::Ok && cfg.sampler.kind != SamplerKind::None {
        let mut srng = Rng::stream(seed, Stream::Sampler);
        let s = &cfg.sampler;
        let mut x = samplers::uniform_box(s.n, d, s.box_half, &mut srng);
        let mut scorer = samplers::scorer_for(&model, &dev)?;
        let eps = match (s.eps, &ladder) {
            (Some(e), _) => e,
            (None, Some((sig, g))) => ladder::ncsnv2_step_size(*sig.last().expect("non-empty"), *g, s.steps_per_level),
            (None, None) => unreachable!("validated: eps = \"auto\" needs a ladder"),
        };
        metrics.push(("eps_used".into(), eps));
        let total = match s.kind {
            SamplerKind::AnnealedLangevin => sigmas.as_ref().map_or(0, |v| v.len()) * s.steps_per_level,
            _ => s.steps,
        } as u64;
        let mut k = 0u64;
        let mut tick = || {
            k += 1;
            if k % 100 == 0 {
                progress(&Progress { step: cfg.train.steps, total_steps: cfg.train.steps, train_loss: last_loss, latest: vec![("sampling_step".into(), k as f64), ("sampling_total".into(), total as f64)] });
            }
        };
        match s.kind {
            SamplerKind::AnnealedLangevin => samplers::annealed_langevin(scorer.as_mut(), &mut x, sigmas.as_ref().expect("validated"), eps, s.steps_per_level, s.denoise, &mut srng, &mut tick)?,
            SamplerKind::Langevin => samplers::langevin(scorer.as_mut(), &mut x, sigma_clean, eps, s.steps, &mut srng, &mut tick)?,
            SamplerKind::ScoreAscent => samplers::score_ascent(scorer.as_mut(), &mut x, sigma_clean, eps, s.steps, &mut tick)?,
            SamplerKind::None => unreachable!(),
        }
        let xs: Vec<f64> = x.into_iter().map(f64::from).collect();
        let reference = mix.sample(s.n, &mut Rng::stream(seed, Stream::Reference));
        let finite: Vec<f64> = xs.chunks(d).filter(|p| p.iter().all(|v| v.is_finite())).flatten().cloned().collect();
        metrics.push(("samples_nonfinite".into(), ((xs.len() - finite.len()) / d) as f64));
        if finite.len() >= 2 * d {
            let mut mrng = Rng::stream(seed, Stream::Metrics);
            metrics.push(("fd".into(), metrics::frechet_to_mixture(&finite, mix)));
            metrics.push(("swd".into(), metrics::sliced_w1(&finite, &reference, d, 128, &mut mrng)));
            metrics.push(("mmd".into(), metrics::mmd_rbf(&finite, &reference, d, 1000)));
            let w = metrics::mode_weights(&finite, mix);
            let err: f64 = 0.5 * w.iter().zip(&mix.weights).map(|(a, b)| (a - b).abs()).sum::<f64>();
            metrics.push(("mode_weight_err".into(), err));
            for (i, (a, b)) in w.iter().zip(&mix.weights).enumerate() {
                metrics.push((format!("mode_w_{i}"), *a));
                metrics.push((format!("true_w_{i}"), *b));
            }
            // Mean distance to the nearest mean shows the collapse of score ascent.
            let spread: f64 = finite.chunks(d).map(|p| {
                mix.means.iter().map(|m| m.iter().zip(p).map(|(a, b)| (a - b) * (a - b)).sum::<f64>()).fold(f64::INFINITY, f64::min).sqrt()
            }).sum::<f64>() / (finite.len() / d) as f64;
            metrics.push(("dist_to_mode".into(), spread));
        }
        samples_out = xs.chunks(d).map(|p| p.iter().map(|&v| v as f32).collect()).collect();
        data_out = reference.chunks(d).map(|p| p.iter().map(|&v| v as f32).collect()).collect();
    }
    if status == TrialStatus::Ok && cfg.model.kind == ModelKind::EnergyMlp && d <= 2 {
        if let Model::Energy(net) = &model {
            for (k, v) in energy_metrics(net, mix, sigma_clean, &eval_pts, &dev)? {
                metrics.push((k.into(), v));
            }
        }
    }
    metrics.push(("train_seconds".into(), train_seconds.max(0.0)));
    metrics.push(("eval_seconds".into(), eval_seconds));
    metrics.push(("sample_seconds".into(), t_sample.elapsed().as_secs_f64()));

    let mut weights: Vec<(String, Tensor)> = varmap.data().lock().expect("varmap lock").iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(TrialOutcome { status, metrics, curve_columns: columns, curve_rows: rows, samples: samples_out, data_sample: data_out, weights })
}

/// log Z by Simpson quadrature of e^q over the data box, then held-out NLL and KL(p‖p_θ).
fn energy_metrics(net: &EnergyNet, mix: &Mixture, sigma: Option<f64>, held_out: &[f64], dev: &Device) -> candle_core::Result<Vec<(&'static str, f64)>> {
    let d = mix.dim;
    let e = mix.extent();
    let (nodes, w) = metrics::simpson_nodes(e, if d == 1 { 4000 } else { 400 });
    let (grid, weights): (Vec<f64>, Vec<f64>) = if d == 1 {
        (nodes.clone(), w.clone())
    } else {
        let mut g = Vec::new();
        let mut ww = Vec::new();
        for (a, wa) in nodes.iter().zip(&w) {
            for (b, wb) in nodes.iter().zip(&w) {
                g.extend([*a, *b]);
                ww.push(wa * wb);
            }
        }
        (g, ww)
    };
    let q_of = |pts: &[f64]| -> candle_core::Result<Vec<f64>> {
        let mut out = Vec::new();
        for c in pts.chunks(EVAL_CHUNK * d) {
            let x = crate::nets::points(c, d, dev)?;
            let n = x.dim(0)?;
            let sig = sigma.map(|s| Tensor::full(s as f32, (n, 1), dev)).transpose()?;
            out.extend(to_f64(&net.energy(&x, sig.as_ref())?.squeeze(1)?)?);
        }
        Ok(out)
    };
    let qg = q_of(&grid)?;
    let terms: Vec<f64> = qg.iter().zip(&weights).map(|(q, w)| q + w.ln()).collect();
    let log_z = crate::mixture::logsumexp(&terms);
    let qh = q_of(held_out)?;
    let nll = -qh.iter().map(|q| q - log_z).sum::<f64>() / qh.len() as f64;
    let mut kl = 0.0;
    for ((x, q), w) in grid.chunks(d).zip(&qg).zip(&weights) {
        let lp = mix.log_prob(x);
        kl += w * lp.exp() * (lp - (q - log_z));
    }
    Ok(vec![("log_z", log_z), ("nll", nll), ("kl", kl)])
}

fn write_file(path: &Path, contents: &[u8]) -> Result<(), EngineError> {
    // Write to a temporary name and rename, so a crash never leaves a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).and_then(|_| std::fs::rename(&tmp, path)).map_err(|source| EngineError::Io { path: path.to_path_buf(), source })
}

/// A JSON number, or null for NaN/inf (JSON has no such numbers).
pub fn json_number(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null)
}

/// Writes metrics.json, curve.csv, samples.csv and model.safetensors into `dir`.
pub fn write_outputs(outcome: &TrialOutcome, dir: &Path) -> Result<(), EngineError> {
    std::fs::create_dir_all(dir).map_err(|source| EngineError::Io { path: dir.to_path_buf(), source })?;
    let mut m = serde_json::Map::new();
    m.insert("status".into(), outcome.status.to_string().into());
    if let TrialStatus::Diverged { step } = outcome.status {
        m.insert("diverged_step".into(), step.into());
    }
    for (k, v) in &outcome.metrics {
        m.insert(k.clone(), json_number(*v));
    }
    let json = serde_json::to_string_pretty(&serde_json::Value::Object(m)).expect("json of numbers");
    write_file(&dir.join("metrics.json"), json.as_bytes())?;

    let mut csv = outcome.curve_columns.join(",") + "\n";
    for r in &outcome.curve_rows {
        csv += &r.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",");
        csv.push('\n');
    }
    write_file(&dir.join("curve.csv"), csv.as_bytes())?;

    let dim = outcome.samples.first().map_or(0, |s| s.len());
    let mut s = (0..dim).map(|j| format!("x{j}")).collect::<Vec<_>>().join(",") + "\n";
    for p in &outcome.samples {
        s += &p.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",");
        s.push('\n');
    }
    write_file(&dir.join("samples.csv"), s.as_bytes())?;

    if !outcome.weights.is_empty() {
        let map: HashMap<String, Tensor> = outcome.weights.iter().cloned().collect();
        let path = dir.join("model.safetensors");
        candle_core::safetensors::save(&map, &path).map_err(|e| EngineError::Io { path, source: std::io::Error::other(e.to_string()) })?;
    }
    Ok(())
}
