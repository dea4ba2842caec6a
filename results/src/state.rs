//! Reading the sweep state database (read-only) into plain Rust values.
//!
//! The layout is defined in [`crate::layout`] (shared with the coordinator, which writes it);
//! this module only reads the tables `sweep`, `trials`, `attempts`, `results`, `curves`,
//! `samples`, `artifacts` and `events` (absent in older databases: read as empty), after
//! checking the layout version. JSON columns are parsed here
//! so the rest of the crate works on typed values: configs as dotted key → JSON scalar, metrics
//! and curve rows as name → f64 (a JSON `null`, which is how a NaN is serialized, becomes
//! "absent"), statuses as [`Status`], sample BLOBs as points.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use schema::Status;
use serde_json::Value;

use crate::error::ResultsError;

/// The row of the `sweep` table, if the coordinator wrote one.
#[derive(Debug, Clone)]
pub struct SweepInfo {
    pub name: String,
    pub file: String,
    pub updated_at: f64,
    /// The sweep file's text as the coordinator last loaded it.
    pub source: String,
}

/// One early-stopping decision (`decisions` table): a trial reached a rung (ASHA: k, at
/// checkpoint grace·eta^k; median: the checkpoint) and was compared with the cutoff.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub trial_hash: String,
    pub attempt_id: i64,
    pub rule: String,
    pub metric: String,
    pub rung: i64,
    pub checkpoint: i64,
    pub step: i64,
    pub value: f64,
    /// None: nothing to compare with yet (the first trial at a rung).
    pub cutoff: Option<f64>,
    /// `continue` or `stop`.
    pub decision: String,
    pub at: f64,
}

/// What the sweep file's `[search]` and `[early_stop]` say, for the report (the coordinator
/// checked them when it loaded the file).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Adaptive {
    /// Searched keys and whether each is drawn on a log scale (`log_uniform`).
    pub search: Vec<(String, bool)>,
    /// `kind` of `[search]` (`grid`, `random`, `sobol`).
    pub search_kind: Option<String>,
    /// (`kind`, `metric`, `mode`) of `[early_stop]`, when it stops trials.
    pub early_stop: Option<(String, String, String)>,
}

impl Adaptive {
    /// Reads the two tables from a sweep file's text (anything unreadable counts as absent).
    pub fn from_source(src: &str) -> Adaptive {
        let Ok(v) = src.parse::<toml::Table>() else { return Adaptive::default() };
        let mut out = Adaptive::default();
        if let Some(search) = v.get("search").and_then(|s| s.as_table()) {
            out.search_kind = Some(search.get("kind").and_then(|k| k.as_str()).unwrap_or("grid").to_string());
            if let Some(space) = search.get("space").and_then(|s| s.as_table()) {
                out.search = space.iter().map(|(k, d)| (k.clone(), d.as_table().is_some_and(|t| t.contains_key("log_uniform")))).collect();
            }
        }
        if let Some(es) = v.get("early_stop").and_then(|s| s.as_table()) {
            let get = |k: &str, d: &str| es.get(k).and_then(|v| v.as_str()).unwrap_or(d).to_string();
            let kind = get("kind", "none");
            if kind != "none" {
                out.early_stop = Some((kind, get("metric", ""), get("mode", "min")));
            }
        }
        out
    }
}

/// The final result of a trial (`results` table).
#[derive(Debug, Clone)]
pub struct TrialResult {
    /// `Done` or `Diverged`.
    pub status: Status,
    pub diverged_step: Option<i64>,
    pub metrics: BTreeMap<String, f64>,
    pub wall_seconds: f64,
    /// The worker that produced it, as `name#n` (its id without the secret part); empty when
    /// unknown.
    pub worker: String,
    /// The device that produced it (`cpu`, `cuda:0`); empty when unknown (a result recorded
    /// before devices were).
    pub device: String,
}

/// Samples drawn by a trial next to an exact sample of its data distribution.
#[derive(Debug, Clone)]
pub struct Samples {
    pub dim: usize,
    pub samples: Vec<Vec<f64>>,
    pub data: Vec<Vec<f64>>,
}

