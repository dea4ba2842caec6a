//! The one definition of the state database's layout (`<out>/state.db`): the tables, their
//! indexes and the layout version kept in `PRAGMA user_version`. The coordinator creates and
//! writes the database through [`open_checked`]; this crate reads it after [`check_version`];
//! test fixtures build their databases with [`open_checked`] too, so there is no second copy.
//!
//! Tables are keyed by the trial's integer id (rowid, assigned in sweep order) rather than its
//! hash: trials are leased and finished roughly in id order, so results, curves and attempt
//! rows are appended to the same few B-tree pages instead of scattered over random ones — a
//! commit writes a handful of pages. The indexes are partial: they hold only what the hot
//! queries look for (queued trials by sweep order, running attempts by deadline and worker), so finishing
//! an attempt removes entries and adds none. Readers use the named `trial_hash` columns, which
//! every table keeps.
//!
//! Status columns (`trials.status`, `attempts.outcome`, `results.status`) hold
//! [`schema::Status::as_str`] texts. Samples are BLOBs of row-major little-endian f32 with their
//! dimension beside them ([`f32_le`], [`points`]). Artifacts are files under
//! `<out>/artifacts/<trial_hash>/<name>`, one `artifacts` row each.
//!
//! Two tables ([`SCHEMA_SQL`]) and four columns ([`ADDED_COLUMNS`]) were added to layout 3
//! without changing its number, because they only add: a
//! database written before them gets them (empty) when the coordinator opens it, and readers
//! treat a missing one as empty. `workers`: the worker ids the coordinator issued (attempts
//! are bound to them). `events`: run-level notes such as a respawned local worker (`kind` =
//! `respawn`), listed in the report. Two more for early stopping (`[early_stop]`):
//! `checkpoints`, each checkpoint a worker reported as it happened (the rule's metric as
//! `value`, NULL when not finite, and every metric as JSON), and `decisions`, every rung
//! decision (trial, rung, checkpoint, value, the cutoff it was compared with — NULL when there
//! was none yet —, `continue` or `stop`, time), written in the transaction that answers the
//! worker.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

/// Layout version, kept in `PRAGMA user_version`. 3: status `running` (was `leased`), samples
/// as f32 BLOBs, the `artifacts` table.
pub const LAYOUT_VERSION: i64 = 3;

