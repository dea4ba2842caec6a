//! The validation helpers every schema module shares: the located [`FieldError`] on one dotted
//! key, the range checks that produce it, and the translation of serde's errors into it. A leaf
//! module (it imports no other schema module), so `trial`, `image` and `caps` can all use it
//! without importing one another.

/// A validation error on one key of a trial given as a TOML value.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// Dotted path such as `objective.noise.sigma_min`; empty for the whole document.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() { write!(f, "{}", self.message) } else { write!(f, "key `{}`: {}", self.key, self.message) }
    }
}

impl std::error::Error for FieldError {}

pub fn field(key: &str, message: impl Into<String>) -> FieldError {
    FieldError { key: key.to_string(), message: message.into() }
}

/// Refuses a Langevin step `eps` (α at the level `sigma`, named `sigma_key`) of 2σ² or more:
/// where the perturbed score's slope is −1/σ² (its steepest), x ← x + α S multiplies a
/// deviation by 1 − α/σ², so no such step can be stable.
pub(crate) fn langevin_step_is_stable(key: &str, eps: f64, sigma: f64, sigma_key: &str) -> Result<(), FieldError> {
    let bound = 2.0 * sigma * sigma;
    if eps < bound {
        return Ok(());
    }
    Err(field(
        key,
        format!(
            "{eps} is not below 2·{sigma_key}² = {bound}: a Langevin step α ≥ 2σ² cannot be stable (x ← x + α S multiplies a deviation by 1 − α/σ² where the score's slope is −1/σ²)"
        ),
    ))
}

pub(crate) fn positive(key: &str, v: f64) -> Result<f64, FieldError> {
    if v.is_finite() && v > 0.0 { Ok(v) } else { Err(field(key, format!("must be a positive finite number (got {v})"))) }
}

pub(crate) fn in_range(key: &str, v: usize, lo: usize, hi: usize) -> Result<usize, FieldError> {
    if (lo..=hi).contains(&v) { Ok(v) } else { Err(field(key, format!("must be between {lo} and {hi} (got {v})"))) }
}

pub(crate) fn required<T>(key: &str, v: Option<T>) -> Result<T, FieldError> {
    v.ok_or_else(|| field(key, "is required"))
}

/// A serde error on the raw form as a [`FieldError`] on its dotted key.
pub(crate) fn raw_error(e: serde_path_to_error::Error<toml::de::Error>) -> FieldError {
    let mut key = e.path().to_string();
    if key == "." {
        key.clear();
    }
    // toml appends "\nin `table`"; the key already says where.
    let msg = e.inner().to_string().lines().next().unwrap_or_default().to_string();
    // Unknown keys: point at the key itself, not its table.
    if let Some(rest) = msg.strip_prefix("unknown field `")
        && let Some(name) = rest.split('`').next()
        && !(key == name || key.ends_with(&format!(".{name}")))
    {
        key = if key.is_empty() { name.to_string() } else { format!("{key}.{name}") };
    }
    // toml's words for a number, boolean or table where a name (an enum's variant) belongs.
    let msg = if msg == "invalid type: unit variant, expected string only" {
        "must be one of this key's names, as a quoted string (e.g. kind = \"mlp\"), not a number, boolean, array or table".to_string()
    } else {
        msg
    };
    FieldError { key, message: msg }
}
