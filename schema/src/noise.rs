//! The noise ladder σ₁ > … > σ_L shared by toy and image trials (`objective.noise`): its raw
//! form as written in the file and its validated [`NoiseSpec`].

use serde::Deserialize;

use crate::validate::{FieldError, field, in_range, positive, required};

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNoise {
    ladder: String,
    sigma_max: Option<f64>,
    sigma_min: Option<f64>,
    levels: Option<usize>,
    sigmas: Option<Vec<f64>>,
}

/// A validated noise ladder (one variant per `ladder`).
#[derive(Debug, Clone, PartialEq)]
pub enum NoiseSpec {
    Geometric {
        sigma_max: f64,
        sigma_min: f64,
        levels: usize,
    },
    List(Vec<f64>),
    /// NCSNv2: σ₁ from the data, γ from D; `levels` is used only where the γ rule has no root.
    Auto {
        sigma_min: f64,
        levels: usize,
    },
}

impl NoiseSpec {
    /// The smallest level.
    pub fn sigma_min(&self) -> f64 {
        match self {
            NoiseSpec::Geometric { sigma_min, .. } | NoiseSpec::Auto { sigma_min, .. } => *sigma_min,
            NoiseSpec::List(v) => v.iter().copied().fold(f64::INFINITY, f64::min),
        }
    }

    /// The number of levels as configured (an `auto` ladder may end up with another count).
    pub fn levels(&self) -> usize {
        match self {
            NoiseSpec::Geometric { levels, .. } | NoiseSpec::Auto { levels, .. } => *levels,
            NoiseSpec::List(v) => v.len(),
        }
    }
}

/// Validates `objective.noise`: the keys that apply to its `ladder`, each in range.
pub(crate) fn validate_noise(n: &RawNoise) -> Result<NoiseSpec, FieldError> {
    let only = |allowed: &[&str]| -> Result<(), FieldError> {
        let given = [("sigma_max", n.sigma_max.is_some()), ("sigma_min", n.sigma_min.is_some()), ("levels", n.levels.is_some()), ("sigmas", n.sigmas.is_some())];
        for (k, set) in given {
            if set && !allowed.contains(&k) {
                return Err(field(&format!("objective.noise.{k}"), format!("does not apply to ladder `{}`", n.ladder)));
            }
        }
        Ok(())
    };
    match n.ladder.as_str() {
        "geometric" => {
            only(&["sigma_max", "sigma_min", "levels"])?;
            let hi = positive("objective.noise.sigma_max", required("objective.noise.sigma_max", n.sigma_max)?)?;
            let lo = positive("objective.noise.sigma_min", required("objective.noise.sigma_min", n.sigma_min)?)?;
            let levels = in_range("objective.noise.levels", required("objective.noise.levels", n.levels)?, 1, 10_000)?;
            if lo > hi || (levels > 1 && lo == hi) {
                return Err(field("objective.noise.sigma_min", format!("must be below sigma_max ({lo} ≥ {hi})")));
            }
            Ok(NoiseSpec::Geometric { sigma_max: hi, sigma_min: lo, levels })
        }
        "list" => {
            only(&["sigmas"])?;
            let s = required("objective.noise.sigmas", n.sigmas.clone())?;
            if s.is_empty() {
                return Err(field("objective.noise.sigmas", "the ladder is empty"));
            }
            for (i, &v) in s.iter().enumerate() {
                positive(&format!("objective.noise.sigmas[{i}]"), v)?;
            }
            if s.windows(2).any(|w| w[1] >= w[0]) {
                return Err(field("objective.noise.sigmas", "must be strictly decreasing (σ₁ > σ₂ > … > σ_L)"));
            }
            Ok(NoiseSpec::List(s))
        }
        "auto" => {
            only(&["sigma_min", "levels"])?;
            let lo = positive("objective.noise.sigma_min", n.sigma_min.unwrap_or(0.01))?;
            let levels = in_range("objective.noise.levels", n.levels.unwrap_or(10), 1, 10_000)?;
            Ok(NoiseSpec::Auto { sigma_min: lo, levels })
        }
        other => Err(field("objective.noise.ladder", format!("unknown ladder `{other}` (expected geometric, list or auto)"))),
    }
}
