//! What the dashboard shows, as JSON: the run read from its state database (read-only, through
//! `results::state`, the reader the report uses, and `results::claims`, so the page and
//! report.md show the same numbers), plus the running attempts with their lease deadlines.
//! Worker-supplied strings (names, devices, errors, metric keys) travel as JSON strings; the
//! page only ever puts them into the document as text.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use results::state::{Decision, State, Trial, worker_display};
use schema::Status;
use serde_json::{Value, json};

/// Most sample and data points `/api/trial` sends per trial (the scatter needs no more).
pub const MAX_POINTS: usize = 2000;

/// Most early-stopping decisions `/api/run` sends: the latest (`decisions_total` counts all).
pub const MAX_DECISIONS: usize = 1000;

/// A running attempt (`attempts` row with outcome `running`).
#[derive(Debug, Clone)]
pub struct RunningAttempt {
    pub trial: String,
    pub worker: String,
    pub device: String,
    pub leased_at: f64,
    pub deadline: f64,
}

/// The running attempts, oldest first.
pub fn running_attempts(db: &Path) -> rusqlite::Result<Vec<RunningAttempt>> {
    let conn = results::layout::open_read_only(db)?;
    // An attempt records its device with its report; while it runs, its worker's registered
    // device is where it runs.
    let device = if results::layout::has_column(&conn, "attempts", "device")? { "COALESCE(NULLIF(a.device, ''), w.device, '')" } else { "COALESCE(w.device, '')" };
    let mut st = conn.prepare(&format!(
        "SELECT a.trial_hash, a.worker, {device}, a.leased_at, a.deadline FROM attempts a LEFT JOIN workers w ON w.id = a.worker WHERE a.outcome = ?1 ORDER BY a.id"
    ))?;
    let rows = st.query_map([Status::Running.as_str()], |r| {
        Ok(RunningAttempt { trial: r.get(0)?, worker: worker_display(&r.get::<_, String>(1)?), device: r.get(2)?, leased_at: r.get(3)?, deadline: r.get(4)? })
    })?;
    rows.collect()
}

/// An artifact [`recorded_artifact`] found: where its file is, and how to serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundArtifact {
    pub name: String,
    pub path: PathBuf,
    /// Its image type, when the page may show it ([`image_type`]).
    pub image: Option<&'static str>,
}

/// The content type of an artifact the page shows as a picture: by its name's extension, else
/// by the media type its worker gave, out of PNG, JPEG, GIF and WebP only (never SVG or HTML:
/// a worker's file is never rendered as a document). None: anything else (a download).
pub fn image_type(name: &str, media_type: &str) -> Option<&'static str> {
    const IMAGES: [(&str, &str); 5] = [("png", "image/png"), ("jpg", "image/jpeg"), ("jpeg", "image/jpeg"), ("gif", "image/gif"), ("webp", "image/webp")];
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    let by_name = IMAGES.iter().find(|(e, _)| ext.as_deref() == Some(*e)).map(|(_, t)| *t);
    let media = media_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    by_name.or_else(|| IMAGES.iter().find(|(_, t)| *t == media).map(|(_, t)| *t))
}

/// The artifact `name` of trial `hash` (full hash), when the state database records it for
/// that trial (compared byte for byte); None otherwise, and for a name or hash that could
/// leave `<out>/artifacts/<hash>/` (a database written by hand).
pub fn recorded_artifact(db: &Path, hash: &str, name: &str) -> rusqlite::Result<Option<FoundArtifact>> {
    use rusqlite::OptionalExtension;
    let conn = results::layout::open_read_only(db)?;
    let table = conn.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'artifacts'")?.exists([])?;
    if !table {
        return Ok(None);
    }
    let row: Option<(String, String, String)> = conn
        .query_row("SELECT trial_hash, name, media_type FROM artifacts WHERE trial_hash = ?1 AND name = ?2 LIMIT 1", [hash, name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((hash, name, media_type)) = row else { return Ok(None) };
    if hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_alphanumeric()) || crate::artifacts::check_name(&name).is_err() {
        return Ok(None);
    }
    let path = crate::artifacts::kept_path(db.parent().unwrap_or(Path::new(".")), &hash, &name);
    Ok(Some(FoundArtifact { image: image_type(&name, &media_type), name, path }))
}

/// The picture the page shows for a trial: its first image artifact named `samples…`, else its
/// first image artifact.
fn grid(t: &Trial) -> Option<&str> {
    let images = || t.artifacts.iter().filter(|a| image_type(&a.name, &a.media_type).is_some());
    images().find(|a| a.name.starts_with("samples")).or_else(|| images().next()).map(|a| a.name.as_str())
}

/// A finite number, or JSON null.
fn num(x: Option<f64>) -> Value {
    x.filter(|v| v.is_finite()).map_or(Value::Null, |v| json!(v))
}

/// Counts of the in-sweep trials by the classes `coordinator status` prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub total: usize,
    pub done: usize,
    pub running: usize,
    pub queued: usize,
    pub failed: usize,
    /// Stopped early (`[early_stop]`).
    pub pruned: usize,
}

