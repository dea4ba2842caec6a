//! The polars tables: one row per trial (`trials.parquet`/`.csv`) and one row per checkpoint
//! (`curves.parquet`), plus the small writers shared by every table file.
//!
//! Config columns are the flattened dotted keys (union over trials, null where a trial lacks
//! the key). A column's type is the narrowest that holds every value: Boolean, Int64, Float64,
//! else String (non-string values rendered as JSON).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;

use polars::prelude::*;
use serde_json::Value;

use crate::error::ResultsError;
use crate::state::{State, Trial, display_value};

/// Curve columns shown first, in this order; the rest follow sorted by name.
const CURVE_LEAD: [&str; 2] = ["step", "train_loss"];

/// Builds `trials.parquet`'s frame: hash, idx, in_sweep, config…, status, attempts,
/// diverged_step, metrics…, wall_seconds, worker, device.
pub fn trials_frame(state: &State) -> PolarsResult<DataFrame> {
    let trials = &state.trials;
    let mut cols = Columns::default();
    cols.push(Column::new("hash".into(), trials.iter().map(|t| t.hash.clone()).collect::<Vec<_>>()));
    cols.push(Column::new("idx".into(), trials.iter().map(|t| t.idx).collect::<Vec<_>>()));
    cols.push(Column::new("in_sweep".into(), trials.iter().map(|t| t.in_sweep).collect::<Vec<_>>()));
    for key in config_keys(trials.iter()) {
        let values: Vec<Option<&Value>> = trials.iter().map(|t| t.config.get(&key)).collect();
        cols.push(json_column(&key, &values));
    }
    cols.push(Column::new("status".into(), trials.iter().map(|t| t.status.as_str()).collect::<Vec<_>>()));
    cols.push(Column::new("attempts".into(), trials.iter().map(|t| t.attempts).collect::<Vec<_>>()));
    cols.push(Column::new("diverged_step".into(), trials.iter().map(|t| t.result.as_ref().and_then(|r| r.diverged_step)).collect::<Vec<_>>()));
    let metric_names: BTreeSet<&String> = trials.iter().filter_map(|t| t.result.as_ref()).flat_map(|r| r.metrics.keys()).collect();
    for name in metric_names {
        let values: Vec<Option<f64>> = trials.iter().map(|t| t.result.as_ref().and_then(|r| r.metrics.get(name).copied())).collect();
        cols.push(Column::new(cols.unique(name, "metric."), values));
    }
    cols.push(Column::new("wall_seconds".into(), trials.iter().map(|t| t.result.as_ref().map(|r| r.wall_seconds)).collect::<Vec<_>>()));
    // Which worker, on which device, produced the row (null: no result, or not recorded).
    let known = |s: &String| (!s.is_empty()).then(|| s.clone());
    cols.push(Column::new(cols.unique("worker", "run."), trials.iter().map(|t| t.result.as_ref().and_then(|r| known(&r.worker))).collect::<Vec<_>>()));
    cols.push(Column::new(cols.unique("device", "run."), trials.iter().map(|t| t.result.as_ref().and_then(|r| known(&r.device))).collect::<Vec<_>>()));
    DataFrame::new(trials.len(), cols.0)
}