/// A file a trial's attempt uploaded (`artifacts` table), kept at [`Artifact::rel_path`]
/// under the output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub name: String,
    pub media_type: String,
    pub bytes: u64,
    pub sha256: String,
    /// `artifacts/<trial_hash>/<name>`, relative to the output directory.
    pub rel_path: String,
}

/// One trial with everything the database knows about it.
#[derive(Debug, Clone)]
pub struct Trial {
    pub hash: String,
    pub idx: i64,
    /// Flattened dotted keys → JSON scalar (arrays/objects are kept as they are).
    pub config: BTreeMap<String, Value>,
    pub in_sweep: bool,
    /// `Queued`, `Running`, or one of the finished statuses.
    pub status: Status,
    pub attempts: i64,
    pub result: Option<TrialResult>,
    /// Checkpoint rows in `row` order: column name → value.
    pub curve: Vec<BTreeMap<String, f64>>,
    pub samples: Option<Samples>,
    /// Uploaded artifacts, by name.
    pub artifacts: Vec<Artifact>,
    /// The error of the latest attempt that recorded one, with that attempt's outcome.
    pub last_error: Option<(String, String)>,
}

impl Trial {
    /// A final metric, if recorded and finite.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.result.as_ref().and_then(|r| r.metrics.get(name).copied()).filter(|v| v.is_finite())
    }

    /// A config value rendered for display (strings without quotes).
    pub fn config_display(&self, key: &str) -> Option<String> {
        self.config.get(key).map(display_value)
    }

    /// The data distribution this trial samples from: its `data.*` config keys, as
    /// `data.preset=ncsn2d, data.dim=2` (sorted), or `all` when it has none. Claims are
    /// grouped by this string.
    pub fn scope(&self) -> String {
        let parts: Vec<String> = self.config.iter().filter(|(k, _)| k.starts_with("data.")).map(|(k, v)| format!("{k}={}", display_value(v))).collect();
        if parts.is_empty() { "all".to_string() } else { parts.join(", ") }
    }

    /// The short hash used in reports and file names.
    pub fn short_hash(&self) -> &str {
        &self.hash[..self.hash.len().min(10)]
    }
}

/// Renders a JSON scalar the way a person would write it in a sweep file.
pub fn display_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A run-level event (`events` table), e.g. a respawned local worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unix seconds.
    pub at: f64,
    /// `respawn`, …
    pub kind: String,
    pub detail: String,
}

/// A worker that registered with the coordinator (`workers` table).
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    /// `name#n`: its id without the secret part.
    pub name: String,
    /// Where its trials ran: `cpu`, or the GPU as `cuda:0 (NVIDIA H100 80GB HBM3, 79.2 GiB)`.
    pub device: String,
    pub cores: i64,
    pub gpus: i64,
    /// Unix seconds.
    pub registered_at: f64,
}

/// A worker id (`name#n.<secret>`) as shown to people: `name#n`.
pub fn worker_display(id: &str) -> String {
    match id.rsplit_once('.') {
        Some((head, secret)) if head.contains('#') && !secret.is_empty() && secret.chars().all(|c| c.is_ascii_hexdigit()) => head.to_string(),
        _ => id.to_string(),
    }
}

/// The whole database, trials ordered by `idx` then hash.
#[derive(Debug, Clone)]
pub struct State {
    pub path: PathBuf,
    pub sweep: Option<SweepInfo>,
    pub trials: Vec<Trial>,
    /// In the order they happened.
    pub events: Vec<Event>,
    /// In the order they registered.
    pub workers: Vec<Worker>,
    /// Early-stopping decisions in the order they were made.
    pub decisions: Vec<Decision>,
    /// The sweep file's search space and early-stopping rule.
    pub adaptive: Adaptive,
}