impl Progress {
    pub fn of(state: &State) -> Progress {
        let mut p = Progress::default();
        for t in state.in_sweep() {
            p.total += 1;
            match t.status {
                Status::Queued => p.queued += 1,
                Status::Running => p.running += 1,
                s if s.is_success() => p.done += 1,
                Status::Pruned => p.pruned += 1,
                _ => p.failed += 1,
            }
        }
        p
    }

    pub fn finished(&self) -> usize {
        self.done + self.failed + self.pruned
    }
}

/// Rate and ETA: finished trials per second since the dashboard first looked (`first`: unix
/// seconds and finished count then), and the seconds the rest would take at that rate.
pub fn rate(first: (f64, usize), now: f64, p: &Progress) -> (Option<f64>, Option<f64>) {
    let (dt, dn) = (now - first.0, p.finished().saturating_sub(first.1));
    if dt <= 0.0 || dn == 0 {
        return (None, None);
    }
    let r = dn as f64 / dt;
    (Some(r), Some((p.total - p.finished()) as f64 / r))
}

/// Inputs of the run summary that are not in the database.
pub struct RunInfo {
    /// The run is going on (`run`/`serve`), not read back from a finished one.
    pub live: bool,
    pub now: f64,
    /// Unix seconds and finished count when the dashboard first looked.
    pub first: (f64, usize),
    /// Seconds a lease lives without a heartbeat (a running attempt's last heartbeat is its
    /// deadline less this); None when unknown (a finished run).
    pub lease_secs: Option<f64>,
}

fn trial_json(t: &Trial, keys: &[String]) -> Value {
    let config: BTreeMap<&str, String> = keys.iter().filter_map(|k| t.config_display(k).map(|v| (k.as_str(), v))).collect();
    let metrics: BTreeMap<&str, Value> = t.result.iter().flat_map(|r| r.metrics.iter().map(|(k, v)| (k.as_str(), num(Some(*v))))).collect();
    let columns: BTreeSet<&str> = t.curve.iter().flat_map(|r| r.keys().map(String::as_str)).collect();
    json!({
        "hash": t.hash,
        "short": t.short_hash(),
        "idx": t.idx,
        "status": t.status.as_str(),
        "attempts": t.attempts,
        "config": config,
        "metrics": metrics,
        "worker": t.result.as_ref().map(|r| r.worker.as_str()).unwrap_or(""),
        "device": t.result.as_ref().map(|r| r.device.as_str()).unwrap_or(""),
        "wall_seconds": num(t.result.as_ref().map(|r| r.wall_seconds)),
        "error": t.last_error.as_ref().map(|(outcome, e)| format!("{outcome}: {e}")),
        "curve_columns": columns,
        "checkpoints": t.curve.len(),
        "has_samples": t.samples.is_some(),
        "grid": grid(t),
    })
}

/// Why a decision went the way it did, in words, from what was recorded.
pub fn reason(d: &Decision, mode: Option<&str>) -> String {
    let value = results::claims::fmt_num(d.value);
    let mode = mode.map(|m| format!(" (mode {m})")).unwrap_or_default();
    match d.cutoff {
        None => format!("first trial at rung {}: nothing to compare {} = {value} with", d.rung, d.metric),
        Some(c) if d.decision == "stop" => format!("{} = {value} is worse than the cutoff {}{mode}", d.metric, results::claims::fmt_num(c)),
        Some(c) => format!("{} = {value} is not worse than the cutoff {}{mode}", d.metric, results::claims::fmt_num(c)),
    }
}

fn decision_json(d: &Decision, short: &BTreeMap<&str, &str>, mode: Option<&str>) -> Value {
    json!({
        "trial": d.trial_hash,
        "short": short.get(d.trial_hash.as_str()).copied().unwrap_or(d.trial_hash.as_str()),
        "attempt": d.attempt_id,
        "rule": d.rule,
        "metric": d.metric,
        "rung": d.rung,
        "checkpoint": d.checkpoint,
        "step": d.step,
        "value": num(Some(d.value)),
        "cutoff": num(d.cutoff),
        "decision": d.decision,
        "reason": reason(d, mode),
        "at": num(Some(d.at)),
    })
}

