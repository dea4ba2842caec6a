//! Sweep files: a raw serde form mirroring the TOML, expanded into validated trials.
//!
//! ```toml
//! name = "sigma"            # optional; defaults to the file stem
//! timeout = 600             # seconds per attempt
//! retries = 1               # extra attempts after a failure or an expired lease
//! gpu = false               # each trial needs a GPU worker (a variant may say otherwise)
//! repeats = 2               # seeds base.seed, base.seed+1, … (or: seeds = [0, 7])
//! [base]                    # one trial in the trial schema (schema/src/form/)
//! [grid]                    # cartesian product over dotted keys
//! "objective.noise.sigma_max" = [1.0, 5.0, 20.0]
//! [[zip]]                   # lists that vary together (one zip group per [[zip]])
//! "sampler.eps" = [1e-5, 1e-4]
//! "sampler.steps_per_level" = [200, 50]
//! [[variants]]              # extra trials: each entry is a dotted key whose value replaces
//! "objective.kind" = "ism"  # the base's; variants are crossed with the seeds too
//! gpu = true                # not a trial key: this variant's trials need a GPU worker
//! [search]                  # configurations drawn from a space (search.rs): crossed with the
//! kind = "random"           # grid × zip points like one more axis; "grid" | "random" | "sobol"
//! trials = 16
//! [search.space]
//! "train.lr" = { log_uniform = [1e-4, 1e-2] }
//! [early_stop]              # stop trials at checkpoints (early_stop.rs): "asha" | "median"
//! kind = "asha"
//! metric = "l_esm"
//! [launcher.slurm]          # settings of `--launcher slurm` (launch/slurm.rs), checked by it;
//! partition = "gpu"         # its flags win. Likewise [launcher.ssh] (hosts = ["node1:2"]),
//! time = "2:00:00"          # [launcher.pbs] (queue, walltime), … (one table per launcher)
//! ```
//! Trials = (grid × zip groups × search draws ∪ variants) × seeds. Every expanded trial is validated by the
//! trial schema (`schema`: the rules the engine runs by, without building the engine) before
//! anything runs; errors name the file, line, column, key and the expansion. Each dotted key
//! is set by at most one axis (a `[grid]` key or one `[[zip]]` group; a key and a dotted
//! prefix of it count as the same key), lists are not empty, the file is UTF-8, and the size
//! of the expansion is checked before anything is expanded (at most [`MAX_TRIALS`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schema::locate::{line_col, locate_path};
use schema::trial::TrialConfig;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The key of a `[[variants]]` entry that is not a trial key: whether its trials need a GPU.
pub const VARIANT_GPU_KEY: &str = "gpu";

/// Refuse sweeps that expand to more trials than this.
pub const MAX_TRIALS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("failed to read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}:{column}: invalid TOML: {message}", path.display())]
    Syntax { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{}:{line}:{column}: key `{key}`: {message}{}", path.display(), expansion.as_ref().map(|e| format!(" (in trial {e})")).unwrap_or_default())]
    Invalid { path: PathBuf, line: usize, column: usize, key: String, message: String, expansion: Option<String> },
    #[error("{}:{line}:{column}: not UTF-8 text (byte {offset} is invalid)", path.display())]
    NotUtf8 { path: PathBuf, line: usize, column: usize, offset: usize },
    #[error("{}:{line}:{column}: key `{key}`: the sweep expands to {count} trials ({factors}), more than the limit of {MAX_TRIALS}", path.display())]
    TooLarge { path: PathBuf, line: usize, column: usize, key: String, count: u128, factors: String },
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RawSweep {
    name: Option<String>,
    #[serde(default = "d_timeout")]
    timeout: f64,
    #[serde(default = "d_retries")]
    retries: u32,
    #[serde(default)]
    gpu: bool,
    repeats: Option<u32>,
    seeds: Option<Vec<u64>>,
    base: toml::Table,
    #[serde(default)]
    grid: BTreeMap<String, Vec<toml::Value>>,
    #[serde(default)]
    zip: Vec<BTreeMap<String, Vec<toml::Value>>>,
    #[serde(default)]
    variants: Vec<toml::Table>,
    #[serde(default)]
    launcher: crate::launch::LauncherTables,
    search: Option<toml::Table>,
    early_stop: Option<toml::Table>,
}
fn d_timeout() -> f64 {
    3600.0
}
fn d_retries() -> u32 {
    1
}

/// One expanded, validated trial.
#[derive(Debug, Clone)]
pub struct Trial {
    pub hash: String,
    pub idx: usize,
    /// The full trial as TOML (sent to workers).
    pub toml: String,
    /// Flattened dotted keys → scalars (arrays as JSON text).
    pub flat: serde_json::Map<String, serde_json::Value>,
    /// What produced it, e.g. `grid objective.noise.sigma_max=5, seed=1`.
    pub label: String,
    /// The metrics every `done` result must carry ([`schema::metrics::required_metrics`]).
    pub required_metrics: Vec<&'static str>,
    /// The metrics each of its checkpoints reports ([`schema::metrics::checkpoint_metrics`]).
    pub checkpoint_metrics: Vec<&'static str>,
    /// Leased only to workers with a GPU (the sweep's `gpu`, or its variant's).
    pub gpu: bool,
}

#[derive(Debug, Clone)]
pub struct Sweep {
    pub name: String,
    pub file: PathBuf,
    pub source: String,
    pub timeout: f64,
    pub retries: u32,
    /// The sweep-wide `gpu` (each trial's own is [`Trial::gpu`]).
    pub gpu: bool,
    pub trials: Vec<Trial>,
    /// `[launcher.*]`: launcher settings (checked; not part of any trial).
    pub launcher: crate::launch::LauncherTables,
    /// `[search]`: the search space its configurations were drawn from, if any.
    pub search: Option<crate::search::Space>,
    /// `[early_stop]`: the rule that stops trials at checkpoints, if any.
    pub early_stop: Option<crate::early_stop::Rule>,
}

/// Sets a dotted key in a TOML table, creating tables on the way.
pub fn set_dotted(t: &mut toml::Table, key: &str, v: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = t;
    for p in &parts[..parts.len() - 1] {
        let e = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = e.as_table_mut().ok_or_else(|| format!("`{p}` is not a table"))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), v);
    Ok(())
}