impl State {
    /// Opens `db_path` read-only and loads every table.
    pub fn load(db_path: &Path) -> Result<State, ResultsError> {
        let conn = crate::layout::open_read_only(db_path).map_err(|source| ResultsError::OpenDb { path: db_path.to_path_buf(), source })?;
        crate::layout::check_version(&conn, db_path)?;
        let reader = Reader { conn: &conn, path: db_path };
        let sweep = reader.sweep()?;
        let mut trials = reader.trials()?;
        let mut results = reader.results()?;
        let mut curves = reader.curves()?;
        let mut samples = reader.samples()?;
        let mut errors = reader.last_errors()?;
        let mut artifacts = reader.artifacts()?;
        let events = reader.events()?;
        let workers = reader.workers()?;
        let decisions = reader.decisions()?;
        let adaptive = sweep.as_ref().map(|s| Adaptive::from_source(&s.source)).unwrap_or_default();
        for t in &mut trials {
            t.artifacts = artifacts.remove(&t.hash).unwrap_or_default();
            t.result = results.remove(&t.hash);
            t.curve = curves.remove(&t.hash).unwrap_or_default();
            t.samples = samples.remove(&t.hash);
            t.last_error = errors.remove(&t.hash);
        }
        trials.sort_by(|a, b| a.idx.cmp(&b.idx).then_with(|| a.hash.cmp(&b.hash)));
        Ok(State { path: db_path.to_path_buf(), sweep, trials, events, workers, decisions, adaptive })
    }

    /// How many events of `kind` the database holds.
    pub fn count_events(&self, kind: &str) -> usize {
        self.events.iter().filter(|e| e.kind == kind).count()
    }

    /// Trials that belong to the current sweep (the claims are about these only).
    pub fn in_sweep(&self) -> impl Iterator<Item = &Trial> {
        self.trials.iter().filter(|t| t.in_sweep)
    }
}

struct Reader<'a> {
    conn: &'a Connection,
    path: &'a Path,
}

