//! Runs one trial by its plan: build the model, train it with the chosen trainer through the
//! one train loop (`train::run`) while the checkpoint evaluators measure loss gaps, sample,
//! and compute sample (and energy) metrics.
//! Everything random comes from the trial seed's streams (`rng`), so the same trial gives the
//! same metrics on CPU.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use schema::trial::{DataSpec, ObjectiveKind, SleepTrial, Trial, TrialConfig};

use crate::data::Batch;
pub use crate::error::EngineError;
use crate::eval::gaps::{self, DsmGap, EsmIsmGap, EvalSet, SsmLoss};
use crate::eval::{Checkpoint, energy, samples};
use crate::models;
use crate::objectives::TrainObjective;
use crate::outcome::{Progress, TrialOutcome, TrialStatus};
use crate::plan::TrialPlan;
use crate::rng::{Rng, Stream};
use crate::samplers;
use crate::train::{self, Checkpoints, Schedule, TrainSetup};

/// Runs one trial on `device` on the calling thread (CPU heavy: call it off any async
/// executor). Checks `cancel` between steps. On the CPU, MLP score nets use the hand-derived
/// steps where one exists; on a GPU everything goes through candle (`device::fast_paths`).
pub fn run_trial(cfg: &TrialConfig, device: &Device, progress: &mut dyn FnMut(&Progress), cancel: &AtomicBool) -> Result<TrialOutcome, EngineError> {
    match cfg {
        TrialConfig::Sleep(s) => Ok(sleep_trial(s, progress, cancel)),
        TrialConfig::Train(t) => match &t.data {
            DataSpec::Mixture { .. } => run_training(t, device.clone(), progress, cancel),
            DataSpec::Images(_) => crate::images::run::run_image_trial(t, device.clone(), progress, cancel),
        },
    }
}

fn sleep_trial(s: &SleepTrial, progress: &mut dyn FnMut(&Progress), cancel: &AtomicBool) -> TrialOutcome {
    let seconds = s.seconds;
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
        files: vec![],
        device: "cpu".into(),
        trainer: String::new(),
    }
}

/// The checkpoint evaluators this trial's data and objective call for, built on evaluation
/// sets drawn once (independent of the model).
fn checkpoints(plan: &TrialPlan, objective: &TrainObjective) -> candle_core::Result<Vec<Box<dyn Checkpoint>>> {
    let cfg = plan.cfg;
    let (d, seed, dev) = (plan.dim(), cfg.seed, &plan.device);
    let mut eval_rng = Rng::stream(seed, Stream::Eval);
    let mut c_rng = Rng::stream(seed, Stream::Constant);
    let eval_pts = plan.data.sample(cfg.eval.n, &mut eval_rng).x;
    let mut out: Vec<Box<dyn Checkpoint>> = Vec::new();
    let set = match plan.data.exact() {
        Some(mix) => EvalSet::new(&eval_pts, &mix.scores(&eval_pts), d, dev)?,
        None => EvalSet::new(&eval_pts, &eval_pts, d, dev)?,
    };
    let xs = set.xs.clone();
    if let (Some(mix), Some(gaps)) = (plan.data.exact(), &cfg.eval.gaps) {
        let (c, c_se) = mix.score_norm_constant(gaps.c_samples, &mut c_rng);
        out.push(Box::new(EsmIsmGap { set, sigma: plan.sigma_clean(), trace_chunk: objective.trace_chunk, c, c_se }));
        if let Some(sig) = plan.dsm_sigma {
            let set = gaps::dsm_eval_set(mix, sig, cfg.eval.n, &mut eval_rng, dev)?;
            let (c, c_se) = gaps::dsm_constant(mix, sig, gaps.c_samples, &mut c_rng);
            out.push(Box::new(DsmGap { set, c, c_se }));
        }
    }
    if matches!(objective.kind, ObjectiveKind::Ssm | ObjectiveKind::SsmVr) {
        out.push(Box::new(SsmLoss { xs, sigma: plan.sigma_clean(), objective: objective.clone(), seed }));
    }
    Ok(out)
}

