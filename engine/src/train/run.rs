//! The one train loop: every trial, toy or image, trains through [`run`].
//!
//! Cadence: a checkpoint at step 0, every `eval_every` steps and after the last step; each
//! checkpoint syncs the trainer (its evaluation weights into the model), computes the trial's
//! checkpoint values, resumes the trainer, appends a curve row `[step, train_loss, values…]`
//! (train_loss: the mean loss of the steps since the previous checkpoint, NaN at step 0) and
//! reports it as [`Progress`] with `latest` set. Between checkpoints every step reports its
//! loss with `latest` empty. Cancel is checked before each step. A non-finite step loss or
//! checkpoint value ends the run `Diverged { step }`, `step` counting the steps completed
//! with a finite loss. Training time excludes the checkpoints' time. At the end the model's
//! variables hold the evaluation weights.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::Result;

use super::Trainer;
use crate::data::Batch;
use crate::outcome::{Progress, TrialStatus};
use crate::rng::Rng;

/// How long a run trains, how often it evaluates and at what learning rate.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub steps: u64,
    /// At least 1.
    pub eval_every: u64,
    /// The base rate (the one the trainer was built with).
    pub lr: f64,
    /// Step t's rate is `lr · lr_schedule.factor(t, steps)`, set before the step; a constant
    /// schedule never calls [`Trainer::set_lr`].
    pub lr_schedule: schema::lr::LrSchedule,
}

/// The checkpoint values of a trial: their column names and the function computing them on
/// the weights the trainer's `sync` left in the model.
pub struct Checkpoints<'e> {
    pub columns: Vec<String>,
    pub evaluate: &'e mut dyn FnMut() -> Result<Vec<f64>>,
}

/// What training produced.
#[derive(Debug, Clone)]
pub struct Trained {
    pub status: TrialStatus,
    /// `step`, `train_loss`, then the checkpoint columns.
    pub columns: Vec<String>,
    pub rows: Vec<Vec<f64>>,
    pub steps_done: u64,
    /// The loss of the last step completed with a finite loss (NaN before the first).
    pub last_loss: f64,
    pub train_seconds: f64,
    pub eval_seconds: f64,
}

impl Trained {
    /// The last checkpoint's value of `column`.
    pub fn last(&self, column: &str) -> Option<f64> {
        let j = self.columns.iter().position(|c| c == column)?;
        self.rows.last().map(|r| r[j])
    }
}

