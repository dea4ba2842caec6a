//! Durable sweep state in SQLite (`<out>/state.db`, WAL; every state change is atomic, and the
//! [`crate::store`] groups concurrent changes into one commit):
//! trials, attempts, results, curves and samples. The `results` crate reads the same schema.
//!
//! Trial lifecycle (see ARCHITECTURE.md for the diagram):
//! queued → leased → done | diverged | failed | timeout, with an expired, failed or timed-out
//! attempt going back to queued while attempts remain (attempt rows are kept), and a report for
//! an attempt that is no longer running recorded as `ignored` (never a second result).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::sweep::Sweep;

/// Layout version, kept in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 2;

/// Tables keyed by the trial's integer id (rowid, assigned in sweep order) rather than its
/// hash: trials are leased and finished roughly in id order, so results, curves and attempt
/// rows are appended to the same few B-tree pages instead of scattered over random ones — a
/// commit writes a handful of pages. The two indexes are partial: they hold only what the hot
/// queries look for (queued trials by sweep order, running attempts by deadline), so finishing
/// an attempt removes entries and adds none. Readers (the `results` crate) use the named
/// `trial_hash` columns, which every table keeps.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sweep(id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL, file TEXT NOT NULL, source TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS trials(id INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, idx INTEGER NOT NULL, config_json TEXT NOT NULL, in_sweep INTEGER NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, finished_at REAL);
CREATE TABLE IF NOT EXISTS attempts(id INTEGER PRIMARY KEY, trial_id INTEGER NOT NULL, trial_hash TEXT NOT NULL, worker TEXT NOT NULL, leased_at REAL NOT NULL, deadline REAL NOT NULL, finished_at REAL, outcome TEXT NOT NULL, error TEXT);
CREATE TABLE IF NOT EXISTS results(trial_id INTEGER PRIMARY KEY, trial_hash TEXT NOT NULL, attempt_id INTEGER NOT NULL, status TEXT NOT NULL, diverged_step INTEGER, metrics_json TEXT NOT NULL, wall_seconds REAL NOT NULL);
CREATE TABLE IF NOT EXISTS curves(trial_id INTEGER NOT NULL, row INTEGER NOT NULL, trial_hash TEXT NOT NULL, values_json TEXT NOT NULL, PRIMARY KEY (trial_id, row)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS samples(trial_id INTEGER PRIMARY KEY, trial_hash TEXT NOT NULL, dim INTEGER NOT NULL, samples_json TEXT NOT NULL, data_json TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS trials_queued ON trials(in_sweep, idx) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS attempts_running ON attempts(deadline) WHERE outcome = 'running';
";

pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// What a worker reports for an attempt (domain form of the wire message).
#[derive(Debug, Clone)]
pub struct AttemptResult {
    /// ok | diverged | cancelled | failed
    pub status: String,
    pub diverged_step: Option<u64>,
    pub metrics_json: String,
    pub curve_rows: Vec<String>,
    pub dim: u32,
    pub samples_json: String,
    pub data_json: String,
    pub wall_seconds: f64,
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub queued: usize,
    pub running: usize,
    pub done: usize,
    pub failed: usize,
}

impl Counts {
    pub fn finished(&self) -> usize {
        self.done + self.failed
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
}

const FINISHED: &str = "('done','diverged','failed','timeout')";

impl State {
    pub fn open(path: &Path, max_attempts: u32, timeout: f64) -> rusqlite::Result<State> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Savepoint sub-journals in memory, not temp files.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(64);
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let has_tables: bool = conn.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'trials'")?.exists([])?;
        if has_tables && version != SCHEMA_VERSION {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
                Some(format!("{} has state layout {version}, this coordinator writes layout {SCHEMA_VERSION}; use a fresh --out directory (or the matching scoresweep version)", path.display())),
            ));
        }
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(State { conn, max_attempts, timeout, woke: false })
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
            let n = Self::exec(&tx, "UPDATE trials SET in_sweep = 1, idx = ?2 WHERE hash = ?1", params![tr.hash, tr.idx as i64])?;
            if n == 0 {
                Self::exec(&tx, "INSERT INTO trials(hash, idx, config_json, in_sweep, status, attempts, created_at) VALUES (?1, ?2, ?3, 1, 'queued', 0, ?4)", params![tr.hash, tr.idx as i64, config, t])?;
                s.new += 1;
            }
        }
        // Attempts left running by a previous coordinator: their workers may still report, so
        // they stay open until their deadline; the trials go back to the queue after it.
        s.requeued = tx.execute("UPDATE attempts SET outcome = 'expired', finished_at = ?1 WHERE outcome = 'running' AND deadline < ?1", params![t])?;
        tx.execute("UPDATE trials SET status = 'queued' WHERE status = 'leased' AND id NOT IN (SELECT trial_id FROM attempts WHERE outcome = 'running')", [])?;
        if retry_failed {
            s.requeued += tx.execute("UPDATE trials SET status = 'queued', attempts = 0, finished_at = NULL WHERE status IN ('failed','timeout') AND in_sweep = 1", [])?;
        }
        s.finished = tx.query_row(&format!("SELECT COUNT(*) FROM trials WHERE in_sweep = 1 AND status IN {FINISHED}"), [], |r| r.get::<_, i64>(0))? as usize;
        s.out_of_sweep = tx.query_row("SELECT COUNT(*) FROM trials WHERE in_sweep = 0", [], |r| r.get::<_, i64>(0))? as usize;
        tx.commit()?;
        Ok(s)
    }

    // The request methods below (lease, heartbeat, expire, report) run several statements
    // without a savepoint of their own: the store runs each request inside `atomic`, which
    // makes it all-or-nothing. Callers outside the store wrap them in `atomic` too.

    /// Leases the next queued trial of the sweep to `worker`: (hash, attempt id, deadline).
    pub fn lease(&mut self, worker: &str, lease_secs: f64) -> rusqlite::Result<Option<(String, u64, f64)>> {
        let t = now();
        let tx = &self.conn;
        let next: Option<(i64, String)> = tx.prepare_cached("SELECT id, hash FROM trials WHERE status = 'queued' AND in_sweep = 1 ORDER BY idx LIMIT 1")?.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        let Some((trial, hash)) = next else { return Ok(None) };
        let deadline = t + lease_secs.min(self.timeout);
        Self::exec(tx, "INSERT INTO attempts(trial_id, trial_hash, worker, leased_at, deadline, outcome) VALUES (?1, ?2, ?3, ?4, ?5, 'running')", params![trial, hash, worker, t, deadline])?;
        let id = tx.last_insert_rowid() as u64;
        Self::exec(tx, "UPDATE trials SET status = 'leased', attempts = attempts + 1 WHERE id = ?1", params![trial])?;
        Ok(Some((hash, id, deadline)))
    }

    /// A lease as from [`State::lease`], or, with nothing queued, how many trials are running
    /// (0: the sweep is over).
    pub fn lease_or_running(&mut self, worker: &str, lease_secs: f64) -> rusqlite::Result<Result<(String, u64, f64), usize>> {
        Ok(match self.lease(worker, lease_secs)? {
            Some(l) => Ok(l),
            None => Err(self.counts()?.running),
        })
    }

    /// Extends a running attempt's deadline; returns (cancel, deadline). An attempt past the
    /// trial timeout is closed as `timeout` and told to cancel.
    pub fn heartbeat(&mut self, attempt: u64, lease_secs: f64, cancel_all: bool) -> rusqlite::Result<(bool, f64)> {
        let t = now();
        let row: Option<(i64, f64, String)> = self.conn.prepare_cached("SELECT trial_id, leased_at, outcome FROM attempts WHERE id = ?1")?.query_row(params![attempt as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?;
        let Some((trial, leased_at, outcome)) = row else { return Ok((true, t)) };
        if outcome != "running" {
            return Ok((true, t));
        }
        if t > leased_at + self.timeout {
            self.close_attempt(attempt, trial, "timeout", "trial timeout exceeded")?;
            return Ok((true, t));
        }
        let deadline = (t + lease_secs).min(leased_at + self.timeout);
        Self::exec(&self.conn, "UPDATE attempts SET deadline = ?2 WHERE id = ?1", params![attempt as i64, deadline])?;
        Ok((cancel_all, deadline))
    }

    /// Closes a running attempt with `outcome` and re-queues its trial while attempts remain.
    fn close_attempt(&mut self, attempt: u64, trial: i64, outcome: &str, error: &str) -> rusqlite::Result<()> {
        let t = now();
        self.woke = true;
        let tx = &self.conn;
        Self::exec(tx, "UPDATE attempts SET outcome = ?2, finished_at = ?3, error = ?4 WHERE id = ?1", params![attempt as i64, outcome, t, error])?;
        let attempts: i64 = tx.prepare_cached("SELECT attempts FROM trials WHERE id = ?1")?.query_row(params![trial], |r| r.get(0))?;
        let final_status = if outcome == "timeout" { "timeout" } else { "failed" };
        if outcome == "cancelled" {
            Self::exec(tx, "UPDATE trials SET status = 'queued', attempts = MAX(attempts - 1, 0) WHERE id = ?1 AND status = 'leased'", params![trial])?;
        } else if attempts < self.max_attempts as i64 {
            Self::exec(tx, "UPDATE trials SET status = 'queued' WHERE id = ?1 AND status = 'leased'", params![trial])?;
        } else {
            Self::exec(tx, "UPDATE trials SET status = ?2, finished_at = ?3 WHERE id = ?1 AND status = 'leased'", params![trial, final_status, t])?;
        }
        Ok(())
    }

    /// Expires running attempts past their deadline; returns how many.
    pub fn expire(&mut self) -> rusqlite::Result<usize> {
        let t = now();
        let stale: Vec<(u64, i64, f64)> = {
            let mut st = self.conn.prepare_cached("SELECT id, trial_id, leased_at FROM attempts WHERE outcome = 'running' AND deadline < ?1")?;
            let rows = st.query_map(params![t], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?)))?.collect::<rusqlite::Result<_>>()?;
            rows
        };
        for (id, trial, leased_at) in &stale {
            let timed_out = t > leased_at + self.timeout;
            self.close_attempt(*id, *trial, if timed_out { "timeout" } else { "expired" }, if timed_out { "trial timeout exceeded" } else { "lease expired without a heartbeat" })?;
        }
        Ok(stale.len())
    }

    /// Records an attempt's result exactly once; returns false (and marks the attempt
    /// `ignored`) when the attempt is no longer running or the trial already has a result.
    pub fn report(&mut self, attempt: u64, hash: &str, r: &AttemptResult) -> rusqlite::Result<bool> {
        let t = now();
        let row: Option<(i64, String, String, bool)> = self
            .conn
            .prepare_cached("SELECT a.trial_id, a.trial_hash, a.outcome, EXISTS (SELECT 1 FROM results r WHERE r.trial_id = a.trial_id) FROM attempts a WHERE a.id = ?1")?
            .query_row(params![attempt as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        let trial = match &row {
            Some((id, h, o, false)) if h == hash && (o == "running" || o == "expired") => *id,
            _ => -1,
        };
        if trial < 0 {
            if row.is_some() {
                Self::exec(&self.conn, "UPDATE attempts SET outcome = 'ignored', finished_at = COALESCE(finished_at, ?2) WHERE id = ?1 AND outcome != 'done'", params![attempt as i64, t])?;
            }
            return Ok(false);
        }
        match r.status.as_str() {
            "ok" | "diverged" => {
                self.woke = true;
                let outcome = if r.status == "ok" { "done" } else { "diverged" };
                let tx = &self.conn;
                Self::exec(tx, "UPDATE attempts SET outcome = ?2, finished_at = ?3 WHERE id = ?1", params![attempt as i64, outcome, t])?;
                Self::exec(
                    &tx,
                    "INSERT INTO results(trial_id, trial_hash, attempt_id, status, diverged_step, metrics_json, wall_seconds) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![trial, hash, attempt as i64, r.status, r.diverged_step.map(|s| s as i64), r.metrics_json, r.wall_seconds],
                )?;
                for (i, row) in r.curve_rows.iter().enumerate() {
                    Self::exec(tx, "INSERT INTO curves(trial_id, row, trial_hash, values_json) VALUES (?1, ?2, ?3, ?4)", params![trial, i as i64, hash, row])?;
                }
                if r.dim > 0 {
                    Self::exec(tx, "INSERT INTO samples(trial_id, trial_hash, dim, samples_json, data_json) VALUES (?1, ?2, ?3, ?4, ?5)", params![trial, hash, r.dim, r.samples_json, r.data_json])?;
                }
                Self::exec(tx, "UPDATE trials SET status = ?2, finished_at = ?3 WHERE id = ?1", params![trial, outcome, t])?;
                Ok(true)
            }
            "cancelled" => {
                self.close_attempt(attempt, trial, "cancelled", "cancelled")?;
                Ok(true)
            }
            _ => {
                self.close_attempt(attempt, trial, "failed", &r.error)?;
                Ok(true)
            }
        }
    }

    /// The trial of an attempt.
    pub fn attempt_trial(&self, attempt: u64) -> rusqlite::Result<Option<String>> {
        self.conn.prepare_cached("SELECT trial_hash FROM attempts WHERE id = ?1")?.query_row(params![attempt as i64], |r| r.get(0)).optional()
    }

    pub fn counts(&self) -> rusqlite::Result<Counts> {
        let mut c = Counts::default();
        let mut st = self.conn.prepare_cached("SELECT status, COUNT(*) FROM trials WHERE in_sweep = 1 GROUP BY status")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize)))?;
        for row in rows {
            let (s, n) = row?;
            match s.as_str() {
                "queued" => c.queued += n,
                "leased" => c.running += n,
                "done" | "diverged" => c.done += n,
                _ => c.failed += n,
            }
        }
        Ok(c)
    }
}
