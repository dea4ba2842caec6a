//! Durable sweep state in SQLite (`<out>/state.db`, WAL; every state change is atomic, and the
//! [`crate::store`] groups concurrent changes into one commit):
//! trials, attempts, results, curves, samples and artifacts. The layout (tables, indexes,
//! version) is defined once in [`results::layout`], which the `results` crate reads by.
//!
//! Trial lifecycle (see ARCHITECTURE.md for the diagram), in [`Status`] terms:
//! queued → running → done | diverged | failed | timeout, with an expired, failed or timed-out
//! attempt going back to queued while attempts remain (attempt rows are kept), and a report for
//! an attempt that is no longer running recorded as `ignored` (never a second result).
//! Summaries classify with [`Status::is_success`] / [`Status::is_unusable`] only.
//!
//! Workers and attempts are bound: a worker id is issued by [`State::register`] (a `workers`
//! row, so it survives a coordinator restart), only a registered worker is leased a trial, and
//! every later request about an attempt (heartbeat, report, cancel, upload) must come from the
//! worker that leased it and name its trial — otherwise it is refused with a [`Refusal`] and
//! nothing changes. A `done` result is recorded only when [`AttemptResult::check`] passes (the
//! trial's required metrics present and finite); a malformed one closes the attempt as failed,
//! with the reason.

use std::path::Path;
use std::sync::LazyLock;

use results::layout::{self, LayoutError};
use rusqlite::{Connection, OptionalExtension, params};
use schema::Status;

use crate::sweep::Sweep;

/// Layout version of the state database (see [`results::layout::LAYOUT_VERSION`]).
pub const SCHEMA_VERSION: i64 = layout::LAYOUT_VERSION;

/// A status as an SQL literal, for the statements whose partial index (see
/// [`results::layout::SCHEMA_SQL`]) must see the value in the text: with a bound parameter
/// SQLite would re-prepare the statement at every bind to check the index still applies.
fn lit(s: Status) -> String {
    format!("'{}'", s.as_str())
}

/// The next queued trial of the sweep that needs a GPU (?1 = 1) or not (?1 = 0) (uses the
/// `trials_queued_by_gpu` index).
static NEXT_QUEUED: LazyLock<String> =
    LazyLock::new(|| format!("SELECT id, hash FROM trials WHERE status = {} AND in_sweep = 1 AND gpu = ?1 ORDER BY idx LIMIT 1", lit(Status::Queued)));
/// Running attempts of a worker (?1) (the `attempts_running_by_worker` index).
static HELD_BY: LazyLock<String> = LazyLock::new(|| format!("SELECT COUNT(*) FROM attempts WHERE outcome = {} AND worker = ?1", lit(Status::Running)));
/// Running attempts of a trial (?1) other than one (?2).
static OTHERS_RUNNING: LazyLock<String> = LazyLock::new(|| format!("SELECT COUNT(*) FROM attempts WHERE outcome = {} AND trial_id = ?1 AND id != ?2", lit(Status::Running)));
/// Running attempts past a deadline (uses the `attempts_running` index).
static STALE_RUNNING: LazyLock<String> = LazyLock::new(|| format!("SELECT id, trial_id, leased_at FROM attempts WHERE outcome = {} AND deadline < ?1", lit(Status::Running)));

/// The error text of a running attempt the coordinator has told to cancel (it is stopping):
/// its cancellation does not count as an attempt.
pub const CANCEL_ASKED: &str = "cancel asked by the coordinator";

pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// What a worker reports for an attempt (domain form of the wire message).
#[derive(Debug, Clone)]
pub struct AttemptResult {
    /// Done, Diverged, Cancelled or Failed (anything else is recorded as Failed).
    pub status: Status,
    pub diverged_step: Option<u64>,
    pub metrics_json: String,
    pub curve_rows: Vec<String>,
    pub samples: Option<Samples>,
    pub wall_seconds: f64,
    pub error: String,
    /// Uploaded artifacts the report names (recorded with a Done or Diverged result).
    pub artifacts: Vec<Artifact>,
    /// The device that ran the attempt (`cpu`, `cuda:0`); empty when unknown.
    pub device: String,
}