/// Creates every table and index (idempotent).
pub const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS sweep(id INTEGER PRIMARY KEY CHECK (id = 1), name TEXT NOT NULL, file TEXT NOT NULL, source TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS trials(id INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, idx INTEGER NOT NULL, config_json TEXT NOT NULL, in_sweep INTEGER NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, finished_at REAL);
CREATE TABLE IF NOT EXISTS attempts(id INTEGER PRIMARY KEY, trial_id INTEGER NOT NULL, trial_hash TEXT NOT NULL, worker TEXT NOT NULL, leased_at REAL NOT NULL, deadline REAL NOT NULL, finished_at REAL, outcome TEXT NOT NULL, error TEXT);
CREATE TABLE IF NOT EXISTS results(trial_id INTEGER PRIMARY KEY, trial_hash TEXT NOT NULL, attempt_id INTEGER NOT NULL, status TEXT NOT NULL, diverged_step INTEGER, metrics_json TEXT NOT NULL, wall_seconds REAL NOT NULL);
CREATE TABLE IF NOT EXISTS curves(trial_id INTEGER NOT NULL, row INTEGER NOT NULL, trial_hash TEXT NOT NULL, values_json TEXT NOT NULL, PRIMARY KEY (trial_id, row)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS samples(trial_id INTEGER PRIMARY KEY, trial_hash TEXT NOT NULL, dim INTEGER NOT NULL, samples BLOB NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS artifacts(trial_id INTEGER NOT NULL, trial_hash TEXT NOT NULL, name TEXT NOT NULL, media_type TEXT NOT NULL, bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (trial_id, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS workers(seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL, registered_at REAL NOT NULL, cores INTEGER NOT NULL, gpus INTEGER NOT NULL, version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints(trial_id INTEGER NOT NULL, idx INTEGER NOT NULL, trial_hash TEXT NOT NULL, attempt_id INTEGER NOT NULL, step INTEGER NOT NULL, at REAL NOT NULL, value REAL, metrics_json TEXT NOT NULL, PRIMARY KEY (trial_id, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS decisions(id INTEGER PRIMARY KEY, trial_id INTEGER NOT NULL, trial_hash TEXT NOT NULL, attempt_id INTEGER NOT NULL, rule TEXT NOT NULL, metric TEXT NOT NULL, rung INTEGER NOT NULL, checkpoint INTEGER NOT NULL, step INTEGER NOT NULL, value REAL NOT NULL, cutoff REAL, decision TEXT NOT NULL, at REAL NOT NULL);
";

/// Columns added to layout 3 after its tables were first written, as (table, column, SQL
/// type and default): a database without one gets it when the coordinator opens it. Readers
/// take a missing column as its default. `trials.gpu`: the trial needs a GPU worker (the
/// sweep's or its variant's `gpu = true`). `attempts.device`: the device that ran the attempt
/// (`cpu`, `cuda:0`), as its worker reported it. `workers.device`: the device a worker
/// registered (its trials run there), with the GPU's name and memory when it has one.
/// `workers.slots`: how many attempts the worker may hold at once (as it registered).
pub const ADDED_COLUMNS: [(&str, &str, &str); 4] = [
    ("trials", "gpu", "INTEGER NOT NULL DEFAULT 0"),
    ("attempts", "device", "TEXT"),
    ("workers", "device", "TEXT NOT NULL DEFAULT ''"),
    ("workers", "slots", "INTEGER NOT NULL DEFAULT 1"),
];

/// The indexes (created after [`ADDED_COLUMNS`]): queued trials by GPU need and sweep order,
/// running attempts by deadline and by worker (how many a worker holds).
pub const INDEX_SQL: &str = "
DROP INDEX IF EXISTS trials_queued;
CREATE INDEX IF NOT EXISTS trials_queued_by_gpu ON trials(in_sweep, gpu, idx) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS attempts_running ON attempts(deadline) WHERE outcome = 'running';
CREATE INDEX IF NOT EXISTS attempts_running_by_worker ON attempts(worker) WHERE outcome = 'running';
";

/// Whether `table` has `column`.
pub fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare(&format!("SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"))?;
    stmt.exists([column])
}

/// Why a state database cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("could not open state database {}: {source}", path.display())]
    Sql {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "{} has state layout {found}, this scoresweep uses layout {LAYOUT_VERSION}; use a fresh --out directory (or the matching scoresweep version)",
        path.display()
    )]
    Mismatch { path: PathBuf, found: i64 },
}

/// Refuses a database that has tables in another layout (an empty one passes).
pub fn check_version(conn: &Connection, path: &Path) -> Result<(), LayoutError> {
    let sql = |source| LayoutError::Sql { path: path.to_path_buf(), source };
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sql)?;
    let has_tables = conn.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'trials'").and_then(|mut s| s.exists([])).map_err(sql)?;
    if has_tables && found != LAYOUT_VERSION {
        return Err(LayoutError::Mismatch { path: path.to_path_buf(), found });
    }
    Ok(())
}

/// Opens (creating if missing) a state database for writing, in WAL mode: refused when it
/// holds another layout, else its tables are created and its version set.
pub fn open_checked(path: &Path) -> Result<Connection, LayoutError> {
    let sql = |source| LayoutError::Sql { path: path.to_path_buf(), source };
    let conn = Connection::open(path).map_err(sql)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
    check_version(&conn, path)?;
    conn.execute_batch(SCHEMA_SQL).map_err(sql)?;
    for (table, column, decl) in ADDED_COLUMNS {
        if !has_column(&conn, table, column).map_err(sql)? {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}")).map_err(sql)?;
        }
    }
    conn.execute_batch(INDEX_SQL).map_err(sql)?;
    conn.pragma_update(None, "user_version", LAYOUT_VERSION).map_err(sql)?;
    Ok(conn)
}

/// Opens the database read-only (readers: the report, the dashboard, exports), without
/// checking its version (see [`check_version`]).
pub fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX)
}

/// Row-major values as the little-endian f32 bytes of a samples BLOB.
pub fn f32_le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The points of a samples BLOB of dimension `dim`, or None when the bytes do not make whole
/// points.
pub fn points(dim: usize, blob: &[u8]) -> Option<Vec<Vec<f64>>> {
    if blob.is_empty() {
        return Some(Vec::new());
    }
    if dim == 0 || !blob.len().is_multiple_of(4 * dim) {
        return None;
    }
    Some(blob.chunks_exact(4 * dim).map(|p| p.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use schema::Status;

    #[test]
    fn partial_indexes_name_the_status_texts() {
        assert!(INDEX_SQL.contains(&format!("WHERE status = '{}'", Status::Queued)));
        assert!(INDEX_SQL.contains(&format!("WHERE outcome = '{}'", Status::Running)));
    }

    #[test]
    fn a_database_written_before_the_added_columns_gets_them() {
        let dir = std::env::temp_dir().join(format!("scoresweep-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("old.db");
        let _ = std::fs::remove_file(&path);
        {
            // Layout 3 as first written: the tables without the added columns, the old index.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_SQL).unwrap();
            conn.execute_batch("CREATE INDEX trials_queued ON trials(in_sweep, idx) WHERE status = 'queued'").unwrap();
            conn.execute("INSERT INTO trials(hash, idx, config_json, in_sweep, status, created_at) VALUES ('h', 0, '{}', 1, 'queued', 0)", []).unwrap();
            conn.pragma_update(None, "user_version", LAYOUT_VERSION).unwrap();
            for (table, column, _) in ADDED_COLUMNS {
                assert!(!has_column(&conn, table, column).unwrap(), "{table}.{column} before");
            }
        }
        let conn = open_checked(&path).unwrap();
        for (table, column, _) in ADDED_COLUMNS {
            assert!(has_column(&conn, table, column).unwrap(), "{table}.{column} after");
        }
        let gpu: i64 = conn.query_row("SELECT gpu FROM trials WHERE hash = 'h'", [], |r| r.get(0)).unwrap();
        assert_eq!(gpu, 0);
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'trials' AND sql IS NOT NULL ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(indexes, ["trials_queued_by_gpu"]);
        drop(conn);
        // Opening again changes nothing.
        drop(open_checked(&path).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn blobs_round_trip() {
        let blob = f32_le(&[1.0, 2.0, -3.5, 4.0]);
        assert_eq!(points(2, &blob).unwrap(), vec![vec![1.0, 2.0], vec![-3.5, 4.0]]);
        assert!(points(3, &blob).is_none());
        assert!(points(0, &[]).unwrap().is_empty());
    }
}
