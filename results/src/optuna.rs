//! The run as an Optuna JournalStorage log (`coordinator export optuna OUT > journal.log`), so
//! that the tools people already have (`optuna-dashboard journal.log`, `optuna.load_study`)
//! open it: one study named after the sweep; per in-sweep trial, in sweep order, one
//! `CREATE_TRIAL` record with the swept keys as params, the chosen final metric as value and
//! the checkpoint values of that metric as intermediate values (by `step`).
//!
//! States: `done` with a finite value → COMPLETE; `queued` → WAITING; `running` → RUNNING;
//! every other status (`failed`, `timeout`, `diverged`, `cancelled`, or `done` without the
//! metric) → FAIL, with the scoresweep status in the user attribute `status`. Params follow
//! Optuna's distributions: integers → IntDistribution, other numbers → FloatDistribution,
//! everything else → CategoricalDistribution (its index is the internal value), each over the
//! values the sweep takes. The record layout is Optuna's (`optuna/storages/journal/_storage.py`:
//! `op_code` 0 creates a study, 4 a trial), one JSON object per line.

use std::collections::{BTreeMap, BTreeSet};

use schema::Status;
use serde_json::{Value, json};

use crate::state::{State, Trial};

/// `JournalOperation.CREATE_STUDY`.
const CREATE_STUDY: u8 = 0;
/// `JournalOperation.CREATE_TRIAL`.
const CREATE_TRIAL: u8 = 4;
/// `TrialState` values.
const RUNNING: u8 = 0;
const COMPLETE: u8 = 1;
const PRUNED: u8 = 2;
const FAIL: u8 = 3;
const WAITING: u8 = 4;
/// The `worker_id` of every record (no Optuna process owns these trials).
const WORKER: &str = "scoresweep-export";

/// Whether the study minimises or maximises its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Minimize,
    Maximize,
}

/// An Optuna distribution over the values one swept key takes, as (JSON text, the internal
/// value of each display value).
fn distribution(values: &BTreeSet<String>, raw: &[&Value]) -> (String, BTreeMap<String, Value>) {
    let ints: Option<Vec<i64>> = raw.iter().map(|v| v.as_i64()).collect();
    let floats: Option<Vec<f64>> = raw.iter().map(|v| v.as_f64()).collect();
    if let Some(ints) = ints.filter(|i| !i.is_empty()) {
        let (lo, hi) = (ints.iter().min().copied().unwrap_or(0), ints.iter().max().copied().unwrap_or(0));
        let d = json!({"name": "IntDistribution", "attributes": {"log": false, "step": 1, "low": lo, "high": hi}});
        let map = raw.iter().map(|v| (crate::state::display_value(v), json!(v.as_i64().unwrap_or(0) as f64))).collect();
        return (d.to_string(), map);
    }
    if let Some(floats) = floats.filter(|f| !f.is_empty()) {
        let lo = floats.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = floats.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let d = json!({"name": "FloatDistribution", "attributes": {"step": null, "low": lo, "high": hi, "log": false}});
        let map = raw.iter().map(|v| (crate::state::display_value(v), json!(v.as_f64().unwrap_or(0.0)))).collect();
        return (d.to_string(), map);
    }
    let choices: Vec<&String> = values.iter().collect();
    let d = json!({"name": "CategoricalDistribution", "attributes": {"choices": choices}});
    let map = choices.iter().enumerate().map(|(i, c)| ((*c).clone(), json!(i as f64))).collect();
    (d.to_string(), map)
}

fn state_of(t: &Trial, value: Option<f64>) -> u8 {
    match t.status {
        Status::Queued => WAITING,
        Status::Running => RUNNING,
        Status::Done if value.is_some() => COMPLETE,
        Status::Pruned => PRUNED,
        _ => FAIL,
    }
}