/// Flattens nested tables into dotted keys with JSON scalar values.
pub fn flatten(t: &toml::Table) -> serde_json::Map<String, serde_json::Value> {
    fn walk(prefix: &str, t: &toml::Table, out: &mut serde_json::Map<String, serde_json::Value>) {
        for (k, v) in t {
            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match v {
                toml::Value::Table(inner) => walk(&key, inner, out),
                toml::Value::Array(_) => {
                    out.insert(key, serde_json::Value::String(serde_json::to_string(&serde_json::to_value(v).unwrap_or_default()).unwrap_or_default()));
                }
                other => {
                    out.insert(key, serde_json::to_value(other).unwrap_or_default());
                }
            }
        }
    }
    let mut out = serde_json::Map::new();
    walk("", t, &mut out);
    out
}

/// sha256 of the canonical JSON (sorted keys) of a trial.
pub fn trial_hash(t: &toml::Table) -> String {
    let json = serde_json::to_string(&serde_json::to_value(t).unwrap_or_default()).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(json.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn fmt_value(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Where an expansion override lives in the file.
#[derive(Clone, Debug)]
enum Origin {
    Grid(String),
    Zip(usize, String),
    Variant(usize, String),
    Search(String),
    Seeds,
}

impl Sweep {
    /// Reads and expands a sweep file; a file that is not UTF-8 is refused at its first invalid
    /// byte.
    pub fn load(path: &Path) -> Result<Sweep, SweepError> {
        let bytes = std::fs::read(path).map_err(|source| SweepError::Io { path: path.to_path_buf(), source })?;
        let src = String::from_utf8(bytes).map_err(|e| {
            let offset = e.utf8_error().valid_up_to();
            let valid = std::str::from_utf8(&e.as_bytes()[..offset]).unwrap_or_default();
            let (line, column) = line_col(valid, offset);
            SweepError::NotUtf8 { path: path.to_path_buf(), line, column, offset }
        })?;
        Self::parse(&src, path)
    }

    pub fn parse(src: &str, path: &Path) -> Result<Sweep, SweepError> {
        let syntax = |span: Option<std::ops::Range<usize>>, message: String| {
            let (line, column) = span.map(|s| line_col(src, s.start)).unwrap_or((1, 1));
            SweepError::Syntax { path: path.to_path_buf(), line, column, message }
        };
        let value: toml::Value = toml::from_str(src).map_err(|e| syntax(e.span(), e.message().to_string()))?;
        let raw: RawSweep = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            let segs: Vec<&str> = key.split('.').collect();
            let (line, column) = locate_path(src, &segs).unwrap_or((1, 1));
            let message = e.inner().to_string().lines().next().unwrap_or_default().to_string();
            SweepError::Invalid { path: path.to_path_buf(), line, column, key, message, expansion: None }
        })?;
        let invalid = |segs: &[&str], key: &str, message: String, expansion: Option<String>| {
            let (line, column) = locate_path(src, segs).unwrap_or((1, 1));
            SweepError::Invalid { path: path.to_path_buf(), line, column, key: key.to_string(), message, expansion }
        };
        if !(raw.timeout.is_finite() && raw.timeout > 0.0) {
            return Err(invalid(&["timeout"], "timeout", format!("must be a positive number of seconds (got {})", raw.timeout), None));
        }
        // Each `[launcher.<kind>]` is checked by its launcher (the launcher in use is a flag).
        for (kind, table) in &raw.launcher {
            crate::launch::check_table(kind, table).map_err(|e| {
                let mut segs = vec!["launcher", kind.as_str()];
                segs.extend(e.key.split('.').filter(|s| !s.is_empty()));
                invalid(&segs, &segs.join("."), e.message, None)
            })?;
        }
        if let Some(n) = &raw.name {
            crate::launch_checks::check_path_component("the sweep name", n).map_err(|m| invalid(&["name"], "name", m, None))?;
        }
        if raw.repeats.is_some() && raw.seeds.is_some() {
            return Err(invalid(&["seeds"], "seeds", "give either repeats or seeds, not both".into(), None));
        }
        if raw.repeats == Some(0) {
            return Err(invalid(&["repeats"], "repeats", "must be at least 1".into(), None));
        }
        for (k, vals) in &raw.grid {
            if vals.is_empty() {
                return Err(invalid(&["grid", k], &format!("grid.{k}"), "the list is empty".into(), None));
            }
        }
        for (i, z) in raw.zip.iter().enumerate() {
            let Some(first) = z.values().next() else {
                return Err(invalid(&[&format!("zip[{i}]")], &format!("zip[{i}]"), "a [[zip]] group needs at least one key".into(), None));
            };
            let lens: Vec<usize> = z.values().map(|v| v.len()).collect();
            if let Some((k, _)) = z.iter().find(|(_, v)| v.len() != first.len() || v.is_empty()) {
                return Err(invalid(
                    &[&format!("zip[{i}]"), k],
                    &format!("zip[{i}].{k}"),
                    format!("lists of one [[zip]] group must have the same, non-zero length ({lens:?})"),
                    None,
                ));
            }
        }
        if raw.seeds.as_ref().is_some_and(|s| s.is_empty()) {
            return Err(invalid(&["seeds"], "seeds", "the list is empty (give at least one seed, or leave `seeds` out)".into(), None));
        }
        let search = match &raw.search {
            Some(t) => Some(crate::search::parse(t).map_err(|e| {
                let segs: Vec<&str> = e.segs.iter().map(String::as_str).collect();
                invalid(&segs, &e.segs.join("."), e.message, None)
            })?),
            None => None,
        };
        // Each key is set by one axis: a grid key, one zip group, or the search space.
        let axes: Vec<Origin> = raw
            .grid
            .keys()
            .map(|k| Origin::Grid(k.clone()))
            .chain(raw.zip.iter().enumerate().flat_map(|(i, z)| z.keys().map(move |k| Origin::Zip(i, k.clone()))))
            .chain(search.iter().flat_map(|s| s.keys.iter().map(|(k, _)| Origin::Search(k.clone()))))
            .collect();
        for (j, b) in axes.iter().enumerate() {
            for a in &axes[..j] {
                let (ka, kb) = (a.key(), b.key());
                let same_group = matches!((a, b), (Origin::Zip(x, _), Origin::Zip(y, _)) if x == y) || matches!((a, b), (Origin::Search(_), Origin::Search(_)));
                if !same_group && overlaps(ka, kb) {
                    let (segs, key) = origin_path(b);
                    let what = if ka == kb { "is also set" } else { "overlaps the key set" };
                    let message = format!("{what} by `{}`: each key may be varied by one [grid] key, one [[zip]] group or the [search.space] only", origin_path(a).1);
                    return Err(invalid(&segs.iter().map(|s| s.as_str()).collect::<Vec<_>>(), &key, message, None));
                }
            }
        }
        let base_seed = raw.base.get("seed").and_then(|v| v.as_integer()).unwrap_or(0).max(0) as u64;
        let n_seeds = match (&raw.seeds, raw.repeats) {
            (Some(s), _) => s.len(),
            (None, Some(r)) => r as usize,
            (None, None) => 1,
        };
        let seeded = raw.seeds.is_some() || raw.repeats.is_some();

        // The size of the expansion, before expanding anything: (grid × zip groups + variants) × seeds.
        {
            let mut factors: Vec<(Vec<String>, String, usize)> = raw.grid.iter().map(|(k, v)| (vec!["grid".into(), k.clone()], format!("grid.{k}"), v.len())).collect();
            for (i, z) in raw.zip.iter().enumerate() {
                if let Some((k, v)) = z.iter().next() {
                    factors.push((vec![format!("zip[{i}]"), k.clone()], format!("zip[{i}]"), v.len()));
                }
            }
            if let Some(s) = &search {
                let (segs, key) = if s.kind == crate::search::Kind::Grid {
                    (vec!["search".into(), "space".into()], "search.space")
                } else {
                    (vec!["search".into(), "trials".into()], "search.trials")
                };
                factors.push((segs, key.into(), usize::try_from(s.len()).unwrap_or(usize::MAX)));
            }
            let product: u128 = factors.iter().fold(1u128, |p, (_, _, n)| p.saturating_mul(*n as u128));
            let points = product.saturating_add(raw.variants.len() as u128);
            let count = points.saturating_mul(n_seeds as u128);
            if count > MAX_TRIALS as u128 {
                let seeds_key = if raw.seeds.is_some() { "seeds" } else { "repeats" };
                factors.push((vec![seeds_key.into()], seeds_key.into(), n_seeds));
                factors.push((vec!["variants".into()], "variants".into(), raw.variants.len()));
                // The largest factor (the first of equals).
                let (segs, key, _) = factors.iter().rev().max_by_key(|(_, _, n)| *n).cloned().unwrap_or_default();
                let (line, column) = locate_path(src, &segs.iter().map(|s| s.as_str()).collect::<Vec<_>>()).unwrap_or((1, 1));
                let mut parts: Vec<String> = factors.iter().filter(|(_, k, n)| *n > 0 && k != "variants" && k != seeds_key).map(|(_, k, n)| format!("{n} × {k}")).collect();
                if parts.is_empty() {
                    parts.push("1 point".into());
                }
                let mut shape = parts.join(" · ");
                if !raw.variants.is_empty() {
                    shape = format!("{shape} + {} variants", raw.variants.len());
                }
                let factors = format!("({shape}) × {n_seeds} seeds");
                return Err(SweepError::TooLarge { path: path.to_path_buf(), line, column, key, count, factors });
            }
        }
        let seeds: Vec<u64> = match (&raw.seeds, raw.repeats) {
            (Some(s), _) => s.clone(),
            (None, Some(r)) => (0..r as u64).map(|i| base_seed + i).collect(),
            (None, None) => vec![base_seed],
        };

        // Points: grid × zip groups, plus variants.
        let mut points: Vec<Vec<(String, toml::Value, Origin)>> = vec![vec![]];
        for (k, vals) in &raw.grid {
            points = points
                .into_iter()
                .flat_map(|p| {
                    vals.iter().map(move |v| {
                        let mut q = p.clone();
                        q.push((k.clone(), v.clone(), Origin::Grid(k.clone())));
                        q
                    })
                })
                .collect();
        }
        for (i, z) in raw.zip.iter().enumerate() {
            let n = z.values().next().map_or(0, |v| v.len());
            points = points
                .into_iter()
                .flat_map(|p| {
                    (0..n).map(move |j| {
                        let mut q = p.clone();
                        for (k, vals) in z {
                            q.push((k.clone(), vals[j].clone(), Origin::Zip(i, k.clone())));
                        }
                        q
                    })
                })
                .collect();
        }
        if let Some(space) = &search {
            let drawn = space.draw();
            points = points
                .into_iter()
                .flat_map(|p| {
                    drawn.iter().map(move |d| {
                        let mut q = p.clone();
                        q.extend(d.iter().map(|(k, v)| (k.clone(), v.clone(), Origin::Search(k.clone()))));
                        q
                    })
                })
                .collect();
        }
        // Each entry of a variant is a dotted key whose value replaces the base's, except
        // `gpu`, which says what the variant's trials need (default: the sweep's `gpu`).
        let mut point_gpu = vec![raw.gpu; points.len()];
        for (i, v) in raw.variants.iter().enumerate() {
            let gpu = match v.get(VARIANT_GPU_KEY) {
                None => raw.gpu,
                Some(toml::Value::Boolean(b)) => *b,
                Some(other) => {
                    let key = format!("variants[{i}].{VARIANT_GPU_KEY}");
                    return Err(invalid(&[&format!("variants[{i}]"), VARIANT_GPU_KEY], &key, format!("must be true or false (got {other})"), None));
                }
            };
            point_gpu.push(gpu);
            points.push(v.iter().filter(|(k, _)| k.as_str() != VARIANT_GPU_KEY).map(|(k, val)| (k.clone(), val.clone(), Origin::Variant(i, k.clone()))).collect());
        }
        let count = points.len() * seeds.len();

        let mut trials = Vec::with_capacity(count);
        let mut seen = std::collections::HashSet::new();
        for (p, &gpu) in points.iter().zip(&point_gpu) {
            for &seed in &seeds {
                let mut t = raw.base.clone();
                let mut label = Vec::new();
                for (k, v, origin) in p {
                    set_dotted(&mut t, k, v.clone()).map_err(|m| {
                        let (segs, key) = origin_path(origin);
                        invalid(&segs.iter().map(|s| s.as_str()).collect::<Vec<_>>(), &key, m, None)
                    })?;
                    label.push(format!("{k}={}", fmt_value(v)));
                }
                if seeded {
                    t.insert("seed".into(), toml::Value::Integer(seed as i64));
                    label.push(format!("seed={seed}"));
                }
                let label = if label.is_empty() { "base".to_string() } else { label.join(", ") };
                let config = TrialConfig::from_value(&toml::Value::Table(t.clone()));
                if let Err(e) = config.as_ref() {
                    // Point at the expansion that set the key (or a parent of it), else at base.
                    let origin = p.iter().find(|(k, _, _)| e.key == *k || e.key.starts_with(&format!("{k}.")) || k.starts_with(&format!("{}.", e.key))).map(|(_, _, o)| o.clone());
                    let origin = origin.or(if e.key == "seed" && seeded { Some(Origin::Seeds) } else { None });
                    let (segs, _) = match &origin {
                        Some(o) => origin_path(o),
                        None => {
                            let mut s = vec!["base".to_string()];
                            s.extend(e.key.split('.').map(String::from));
                            (s, String::new())
                        }
                    };
                    let key = if e.key.is_empty() { "base".to_string() } else { e.key.clone() };
                    return Err(invalid(&segs.iter().map(|s| s.as_str()).collect::<Vec<_>>(), &key, e.message.clone(), Some(label)));
                }
                let required_metrics = config.as_ref().map(TrialConfig::required_metrics).unwrap_or_default();
                let checkpoint_metrics = config.as_ref().map(TrialConfig::checkpoint_metrics).unwrap_or_default();
                let hash = trial_hash(&t);
                if !seen.insert(hash.clone()) {
                    continue; // the same trial twice (e.g. a variant equal to a grid point)
                }
                let toml = toml::to_string(&t).map_err(|e| invalid(&["base"], "base", e.to_string(), None))?;
                trials.push(Trial { hash, idx: trials.len(), toml, flat: flatten(&t), label, required_metrics, checkpoint_metrics, gpu });
            }
        }
        let name = raw.name.unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "sweep".into()));
        let early_stop = match &raw.early_stop {
            Some(t) => crate::early_stop::Rule::parse(t, &trials).map_err(|e| {
                let segs: Vec<&str> = e.segs.iter().map(String::as_str).collect();
                invalid(&segs, &e.segs.join("."), e.message, None)
            })?,
            None => None,
        };
        Ok(Sweep {
            name,
            file: path.to_path_buf(),
            source: src.to_string(),
            timeout: raw.timeout,
            retries: raw.retries,
            gpu: raw.gpu,
            trials,
            launcher: raw.launcher,
            search,
            early_stop,
        })
    }
}

