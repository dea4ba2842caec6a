//! Early stopping (`[early_stop]`): the coordinator answers each checkpoint a worker reports
//! with continue or stop.
//!
//! ```toml
//! [early_stop]
//! kind = "asha"      # | "median" | "none" (default)
//! metric = "l_esm"   # a checkpoint metric every trial of the sweep reports
//! mode = "min"       # | "max"
//! grace = 1          # checkpoints before the first rung (median: before the first decision)
//! eta = 3            # asha: reduction factor; rung k at checkpoint grace·eta^k
//! min_trials = 3     # median: other trials needed at a checkpoint before it decides
//! ```
//!
//! Checkpoints are counted as the rows of a trial's curve: checkpoint 0 is the untrained
//! model (step 0), checkpoint c the c-th evaluation after it.
//!
//! **ASHA** (Li et al. 2018, "A System for Massively Parallel Hyperparameter Tuning", the
//! stopping variant as Ray Tune's `ASHAScheduler` implements it): when a trial reports
//! checkpoint c, take the highest rung k with grace·eta^k ≤ c at which the trial has no
//! decision yet; the cutoff is the 1/eta quantile (mode min; 1 − 1/eta for max; linear
//! interpolation, numpy's default) of the values recorded at that rung by the trials that
//! reached it before; the trial stops when its value is worse than the cutoff, and its value
//! joins the rung either way. The first trial at a rung always continues.
//!
//! **Median** (Golovin et al. 2017, Vizier's median stopping rule, as Ray's
//! `MedianStoppingRule`): at checkpoint c ≥ grace, the trial stops when its best value so far
//! is worse than the median, over the other trials that reported checkpoint c (at least
//! `min_trials` of them), of their running means over checkpoints 1..=c.
//!
//! Decisions are a function of the history only ([`History`]): the coordinator reads it from
//! the state database inside the transaction that records the new decision, so a restarted
//! coordinator (or a batch run again by the store) decides from exactly what was committed.
//! A trial with a stop decision is answered stop at that checkpoint and every later one (a
//! retried attempt is stopped where its first was).

use crate::sweep::Trial;

/// Which rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Asha,
    Median,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Asha => "asha",
            Kind::Median => "median",
        }
    }
}

/// Smaller is better (`Min`) or larger is (`Max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Min,
    Max,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Min => "min",
            Mode::Max => "max",
        }
    }
    /// Whether `a` is worse than `b`.
    pub fn worse(self, a: f64, b: f64) -> bool {
        match self {
            Mode::Min => a > b,
            Mode::Max => a < b,
        }
    }
}

/// A parsed `[early_stop]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub kind: Kind,
    pub metric: String,
    pub mode: Mode,
    pub grace: u32,
    pub eta: u32,
    pub min_trials: u32,
}

/// A refusal: the key path and the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    pub segs: Vec<String>,
    pub message: String,
}

fn err(key: &str, message: impl Into<String>) -> RuleError {
    RuleError { segs: vec!["early_stop".into(), key.into()], message: message.into() }
}

/// One decision: the trial, the rung (ASHA: k; median: the checkpoint), the checkpoint it was
/// made at, the value, the cutoff it was compared with (None: nothing to compare with yet),
/// and whether the trial stops.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub trial: String,
    pub rung: u32,
    pub checkpoint: u32,
    pub value: f64,
    pub cutoff: Option<f64>,
    pub stop: bool,
}

/// What the rule needs to know of the sweep so far.
pub trait History {
    /// Values recorded at `rung` by decisions, as (trial, value) in the order they were made.
    fn rung(&self, rung: u32) -> Vec<(String, f64)>;
    /// The checkpoint of `trial`'s stop decision, if it has one.
    fn stopped_at(&self, trial: &str) -> Option<u32>;
    /// Every trial's reported values of the metric at checkpoints 1..=c, as (trial,
    /// [(checkpoint, value)]).
    fn curves_upto(&self, c: u32) -> Vec<(String, Vec<(u32, f64)>)>;
}

/// The answer to a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Go on; no decision was due (between rungs, or a value that is not finite).
    Continue,
    /// A new decision (to be recorded).
    Decided(Decision),
    /// The trial was stopped before at or below this checkpoint: stop again.
    Stopped,
}