impl AttemptResult {
    /// Checks what would be recorded as a result (Done or Diverged): the metrics are a JSON
    /// object of numbers (or null, for a value that was not finite), every key of `required`
    /// (the trial's [`schema::metrics::required_metrics`]; None when the trial is not in the
    /// loaded sweep) is a finite number in a Done result, a Diverged result names its step,
    /// every curve row is an object of numbers, and the wall time is a finite, non-negative
    /// number of seconds. The error says what is wrong.
    pub fn check(&self, required: Option<&[&str]>) -> Result<(), String> {
        if !(self.wall_seconds.is_finite() && self.wall_seconds >= 0.0) {
            return Err(format!("wall_seconds is {}, not a finite number of seconds", self.wall_seconds));
        }
        if !matches!(self.status, Status::Done | Status::Diverged | Status::Pruned) {
            return Ok(());
        }
        let metrics = match serde_json::from_str::<serde_json::Value>(&self.metrics_json) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(other) => return Err(format!("metrics_json is not a JSON object ({})", json_kind(&other))),
            Err(e) => return Err(format!("metrics_json: {e}")),
        };
        if let Some((k, v)) = metrics.iter().find(|(_, v)| !(v.is_number() || v.is_null())) {
            return Err(format!("metric `{k}` is {}, not a number", json_kind(v)));
        }
        if self.status == Status::Done {
            let missing: Vec<&str> = required.unwrap_or_default().iter().copied().filter(|k| !metrics.contains_key(*k)).collect();
            if !missing.is_empty() {
                return Err(format!("a done result of this trial must carry the metric(s) {}, missing: {}", required.unwrap_or_default().join(", "), missing.join(", ")));
            }
            if let Some(k) = required.unwrap_or_default().iter().find(|k| metrics.get(**k).is_some_and(|v| !v.is_number())) {
                return Err(format!("required metric `{k}` is not a finite number (null)"));
            }
        }
        if self.status == Status::Diverged && self.diverged_step.is_none_or(|s| i64::try_from(s).is_err()) {
            return Err("a diverged result must name the step it diverged at (diverged_step)".into());
        }
        for (i, row) in self.curve_rows.iter().enumerate() {
            match serde_json::from_str::<serde_json::Value>(row) {
                Ok(serde_json::Value::Object(m)) if m.values().all(|v| v.is_number() || v.is_null()) => {}
                _ => return Err(format!("curve row {i} is not an object of numbers")),
            }
        }
        Ok(())
    }

    /// This result if it passes [`AttemptResult::check`], else a Failed one that says why (the
    /// rest of the report is dropped: nothing malformed is ever recorded as a result).
    pub fn checked(self, required: Option<&[&str]>) -> AttemptResult {
        match self.check(required) {
            Ok(()) => self,
            Err(why) => AttemptResult::malformed(&format!("{} report: {why}", self.status), self.wall_seconds),
        }
    }

    /// A report that could not be taken as sent, recorded as a Failed attempt with the reason.
    pub fn malformed(why: &str, wall_seconds: f64) -> AttemptResult {
        let wall_seconds = if wall_seconds.is_finite() && wall_seconds >= 0.0 { wall_seconds } else { 0.0 };
        AttemptResult { status: Status::Failed, error: format!("malformed report: {why}"), wall_seconds, ..AttemptResult::cancelled() }
    }

    /// A cancellation (the worker gave its lease back).
    pub fn cancelled() -> AttemptResult {
        AttemptResult {
            status: Status::Cancelled,
            diverged_step: None,
            metrics_json: "{}".into(),
            curve_rows: vec![],
            samples: None,
            wall_seconds: 0.0,
            error: String::new(),
            device: String::new(),
            artifacts: vec![],
        }
    }
}

/// What a JSON value is, for messages.
fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Why a request about a worker or an attempt was refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown worker id `{0}`: call Register first")]
    UnknownWorker(String),
    #[error("unknown attempt {0}")]
    UnknownAttempt(u64),
    /// The holder's id is not named: it is what the holder authenticates with.
    #[error("attempt {attempt} was leased to another worker, not to `{worker}`")]
    NotHolder { attempt: u64, worker: String },
    #[error("attempt {attempt} runs trial {holds}, not {claimed}")]
    WrongTrial { attempt: u64, holds: String, claimed: String },
    #[error("{max} workers have registered in this run, the most one run takes (README: Limits)")]
    TooManyWorkers { max: usize },
}

/// An attempt as the binding checks see it.
struct AttemptRow {
    trial: i64,
    hash: String,
    outcome: Status,
    leased_at: f64,
    /// Its trial already has a result.
    has_result: bool,
}

/// Samples and data points of a result: row-major little-endian f32 of dimension `dim`, as
/// kept in the `samples` table's BLOBs.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    pub dim: u32,
    pub samples: Vec<u8>,
    pub data: Vec<u8>,
}

/// An uploaded file of an attempt (a row of the `artifacts` table once recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub name: String,
    pub media_type: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A lease of a trial: its hash, the attempt id and the attempt's deadline (unix seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub hash: String,
    pub attempt: u64,
    pub deadline: f64,
}

/// What a worker asking for work gets.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseOutcome {
    /// A queued trial, now running.
    Leased(Lease),
    /// Nothing queued, but `running` attempts may still fail and re-queue their trials.
    Wait { running: usize },
    /// Nothing queued and nothing running: the sweep is over.
    Done,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub queued: usize,
    pub running: usize,
    pub done: usize,
    pub failed: usize,
    /// Stopped early on the coordinator's word (`[early_stop]`).
    pub pruned: usize,
}

impl Counts {
    /// Adds `n` trials in status `s`: finished ones by [`Status::is_success`] /
    /// [`Status::is_unusable`], the one classification every summary uses.
    pub fn add(&mut self, s: Status, n: usize) {
        match s {
            Status::Queued => self.queued += n,
            Status::Running => self.running += n,
            s if s.is_success() => self.done += n,
            Status::Pruned => self.pruned += n,
            s if s.is_unusable() => self.failed += n,
            // Attempt outcomes never stand for a trial; count them as failed rather than lose them.
            _ => self.failed += n,
        }
    }

    pub fn finished(&self) -> usize {
        self.done + self.failed + self.pruned
    }
    pub fn total(&self) -> usize {
        self.queued + self.running + self.finished()
    }
}