/// Builds `curves.parquet`'s frame: hash, the config keys useful for grouping (every `data.*`
/// key and every key whose value differs between trials), row, then the curve columns
/// (`step`, `train_loss`, then the rest sorted).
pub fn curves_frame(state: &State) -> PolarsResult<DataFrame> {
    let with_curves: Vec<&Trial> = state.trials.iter().filter(|t| !t.curve.is_empty()).collect();
    let rows: Vec<(&Trial, usize, &BTreeMap<String, f64>)> = with_curves.iter().flat_map(|t| t.curve.iter().enumerate().map(move |(i, r)| (*t, i, r))).collect();
    let mut cols = Columns::default();
    cols.push(Column::new("hash".into(), rows.iter().map(|(t, _, _)| t.hash.clone()).collect::<Vec<_>>()));
    for key in grouping_keys(&with_curves) {
        let values: Vec<Option<&Value>> = rows.iter().map(|(t, _, _)| t.config.get(&key)).collect();
        cols.push(json_column(&key, &values));
    }
    cols.push(Column::new("row".into(), rows.iter().map(|(_, i, _)| *i as i64).collect::<Vec<_>>()));
    let names: BTreeSet<&String> = rows.iter().flat_map(|(_, _, r)| r.keys()).collect();
    let ordered = CURVE_LEAD
        .iter()
        .filter(|n| names.iter().any(|m| m.as_str() == **n))
        .map(|n| n.to_string())
        .chain(names.iter().filter(|n| !CURVE_LEAD.contains(&n.as_str())).map(|n| n.to_string()));
    for name in ordered {
        let values: Vec<Option<f64>> = rows.iter().map(|(_, _, r)| r.get(&name).copied()).collect();
        if name == "step" && values.iter().flatten().all(|v| v.fract() == 0.0) {
            let steps: Vec<Option<i64>> = values.iter().map(|v| v.map(|x| x as i64)).collect();
            cols.push(Column::new(cols.unique(&name, "curve."), steps));
        } else {
            cols.push(Column::new(cols.unique(&name, "curve."), values));
        }
    }
    DataFrame::new(rows.len(), cols.0)
}

/// The union of config keys over `trials`, sorted.
pub fn config_keys<'a>(trials: impl Iterator<Item = &'a Trial>) -> BTreeSet<String> {
    trials.flat_map(|t| t.config.keys().cloned()).collect()
}

/// Config keys worth grouping by: all `data.*` keys and every key that is missing in some
/// trial or takes more than one value.
pub fn grouping_keys(trials: &[&Trial]) -> Vec<String> {
    config_keys(trials.iter().copied())
        .into_iter()
        .filter(|key| {
            if key.starts_with("data.") {
                return true;
            }
            let values: BTreeSet<Option<String>> = trials.iter().map(|t| t.config.get(key).map(|v| v.to_string())).collect();
            values.len() > 1
        })
        .collect()
}

/// Columns with unique names: a name already taken gets a prefix (e.g. a metric called
/// `seed` becomes `metric.seed`).
#[derive(Default)]
struct Columns(Vec<Column>);

impl Columns {
    fn push(&mut self, column: Column) {
        self.0.push(column);
    }

    /// `name`, or `prefix` + `name` when a column of that name exists already.
    fn unique(&self, name: &str, prefix: &str) -> PlSmallStr {
        let taken = self.0.iter().any(|c| c.name().as_str() == name);
        if taken { format!("{prefix}{name}").into() } else { name.into() }
    }
}

/// One column from JSON scalars, typed by the narrowest type that holds all of them.
fn json_column(name: &str, values: &[Option<&Value>]) -> Column {
    let present = || values.iter().flatten().filter(|v| !v.is_null());
    if present().all(|v| v.is_boolean()) {
        let v: Vec<Option<bool>> = values.iter().map(|v| v.and_then(Value::as_bool)).collect();
        Column::new(name.into(), v)
    } else if present().all(|v| v.is_i64()) {
        let v: Vec<Option<i64>> = values.iter().map(|v| v.and_then(Value::as_i64)).collect();
        Column::new(name.into(), v)
    } else if present().all(|v| v.is_number()) {
        let v: Vec<Option<f64>> = values.iter().map(|v| v.and_then(Value::as_f64)).collect();
        Column::new(name.into(), v)
    } else {
        let v: Vec<Option<String>> = values.iter().map(|v| v.filter(|v| !v.is_null()).map(display_value)).collect();
        Column::new(name.into(), v)
    }
}

/// Writes `df` as Parquet to `path`.
pub fn write_parquet(df: &mut DataFrame, path: &Path) -> Result<(), ResultsError> {
    let file = File::create(path).map_err(|source| ResultsError::Io { path: path.into(), source })?;
    ParquetWriter::new(file).finish(df).map_err(|source| ResultsError::Table { path: path.into(), source })?;
    Ok(())
}

/// Writes `df` as CSV (with a header) to `path`.
pub fn write_csv(df: &mut DataFrame, path: &Path) -> Result<(), ResultsError> {
    let file = File::create(path).map_err(|source| ResultsError::Io { path: path.into(), source })?;
    CsvWriter::new(file).include_header(true).finish(df).map_err(|source| ResultsError::Table { path: path.into(), source })
}