impl Verdict {
    pub fn stop(&self) -> bool {
        match self {
            Verdict::Continue => false,
            Verdict::Decided(d) => d.stop,
            Verdict::Stopped => true,
        }
    }
}

impl Rule {
    /// Parses `[early_stop]` and checks its metric against every trial's checkpoint metrics.
    /// Returns None for `kind = "none"`.
    pub fn parse(t: &toml::Table, trials: &[Trial]) -> Result<Option<Rule>, RuleError> {
        for k in t.keys() {
            if !["kind", "metric", "mode", "grace", "eta", "min_trials"].contains(&k.as_str()) {
                return Err(err(k, format!("unknown key `{k}` (expected kind, metric, mode, grace, eta, min_trials)")));
            }
        }
        let kind = match t.get("kind") {
            None => return Ok(None),
            Some(toml::Value::String(s)) if s == "none" => return Ok(None),
            Some(toml::Value::String(s)) if s == "asha" => Kind::Asha,
            Some(toml::Value::String(s)) if s == "median" => Kind::Median,
            Some(other) => return Err(err("kind", format!("must be \"asha\", \"median\" or \"none\" (got {other})"))),
        };
        let mode = match t.get("mode") {
            None => Mode::Min,
            Some(toml::Value::String(s)) if s == "min" => Mode::Min,
            Some(toml::Value::String(s)) if s == "max" => Mode::Max,
            Some(other) => return Err(err("mode", format!("must be \"min\" or \"max\" (got {other})"))),
        };
        let int = |key: &str, default: u32, min: i64, max: i64| -> Result<u32, RuleError> {
            match t.get(key) {
                None => Ok(default),
                Some(toml::Value::Integer(n)) if (min..=max).contains(n) => Ok(*n as u32),
                Some(other) => Err(err(key, format!("must be an integer from {min} to {max} (got {other})"))),
            }
        };
        let grace = int("grace", 1, 1, 1_000_000)?;
        let eta = int("eta", 3, 2, 1000)?;
        let min_trials = int("min_trials", 3, 1, 1_000_000)?;
        if kind == Kind::Median && t.contains_key("eta") {
            return Err(err("eta", "`eta` is for kind = \"asha\""));
        }
        if kind == Kind::Asha && t.contains_key("min_trials") {
            return Err(err("min_trials", "`min_trials` is for kind = \"median\""));
        }
        let metric = match t.get("metric") {
            Some(toml::Value::String(s)) if !s.is_empty() => s.clone(),
            None => return Err(err("kind", "an early-stopping rule needs `metric` (a checkpoint metric every trial reports)")),
            Some(other) => return Err(err("metric", format!("must be a metric name (got {other})"))),
        };
        if let Some(tr) = trials.iter().find(|tr| !tr.checkpoint_metrics.contains(&metric.as_str())) {
            let offered = if tr.checkpoint_metrics.is_empty() { "none".to_string() } else { tr.checkpoint_metrics.join(", ") };
            return Err(err("metric", format!("trial {} does not report `{metric}` at its checkpoints (it reports: {offered})", tr.label)));
        }
        Ok(Some(Rule { kind, metric, mode, grace, eta, min_trials }))
    }

    /// The checkpoint of ASHA's rung `k`: grace·eta^k (saturating).
    pub fn milestone(&self, k: u32) -> u64 {
        (self.grace as u64).saturating_mul((self.eta as u64).saturating_pow(k))
    }

