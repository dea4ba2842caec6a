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

/// The fixed columns of `trials.parquet` that come after the config keys: neither a config key
/// nor a metric (a name the worker chose) takes one of these names.
const TRIALS_FIXED: [&str; 6] = ["status", "attempts", "diverged_step", "wall_seconds", "worker", "device"];

/// Builds `trials.parquet`'s frame: hash, idx, in_sweep, config…, status, attempts,
/// diverged_step, metrics…, wall_seconds, worker, device. Column names are unique whatever
/// the metric names (see [`Columns::unique`]).
pub fn trials_frame(state: &State) -> PolarsResult<DataFrame> {
    let trials = &state.trials;
    let mut cols = Columns { reserved: &TRIALS_FIXED, ..Columns::default() };
    cols.push(Column::new("hash".into(), trials.iter().map(|t| t.hash.clone()).collect::<Vec<_>>()));
    cols.push(Column::new("idx".into(), trials.iter().map(|t| t.idx).collect::<Vec<_>>()));
    cols.push(Column::new("in_sweep".into(), trials.iter().map(|t| t.in_sweep).collect::<Vec<_>>()));
    for key in config_keys(trials.iter()) {
        let values: Vec<Option<&Value>> = trials.iter().map(|t| t.config.get(&key)).collect();
        cols.push(json_column(&cols.unique(&key, "config."), &values));
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
    cols.push(Column::new("worker".into(), trials.iter().map(|t| t.result.as_ref().and_then(|r| known(&r.worker))).collect::<Vec<_>>()));
    cols.push(Column::new("device".into(), trials.iter().map(|t| t.result.as_ref().and_then(|r| known(&r.device))).collect::<Vec<_>>()));
    DataFrame::new(trials.len(), cols.columns)
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
        cols.push(json_column(&cols.unique(&key, "config."), &values));
    }
    cols.push(Column::new(cols.unique("row", "curves."), rows.iter().map(|(_, i, _)| *i as i64).collect::<Vec<_>>()));
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
    DataFrame::new(rows.len(), cols.columns)
}

/// The union of config keys over `trials`, sorted.
/// `decisions.csv`'s frame: one row per early-stopping decision, in the order they were made:
/// trial_hash, attempt_id, rule, metric, rung, checkpoint, step, value, cutoff (null: nothing
/// to compare with yet), decision (`continue`/`stop`), at (unix seconds).
pub fn decisions_frame(state: &State) -> PolarsResult<DataFrame> {
    let d = &state.decisions;
    DataFrame::new(
        d.len(),
        vec![
            Column::new("trial_hash".into(), d.iter().map(|x| x.trial_hash.as_str()).collect::<Vec<_>>()),
            Column::new("attempt_id".into(), d.iter().map(|x| x.attempt_id).collect::<Vec<_>>()),
            Column::new("rule".into(), d.iter().map(|x| x.rule.as_str()).collect::<Vec<_>>()),
            Column::new("metric".into(), d.iter().map(|x| x.metric.as_str()).collect::<Vec<_>>()),
            Column::new("rung".into(), d.iter().map(|x| x.rung).collect::<Vec<_>>()),
            Column::new("checkpoint".into(), d.iter().map(|x| x.checkpoint).collect::<Vec<_>>()),
            Column::new("step".into(), d.iter().map(|x| x.step).collect::<Vec<_>>()),
            Column::new("value".into(), d.iter().map(|x| x.value).collect::<Vec<_>>()),
            Column::new("cutoff".into(), d.iter().map(|x| x.cutoff).collect::<Vec<_>>()),
            Column::new("decision".into(), d.iter().map(|x| x.decision.as_str()).collect::<Vec<_>>()),
            Column::new("at".into(), d.iter().map(|x| x.at).collect::<Vec<_>>()),
        ],
    )
}

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

/// Columns with unique names: a name already taken (or reserved for a fixed column still to
/// come) gets a prefix (e.g. a metric called `seed` becomes `metric.seed`), then a number
/// (`metric.seed#2`, …) until it is free, so that no name a worker sends can make two columns
/// of one name (which polars refuses).
#[derive(Default)]
struct Columns {
    columns: Vec<Column>,
    /// Names of the fixed columns (pushed under these names, never given to another).
    reserved: &'static [&'static str],
}

impl Columns {
    fn push(&mut self, column: Column) {
        debug_assert!(!self.columns.iter().any(|c| c.name() == column.name()), "column `{}` pushed twice", column.name());
        self.columns.push(column);
    }

    fn taken(&self, name: &str) -> bool {
        self.reserved.contains(&name) || self.columns.iter().any(|c| c.name().as_str() == name)
    }

    /// `name` if free, else `prefix` + `name`, else that with `#2`, `#3`, … (the first free).
    fn unique(&self, name: &str, prefix: &str) -> PlSmallStr {
        if !self.taken(name) {
            return name.into();
        }
        let prefixed = format!("{prefix}{name}");
        let mut candidate = prefixed.clone();
        let mut n = 1;
        while self.taken(&candidate) {
            n += 1;
            candidate = format!("{prefixed}#{n}");
        }
        candidate.into()
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

/// Writes `df` as CSV (with a header) to `path`; text cells and column names go through
/// [`crate::escape::csv_cell`], so that no cell a worker wrote runs as a spreadsheet formula.
pub fn write_csv(df: &mut DataFrame, path: &Path) -> Result<(), ResultsError> {
    let table_err = |source| ResultsError::Table { path: path.into(), source };
    let mut safe = csv_safe(df).map_err(table_err)?;
    let file = File::create(path).map_err(|source| ResultsError::Io { path: path.into(), source })?;
    CsvWriter::new(file).include_header(true).finish(&mut safe).map_err(table_err)
}

/// `df` with every String cell and column name made safe for a spreadsheet.
fn csv_safe(df: &DataFrame) -> PolarsResult<DataFrame> {
    let mut columns = Vec::with_capacity(df.width());
    for c in df.columns() {
        let name: PlSmallStr = crate::escape::csv_cell(c.name()).into();
        let c = if c.dtype() == &DataType::String {
            let values: Vec<Option<String>> = c.str()?.iter().map(|v| v.map(crate::escape::csv_cell)).collect();
            Column::new(name, values)
        } else {
            c.clone().with_name(name)
        };
        columns.push(c);
    }
    DataFrame::new(df.height(), columns)
}
