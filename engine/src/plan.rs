//! A trial's plan: everything the schema could not resolve from the file alone, resolved once
//! before any training — the data source, the fixed training set, the noise ladder (an `auto`
//! ladder's σ₁ comes from the data), the sampler's step size (NCSNv2's rule needs the ladder),
//! the σ of the DSM gap, and the device. The runner then only follows the plan.

use candle_core::Device;
use schema::sampler::StepSize;
use schema::trial::{NoiseSpec, Trial};

use crate::data::DataSource;
use crate::ladder;
use crate::rng::{Rng, Stream};

/// A resolved noise ladder (descending) and its ratio γ.
#[derive(Debug, Clone, PartialEq)]
pub struct Ladder {
    pub sigmas: Vec<f64>,
    pub gamma: f64,
    /// The largest pairwise distance over the points σ₁ is judged against (NCSNv2's technique
    /// 1 asks σ₁ ≥ this); the `auto` ladder's σ₁ is this value.
    pub data_diameter: f64,
}

impl Ladder {
    /// σ_L, the smallest level.
    pub fn smallest(&self) -> f64 {
        *self.sigmas.last().expect("a ladder has a level")
    }
}

pub struct TrialPlan<'a> {
    pub cfg: &'a Trial,
    pub data: &'a dyn DataSource,
    pub device: Device,
    /// A fixed training set of `train.n_train` points (None: fresh points every step).
    pub train_set: Option<Vec<f64>>,
    pub ladder: Option<Ladder>,
    /// The sampler's step size ε (or α), None without a sampler.
    pub eps: Option<f64>,
    /// σ of the DSM gap: with exact data and a ladder only.
    pub dsm_sigma: Option<f64>,
}

impl<'a> TrialPlan<'a> {
    /// `data` is the source built from `cfg.data` (`data::build`). Returns the plan and the
    /// trial's training stream after drawing the fixed training set (if any), which the
    /// batches and the trainer's draws continue.
    pub fn resolve(cfg: &'a Trial, data: &'a dyn DataSource, device: Device) -> (Self, Rng) {
        let mut train_rng = Rng::stream(cfg.seed, Stream::Train);
        let train_set = cfg.train.n_train.map(|n| data.sample(n, &mut train_rng).x);
        let ladder = cfg.noise().map(|n| resolve_ladder(n, data, train_set.as_deref(), cfg.seed));
        let eps = cfg.sampler.as_ref().and_then(|s| s.method.eps()).map(|eps| match (eps, &ladder) {
            (StepSize::Fixed(e), _) => e,
            (StepSize::Auto { steps_per_level }, Some(l)) => ladder::ncsnv2_step_size(l.smallest(), l.gamma, steps_per_level),
            // Validation refuses `auto` without a ladder; fall back to the schema default.
            (StepSize::Auto { .. }, None) => 2e-5,
        });
        let dsm_sigma = match (&ladder, data.exact()) {
            (Some(l), Some(_)) => Some(cfg.eval.gaps.as_ref().and_then(|g| g.dsm_sigma).unwrap_or(l.sigmas[l.sigmas.len() / 2])),
            _ => None,
        };
        (TrialPlan { cfg, data, device, train_set, ladder, eps, dsm_sigma }, train_rng)
    }

    pub fn dim(&self) -> usize {
        self.data.dim()
    }

    /// The σ at which clean-data quantities are evaluated: the smallest level, or None for an
    /// unconditional model.
    pub fn sigma_clean(&self) -> Option<f64> {
        self.ladder.as_ref().map(Ladder::smallest)
    }

    /// The next training batch from `rng`: drawn from the fixed set with replacement, or fresh.
    pub fn next_batch(&self, rng: &mut Rng) -> Vec<f64> {
        let (d, b) = (self.dim(), self.cfg.train.batch);
        match &self.train_set {
            Some(t) => {
                let n = t.len() / d;
                (0..b)
                    .flat_map(|_| {
                        let i = rng.below(n);
                        t[i * d..(i + 1) * d].to_vec()
                    })
                    .collect()
            }
            None => self.data.sample(b, rng).x,
        }
    }
}

/// The σ ladder (descending) and its ratio γ.
pub fn resolve_ladder(noise: &NoiseSpec, data: &dyn DataSource, train_set: Option<&[f64]>, seed: u64) -> Ladder {
    let ratio = |s: &[f64]| if s.len() > 1 { (s[0] / s[s.len() - 1]).powf(1.0 / (s.len() - 1) as f64) } else { 1.0 };
    // The diameter is exact over at most 4000 training points (O(n²·D)), or over 2000 points
    // drawn from the ladder's own stream (no other stream moves).
    let d = data.dim();
    let owned;
    let pts = match train_set {
        Some(t) => &t[..t.len().min(4000 * d)],
        None => {
            owned = data.sample(2000, &mut Rng::stream(seed, Stream::Ladder)).x;
            &owned[..]
        }
    };
    let data_diameter = ladder::max_pairwise_distance(pts, d);
    match noise {
        NoiseSpec::Geometric { sigma_max, sigma_min, levels } => {
            let s = ladder::geometric(*sigma_max, *sigma_min, *levels);
            let gamma = ratio(&s);
            Ladder { sigmas: s, gamma, data_diameter }
        }
        NoiseSpec::List(s) => Ladder { sigmas: s.clone(), gamma: ratio(s), data_diameter },
        NoiseSpec::Auto { sigma_min, levels } => {
            let (sigmas, gamma, _) = ladder::auto(pts, d, *sigma_min, *levels);
            Ladder { sigmas, gamma, data_diameter }
        }
    }
}