    /// The answer to `trial` reporting `value` at checkpoint `c`.
    pub fn decide(&self, history: &dyn History, trial: &str, c: u32, value: f64) -> Verdict {
        if history.stopped_at(trial).is_some_and(|at| at <= c) {
            return Verdict::Stopped;
        }
        if !value.is_finite() || c < self.grace {
            return Verdict::Continue;
        }
        match self.kind {
            Kind::Asha => {
                // The highest rung reached, then down to the first without this trial.
                let mut k = 0u32;
                while self.milestone(k + 1) <= c as u64 && k < 64 {
                    k += 1;
                }
                loop {
                    let recorded = history.rung(k);
                    if !recorded.iter().any(|(t, _)| t == trial) {
                        let values: Vec<f64> = recorded.iter().map(|(_, v)| *v).collect();
                        let q = match self.mode {
                            Mode::Min => 1.0 / self.eta as f64,
                            Mode::Max => 1.0 - 1.0 / self.eta as f64,
                        };
                        let cutoff = quantile(&values, q);
                        let stop = cutoff.is_some_and(|cut| self.mode.worse(value, cut));
                        return Verdict::Decided(Decision { trial: trial.to_string(), rung: k, checkpoint: c, value, cutoff, stop });
                    }
                    if k == 0 {
                        return Verdict::Continue;
                    }
                    k -= 1;
                }
            }
            Kind::Median => {
                if history.rung(c).iter().any(|(t, _)| t == trial) {
                    return Verdict::Continue;
                }
                let curves = history.curves_upto(c);
                let mut means = Vec::new();
                let mut best = value;
                for (t, pts) in &curves {
                    if t == trial {
                        for &(_, v) in pts.iter().filter(|(_, v)| v.is_finite()) {
                            if self.mode.worse(best, v) {
                                best = v;
                            }
                        }
                    } else if pts.iter().any(|&(at, _)| at == c) {
                        let vals: Vec<f64> = pts.iter().filter(|&&(at, _)| at >= 1 && at <= c).map(|&(_, v)| v).collect();
                        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
                        if mean.is_finite() {
                            means.push(mean);
                        }
                    }
                }
                let cutoff = if means.len() >= self.min_trials as usize { quantile(&means, 0.5) } else { None };
                let stop = cutoff.is_some_and(|cut| self.mode.worse(best, cut));
                Verdict::Decided(Decision { trial: trial.to_string(), rung: c, checkpoint: c, value: best, cutoff, stop })
            }
        }
    }
}

/// The q-quantile of `values` with linear interpolation between order statistics (numpy's
/// default `percentile`); None when empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (pos - lo as f64) * (v[hi] - v[lo]))
}

/// A history kept in memory (tests, benchmarks): decisions and checkpoint values as they are
/// made.
#[derive(Debug, Default, Clone)]
pub struct MemHistory {
    pub decisions: Vec<Decision>,
    pub checkpoints: Vec<(String, u32, f64)>,
}

impl MemHistory {
    /// Reports a checkpoint to `rule`, records it and the decision, and returns the verdict.
    pub fn report(&mut self, rule: &Rule, trial: &str, c: u32, value: f64) -> Verdict {
        if !self.checkpoints.iter().any(|(t, at, _)| t == trial && *at == c) {
            self.checkpoints.push((trial.to_string(), c, value));
        }
        let v = rule.decide(self, trial, c, value);
        if let Verdict::Decided(d) = &v {
            self.decisions.push(d.clone());
        }
        v
    }
}

impl History for MemHistory {
    fn rung(&self, rung: u32) -> Vec<(String, f64)> {
        self.decisions.iter().filter(|d| d.rung == rung).map(|d| (d.trial.clone(), d.value)).collect()
    }
    fn stopped_at(&self, trial: &str) -> Option<u32> {
        self.decisions.iter().find(|d| d.stop && d.trial == trial).map(|d| d.checkpoint)
    }
    fn curves_upto(&self, c: u32) -> Vec<(String, Vec<(u32, f64)>)> {
        let mut out: Vec<(String, Vec<(u32, f64)>)> = Vec::new();
        for (t, at, v) in self.checkpoints.iter().filter(|(_, at, _)| *at >= 1 && *at <= c) {
            match out.iter_mut().find(|(x, _)| x == t) {
                Some((_, pts)) => pts.push((*at, *v)),
                None => out.push((t.clone(), vec![(*at, *v)])),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_like_numpy() {
        // numpy.percentile([1, 2, 3, 4], 100/3) = 2.0; ([10, 40], 50) = 25.0
        assert!((quantile(&[4.0, 1.0, 3.0, 2.0], 1.0 / 3.0).unwrap() - 2.0).abs() < 1e-12);
        assert_eq!(quantile(&[10.0, 40.0], 0.5), Some(25.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