/// Trains `trainer` for `schedule.steps` steps at the schedule's rates on batches drawn by `batches` from `rng` (the
/// trial's training stream, which the trainer's own draws then continue), with the cadence,
/// checkpoints, cancel and divergence rules of the module docs.
pub fn run(
    trainer: &mut dyn Trainer,
    schedule: Schedule,
    batches: &mut dyn FnMut(&mut Rng) -> Batch,
    rng: &mut Rng,
    checkpoints: Checkpoints<'_>,
    progress: &mut dyn FnMut(&Progress),
    cancel: &AtomicBool,
) -> Result<Trained> {
    let Schedule { steps, eval_every, lr, lr_schedule } = schedule;
    let eval_every = eval_every.max(1);
    let mut columns: Vec<String> = vec!["step".into(), "train_loss".into()];
    columns.extend(checkpoints.columns);
    let evaluate = checkpoints.evaluate;
    let mut out = Trained { status: TrialStatus::Ok, columns, rows: Vec::new(), steps_done: 0, last_loss: f64::NAN, train_seconds: 0.0, eval_seconds: 0.0 };
    let (mut loss_sum, mut loss_n) = (0.0, 0usize);
    let t_train = Instant::now();
    let mut step = 0u64;
    loop {
        if step.is_multiple_of(eval_every) || step == steps {
            let mean = if loss_n > 0 { loss_sum / loss_n as f64 } else { f64::NAN };
            (loss_sum, loss_n) = (0.0, 0);
            let t0 = Instant::now();
            trainer.sync()?;
            let values = evaluate()?;
            trainer.resume()?;
            out.eval_seconds += t0.elapsed().as_secs_f64();
            let mut row = vec![step as f64, mean];
            row.extend(values);
            let latest: Vec<(String, f64)> = out.columns.iter().cloned().zip(row.iter().cloned()).skip(1).collect();
            let finite = row[2..].iter().all(|v| v.is_finite());
            out.rows.push(row);
            progress(&Progress { step, total_steps: steps, train_loss: mean, latest });
            if !finite {
                out.status = TrialStatus::Diverged { step };
                break;
            }
        }
        if step == steps {
            break;
        }
        if cancel.load(Ordering::Relaxed) {
            out.status = TrialStatus::Cancelled;
            break;
        }
        let batch = batches(rng);
        if !lr_schedule.is_constant() {
            trainer.set_lr(lr * lr_schedule.factor(step + 1, steps))?;
        }
        let loss = trainer.step(&batch, rng, step + 1)?;
        if !loss.is_finite() {
            out.status = TrialStatus::Diverged { step };
            break;
        }
        out.last_loss = loss;
        (loss_sum, loss_n) = (loss_sum + loss, loss_n + 1);
        step += 1;
        out.steps_done = step;
        progress(&Progress { step, total_steps: steps, train_loss: loss, latest: vec![] });
    }
    trainer.sync()?;
    out.train_seconds = (t_train.elapsed().as_secs_f64() - out.eval_seconds).max(0.0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trainer whose loss is a fixed sequence; records the calls it gets.
    struct Scripted {
        losses: Vec<f64>,
        calls: Vec<String>,
        synced: bool,
    }

    impl Trainer for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn step(&mut self, batch: &Batch, rng: &mut Rng, step: u64) -> Result<f64> {
            assert!(!self.synced, "step {step} ran on the evaluation weights");
            self.calls.push(format!("step {step} x={}", batch.x[0]));
            rng.uniform();
            Ok(self.losses[(step - 1) as usize])
        }
        fn set_lr(&mut self, lr: f64) -> Result<()> {
            self.calls.push(format!("lr {lr}"));
            Ok(())
        }
        fn sync(&mut self) -> Result<()> {
            self.synced = true;
            self.calls.push("sync".into());
            Ok(())
        }
        fn resume(&mut self) -> Result<()> {
            self.synced = false;
            self.calls.push("resume".into());
            Ok(())
        }
    }

    fn go(losses: Vec<f64>, steps: u64, every: u64, values: &mut dyn FnMut() -> Result<Vec<f64>>, cancel_after: Option<u64>) -> (Trained, Vec<String>, Vec<Progress>) {
        go_at(Schedule { steps, eval_every: every, lr: 1.0, lr_schedule: Default::default() }, losses, values, cancel_after)
    }

    fn go_at(schedule: Schedule, losses: Vec<f64>, values: &mut dyn FnMut() -> Result<Vec<f64>>, cancel_after: Option<u64>) -> (Trained, Vec<String>, Vec<Progress>) {
        let mut t = Scripted { losses, calls: vec![], synced: false };
        let mut n = 0.0;
        let mut batches = |_: &mut Rng| {
            n += 1.0;
            Batch { x: vec![n], labels: vec![] }
        };
        let mut seen = Vec::new();
        let cancel = AtomicBool::new(false);
        let mut progress = |p: &Progress| {
            seen.push(p.clone());
            if cancel_after == Some(p.step) && p.latest.is_empty() {
                cancel.store(true, Ordering::Relaxed);
            }
        };
        let trained = run(&mut t, schedule, &mut batches, &mut Rng::new(0), Checkpoints { columns: vec!["v".into()], evaluate: values }, &mut progress, &cancel).unwrap();
        (trained, t.calls, seen)
    }

    #[test]
    fn checkpoints_at_zero_every_k_and_the_end_with_the_mean_loss_since_the_last() {
        let mut k = 0.0;
        let mut values = || {
            k += 1.0;
            Ok(vec![10.0 * k])
        };
        let (t, calls, seen) = go(vec![1.0, 2.0, 3.0, 4.0, 5.0], 5, 2, &mut values, None);
        assert_eq!(t.status, TrialStatus::Ok);
        assert_eq!(t.columns, ["step", "train_loss", "v"]);
        assert_eq!(t.steps_done, 5);
        assert_eq!(t.last_loss, 5.0);
        let rows: Vec<Vec<f64>> = t.rows.iter().map(|r| r.iter().map(|v| if v.is_nan() { -1.0 } else { *v }).collect()).collect();
        // Means: (1+2)/2, (3+4)/2, 5/1.
        assert_eq!(rows, vec![vec![0.0, -1.0, 10.0], vec![2.0, 1.5, 20.0], vec![4.0, 3.5, 30.0], vec![5.0, 5.0, 40.0]]);
        assert_eq!(t.last("v"), Some(40.0));
        // Each checkpoint evaluates between sync and resume; batches come in order; the run
        // ends synced.
        assert_eq!(calls, ["sync", "resume", "step 1 x=1", "step 2 x=2", "sync", "resume", "step 3 x=3", "step 4 x=4", "sync", "resume", "step 5 x=5", "sync", "resume", "sync"]);
        let at: Vec<(u64, bool)> = seen.iter().map(|p| (p.step, p.latest.is_empty())).collect();
        assert_eq!(at, [(0, false), (1, true), (2, true), (2, false), (3, true), (4, true), (4, false), (5, true), (5, false)]);
        let last = seen.last().unwrap();
        assert_eq!(last.latest, vec![("train_loss".to_string(), 5.0), ("v".to_string(), 40.0)]);
    }

    #[test]
    fn a_non_finite_loss_or_value_diverges_counting_the_finite_steps() {
        let (t, _, _) = go(vec![1.0, 2.0, f64::NAN, 4.0], 4, 10, &mut || Ok(vec![0.0]), None);
        assert_eq!(t.status, TrialStatus::Diverged { step: 2 });
        assert_eq!(t.steps_done, 2);
        assert_eq!(t.last_loss, 2.0);
        assert_eq!(t.rows.len(), 1, "no checkpoint after the diverged step");

        let mut k = 0;
        let mut values = || {
            k += 1;
            Ok(vec![if k == 2 { f64::INFINITY } else { 0.0 }])
        };
        let (t, _, _) = go(vec![1.0; 6], 6, 3, &mut values, None);
        assert_eq!(t.status, TrialStatus::Diverged { step: 3 });
        assert_eq!(t.rows.len(), 2);
    }

    /// A decaying schedule tells the trainer each step's rate before the step, from the
    /// closed form; a constant one never calls `set_lr` (checked by the test above).
    #[test]
    fn a_schedule_sets_each_steps_rate_before_the_step() {
        use schema::lr::{LrDecay, LrSchedule};
        let schedule = Schedule { steps: 4, eval_every: 10, lr: 0.2, lr_schedule: LrSchedule { decay: LrDecay::Cosine, warmup: 2 } };
        let (_, calls, _) = go_at(schedule, vec![1.0; 4], &mut || Ok(vec![0.0]), None);
        let steps: Vec<&String> = calls.iter().filter(|c| c.starts_with("lr") || c.starts_with("step")).collect();
        let pi = std::f64::consts::PI;
        // Step t: 0.2 · min(1, t/2) · ½(1 + cos(π (t−1)/4)).
        let want: Vec<String> = (1..=4u64)
            .flat_map(|t| {
                let f = (t as f64 / 2.0).min(1.0) * 0.5 * (1.0 + (pi * (t - 1) as f64 / 4.0).cos());
                [format!("lr {}", 0.2 * f), format!("step {t} x={t}")]
            })
            .collect();
        assert_eq!(steps.iter().map(|s| s.as_str()).collect::<Vec<_>>(), want.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    }

    #[test]
    fn cancel_stops_before_the_next_step() {
        let (t, calls, _) = go(vec![1.0; 10], 10, 5, &mut || Ok(vec![0.0]), Some(3));
        assert_eq!(t.status, TrialStatus::Cancelled);
        assert_eq!(t.steps_done, 3);
        assert_eq!(calls.iter().filter(|c| c.starts_with("step")).count(), 3);
        assert_eq!(calls.last().unwrap(), "sync", "a cancelled run still ends on the evaluation weights");
    }
}