/// The whole page's data (`/api/run`), without curves and samples (see [`trial`]).
pub fn run_json(state: &State, running: &[RunningAttempt], info: &RunInfo) -> Value {
    let in_sweep: Vec<&Trial> = state.in_sweep().collect();
    let keys = results::table::grouping_keys(&in_sweep);
    let progress = Progress::of(state);
    let (rate, eta) = if info.live { rate(info.first, info.now, &progress) } else { (None, None) };
    let metrics: BTreeSet<&str> = in_sweep.iter().flat_map(|t| t.result.iter().flat_map(|r| r.metrics.keys().map(String::as_str))).collect();
    let columns: BTreeSet<&str> = in_sweep.iter().flat_map(|t| t.curve.iter().flat_map(|r| r.keys().map(String::as_str))).collect();
    let short: BTreeMap<&str, &str> = state.trials.iter().map(|t| (t.hash.as_str(), t.short_hash())).collect();
    let workers: Vec<Value> = state
        .workers
        .iter()
        .map(|w| {
            let mine: Vec<&RunningAttempt> = running.iter().filter(|a| a.worker == w.name).collect();
            let heartbeat = info.lease_secs.and_then(|s| mine.iter().map(|a| a.deadline - s).reduce(f64::max));
            let results = in_sweep.iter().filter(|t| t.result.as_ref().is_some_and(|r| r.worker == w.name)).count();
            json!({
                "name": w.name,
                "device": w.device,
                "cores": w.cores,
                "gpus": w.gpus,
                "registered_at": num(Some(w.registered_at)),
                "current": mine.iter().map(|a| short.get(a.trial.as_str()).copied().unwrap_or(a.trial.as_str())).collect::<Vec<_>>(),
                "last_heartbeat": num(heartbeat),
                "results": results,
            })
        })
        .collect();
    let running_json: Vec<Value> = running
        .iter()
        .map(|a| {
            json!({
                "trial": short.get(a.trial.as_str()).copied().unwrap_or(a.trial.as_str()),
                "worker": a.worker,
                "device": a.device,
                "leased_at": num(Some(a.leased_at)),
                "deadline": num(Some(a.deadline)),
                "last_heartbeat": num(info.lease_secs.map(|s| a.deadline - s)),
            })
        })
        .collect();
    let claims: Vec<Value> = results::claims::evaluate(state)
        .iter()
        .map(|c| {
            json!({
                "claim": c.claim,
                "scope": c.scope,
                "verdict": c.verdict.as_str(),
                "statistic": num(c.statistic),
                "expected": c.expected,
                "tolerance": num(Some(c.tolerance)),
                "value": num(c.value),
                "expected_value": num(c.expected_value),
                "se": num(c.se),
                "z": num(c.z),
                "details": c.details,
                "n_rows": c.n_rows,
                "n_trials": c.n_trials,
            })
        })
        .collect();
    let mode = state.adaptive.early_stop.as_ref().map(|(_, _, m)| m.as_str());
    let decisions: Vec<Value> = state.decisions[state.decisions.len().saturating_sub(MAX_DECISIONS)..].iter().map(|d| decision_json(d, &short, mode)).collect();
    let events: Vec<Value> = state.events.iter().map(|e| json!({"at": e.at, "kind": e.kind, "detail": e.detail})).collect();
    json!({
        "sweep": state.sweep.as_ref().map(|s| json!({"name": s.name, "file": s.file})),
        "live": info.live,
        "now": info.now,
        "progress": {
            "total": progress.total, "done": progress.done, "running": progress.running,
            "queued": progress.queued, "failed": progress.failed, "pruned": progress.pruned,
        },
        "rate_per_second": num(rate),
        "eta_seconds": num(eta),
        "respawns": state.count_events("respawn"),
        "keys": keys,
        "metrics": metrics,
        "curve_columns": columns,
        "trials": in_sweep.iter().map(|t| trial_json(t, &keys)).collect::<Vec<_>>(),
        "out_of_sweep": state.trials.len() - in_sweep.len(),
        "workers": workers,
        "running": running_json,
        "claims": claims,
        "early_stop": state.adaptive.early_stop.as_ref().map(|(kind, metric, mode)| json!({"kind": kind, "metric": metric, "mode": mode})),
        "decisions": decisions,
        "decisions_total": state.decisions.len(),
        "events": events,
    })
}

/// Every `step`-th point so that at most [`MAX_POINTS`] remain, first two coordinates.
fn thin(points: &[Vec<f64>]) -> Vec<[Value; 2]> {
    let step = points.len().div_ceil(MAX_POINTS).max(1);
    points.iter().step_by(step).map(|p| [num(p.first().copied()), num(p.get(1).copied())]).collect()
}

/// One trial's curve rows and (thinned) samples (`/api/trial?hash=…`); None for an unknown
/// hash.
pub fn trial(state: &State, hash: &str) -> Option<Value> {
    let t = state.trials.iter().find(|t| t.hash == hash || t.short_hash() == hash)?;
    let curve: Vec<BTreeMap<&str, Value>> = t.curve.iter().map(|r| r.iter().map(|(k, v)| (k.as_str(), num(Some(*v)))).collect()).collect();
    let samples = t.samples.as_ref().map(|s| json!({"dim": s.dim, "samples": thin(&s.samples), "data": thin(&s.data)}));
    let artifacts: Vec<Value> =
        t.artifacts.iter().map(|a| json!({"name": a.name, "media_type": a.media_type, "bytes": a.bytes, "image": image_type(&a.name, &a.media_type).is_some()})).collect();
    Some(json!({"hash": t.hash, "short": t.short_hash(), "status": t.status.as_str(), "curve": curve, "samples": samples, "artifacts": artifacts, "grid": grid(t)}))
}
