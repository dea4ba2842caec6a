//! Durable sweep state in SQLite (`<out>/state.db`, WAL, one transaction per state change):
//! trials, attempts, results, curves and samples. The `results` crate reads the same schema.
//!
//! Trial lifecycle (see ARCHITECTURE.md for the diagram):
//! queued → leased → done | diverged | failed | timeout, with an expired, failed or timed-out
//! attempt going back to queued while attempts remain (attempt rows are kept), and a report for
//! an attempt that is no longer running recorded as `ignored` (never a second result).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::sweep::Sweep;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sweep(id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL, file TEXT NOT NULL, source TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS trials(hash TEXT PRIMARY KEY, idx INTEGER NOT NULL, config_json TEXT NOT NULL, in_sweep INTEGER NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, finished_at REAL);
CREATE TABLE IF NOT EXISTS attempts(id INTEGER PRIMARY KEY, trial_hash TEXT NOT NULL, worker TEXT NOT NULL, leased_at REAL NOT NULL, deadline REAL NOT NULL, finished_at REAL, outcome TEXT NOT NULL, error TEXT);
CREATE TABLE IF NOT EXISTS results(trial_hash TEXT PRIMARY KEY, attempt_id INTEGER NOT NULL, status TEXT NOT NULL, diverged_step INTEGER, metrics_json TEXT NOT NULL, wall_seconds REAL NOT NULL);
CREATE TABLE IF NOT EXISTS curves(trial_hash TEXT NOT NULL, row INTEGER NOT NULL, values_json TEXT NOT NULL, PRIMARY KEY (trial_hash, row));
CREATE INDEX IF NOT EXISTS trials_queue ON trials(status, in_sweep, idx);
CREATE INDEX IF NOT EXISTS attempts_open ON attempts(outcome, deadline);
CREATE INDEX IF NOT EXISTS attempts_trial ON attempts(trial_hash);
CREATE TABLE IF NOT EXISTS samples(trial_hash TEXT PRIMARY KEY, dim INTEGER NOT NULL, samples_json TEXT NOT NULL, data_json TEXT NOT NULL);
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
}

const FINISHED: &str = "('done','diverged','failed','timeout')";