#[derive(Debug, Clone, Default)]
pub struct SyncSummary {
    pub new: usize,
    pub finished: usize,
    pub requeued: usize,
    pub out_of_sweep: usize,
}

pub struct State {
    conn: Connection,
    max_attempts: u32,
    timeout: f64,
    /// Set when a change may wake a waiting lease: a trial went back to the queue or an attempt
    /// ended (the sweep may be complete). The store clears it after each commit.
    pub(crate) woke: bool,
    /// The sweep's `[early_stop]` rule (None: checkpoints are not reported).
    rule: Option<crate::early_stop::Rule>,
}

/// A worker as it registers (the domain form of `RegisterRequest`).
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub name: String,
    pub cores: u32,
    /// GPUs it runs trials on (0: a CPU worker).
    pub gpus: u32,
    pub version: String,
    /// Where its trials run, for people: `cpu`, or `cuda:0 (NVIDIA H100 80GB HBM3, 79.2 GiB)`.
    pub device: String,
    /// Attempts it may hold at once (0 counts as 1; at most [`crate::limits::MAX_SLOTS`]).
    pub slots: u32,
}

impl State {
    /// Opens (or creates) the state database; one in another layout is refused with a message
    /// naming the file and both versions.
    pub fn open(path: &Path, max_attempts: u32, timeout: f64) -> Result<State, LayoutError> {
        let conn = layout::open_checked(path)?;
        let setup = || -> rusqlite::Result<()> {
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            // Savepoint sub-journals in memory, not temp files.
            conn.pragma_update(None, "temp_store", "MEMORY")?;
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            conn.set_prepared_statement_cache_capacity(64);
            Ok(())
        };
        setup().map_err(|source| LayoutError::Sql { path: path.to_path_buf(), source })?;
        Ok(State { conn, max_attempts, timeout, woke: false, rule: None })
    }

    /// How long a statement waits for another writer's lock before failing with SQLITE_BUSY
    /// (10 s by default; a transient error, see [`crate::store::StoreError::is_transient`]).
    pub fn set_busy_timeout(&self, wait: std::time::Duration) -> rusqlite::Result<()> {
        self.conn.busy_timeout(wait)
    }

    /// Runs `sql` through the prepared-statement cache (the hot paths run the same few
    /// statements thousands of times a second).
    fn exec(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
        conn.prepare_cached(sql)?.execute(p)
    }

    /// Starts a batch transaction (the store groups many requests into one commit).
    pub(crate) fn begin(&self) -> rusqlite::Result<()> {
        // A batch that panicked mid-transaction left it open: its changes were never
        // acknowledged, so drop them.
        if !self.conn.is_autocommit() {
            self.rollback();
        }
        Self::exec(&self.conn, "BEGIN IMMEDIATE", []).map(drop)
    }

    pub(crate) fn commit(&self) -> rusqlite::Result<()> {
        Self::exec(&self.conn, "COMMIT", []).map(drop)
    }

    pub(crate) fn rollback(&self) {
        let _ = self.conn.execute_batch("ROLLBACK");
    }

    /// Runs `f` atomically: nested in the current transaction as a savepoint (all or nothing),
    /// or as its own transaction when none is open.
    pub fn atomic<T>(&mut self, f: impl FnOnce(&mut State) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        Self::exec(&self.conn, "SAVEPOINT op", [])?;
        match f(self) {
            Ok(v) => {
                Self::exec(&self.conn, "RELEASE op", [])?;
                Ok(v)
            }
            Err(e) => {
                let _ = Self::exec(&self.conn, "ROLLBACK TO op", []);
                let _ = Self::exec(&self.conn, "RELEASE op", []);
                Err(e)
            }
        }
    }