/// Start (the first lease, else creation) and completion times of each trial, by hash, from
/// the database `state` was read from.
fn times(state: &State) -> rusqlite::Result<BTreeMap<String, (f64, Option<f64>)>> {
    let conn = crate::layout::open_read_only(&state.path)?;
    let mut st = conn.prepare("SELECT t.hash, COALESCE((SELECT MIN(a.leased_at) FROM attempts a WHERE a.trial_id = t.id), t.created_at), t.finished_at FROM trials t")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, (r.get::<_, f64>(1)?, r.get::<_, Option<f64>>(2)?))))?;
    rows.collect()
}

/// A unix time as ISO 8601 in UTC (Python's `datetime.fromisoformat` reads it).
fn iso(unix: f64) -> String {
    crate::report::fmt_utc(unix).replace(" UTC", "+00:00")
}

/// The journal of `state`'s in-sweep trials with `metric` as the value (times from the
/// database at `state.path`).
pub fn journal(state: &State, metric: &str, direction: Direction) -> rusqlite::Result<String> {
    let times = times(state)?;
    let trials: Vec<&Trial> = state.in_sweep().collect();
    let keys = crate::table::grouping_keys(&trials);
    let dists: BTreeMap<&str, (String, BTreeMap<String, Value>)> = keys
        .iter()
        .map(|k| {
            let raw: Vec<&Value> = trials.iter().filter_map(|t| t.config.get(k)).filter(|v| !v.is_null()).collect();
            let shown: BTreeSet<String> = raw.iter().map(|v| crate::state::display_value(v)).collect();
            (k.as_str(), distribution(&shown, &raw))
        })
        .collect();
    let name = state.sweep.as_ref().map_or("scoresweep", |s| s.name.as_str());
    let direction = match direction {
        Direction::Minimize => 1,
        Direction::Maximize => 2,
    };
    let mut out = String::new();
    let mut line = |v: Value| {
        out.push_str(&v.to_string());
        out.push('\n');
    };
    line(json!({"op_code": CREATE_STUDY, "worker_id": WORKER, "study_name": name, "directions": [direction]}));
    for t in &trials {
        let value = t.metric(metric);
        let st = state_of(t, value);
        let mut params = serde_json::Map::new();
        let mut distributions = serde_json::Map::new();
        for (k, (dist, internal)) in &dists {
            if let Some(v) = t.config_display(k).and_then(|shown| internal.get(&shown)) {
                params.insert((*k).to_string(), v.clone());
                distributions.insert((*k).to_string(), Value::String(dist.clone()));
            }
        }
        let intermediate: BTreeMap<String, f64> = t
            .curve
            .iter()
            .enumerate()
            .filter_map(|(i, row)| {
                let v = row.get(metric).copied().filter(|v| v.is_finite())?;
                Some(((row.get("step").copied().unwrap_or(i as f64) as i64).to_string(), v))
            })
            .collect();
        let mut rec = json!({
            "op_code": CREATE_TRIAL,
            "worker_id": WORKER,
            "study_id": 0,
            "datetime_start": null,
            "state": st,
            "params": params,
            "distributions": distributions,
            "intermediate_values": intermediate,
            "user_attrs": {"status": t.status.as_str(), "hash": t.hash, "attempts": t.attempts},
        });
        if st == COMPLETE {
            rec["values"] = json!([value]);
        }
        let (start, complete) = times.get(&t.hash).copied().unwrap_or((f64::NAN, None));
        if st != WAITING && start.is_finite() {
            rec["datetime_start"] = json!(iso(start));
        }
        if matches!(st, COMPLETE | FAIL) {
            rec["datetime_complete"] = json!(iso(complete.filter(|c| c.is_finite()).unwrap_or(start)));
        }
        line(rec);
    }
    Ok(out)
}

/// The metrics every finished trial with a result has (a sensible default for `--metric`).
pub fn common_metrics(state: &State) -> Vec<String> {
    let mut common: Option<BTreeSet<&String>> = None;
    for r in state.in_sweep().filter_map(|t| t.result.as_ref()) {
        let keys: BTreeSet<&String> = r.metrics.keys().collect();
        common = Some(match common {
            None => keys,
            Some(c) => c.intersection(&keys).copied().collect(),
        });
    }
    common.unwrap_or_default().into_iter().cloned().collect()
}