impl Origin {
    /// The dotted trial key it sets (empty for the seeds).
    fn key(&self) -> &str {
        match self {
            Origin::Grid(k) | Origin::Zip(_, k) | Origin::Variant(_, k) | Origin::Search(k) => k,
            Origin::Seeds => "",
        }
    }
}

/// Whether two dotted keys set the same value: equal, or one a dotted prefix of the other.
fn overlaps(a: &str, b: &str) -> bool {
    let prefix = |p: &str, k: &str| k.len() > p.len() && k.starts_with(p) && k.as_bytes()[p.len()] == b'.';
    a == b || prefix(a, b) || prefix(b, a)
}

fn origin_path(o: &Origin) -> (Vec<String>, String) {
    match o {
        Origin::Grid(k) => (vec!["grid".into(), k.clone()], format!("grid.{k}")),
        Origin::Zip(i, k) => (vec![format!("zip[{i}]"), k.clone()], format!("zip[{i}].{k}")),
        Origin::Variant(i, k) => (vec![format!("variants[{i}]"), k.clone()], format!("variants[{i}].{k}")),
        Origin::Search(k) => (vec!["search".into(), "space".into(), k.clone()], format!("search.space.{k}")),
        Origin::Seeds => (vec!["seeds".into()], "seeds".into()),
    }
}
