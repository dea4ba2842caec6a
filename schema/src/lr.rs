//! The learning-rate schedule of toy and image trials (`train.lr_schedule`, `train.warmup`):
//! the rate of training step t (1-based) of T is lr · w(t) · d(t), with the warm-up
//! w(t) = min(1, t / warmup) (1 without one) and the decay d(t):
//! - `constant` (the default): 1;
//! - `cosine`: ½ (1 + cos(π (t − 1) / T)), from 1 at the first step towards 0 at the end;
//! - `linear`: 1 − (t − 1) / T.
//!
//! Decay matters for comparisons that stop trials early (`[early_stop]`): with a constant
//! rate, a large rate looks best early and ends noisy, a small one the reverse, so early
//! checkpoints rank rates differently from the end; a decaying rate lets every trial settle.

use serde::Deserialize;

use crate::validate::{FieldError, field};

/// How the rate decays over a trial's steps.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LrDecay {
    #[default]
    Constant,
    Cosine,
    Linear,
}

/// A validated learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LrSchedule {
    pub decay: LrDecay,
    /// Steps of linear warm-up from lr/warmup to lr (0: none).
    pub warmup: u64,
}

impl LrSchedule {
    /// Checks `train.warmup` against the trial's steps.
    pub fn new(decay: Option<LrDecay>, warmup: Option<u64>, steps: u64) -> Result<LrSchedule, FieldError> {
        let warmup = warmup.unwrap_or(0);
        if warmup > steps {
            return Err(field("train.warmup", format!("must be at most train.steps ({steps}) (got {warmup})")));
        }
        Ok(LrSchedule { decay: decay.unwrap_or_default(), warmup })
    }

    /// The rate is lr at every step (the trainer is never told another).
    pub fn is_constant(&self) -> bool {
        self.decay == LrDecay::Constant && self.warmup == 0
    }

    /// The factor of step `t` (1-based) of `total`.
    pub fn factor(&self, t: u64, total: u64) -> f64 {
        let warm = if self.warmup > 0 { (t as f64 / self.warmup as f64).min(1.0) } else { 1.0 };
        let frac = if total > 0 { (t.saturating_sub(1)) as f64 / total as f64 } else { 0.0 };
        let decay = match self.decay {
            LrDecay::Constant => 1.0,
            LrDecay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * frac).cos()),
            LrDecay::Linear => 1.0 - frac,
        };
        warm * decay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_follow_the_closed_forms() {
        let t = 1000;
        let cos = LrSchedule { decay: LrDecay::Cosine, warmup: 0 };
        assert_eq!(cos.factor(1, t), 1.0);
        assert!((cos.factor(501, t) - 0.5).abs() < 1e-12, "half way: cos(π/2) = 0");
        assert!((cos.factor(1000, t) - 0.5 * (1.0 + (std::f64::consts::PI * 0.999).cos())).abs() < 1e-15);
        assert!(cos.factor(1000, t) < 1e-5 && cos.factor(1000, t) > 0.0);
        let lin = LrSchedule { decay: LrDecay::Linear, warmup: 0 };
        assert_eq!(lin.factor(1, t), 1.0);
        assert!((lin.factor(251, t) - 0.75).abs() < 1e-12);
        let warm = LrSchedule { decay: LrDecay::Constant, warmup: 10 };
        assert!(!warm.is_constant());
        assert!((warm.factor(1, t) - 0.1).abs() < 1e-12);
        assert_eq!(warm.factor(10, t), 1.0);
        assert_eq!(warm.factor(700, t), 1.0);
        assert!(LrSchedule::default().is_constant());
        // Monotone decay after the warm-up.
        let both = LrSchedule { decay: LrDecay::Cosine, warmup: 50 };
        let f: Vec<f64> = (50..=t).map(|s| both.factor(s, t)).collect();
        assert!(f.windows(2).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn a_warmup_longer_than_the_run_is_refused() {
        let e = LrSchedule::new(Some(LrDecay::Cosine), Some(101), 100).unwrap_err();
        assert_eq!(e.key, "train.warmup");
        assert!(LrSchedule::new(None, Some(100), 100).is_ok());
    }
}