impl State {
    pub fn open(path: &Path, max_attempts: u32, timeout: f64) -> rusqlite::Result<State> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        Ok(State { conn, max_attempts, timeout })
    }

    /// Brings the database in line with the sweep: new trials queued, finished ones kept,
    /// leftovers of an interrupted run re-queued, failed ones re-queued on `retry_failed`, and
    /// trials the edited sweep no longer expands to marked out of sweep.
    pub fn sync(&mut self, sweep: &Sweep, retry_failed: bool) -> rusqlite::Result<SyncSummary> {
        let t = now();
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO sweep(id, name, file, source, updated_at) VALUES (1, ?1, ?2, ?3, ?4) ON CONFLICT(id) DO UPDATE SET name = ?1, file = ?2, source = ?3, updated_at = ?4",
            params![sweep.name, sweep.file.display().to_string(), sweep.source, t],
        )?;
        tx.execute("UPDATE trials SET in_sweep = 0", [])?;
        let mut s = SyncSummary::default();
        for tr in &sweep.trials {
            let config = serde_json::Value::Object(tr.flat.clone()).to_string();
            let n = tx.execute("UPDATE trials SET in_sweep = 1, idx = ?2 WHERE hash = ?1", params![tr.hash, tr.idx as i64])?;
            if n == 0 {
                tx.execute("INSERT INTO trials(hash, idx, config_json, in_sweep, status, attempts, created_at) VALUES (?1, ?2, ?3, 1, 'queued', 0, ?4)", params![tr.hash, tr.idx as i64, config, t])?;
                s.new += 1;
            }
        }
        // Attempts left running by a previous coordinator: their workers may still report, so
        // they stay open until their deadline; the trials go back to the queue after it.
        s.requeued = tx.execute("UPDATE attempts SET outcome = 'expired', finished_at = ?1 WHERE outcome = 'running' AND deadline < ?1", params![t])?;
        tx.execute("UPDATE trials SET status = 'queued' WHERE status = 'leased' AND hash NOT IN (SELECT trial_hash FROM attempts WHERE outcome = 'running')", [])?;
        if retry_failed {
            s.requeued += tx.execute("UPDATE trials SET status = 'queued', attempts = 0, finished_at = NULL WHERE status IN ('failed','timeout') AND in_sweep = 1", [])?;
        }
        s.finished = tx.query_row(&format!("SELECT COUNT(*) FROM trials WHERE in_sweep = 1 AND status IN {FINISHED}"), [], |r| r.get::<_, i64>(0))? as usize;
        s.out_of_sweep = tx.query_row("SELECT COUNT(*) FROM trials WHERE in_sweep = 0", [], |r| r.get::<_, i64>(0))? as usize;
        tx.commit()?;
        Ok(s)
    }

    /// Leases the next queued trial of the sweep to `worker`: (hash, attempt id, deadline).
    pub fn lease(&mut self, worker: &str, lease_secs: f64) -> rusqlite::Result<Option<(String, u64, f64)>> {
        let t = now();
        let tx = self.conn.transaction()?;
        let hash: Option<String> = tx.query_row("SELECT hash FROM trials WHERE status = 'queued' AND in_sweep = 1 ORDER BY idx LIMIT 1", [], |r| r.get(0)).optional()?;
        let Some(hash) = hash else { return Ok(None) };
        let deadline = t + lease_secs.min(self.timeout);
        tx.execute("INSERT INTO attempts(trial_hash, worker, leased_at, deadline, outcome) VALUES (?1, ?2, ?3, ?4, 'running')", params![hash, worker, t, deadline])?;
        let id = tx.last_insert_rowid() as u64;
        tx.execute("UPDATE trials SET status = 'leased', attempts = attempts + 1 WHERE hash = ?1", params![hash])?;
        tx.commit()?;
        Ok(Some((hash, id, deadline)))
    }

    /// Extends a running attempt's deadline; returns (cancel, deadline). An attempt past the
    /// trial timeout is closed as `timeout` and told to cancel.
    pub fn heartbeat(&mut self, attempt: u64, lease_secs: f64, cancel_all: bool) -> rusqlite::Result<(bool, f64)> {
        let t = now();
        let row: Option<(String, f64, String)> = self.conn.query_row("SELECT trial_hash, leased_at, outcome FROM attempts WHERE id = ?1", params![attempt as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?;
        let Some((hash, leased_at, outcome)) = row else { return Ok((true, t)) };
        if outcome != "running" {
            return Ok((true, t));
        }
        if t > leased_at + self.timeout {
            self.close_attempt(attempt, &hash, "timeout", "trial timeout exceeded")?;
            return Ok((true, t));
        }
        let deadline = (t + lease_secs).min(leased_at + self.timeout);
        self.conn.execute("UPDATE attempts SET deadline = ?2 WHERE id = ?1", params![attempt as i64, deadline])?;
        Ok((cancel_all, deadline))
    }

    /// Closes a running attempt with `outcome` and re-queues its trial while attempts remain.
    fn close_attempt(&mut self, attempt: u64, hash: &str, outcome: &str, error: &str) -> rusqlite::Result<()> {
        let t = now();
        let tx = self.conn.transaction()?;
        tx.execute("UPDATE attempts SET outcome = ?2, finished_at = ?3, error = ?4 WHERE id = ?1", params![attempt as i64, outcome, t, error])?;
        let attempts: i64 = tx.query_row("SELECT attempts FROM trials WHERE hash = ?1", params![hash], |r| r.get(0))?;
        let final_status = if outcome == "timeout" { "timeout" } else { "failed" };
        if outcome == "cancelled" {
            tx.execute("UPDATE trials SET status = 'queued', attempts = MAX(attempts - 1, 0) WHERE hash = ?1 AND status = 'leased'", params![hash])?;
        } else if attempts < self.max_attempts as i64 {
            tx.execute("UPDATE trials SET status = 'queued' WHERE hash = ?1 AND status = 'leased'", params![hash])?;
        } else {
            tx.execute("UPDATE trials SET status = ?2, finished_at = ?3 WHERE hash = ?1 AND status = 'leased'", params![hash, final_status, t])?;
        }
        tx.commit()
    }

    /// Expires running attempts past their deadline; returns how many.
    pub fn expire(&mut self) -> rusqlite::Result<usize> {
        let t = now();
        let stale: Vec<(u64, String, f64)> = {
            let mut st = self.conn.prepare("SELECT id, trial_hash, leased_at FROM attempts WHERE outcome = 'running' AND deadline < ?1")?;
            st.query_map(params![t], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?)))?.collect::<rusqlite::Result<_>>()?
        };
        for (id, hash, leased_at) in &stale {
            let timed_out = t > leased_at + self.timeout;
            self.close_attempt(*id, hash, if timed_out { "timeout" } else { "expired" }, if timed_out { "trial timeout exceeded" } else { "lease expired without a heartbeat" })?;
        }
        Ok(stale.len())
    }

    /// Records an attempt's result exactly once; returns false (and marks the attempt
    /// `ignored`) when the attempt is no longer running or the trial already has a result.
    pub fn report(&mut self, attempt: u64, hash: &str, r: &AttemptResult) -> rusqlite::Result<bool> {
        let t = now();
        let row: Option<(String, String)> = self.conn.query_row("SELECT trial_hash, outcome FROM attempts WHERE id = ?1", params![attempt as i64], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        let has_result: bool = self.conn.query_row("SELECT COUNT(*) FROM results WHERE trial_hash = ?1", params![hash], |r| r.get::<_, i64>(0))? > 0;
        let running = matches!(&row, Some((h, o)) if h == hash && (o == "running" || o == "expired"));
        if !running || has_result {
            if row.is_some() {
                self.conn.execute("UPDATE attempts SET outcome = 'ignored', finished_at = COALESCE(finished_at, ?2) WHERE id = ?1 AND outcome != 'done'", params![attempt as i64, t])?;
            }
            return Ok(false);
        }
        match r.status.as_str() {
            "ok" | "diverged" => {
                let tx = self.conn.transaction()?;
                tx.execute("UPDATE attempts SET outcome = ?2, finished_at = ?3 WHERE id = ?1", params![attempt as i64, if r.status == "ok" { "done" } else { "diverged" }, t])?;
                tx.execute(
                    "INSERT INTO results(trial_hash, attempt_id, status, diverged_step, metrics_json, wall_seconds) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![hash, attempt as i64, r.status, r.diverged_step.map(|s| s as i64), r.metrics_json, r.wall_seconds],
                )?;
                for (i, row) in r.curve_rows.iter().enumerate() {
                    tx.execute("INSERT INTO curves(trial_hash, row, values_json) VALUES (?1, ?2, ?3)", params![hash, i as i64, row])?;
                }
                if r.dim > 0 {
                    tx.execute("INSERT INTO samples(trial_hash, dim, samples_json, data_json) VALUES (?1, ?2, ?3, ?4)", params![hash, r.dim, r.samples_json, r.data_json])?;
                }
                tx.execute("UPDATE trials SET status = ?2, finished_at = ?3 WHERE hash = ?1", params![hash, if r.status == "ok" { "done" } else { "diverged" }, t])?;
                tx.commit()?;
                Ok(true)
            }
            "cancelled" => {
                self.close_attempt(attempt, hash, "cancelled", "cancelled")?;
                Ok(true)
            }
            _ => {
                self.close_attempt(attempt, hash, "failed", &r.error)?;
                Ok(true)
            }
        }
    }

    /// The trial of an attempt.
    pub fn attempt_trial(&self, attempt: u64) -> rusqlite::Result<Option<String>> {
        self.conn.query_row("SELECT trial_hash FROM attempts WHERE id = ?1", params![attempt as i64], |r| r.get(0)).optional()
    }

    pub fn counts(&self) -> rusqlite::Result<Counts> {
        let mut c = Counts::default();
        let mut st = self.conn.prepare("SELECT status, COUNT(*) FROM trials WHERE in_sweep = 1 GROUP BY status")?;
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