fn run_training(cfg: &Trial, device: Device, progress: &mut dyn FnMut(&Progress), cancel: &AtomicBool) -> Result<TrialOutcome, EngineError> {
    let (Some(data), Some(spec)) = (crate::data::build(&cfg.data), cfg.objective.score()) else {
        return Err(EngineError::Invalid("a mixture trial needs mixture data and a score objective (schema::caps refuses the rest)".into()));
    };
    let (plan, mut train_rng) = TrialPlan::resolve(cfg, data.as_ref(), device.clone());
    let d = plan.dim();
    let seed = cfg.seed;
    let sigmas = plan.ladder.as_ref().map(|l| l.sigmas.clone());

    let varmap = VarMap::new();
    let model = models::build(&cfg.model, d, cfg.conditional(), &varmap, &mut Rng::stream(seed, Stream::Init), &device)?;
    let objective = TrainObjective { kind: spec.kind, sigmas: sigmas.clone(), probes: spec.probes, probe: spec.probe, trace_chunk: spec.trace_chunk };

    let t_eval0 = Instant::now();
    let evals = checkpoints(&plan, &objective)?;
    let setup_eval_seconds = t_eval0.elapsed().as_secs_f64();

    let mut trainer =
        train::build(TrainSetup { model: model.as_ref(), varmap: &varmap, data: data.as_ref(), objective, batch: cfg.train.batch, lr: cfg.train.lr, device: device.clone() })?;
    let trainer_name = trainer.name().to_string();
    let mut evaluate = || -> candle_core::Result<Vec<f64>> {
        let mut values = Vec::new();
        for e in &evals {
            values.extend(e.evaluate(model.as_ref())?);
        }
        Ok(values)
    };
    let columns = evals.iter().flat_map(|e| e.columns().iter().map(|c| c.to_string())).collect();
    let trained = train::run(
        trainer.as_mut(),
        Schedule { steps: cfg.train.steps, eval_every: cfg.train.eval_every, lr: cfg.train.lr, lr_schedule: cfg.train.lr_schedule },
        &mut |rng: &mut Rng| Batch { x: plan.next_batch(rng), labels: Vec::new() },
        &mut train_rng,
        Checkpoints { columns, evaluate: &mut evaluate },
        progress,
        cancel,
    )?;
    drop(trainer);

    let mut metrics: Vec<(String, f64)> = Vec::new();
    if let Some(last) = trained.rows.last() {
        for (k, v) in trained.columns.iter().zip(last).skip(2) {
            metrics.push((k.clone(), *v));
        }
    }
    metrics.push(("steps_done".into(), trained.steps_done as f64));
    if let Some(l) = &plan.ladder {
        metrics.push(("levels".into(), l.sigmas.len() as f64));
        metrics.push(("sigma_max_used".into(), l.sigmas[0]));
        metrics.push(("sigma_min_used".into(), l.smallest()));
        metrics.push(("gamma".into(), l.gamma));
        metrics.push(("data_diameter".into(), l.data_diameter));
    }

    // Sampling and sample metrics.
    let t_sample = Instant::now();
    let mut samples_out = Vec::new();
    let mut data_out = Vec::new();
    let mut status = trained.status;
    let sampler = cfg.sampler.as_ref().and_then(|s| Some((samplers::build(s.name(), &samplers::Params::of(s, sigmas.as_deref(), plan.eps.unwrap_or(0.0)))?, s.n)));
    if let (TrialStatus::Ok, Some((sampler, n))) = (status, sampler) {
        let mut srng = Rng::stream(seed, Stream::Sampler);
        let mut x = samplers::start(sampler.as_ref(), n, d, &mut srng);
        let mut scorer = samplers::scorer_for(model.as_ref(), &device)?;
        metrics.push(("eps_used".into(), plan.eps.unwrap_or(f64::NAN)));
        let total = sampler.steps();
        let mut k = 0u64;
        let mut tick = || {
            k += 1;
            if k.is_multiple_of(100) {
                progress(&Progress {
                    step: cfg.train.steps,
                    total_steps: cfg.train.steps,
                    train_loss: trained.last_loss,
                    latest: vec![("sampling_step".into(), k as f64), ("sampling_total".into(), total as f64)],
                });
            }
        };
        let sampled = samplers::sample(sampler.as_ref(), scorer.as_mut(), &mut x, &mut srng, &mut tick)?;
        metrics.push(("nfe".into(), sampled.nfe as f64));
        if let Some(at) = sampled.diverged {
            // A non-finite sample: the trial diverged while sampling, with no sample metrics.
            status = TrialStatus::Diverged { step: trained.steps_done };
            metrics.extend(at.metrics());
        } else {
            let xs: Vec<f64> = x.into_iter().map(f64::from).collect();
            let reference = plan.data.sample(n, &mut Rng::stream(seed, Stream::Reference)).x;
            metrics.push(("samples_nonfinite".into(), 0.0));
            if xs.len() >= 2 * d {
                let mut mrng = Rng::stream(seed, Stream::Metrics);
                metrics.extend(samples::sample_metrics(&xs, &reference, d, plan.data.exact(), &mut mrng));
            }
            samples_out = xs.chunks(d).map(|p| p.iter().map(|&v| v as f32).collect()).collect();
            data_out = reference.chunks(d).map(|p| p.iter().map(|&v| v as f32).collect()).collect();
        }
    }
    if let (TrialStatus::Ok, Some(net), Some(mix)) = (status, model.energy(), plan.data.exact())
        && d <= 2
    {
        // The held-out points are the evaluation sample (drawn again from its stream).
        let held_out = plan.data.sample(cfg.eval.n, &mut Rng::stream(seed, Stream::Eval)).x;
        for (k, v) in energy::energy_metrics(net, mix, plan.sigma_clean(), &held_out, &device)? {
            metrics.push((k.into(), v));
        }
    }
    metrics.push(("train_seconds".into(), trained.train_seconds));
    metrics.push(("eval_seconds".into(), setup_eval_seconds + trained.eval_seconds));
    metrics.push(("sample_seconds".into(), t_sample.elapsed().as_secs_f64()));

    // The weights leave the device (a GPU's memory is freed with the trial).
    let mut weights: Vec<(String, Tensor)> =
        varmap.data().lock().expect("varmap lock").iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().to_device(&Device::Cpu)?))).collect::<candle_core::Result<_>>()?;
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(TrialOutcome {
        status,
        metrics,
        curve_columns: trained.columns,
        curve_rows: trained.rows,
        samples: samples_out,
        data_sample: data_out,
        weights,
        files: Vec::new(),
        device: crate::device::label(&device),
        trainer: trainer_name,
    })
}