impl Reader<'_> {
    fn query_err(&self, what: &'static str) -> impl Fn(rusqlite::Error) -> ResultsError + '_ {
        move |source| ResultsError::Query { path: self.path.to_path_buf(), what, source }
    }

    fn json(&self, column: &'static str, trial: &str, text: &str) -> Result<Value, ResultsError> {
        serde_json::from_str(text).map_err(|source| ResultsError::Json { path: self.path.to_path_buf(), column, trial: trial.to_string(), source })
    }

    fn shape(&self, column: &'static str, trial: &str, detail: impl Into<String>) -> ResultsError {
        ResultsError::Shape { path: self.path.to_path_buf(), column, trial: trial.to_string(), detail: detail.into() }
    }

    /// Parses a flat JSON object of numbers; `null` and non-numbers are dropped.
    fn numbers(&self, column: &'static str, trial: &str, text: &str) -> Result<BTreeMap<String, f64>, ResultsError> {
        match self.json(column, trial, text)? {
            Value::Object(map) => Ok(map.into_iter().filter_map(|(k, v)| v.as_f64().map(|x| (k, x))).collect()),
            other => Err(self.shape(column, trial, format!("expected an object, got {other}"))),
        }
    }

    fn sweep(&self) -> Result<Option<SweepInfo>, ResultsError> {
        let err = self.query_err("the sweep row");
        let mut stmt = self.conn.prepare("SELECT name, file, updated_at, source FROM sweep WHERE id = 1").map_err(&err)?;
        let mut rows = stmt.query_map([], |r| Ok(SweepInfo { name: r.get(0)?, file: r.get(1)?, updated_at: r.get(2)?, source: r.get(3)? })).map_err(&err)?;
        rows.next().transpose().map_err(err)
    }

    fn trials(&self) -> Result<Vec<Trial>, ResultsError> {
        let err = self.query_err("trials");
        let mut stmt = self.conn.prepare("SELECT hash, idx, config_json, in_sweep, status, attempts FROM trials").map_err(&err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?, r.get::<_, String>(4)?, r.get::<_, i64>(5)?)))
            .map_err(&err)?;
        let mut out = Vec::new();
        for row in rows {
            let (hash, idx, config_json, in_sweep, status, attempts) = row.map_err(&err)?;
            let status = self.status("status", &hash, &status)?;
            let config = match self.json("config_json", &hash, &config_json)? {
                Value::Object(map) => map.into_iter().collect(),
                other => {
                    return Err(self.shape("config_json", &hash, format!("expected an object of dotted keys, got {other}")));
                }
            };
            out.push(Trial {
                hash,
                idx,
                config,
                in_sweep: in_sweep != 0,
                status,
                attempts,
                result: None,
                curve: Vec::new(),
                samples: None,
                artifacts: Vec::new(),
                last_error: None,
            });
        }
        Ok(out)
    }

    /// Whether the database has `table.column` (tables and columns added to layout 3 later
    /// are read as empty or as their default where missing).
    fn has(&self, table: &str, column: &str) -> Result<bool, ResultsError> {
        crate::layout::has_column(self.conn, table, column).map_err(self.query_err("the table layout"))
    }

    fn results(&self) -> Result<HashMap<String, TrialResult>, ResultsError> {
        let err = self.query_err("results");
        let device = if self.has("attempts", "device")? { "a.device" } else { "NULL" };
        let sql = format!(
            "SELECT r.trial_hash, r.status, r.diverged_step, r.metrics_json, r.wall_seconds, a.worker, {device} FROM results r LEFT JOIN attempts a ON a.id = r.attempt_id"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(&err)?;
        type Row = (String, String, Option<i64>, String, f64, Option<String>, Option<String>);
        let rows = stmt.query_map([], |r| -> rusqlite::Result<Row> { Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)) }).map_err(&err)?;
        let mut out = HashMap::new();
        for row in rows {
            let (hash, status, diverged_step, metrics_json, wall_seconds, worker, device) = row.map_err(&err)?;
            let metrics = self.numbers("metrics_json", &hash, &metrics_json)?;
            let status = self.status("results.status", &hash, &status)?;
            let worker = worker.as_deref().map(worker_display).unwrap_or_default();
            out.insert(hash, TrialResult { status, diverged_step, metrics, wall_seconds, worker, device: device.unwrap_or_default() });
        }
        Ok(out)
    }

    /// Registered workers; none when the table does not exist (a database written before it).
    fn workers(&self) -> Result<Vec<Worker>, ResultsError> {
        let err = self.query_err("workers");
        let exists = self.conn.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'workers'").and_then(|mut s| s.exists([])).map_err(&err)?;
        if !exists {
            return Ok(Vec::new());
        }
        let device = if self.has("workers", "device")? { "device" } else { "''" };
        let mut stmt = self.conn.prepare(&format!("SELECT id, {device}, cores, gpus, registered_at FROM workers ORDER BY seq")).map_err(&err)?;
        let rows = stmt
            .query_map([], |r| Ok(Worker { name: worker_display(&r.get::<_, String>(0)?), device: r.get(1)?, cores: r.get(2)?, gpus: r.get(3)?, registered_at: r.get(4)? }))
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    fn curves(&self) -> Result<HashMap<String, Vec<BTreeMap<String, f64>>>, ResultsError> {
        let err = self.query_err("curves");
        let mut stmt = self.conn.prepare("SELECT trial_hash, values_json FROM curves ORDER BY trial_hash, row").map_err(&err)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(&err)?;
        let mut out: HashMap<String, Vec<_>> = HashMap::new();
        for row in rows {
            let (hash, values_json) = row.map_err(&err)?;
            let values = self.numbers("values_json", &hash, &values_json)?;
            out.entry(hash).or_default().push(values);
        }
        Ok(out)
    }

    fn samples(&self) -> Result<HashMap<String, Samples>, ResultsError> {
        let err = self.query_err("samples");
        let mut stmt = self.conn.prepare("SELECT trial_hash, dim, samples, data FROM samples").map_err(&err)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?, r.get::<_, Vec<u8>>(3)?))).map_err(&err)?;
        let mut out = HashMap::new();
        for row in rows {
            let (hash, dim, samples, data) = row.map_err(&err)?;
            let dim = usize::try_from(dim).map_err(|_| self.shape("dim", &hash, format!("negative dimension {dim}")))?;
            let points = |column: &'static str, blob: &[u8]| {
                crate::layout::points(dim, blob).ok_or_else(|| self.shape(column, &hash, format!("{} bytes are not whole f32 points of dimension {dim}", blob.len())))
            };
            let (samples, data) = (points("samples", &samples)?, points("data", &data)?);
            out.insert(hash, Samples { dim, samples, data });
        }
        Ok(out)
    }

    /// A status text of the database as a [`Status`].
    fn status(&self, column: &'static str, trial: &str, text: &str) -> Result<Status, ResultsError> {
        text.parse().map_err(|e: schema::status::UnknownStatus| self.shape(column, trial, e.to_string()))
    }

    /// Uploaded artifacts per trial, by name.
    fn artifacts(&self) -> Result<HashMap<String, Vec<Artifact>>, ResultsError> {
        let err = self.query_err("artifacts");
        let mut stmt = self
            .conn
            .prepare(
                "SELECT trial_hash, name, media_type, bytes, sha256 FROM artifacts \
                 ORDER BY trial_hash, name",
            )
            .map_err(&err)?;
        let rows =
            stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?, r.get::<_, String>(4)?))).map_err(&err)?;
        let mut out: HashMap<String, Vec<Artifact>> = HashMap::new();
        for row in rows {
            let (hash, name, media_type, bytes, sha256) = row.map_err(&err)?;
            let rel_path = format!("artifacts/{hash}/{name}");
            out.entry(hash).or_default().push(Artifact { name, media_type, bytes: bytes.max(0) as u64, sha256, rel_path });
        }
        Ok(out)
    }

    /// Run-level events; none when the table does not exist (a database written before it).
    fn events(&self) -> Result<Vec<Event>, ResultsError> {
        let err = self.query_err("events");
        let exists = self.conn.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'").and_then(|mut s| s.exists([])).map_err(&err)?;
        if !exists {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare("SELECT at, kind, detail FROM events ORDER BY id").map_err(&err)?;
        let rows = stmt.query_map([], |r| Ok(Event { at: r.get(0)?, kind: r.get(1)?, detail: r.get(2)? })).map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// Early-stopping decisions; none when the table does not exist (a database written
    /// before it).
    fn decisions(&self) -> Result<Vec<Decision>, ResultsError> {
        let err = self.query_err("decisions");
        let exists = self.conn.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'decisions'").and_then(|mut s| s.exists([])).map_err(&err)?;
        if !exists {
            return Ok(Vec::new());
        }
        let mut stmt =
            self.conn.prepare("SELECT trial_hash, attempt_id, rule, metric, rung, checkpoint, step, value, cutoff, decision, at FROM decisions ORDER BY id").map_err(&err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Decision {
                    trial_hash: r.get(0)?,
                    attempt_id: r.get(1)?,
                    rule: r.get(2)?,
                    metric: r.get(3)?,
                    rung: r.get(4)?,
                    checkpoint: r.get(5)?,
                    step: r.get(6)?,
                    value: r.get(7)?,
                    cutoff: r.get(8)?,
                    decision: r.get(9)?,
                    at: r.get(10)?,
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(err)
    }

    /// The error text of the latest attempt per trial that recorded one.
    fn last_errors(&self) -> Result<HashMap<String, (String, String)>, ResultsError> {
        let err = self.query_err("attempts");
        let mut stmt = self
            .conn
            .prepare(
                "SELECT trial_hash, outcome, error FROM attempts \
                 WHERE error IS NOT NULL ORDER BY id",
            )
            .map_err(&err)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))).map_err(&err)?;
        let mut out = HashMap::new();
        for row in rows {
            let (hash, outcome, error) = row.map_err(&err)?;
            out.insert(hash, (outcome, error)); // later ids overwrite earlier ones
        }
        Ok(out)
    }
}