    /// Brings the database in line with the sweep: new trials queued, finished ones kept,
    /// leftovers of an interrupted run re-queued, failed ones re-queued on `retry_failed`, and
    /// trials the edited sweep no longer expands to marked out of sweep.
    pub fn sync(&mut self, sweep: &Sweep, retry_failed: bool) -> rusqlite::Result<SyncSummary> {
        let t = now();
        let tx = self.conn.savepoint()?;
        tx.execute(
            "INSERT INTO sweep(id, name, file, source, updated_at) VALUES (1, ?1, ?2, ?3, ?4) ON CONFLICT(id) DO UPDATE SET name = ?1, file = ?2, source = ?3, updated_at = ?4",
            params![sweep.name, sweep.file.display().to_string(), sweep.source, t],
        )?;
        tx.execute("UPDATE trials SET in_sweep = 0", [])?;
        let mut s = SyncSummary::default();
        for tr in &sweep.trials {
            let config = serde_json::Value::Object(tr.flat.clone()).to_string();
            let n = Self::exec(&tx, "UPDATE trials SET in_sweep = 1, idx = ?2, gpu = ?3 WHERE hash = ?1", params![tr.hash, tr.idx as i64, tr.gpu])?;
            if n == 0 {
                Self::exec(
                    &tx,
                    "INSERT INTO trials(hash, idx, config_json, in_sweep, status, attempts, created_at, gpu) VALUES (?1, ?2, ?3, 1, ?4, 0, ?5, ?6)",
                    params![tr.hash, tr.idx as i64, config, Status::Queued.as_str(), t, tr.gpu],
                )?;
                s.new += 1;
            }
        }
        // Attempts left running by a previous coordinator: their workers may still report, so
        // they stay open until their deadline; the trials go back to the queue after it.
        let (queued, running) = (Status::Queued.as_str(), Status::Running.as_str());
        s.requeued = tx.execute("UPDATE attempts SET outcome = ?2, finished_at = ?1 WHERE outcome = ?3 AND deadline < ?1", params![t, Status::Expired.as_str(), running])?;
        tx.execute("UPDATE trials SET status = ?1 WHERE status = ?2 AND id NOT IN (SELECT trial_id FROM attempts WHERE outcome = ?2)", params![queued, running])?;
        if retry_failed {
            s.requeued += tx.execute(
                "UPDATE trials SET status = ?1, attempts = 0, finished_at = NULL WHERE status IN (?2, ?3) AND in_sweep = 1",
                params![queued, Status::Failed.as_str(), Status::Timeout.as_str()],
            )?;
        }
        let mut by_status = tx.prepare("SELECT status, COUNT(*) FROM trials WHERE in_sweep = 1 GROUP BY status")?;
        for row in by_status.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize)))? {
            let (status, n) = row?;
            if parse_status(&status)?.is_finished() {
                s.finished += n;
            }
        }
        drop(by_status);
        s.out_of_sweep = tx.query_row("SELECT COUNT(*) FROM trials WHERE in_sweep = 0", [], |r| r.get::<_, i64>(0))? as usize;
        tx.commit()?;
        Ok(s)
    }

    // The request methods below (lease, heartbeat, expire, report) run several statements
    // without a savepoint of their own: the store runs each request inside `atomic`, which
    // makes it all-or-nothing. Callers outside the store wrap them in `atomic` too.

    /// Registers a worker and returns its id: `<name>#<n>.<random>`, unique in this database
    /// and not guessable (the id is what binds a worker to its attempts; its secret part is 64
    /// bits from the OS's random source). Refused once
    /// [`crate::limits::MAX_REGISTRATIONS_PER_RUN`] workers have registered since the run
    /// started.
    pub fn register(&mut self, w: &Registration) -> rusqlite::Result<Result<String, Refusal>> {
        let max = crate::limits::MAX_REGISTRATIONS_PER_RUN;
        let since: f64 = self.conn.prepare_cached("SELECT COALESCE(MAX(updated_at), 0) FROM sweep")?.query_row([], |r| r.get(0))?;
        let this_run: i64 = self.conn.prepare_cached("SELECT COUNT(*) FROM workers WHERE registered_at >= ?1")?.query_row(params![since], |r| r.get(0))?;
        if this_run as usize >= max {
            return Ok(Err(Refusal::TooManyWorkers { max }));
        }
        let n: i64 = self.conn.prepare_cached("SELECT COALESCE(MAX(seq), 0) + 1 FROM workers")?.query_row([], |r| r.get(0))?;
        let secret = crate::auth::random_hex(8).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let id = format!("{}#{n}.{secret}", w.name);
        let slots = w.slots.clamp(1, crate::limits::MAX_SLOTS);
        Self::exec(
            &self.conn,
            "INSERT INTO workers(seq, id, name, registered_at, cores, gpus, version, device, slots) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![n, id, w.name, now(), w.cores, w.gpus.min(crate::limits::MAX_GPU_DEVICES as u32), w.version, w.device, slots],
        )?;
        Ok(Ok(id))
    }

    /// Whether `worker` was issued by [`State::register`].
    pub fn is_registered(&self, worker: &str) -> rusqlite::Result<bool> {
        self.conn.prepare_cached("SELECT 1 FROM workers WHERE id = ?1")?.exists(params![worker])
    }

    /// The attempt, if `worker` holds it (leased it); else why not.
    fn held(&self, worker: &str, attempt: u64) -> rusqlite::Result<Result<AttemptRow, Refusal>> {
        let row: Option<(i64, String, String, f64, String, bool)> = self
            .conn
            .prepare_cached(
                "SELECT a.trial_id, a.trial_hash, a.outcome, a.leased_at, a.worker, EXISTS (SELECT 1 FROM results r WHERE r.trial_id = a.trial_id) FROM attempts a WHERE a.id = ?1",
            )?
            .query_row(params![attempt as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
            .optional()?;
        Ok(match row {
            None => Err(Refusal::UnknownAttempt(attempt)),
            Some((.., holder, _)) if holder != worker => Err(Refusal::NotHolder { attempt, worker: worker.to_string() }),
            Some((trial, hash, outcome, leased_at, _, has_result)) => Ok(AttemptRow { trial, hash, outcome: parse_status(&outcome)?, leased_at, has_result }),
        })
    }

    /// Whether `worker` holds `attempt` and it runs trial `hash`, refused as [`State::report`]
    /// refuses (nothing changes either way).
    pub fn check_holder(&self, worker: &str, attempt: u64, hash: &str) -> rusqlite::Result<Result<(), Refusal>> {
        Ok(match self.held(worker, attempt)? {
            Ok(a) if a.hash != hash => Err(Refusal::WrongTrial { attempt, holds: a.hash, claimed: hash.to_string() }),
            Ok(_) => Ok(()),
            Err(refused) => Err(refused),
        })
    }

    /// How an attempt of `worker` stands (Running while it may still report), or why the
    /// worker may not ask.
    pub fn attempt_of(&self, worker: &str, attempt: u64) -> rusqlite::Result<Result<Status, Refusal>> {
        Ok(self.held(worker, attempt)?.map(|a| a.outcome))
    }

    /// What a registered worker offers (its cores and GPU count as it registered them; the
    /// count bounded by [`crate::limits::MAX_GPU_DEVICES`] whatever a row of an older database
    /// says).
    pub fn offer(&self, worker: &str) -> rusqlite::Result<crate::resources::Offer> {
        let row: Option<(u32, u32)> =
            self.conn.prepare_cached("SELECT cores, gpus FROM workers WHERE id = ?1")?.query_row(params![worker], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        let (cores, gpus) = row.unwrap_or((0, 0));
        let gpus = gpus.min(crate::limits::MAX_GPU_DEVICES as u32);
        let gpus = (0..gpus).map(|i| crate::resources::Gpu { index: i, name: String::new(), memory_bytes: u64::MAX }).collect();
        Ok(crate::resources::Offer { cores, gpus })
    }

    /// Queued trials of the sweep that need a GPU, when no GPU worker has registered since
    /// the run started (0 otherwise): said at once in the progress line and by `status`,
    /// instead of waiting silently.
    pub fn gpu_shortage(&self) -> rusqlite::Result<usize> {
        let waiting: i64 =
            self.conn.prepare_cached(&format!("SELECT COUNT(*) FROM trials WHERE status = {} AND in_sweep = 1 AND gpu = 1", lit(Status::Queued)))?.query_row([], |r| r.get(0))?;
        if waiting == 0 {
            return Ok(0);
        }
        let since: f64 = self.conn.prepare_cached("SELECT COALESCE(MAX(updated_at), 0) FROM sweep")?.query_row([], |r| r.get(0))?;
        let gpu_workers: i64 = self.conn.prepare_cached("SELECT COUNT(*) FROM workers WHERE gpus > 0 AND registered_at >= ?1")?.query_row(params![since], |r| r.get(0))?;
        Ok(if gpu_workers == 0 { waiting as usize } else { 0 })
    }

    /// Leases the next queued trial of the sweep that `offer` can run to `worker` (trials of
    /// the best [`crate::resources::preference`] first, then sweep order), or None when there
    /// is none. Unchecked: the protocol goes through [`State::next_lease`], which checks the
    /// worker and looks its offer up.
    pub fn lease(&mut self, worker: &str, offer: &crate::resources::Offer, lease_secs: f64) -> rusqlite::Result<Option<Lease>> {
        use crate::resources::{Need, preference};
        let t = now();
        let tx = &self.conn;
        let mut kinds: Vec<(u8, bool)> = [false, true].into_iter().filter_map(|gpu| Some((preference(&Need { gpu, min_gpu_memory_bytes: None }, offer)?, gpu))).collect();
        kinds.sort_by_key(|&(p, _)| std::cmp::Reverse(p));
        let mut next: Option<(i64, String)> = None;
        for (_, gpu) in kinds {
            next = tx.prepare_cached(&NEXT_QUEUED)?.query_row(params![gpu], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
            if next.is_some() {
                break;
            }
        }
        let Some((trial, hash)) = next else { return Ok(None) };
        let deadline = t + lease_secs.min(self.timeout);
        Self::exec(
            tx,
            "INSERT INTO attempts(trial_id, trial_hash, worker, leased_at, deadline, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![trial, hash, worker, t, deadline, Status::Running.as_str()],
        )?;
        let attempt = tx.last_insert_rowid() as u64;
        Self::exec(tx, "UPDATE trials SET status = ?2, attempts = attempts + 1 WHERE id = ?1", params![trial, Status::Running.as_str()])?;
        Ok(Some(Lease { hash, attempt, deadline }))
    }

    /// A lease of a registered `worker` as from [`State::lease`]; with nothing it can run
    /// queued, [`LeaseOutcome::Wait`] while attempts run or trials it cannot run wait for
    /// another worker (a CPU worker while GPU trials are queued: a GPU worker may still
    /// join), and [`LeaseOutcome::Done`] once nothing is queued or running. A worker that
    /// already holds as many running attempts as it registered slots (one by default) gets
    /// [`LeaseOutcome::Wait`]: no worker id can hoard the queue.
    pub fn next_lease(&mut self, worker: &str, lease_secs: f64) -> rusqlite::Result<Result<LeaseOutcome, Refusal>> {
        let Some(slots) = self.conn.prepare_cached("SELECT slots FROM workers WHERE id = ?1")?.query_row(params![worker], |r| r.get::<_, i64>(0)).optional()? else {
            return Ok(Err(Refusal::UnknownWorker(worker.to_string())));
        };
        let held: i64 = self.conn.prepare_cached(&HELD_BY)?.query_row(params![worker], |r| r.get(0))?;
        let full = held >= slots.max(1);
        let offer = self.offer(worker)?;
        let leased = if full { None } else { self.lease(worker, &offer, lease_secs)? };
        Ok(Ok(match leased {
            Some(l) => LeaseOutcome::Leased(l),
            None => match self.counts()? {
                c if c.queued == 0 && c.running == 0 => LeaseOutcome::Done,
                c => LeaseOutcome::Wait { running: c.running.max(1) },
            },
        }))
    }

    /// Extends the deadline of a running attempt of `worker`; returns (cancel, deadline). An
    /// attempt past the trial timeout is closed as `timeout` and told to cancel; one that no
    /// longer runs is told to cancel.
    pub fn heartbeat(&mut self, worker: &str, attempt: u64, lease_secs: f64, cancel_all: bool) -> rusqlite::Result<Result<(bool, f64), Refusal>> {
        let t = now();
        let a = match self.held(worker, attempt)? {
            Ok(a) => a,
            Err(refused) => return Ok(Err(refused)),
        };
        if a.outcome != Status::Running {
            return Ok(Ok((true, t)));
        }
        if t > a.leased_at + self.timeout {
            self.close_attempt(attempt, a.trial, Status::Timeout, "trial timeout exceeded")?;
            return Ok(Ok((true, t)));
        }
        let deadline = (t + lease_secs).min(a.leased_at + self.timeout);
        // A cancel the coordinator asks for (it is stopping) does not count as an attempt.
        let error: Option<&str> = cancel_all.then_some(CANCEL_ASKED);
        Self::exec(&self.conn, "UPDATE attempts SET deadline = ?2, error = COALESCE(?3, error) WHERE id = ?1", params![attempt as i64, deadline, error])?;
        Ok(Ok((cancel_all, deadline)))
    }

    /// Closes an attempt with `outcome` (Failed, Timeout, Expired or Cancelled). Only an
    /// attempt that still holds its trial (it was running, and no other attempt of the trial
    /// runs) changes the trial: re-queued while attempts remain, else finished as failed (or
    /// timed out). The report of an attempt that no longer holds its trial (its lease expired
    /// and the trial went back to the queue, maybe to another worker) closes only that attempt.
    /// A cancel counts as an attempt (lease, cancel, lease again would otherwise hold a trial
    /// for ever) unless the coordinator asked for it while stopping ([`CANCEL_ASKED`]).
    fn close_attempt(&mut self, attempt: u64, trial: i64, outcome: Status, error: &str) -> rusqlite::Result<()> {
        let t = now();
        self.woke = true;
        let tx = &self.conn;
        let (queued, running) = (Status::Queued.as_str(), Status::Running.as_str());
        let (was, asked): (String, Option<String>) =
            tx.prepare_cached("SELECT outcome, error FROM attempts WHERE id = ?1")?.query_row(params![attempt as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Self::exec(tx, "UPDATE attempts SET outcome = ?2, finished_at = ?3, error = ?4 WHERE id = ?1", params![attempt as i64, outcome.as_str(), t, error])?;
        let others: i64 = tx.prepare_cached(&OTHERS_RUNNING)?.query_row(params![trial, attempt as i64], |r| r.get(0))?;
        if was != running || others > 0 {
            return Ok(());
        }
        let attempts: i64 = tx.prepare_cached("SELECT attempts FROM trials WHERE id = ?1")?.query_row(params![trial], |r| r.get(0))?;
        let final_status = if outcome == Status::Timeout { Status::Timeout } else { Status::Failed };
        if outcome == Status::Cancelled && asked.as_deref() == Some(CANCEL_ASKED) {
            Self::exec(tx, "UPDATE trials SET status = ?2, attempts = MAX(attempts - 1, 0) WHERE id = ?1 AND status = ?3", params![trial, queued, running])?;
        } else if attempts < self.max_attempts as i64 {
            Self::exec(tx, "UPDATE trials SET status = ?2 WHERE id = ?1 AND status = ?3", params![trial, queued, running])?;
        } else {
            Self::exec(tx, "UPDATE trials SET status = ?2, finished_at = ?3 WHERE id = ?1 AND status = ?4", params![trial, final_status.as_str(), t, running])?;
        }
        Ok(())
    }

    /// Expires running attempts past their deadline; returns their ids.
    pub fn expire(&mut self) -> rusqlite::Result<Vec<u64>> {
        let t = now();
        let stale: Vec<(u64, i64, f64)> = {
            let mut st = self.conn.prepare_cached(&STALE_RUNNING)?;

            st.query_map(params![t], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?)))?.collect::<rusqlite::Result<_>>()?
        };
        for (id, trial, leased_at) in &stale {
            let timed_out = t > leased_at + self.timeout;
            let (outcome, why) = if timed_out { (Status::Timeout, "trial timeout exceeded") } else { (Status::Expired, "lease expired without a heartbeat") };
            self.close_attempt(*id, *trial, outcome, why)?;
        }
        Ok(stale.into_iter().map(|(id, _, _)| id).collect())
    }

    /// Records the result of an attempt of `worker` exactly once. Refused (nothing changes)
    /// when the attempt is unknown, was leased to another worker, or runs another trial than
    /// `hash`. Returns false (and marks the attempt `ignored`) when the attempt is no longer
    /// running or the trial already has a result. A Done or Diverged result is recorded with
    /// its curve, samples and artifacts (callers check it first: [`AttemptResult::checked`]);
    /// Cancelled and Failed close the attempt (re-queueing the trial as
    /// [`State::close_attempt`] says); any other status counts as Failed.
    pub fn report(&mut self, worker: &str, attempt: u64, hash: &str, r: &AttemptResult) -> rusqlite::Result<Result<bool, Refusal>> {
        let t = now();
        let a = match self.held(worker, attempt)? {
            Ok(a) => a,
            Err(refused) => return Ok(Err(refused)),
        };
        if a.hash != hash {
            return Ok(Err(Refusal::WrongTrial { attempt, holds: a.hash, claimed: hash.to_string() }));
        }
        if a.has_result || !matches!(a.outcome, Status::Running | Status::Expired) {
            Self::exec(
                &self.conn,
                "UPDATE attempts SET outcome = ?3, finished_at = COALESCE(finished_at, ?2) WHERE id = ?1 AND outcome NOT IN (?4, ?5)",
                params![attempt as i64, t, Status::Ignored.as_str(), Status::Done.as_str(), Status::Diverged.as_str()],
            )?;
            return Ok(Ok(false));
        }
        let trial = a.trial;
        if r.status == Status::Pruned && self.stop_decision(hash)?.is_none() {
            // Only the coordinator stops a trial early.
            self.close_attempt(attempt, trial, Status::Failed, "malformed report: pruned, but the coordinator never answered stop for this trial")?;
            return Ok(Ok(true));
        }
        Ok(Ok(match r.status {
            Status::Done | Status::Diverged | Status::Pruned => {
                self.woke = true;
                let status = r.status.as_str();
                let tx = &self.conn;
                Self::exec(tx, "UPDATE attempts SET outcome = ?2, finished_at = ?3, device = ?4 WHERE id = ?1", params![attempt as i64, status, t, r.device])?;
                Self::exec(
                    tx,
                    "INSERT INTO results(trial_id, trial_hash, attempt_id, status, diverged_step, metrics_json, wall_seconds) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![trial, hash, attempt as i64, status, r.diverged_step.map(|s| s as i64), r.metrics_json, r.wall_seconds],
                )?;
                for (i, row) in r.curve_rows.iter().enumerate() {
                    Self::exec(tx, "INSERT INTO curves(trial_id, row, trial_hash, values_json) VALUES (?1, ?2, ?3, ?4)", params![trial, i as i64, hash, row])?;
                }
                if let Some(s) = &r.samples {
                    Self::exec(tx, "INSERT INTO samples(trial_id, trial_hash, dim, samples, data) VALUES (?1, ?2, ?3, ?4, ?5)", params![trial, hash, s.dim, s.samples, s.data])?;
                }
                for a in &r.artifacts {
                    Self::exec(
                        tx,
                        "INSERT OR REPLACE INTO artifacts(trial_id, trial_hash, name, media_type, bytes, sha256) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![trial, hash, a.name, a.media_type, a.bytes as i64, a.sha256],
                    )?;
                }
                Self::exec(tx, "UPDATE trials SET status = ?2, finished_at = ?3 WHERE id = ?1", params![trial, status, t])?;
                true
            }
            Status::Cancelled => {
                self.close_attempt(attempt, trial, Status::Cancelled, "cancelled")?;
                true
            }
            _ => {
                self.close_attempt(attempt, trial, Status::Failed, &r.error)?;
                true
            }
        }))
    }

    /// Sets the sweep's early-stopping rule (checkpoints are then answered by it).
    pub fn set_rule(&mut self, rule: Option<crate::early_stop::Rule>) {
        self.rule = rule;
    }

    /// The sweep's early-stopping rule, if any.
    pub fn rule(&self) -> Option<&crate::early_stop::Rule> {
        self.rule.as_ref()
    }

    /// The checkpoint of `hash`'s stop decision, if it has one.
    pub fn stop_decision(&self, hash: &str) -> rusqlite::Result<Option<u32>> {
        self.conn
            .prepare_cached("SELECT checkpoint FROM decisions WHERE trial_hash = ?1 AND decision = 'stop' ORDER BY id LIMIT 1")?
            .query_row(params![hash], |r| r.get(0))
            .optional()
    }

    /// The history the rule decides from, as committed (decisions in the order they were
    /// made; checkpoint values only for the median rule, which needs them).
    fn history(&self, with_checkpoints: bool) -> rusqlite::Result<crate::early_stop::MemHistory> {
        use crate::early_stop::Decision;
        let mut h = crate::early_stop::MemHistory::default();
        let mut st = self.conn.prepare_cached("SELECT trial_hash, rung, checkpoint, value, cutoff, decision FROM decisions ORDER BY id")?;
        let rows = st.query_map([], |r| {
            Ok(Decision { trial: r.get(0)?, rung: r.get(1)?, checkpoint: r.get(2)?, value: r.get(3)?, cutoff: r.get(4)?, stop: r.get::<_, String>(5)? == "stop" })
        })?;
        for d in rows {
            h.decisions.push(d?);
        }
        if with_checkpoints {
            let mut st = self.conn.prepare_cached("SELECT trial_hash, idx, value FROM checkpoints WHERE value IS NOT NULL ORDER BY trial_id, idx")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?, r.get::<_, f64>(2)?)))?;
            for c in rows {
                h.checkpoints.push(c?);
            }
        }
        Ok(h)
    }

    /// A checkpoint of a running attempt of `worker` (refused as [`State::report`] is): kept
    /// in `checkpoints`, answered by the sweep's rule and, when a decision was due, the
    /// decision kept in `decisions` — in the same transaction. Returns (stop, note). An
    /// attempt that no longer runs, or a sweep without a rule, is answered "continue" and
    /// nothing is recorded; the `last` checkpoint (the end of training) is recorded but not
    /// decided on.
    pub fn checkpoint(
        &mut self,
        worker: &str,
        attempt: u64,
        hash: &str,
        index: u32,
        step: u64,
        last: bool,
        metrics_json: &str,
        metrics: &[(String, f64)],
    ) -> rusqlite::Result<Result<(bool, String), Refusal>> {
        let a = match self.held(worker, attempt)? {
            Ok(a) => a,
            Err(refused) => return Ok(Err(refused)),
        };
        if a.hash != hash {
            return Ok(Err(Refusal::WrongTrial { attempt, holds: a.hash, claimed: hash.to_string() }));
        }
        let Some(rule) = self.rule.clone() else { return Ok(Ok((false, "this sweep does not stop trials early".into()))) };
        if a.outcome != Status::Running || a.has_result {
            return Ok(Ok((false, format!("attempt {attempt} is {}: nothing recorded", a.outcome))));
        }
        let value = metrics.iter().find(|(k, _)| *k == rule.metric).map(|(_, v)| *v).filter(|v| v.is_finite());
        let t = now();
        Self::exec(
            &self.conn,
            "INSERT OR IGNORE INTO checkpoints(trial_id, idx, trial_hash, attempt_id, step, at, value, metrics_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![a.trial, index, hash, attempt as i64, step as i64, t, value, metrics_json],
        )?;
        let Some(value) = value else {
            return Ok(Ok((false, format!("`{}` not reported or not finite at checkpoint {index}: no decision", rule.metric))));
        };
        if last {
            return Ok(Ok((false, "the last checkpoint: no decision".into())));
        }
        let history = self.history(rule.kind == crate::early_stop::Kind::Median)?;
        Ok(Ok(match rule.decide(&history, hash, index, value) {
            crate::early_stop::Verdict::Continue => (false, String::new()),
            crate::early_stop::Verdict::Stopped => (true, "stopped before: stop again".into()),
            crate::early_stop::Verdict::Decided(d) => {
                let decision = if d.stop { "stop" } else { "continue" };
                Self::exec(
                    &self.conn,
                    "INSERT INTO decisions(trial_id, trial_hash, attempt_id, rule, metric, rung, checkpoint, step, value, cutoff, decision, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                    params![a.trial, hash, attempt as i64, rule.kind.as_str(), rule.metric, d.rung, d.checkpoint, step as i64, d.value, d.cutoff, decision, t],
                )?;
                let cutoff = d.cutoff.map_or("none yet".to_string(), |c| format!("{c:.6}"));
                (d.stop, format!("{} rung {}: {} = {:.6} vs cutoff {cutoff}: {decision}", rule.kind.as_str(), d.rung, rule.metric, d.value))
            }
        }))
    }

    /// `worker` gives its attempt back unfinished (refused as [`State::report`] is).
    pub fn cancel(&mut self, worker: &str, attempt: u64) -> rusqlite::Result<Result<(), Refusal>> {
        let hash = match self.held(worker, attempt)? {
            Ok(a) => a.hash,
            Err(refused) => return Ok(Err(refused)),
        };
        Ok(self.report(worker, attempt, &hash, &AttemptResult::cancelled())?.map(drop))
    }

    /// Every recorded artifact as (trial hash, name, the attempt whose result recorded it),
    /// for [`crate::artifacts::Artifacts::recover`].
    pub fn recorded_artifacts(&self) -> rusqlite::Result<Vec<(String, String, u64)>> {
        let mut st = self.conn.prepare("SELECT a.trial_hash, a.name, r.attempt_id FROM artifacts a JOIN results r ON r.trial_id = a.trial_id")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))?;
        rows.collect()
    }

    /// Records a run-level event (`events` table), e.g. `respawn` with what died.
    pub fn note(&mut self, kind: &str, detail: &str) -> rusqlite::Result<()> {
        Self::exec(&self.conn, "INSERT INTO events(at, kind, detail) VALUES (?1, ?2, ?3)", params![now(), kind, detail]).map(drop)
    }

    /// Running attempts as (trial hash, worker id, the worker's registered device), oldest
    /// first (`coordinator status`).
    pub fn running(&self) -> rusqlite::Result<Vec<(String, String, String)>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT a.trial_hash, a.worker, COALESCE(w.device, '') FROM attempts a LEFT JOIN workers w ON w.id = a.worker WHERE a.outcome = {} ORDER BY a.id",
            lit(Status::Running)
        ))?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect()
    }

    /// Trials of the sweep by status class (see [`Counts::add`]).
    pub fn counts(&self) -> rusqlite::Result<Counts> {
        let mut c = Counts::default();
        let mut st = self.conn.prepare_cached("SELECT status, COUNT(*) FROM trials WHERE in_sweep = 1 GROUP BY status")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize)))?;
        for row in rows {
            let (s, n) = row?;
            c.add(parse_status(&s)?, n);
        }
        Ok(c)
    }
}

/// A status text of the database; an unknown one is a conversion error (the database was
/// written by something else).
fn parse_status(text: &str) -> rusqlite::Result<Status> {
    text.parse().map_err(|e: schema::status::UnknownStatus| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}
