//! End-to-end tests of `results::write_all` on small state databases built by hand through the
//! shared layout (`results::layout`, the one the coordinator writes): tables, claims (pass,
//! fail and "not enough data"), report (with artifacts), plots, and the refusal of a database
//! in another layout.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use results::layout::{self, LAYOUT_VERSION};
use results::{ResultsError, Summary, write_all};
use rusqlite::{Connection, params};
use schema::Status;
use serde_json::{Value, json};

/// A state database under construction (created by `layout::open_checked`, WAL mode, like
/// the coordinator's).
struct Db {
    path: PathBuf,
    conn: Connection,
    attempt: i64,
    /// Trial id by hash.
    ids: HashMap<String, i64>,
}

impl Db {
    fn new(dir: &Path) -> Db {
        let path = dir.join("state.db");
        let conn = layout::open_checked(&path).unwrap();
        conn.execute("INSERT INTO sweep(id, name, file, source, updated_at) VALUES (1, 'sigma', 'sweeps/sigma.toml', '[base]', 1700000000.0)", []).unwrap();
        Db { path, conn, attempt: 0, ids: HashMap::new() }
    }

    fn id(&self, hash: &str) -> i64 {
        self.ids[hash]
    }

    /// A trial with one attempt; `error` is recorded on that attempt.
    fn trial(&mut self, hash: &str, idx: i64, config: Value, in_sweep: bool, status: Status, error: Option<&str>) {
        self.attempt += 1;
        self.conn
            .execute(
                "INSERT INTO trials(hash, idx, config_json, in_sweep, status, attempts, created_at, finished_at) VALUES (?1, ?2, ?3, ?4, ?5, 1, 0.0, 1.0)",
                params![hash, idx, config.to_string(), in_sweep as i64, status.as_str()],
            )
            .unwrap();
        let id = self.conn.last_insert_rowid();
        self.ids.insert(hash.to_string(), id);
        let outcome = if error.is_some() { Status::Failed } else { status };
        self.conn
            .execute(
                "INSERT INTO attempts(id, trial_id, trial_hash, worker, leased_at, deadline, finished_at, outcome, error, device) VALUES (?1, ?2, ?3, 'w0#1.00ff', 0.0, 60.0, 1.0, ?4, ?5, 'cpu')",
                params![self.attempt, id, hash, outcome.as_str(), error],
            )
            .unwrap();
    }

    fn result(&self, hash: &str, metrics: Value) {
        self.conn
            .execute(
                "INSERT INTO results(trial_id, trial_hash, attempt_id, status, diverged_step, metrics_json, wall_seconds) VALUES (?1, ?2, ?3, ?4, NULL, ?5, 1.5)",
                params![self.id(hash), hash, self.attempt, Status::Done.as_str(), metrics.to_string()],
            )
            .unwrap();
    }

    fn curve(&self, hash: &str, rows: &[Value]) {
        for (i, r) in rows.iter().enumerate() {
            self.conn.execute("INSERT INTO curves(trial_id, row, trial_hash, values_json) VALUES (?1, ?2, ?3, ?4)", params![self.id(hash), i as i64, hash, r.to_string()]).unwrap();
        }
    }

    fn samples(&self, hash: &str, samples: &[f32], data: &[f32]) {
        self.conn
            .execute(
                "INSERT INTO samples(trial_id, trial_hash, dim, samples, data) VALUES (?1, ?2, 2, ?3, ?4)",
                params![self.id(hash), hash, layout::f32_le(samples), layout::f32_le(data)],
            )
            .unwrap();
    }

    /// An artifact row; a `.png` is `image/png`, as the worker uploads sample grids.
    fn artifact(&self, hash: &str, name: &str, bytes: i64, sha256: &str) {
        let media_type = if name.ends_with(".png") { "image/png" } else { "application/octet-stream" };
        self.conn
            .execute(
                "INSERT INTO artifacts(trial_id, trial_hash, name, media_type, bytes, sha256) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![self.id(hash), hash, name, media_type, bytes, sha256],
            )
            .unwrap();
    }
}

fn config(preset: &str, objective: &str, sigma_max: f64, sampler: &str, seed: i64) -> Value {
    json!({
        "data.preset": preset,
        "objective.kind": objective,
        "objective.noise.sigma_max": sigma_max,
        "sampler.kind": sampler,
        "sampler.eps": 2e-5,
        "model.kind": "mlp",
        "seed": seed,
    })
}

/// Checkpoint rows whose ESM−ISM gap matches C = 2 within a standard error or so, and whose
/// DSM−ESM_σ gap is 10 standard errors off C_σ (so that claim fails).
fn good_curve() -> Vec<Value> {
    [2.01, 1.99, 2.03]
        .iter()
        .enumerate()
        .map(|(i, gap)| {
            json!({
                "step": i * 100, "train_loss": 1.0 / (i as f64 + 1.0),
                "l_esm": 0.5, "l_ism": 0.5 - gap, "gap": gap, "gap_se": 0.02, "c_true": 2.0, "c_se": 0.01,
                "dsm_gap": 1.2, "dsm_gap_se": 0.01, "c_dsm": 1.0, "c_dsm_se": 0.0, "dsm_sigma": 0.1,
            })
        })
        .collect()
}

/// Final metrics of an ncsn2d trial (true mode weights 0.8 and 0.2).
fn metrics(l_ism: f64, mode_w_0: f64, fd: f64) -> Value {
    json!({
        "l_esm": l_ism + 2.0, "l_esm_se": 0.01, "l_ism": l_ism, "l_ism_se": 0.01, "gap": 2.0, "gap_se": 0.02, "c_true": 2.0, "c_se": 0.01,
        "fd": fd, "mode_w_0": mode_w_0, "true_w_0": 0.8, "mode_w_1": 1.0 - mode_w_0, "true_w_1": 0.2, "mode_weight_err": (mode_w_0 - 0.8f64).abs(),
        "train_seconds": 1.0,
    })
}

/// `metrics` of an annealed trial whose ladder reached `sigma_max` on data of diameter 9.
fn annealed_metrics(l_ism: f64, mode_w_0: f64, fd: f64, sigma_max: f64) -> Value {
    let mut m = metrics(l_ism, mode_w_0, fd);
    m["sigma_max_used"] = json!(sigma_max);
    m["data_diameter"] = json!(9.0);
    m
}

/// `config` with NCSNv2's automatic step size.
fn auto_eps(mut c: Value) -> Value {
    c["sampler.eps"] = json!("auto");
    c
}

/// Four 2D points, row-major.
fn points(center: f32) -> Vec<f32> {
    vec![center, 0.0, center + 0.1, 0.2, -center, 0.1, -center - 0.1, -0.2]
}

/// The main fixture: ncsn2d with three good trials (two annealed, one with σ₁ below the data's
/// diameter, one plain Langevin), a failed trial and an out-of-sweep trial; gmm1d with one
/// trial whose gap is 100 SE off C.
fn main_db(dir: &Path) -> Db {
    let mut db = Db::new(dir);
    db.trial("aaaa1111", 0, auto_eps(config("ncsn2d", "dsm", 1.0, "annealed_langevin", 0)), true, Status::Done, None);
    db.result("aaaa1111", annealed_metrics(-1.8, 0.51, 0.4, 1.0)); // σ₁ < diameter: not judged
    db.curve("aaaa1111", &good_curve());
    db.samples("aaaa1111", &points(1.0), &points(1.05));
    db.artifact("aaaa1111", "model.safetensors", 1234, &"ab".repeat(32));
    db.artifact("aaaa1111", "grid.png", 99, &"cd".repeat(32));

    db.trial("bbbb2222", 1, auto_eps(config("ncsn2d", "dsm", 10.0, "annealed_langevin", 0)), true, Status::Done, None);
    db.result("bbbb2222", annealed_metrics(-1.95, 0.81, 0.1, 10.0)); // best θ; annealed w_0 off by 0.01
    db.curve("bbbb2222", &good_curve());

    db.trial("cccc3333", 2, config("ncsn2d", "ism", 10.0, "langevin", 0), true, Status::Done, None);
    db.result("cccc3333", metrics(-1.9, 0.5, 0.9)); // plain Langevin misses w_0 by 0.3
    db.curve("cccc3333", &good_curve()[..2]);
    db.samples("cccc3333", &points(1.5), &points(1.05));

    db.trial("dddd4444", 3, config("ncsn2d", "ssm", 5.0, "langevin", 0), true, Status::Failed, Some("boom: out of memory"));

    let mut old = config("ncsn2d", "esm", 20.0, "langevin", 7);
    old["model.width"] = json!(64);
    db.trial("eeee5555", 4, old, false, Status::Done, None);
    db.result("eeee5555", metrics(-1.0, 0.9, 2.0));

    db.trial("ffff6666", 5, config("gmm1d", "ism", 1.0, "annealed_langevin", 0), true, Status::Done, None);
    db.result("ffff6666", json!({"l_ism": -1.0, "c_true": 2.0, "gap": 3.0, "gap_se": 0.01, "c_se": 0.0}));
    db.curve("ffff6666", &[json!({"step": 0, "gap": 3.0, "gap_se": 0.01, "c_true": 2.0, "c_se": 0.0}), json!({"step": 100, "gap": 3.0, "gap_se": 0.01, "c_true": 2.0})]);
    db
}

fn read_parquet(path: &Path) -> DataFrame {
    ParquetReader::new(File::open(path).unwrap()).finish().unwrap()
}

fn read_csv(path: &Path) -> DataFrame {
    CsvReadOptions::default().with_has_header(true).try_into_reader_with_file_path(Some(path.into())).unwrap().finish().unwrap()
}

fn names(df: &DataFrame) -> Vec<String> {
    df.get_column_names().iter().map(|n| n.to_string()).collect()
}

fn strings(df: &DataFrame, column: &str) -> Vec<String> {
    df.column(column).unwrap().str().unwrap().iter().map(|s| s.unwrap_or("").to_string()).collect()
}

/// Runs `write_all` on the main fixture (keeping the writer connection open, as the
/// coordinator does) and returns the output directory and summary.
fn run_main() -> (tempfile::TempDir, PathBuf, Summary) {
    let dir = tempfile::tempdir().unwrap();
    let db = main_db(dir.path());
    let out = dir.path().join("out");
    let summary = write_all(&db.path, &out).unwrap();
    // To look at the files: RESULTS_TEST_OUT=/tmp/x cargo test --release -p results
    if let Some(keep) = std::env::var_os("RESULTS_TEST_OUT") {
        write_all(&db.path, Path::new(&keep)).unwrap();
    }
    (dir, out, summary)
}

#[test]
fn trial_table_has_one_row_per_trial_and_union_of_columns() {
    let (_dir, out, summary) = run_main();
    assert_eq!((summary.trials, summary.done, summary.failed), (5, 4, 1));
    let csv = read_csv(&out.join("trials.csv"));
    let parquet = read_parquet(&out.join("trials.parquet"));
    assert_eq!(csv.height(), 6);
    assert_eq!(parquet.height(), 6);
    assert_eq!(names(&csv), names(&parquet));
    let cols = names(&parquet);
    let want_order = [
        "hash",
        "idx",
        "in_sweep",
        "data.preset",
        "model.kind",
        "model.width",
        "objective.kind",
        "objective.noise.sigma_max",
        "sampler.eps",
        "sampler.kind",
        "seed",
        "status",
        "attempts",
        "diverged_step",
    ];
    assert_eq!(&cols[..want_order.len()], &want_order, "leading columns");
    for metric in ["l_esm", "l_ism", "gap", "c_true", "fd", "mode_w_0", "true_w_0", "wall_seconds"] {
        assert!(cols.iter().any(|c| c == metric), "missing metric column {metric} in {cols:?}");
    }
    assert_eq!(&cols[cols.len() - 3..], ["wall_seconds", "worker", "device"]);
    // Which worker (without its id's secret part) on which device produced each result; null
    // without a result.
    for (col, want) in [("worker", "w0#1"), ("device", "cpu")] {
        let c = parquet.column(col).unwrap();
        assert_eq!((c.null_count(), c.str().unwrap().iter().flatten().all(|v| v == want)), (1, true), "{col}: the failed trial has no result");
    }
    // model.width exists only in the out-of-sweep trial: null elsewhere.
    assert_eq!(parquet.column("model.width").unwrap().null_count(), 5);
    assert_eq!(parquet.column("objective.noise.sigma_max").unwrap().dtype(), &DataType::Float64);
    assert_eq!(parquet.column("seed").unwrap().dtype(), &DataType::Int64);
    assert_eq!(parquet.column("in_sweep").unwrap().dtype(), &DataType::Boolean);
    assert_eq!(strings(&parquet, "hash")[0], "aaaa1111", "ordered by idx");
    // The failed trial has no result and the gmm1d trial no l_esm: null in both.
    assert_eq!(parquet.column("l_esm").unwrap().null_count(), 2);
}

#[test]
fn curves_table_has_one_row_per_checkpoint() {
    let (_dir, out, _) = run_main();
    let curves = read_parquet(&out.join("curves.parquet"));
    assert_eq!(curves.height(), 3 + 3 + 2 + 2);
    let cols = names(&curves);
    for c in ["hash", "data.preset", "objective.kind", "sampler.kind", "row", "step", "train_loss", "gap", "c_true"] {
        assert!(cols.iter().any(|x| x == c), "missing {c} in {cols:?}");
    }
    // Constant keys (model.kind, sampler.eps) are not useful for grouping.
    assert!(!cols.iter().any(|x| x == "model.kind"), "{cols:?}");
    assert_eq!(curves.column("step").unwrap().dtype(), &DataType::Int64);
}

#[test]
fn claims_pass_fail_and_lack_data_per_scope() {
    let (_dir, out, summary) = run_main();
    let claims = read_csv(&out.join("claims.csv"));
    assert_eq!(names(&claims), ["claim", "scope", "verdict", "statistic", "tolerance", "value", "expected_value", "se", "z", "n_rows", "n_trials", "expected", "details"]);
    let got: Vec<(String, String, String)> =
        strings(&claims, "claim").into_iter().zip(strings(&claims, "scope")).zip(strings(&claims, "verdict")).map(|((c, s), v)| (c, s, v)).collect();
    let want = [
        ("esm_ism_offset", "data.preset=gmm1d", "fail"),
        ("esm_ism_offset", "data.preset=ncsn2d", "pass"),
        ("dsm_esm_sigma_offset", "data.preset=ncsn2d, dsm_sigma=0.1", "fail"),
        ("ism_at_best", "data.preset=gmm1d", "not enough data"),
        ("ism_at_best", "data.preset=ncsn2d", "pass"),
        ("annealed_vs_plain_langevin", "data.preset=gmm1d, side=annealed", "not enough data"),
        ("annealed_vs_plain_langevin", "data.preset=gmm1d, side=plain", "not enough data"),
        ("annealed_vs_plain_langevin", "data.preset=ncsn2d, side=annealed", "pass"),
        ("annealed_vs_plain_langevin", "data.preset=ncsn2d, side=plain", "pass"),
    ];
    let want: Vec<(String, String, String)> = want.iter().map(|(c, s, v)| (c.to_string(), s.to_string(), v.to_string())).collect();
    assert_eq!(got, want);
    assert_eq!(summary.claims, want, "summary mirrors claims.csv");

    let num = |col: &str, i: usize| claims.column(col).unwrap().cast(&DataType::Float64).unwrap().f64().unwrap().get(i);
    // gmm1d: (3 − 2)/0.01 = 100 standard errors.
    assert!((num("statistic", 0).unwrap() - 100.0).abs() < 1e-9);
    assert_eq!((num("value", 0), num("expected_value", 0), num("se", 0), num("z", 0)), (Some(3.0), Some(2.0), Some(0.01), Some(100.0 + 0.0)));
    assert!((num("z", 0).unwrap() - 100.0).abs() < 1e-9);
    // ncsn2d: worst row is gap 2.03 → 0.03/sqrt(0.02² + 0.01²) ≈ 1.342, over 3 + 3 + 2 rows of 3 trials.
    assert!((num("statistic", 1).unwrap() - 0.03 / 0.02f64.hypot(0.01)).abs() < 1e-9);
    assert_eq!((num("n_rows", 1), num("n_trials", 1)), (Some(8.0), Some(3.0)));
    assert_eq!(num("statistic", 3), None, "no statistic without data");
    // ism_at_best: bbbb2222 has the lowest L_ISM (−1.95) and the lowest L_ESM (0.05): z = 0.
    assert_eq!((num("value", 4), num("expected_value", 4), num("statistic", 4)), (Some(-1.95), Some(-2.0), Some(0.0)));
    assert!((num("z", 4).unwrap() - 0.05 / 0.01f64.hypot(0.01)).abs() < 1e-9, "(L_ISM + C)/SE");
    // Annealed side: only bbbb2222 qualifies (σ₁ = 10 ≥ 9, ε auto): 0.81 vs 0.8.
    assert!((num("statistic", 7).unwrap() - 0.01).abs() < 1e-9);
    assert_eq!((num("value", 7), num("n_trials", 7)), (Some(0.81), Some(1.0)));
    // Plain side: 0.5 vs 0.8.
    assert!((num("statistic", 8).unwrap() - 0.3).abs() < 1e-9);
}

/// Each failure names its side or condition: an annealed side that misses the weight and a
/// plain side that finds it, an L_ISM below −C, and a claim with no trials of its kind absent.
#[test]
fn failures_say_which_side_or_condition_failed() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::new(dir.path());
    db.trial("ann1", 0, auto_eps(config("ncsn2d", "dsm", 20.0, "annealed_langevin", 0)), true, Status::Done, None);
    db.result("ann1", annealed_metrics(-1.9, 0.6, 0.5, 20.0));
    db.trial("pl1", 1, config("ncsn2d", "ism", 1.0, "langevin", 0), true, Status::Done, None);
    db.result("pl1", metrics(-2.5, 0.79, 0.5)); // L_ISM 50 SE below −C
    db.trial("pl2", 2, config("ncsn2d", "esm", 1.0, "langevin", 0), true, Status::Done, None);
    db.result("pl2", metrics(-1.9, 0.81, 0.5));
    let summary = write_all(&db.path, &dir.path().join("out")).unwrap();
    let verdict = |claim: &str, scope: &str| summary.claims.iter().find(|(c, s, _)| c == claim && s == scope).map(|(_, _, v)| v.clone());
    assert_eq!(verdict("annealed_vs_plain_langevin", "data.preset=ncsn2d, side=annealed").as_deref(), Some("fail"));
    assert_eq!(verdict("annealed_vs_plain_langevin", "data.preset=ncsn2d, side=plain").as_deref(), Some("fail"));
    assert_eq!(verdict("ism_at_best", "data.preset=ncsn2d").as_deref(), Some("fail"));
    assert!(summary.claims.iter().all(|(c, _, _)| c != "dsm_esm_sigma_offset"), "no DSM rows, no DSM claim: {:?}", summary.claims);
    let claims = read_csv(&dir.path().join("out/claims.csv"));
    let details = strings(&claims, "details");
    assert!(details.iter().any(|d| d.contains("below −C")), "{details:?}");
}

#[test]
fn one_trial_is_not_enough_data_for_any_claim() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::new(dir.path());
    db.trial("solo", 0, config("ncsn2d", "ism", 1.0, "annealed_langevin", 0), true, Status::Done, None);
    let mut m = metrics(-1.9, 0.5, 0.1);
    m["dsm_gap"] = json!(1.0);
    db.result("solo", m);
    db.curve("solo", &good_curve()[..1]);
    drop(db.conn); // also checks that a closed WAL database opens read-only
    let summary = write_all(&db.path, &dir.path().join("out")).unwrap();
    let verdicts: Vec<(&str, &str)> = summary.claims.iter().map(|(c, _, v)| (c.as_str(), v.as_str())).collect();
    assert_eq!(
        verdicts,
        [
            ("esm_ism_offset", "not enough data"),
            ("dsm_esm_sigma_offset", "not enough data"),
            ("ism_at_best", "not enough data"),
            ("annealed_vs_plain_langevin", "not enough data"),
            ("annealed_vs_plain_langevin", "not enough data"),
        ]
    );
    assert_eq!((summary.trials, summary.done, summary.failed), (1, 1, 0));
}

#[test]
fn empty_database_writes_empty_tables() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::new(dir.path());
    let out = dir.path().join("out");
    let summary = write_all(&db.path, &out).unwrap();
    assert_eq!(summary.trials, 0);
    assert!(summary.claims.iter().all(|(_, scope, v)| scope.starts_with("all") && v == "not enough data"), "{:?}", summary.claims);
    assert_eq!(read_parquet(&out.join("trials.parquet")).height(), 0);
    assert_eq!(read_parquet(&out.join("curves.parquet")).height(), 0);
    assert!(out.join("report.md").exists());
}

#[test]
fn report_lists_claims_out_of_sweep_and_failed_trials() {
    let (_dir, out, _) = run_main();
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("last update: 2023-11-14 22:13:20 UTC"), "dates read as dates:\n{report}");
    let section = |title: &str| -> String {
        let start = report.find(title).unwrap_or_else(|| panic!("no section {title}:\n{report}"));
        let rest = &report[start + title.len()..];
        rest[..rest.find("\n## ").unwrap_or(rest.len())].to_string()
    };
    for (title, must_contain, must_not) in [
        ("## Trials no longer in the sweep", vec!["eeee5555", "model.width=64"], vec!["aaaa1111", "dddd4444"]),
        ("## Failed trials", vec!["dddd4444", "boom: out of memory"], vec!["aaaa1111"]),
        ("## Claims", vec!["esm_ism_offset", "**FAIL**", "**pass**", "not enough data", "spread", "side=plain", "D/σ² − E‖∇log p_σ‖²"], vec!["C_σ"]),
        // Standard errors, per-component weights and reference values stay in trials.csv.
        (
            "## Key tables",
            vec!["objective.noise.sigma_max", "objective.kind", "sampler.kind", "| l_esm | l_ism | gap | c_true | fd | mode_weight_err |"],
            vec!["l_esm_se", "true_w_0", "mode_w_0", "data_diameter", "sigma_max_used"],
        ),
        ("## Plots", vec!["plots/gap_vs_checkpoint_data.preset-ncsn2d.svg", "plots/fd_vs_sigma_max_data.preset-ncsn2d.svg"], vec![]),
    ] {
        let text = section(title);
        for s in must_contain {
            assert!(text.contains(s), "{title} lacks {s:?}:\n{text}");
        }
        for s in must_not {
            assert!(!text.contains(s), "{title} should not mention {s:?}:\n{text}");
        }
    }
}

#[test]
fn plots_are_written_as_svg() {
    let (_dir, out, _) = run_main();
    for file in [
        "gap_vs_checkpoint_data.preset-ncsn2d.svg",
        "gap_vs_checkpoint_data.preset-gmm1d.svg",
        "samples_aaaa1111.svg",
        "samples_cccc3333.svg",
        "fd_vs_sigma_max_data.preset-ncsn2d.svg",
    ] {
        let path = out.join("plots").join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(text.contains("<svg") && text.contains("</svg>"), "{file} is not SVG");
        assert!(text.contains("<circle") || text.contains("<polyline"), "{file} draws nothing");
    }
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");

    let missing = dir.path().join("missing.db");
    let err = write_all(&missing, &out).unwrap_err();
    assert!(matches!(err, ResultsError::OpenDb { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.db"), "{err}");

    let db = Db::new(dir.path());
    db.conn.execute("INSERT INTO trials(hash, idx, config_json, in_sweep, status, attempts, created_at) VALUES ('bad', 0, '{not json', 1, 'queued', 0, 0.0)", []).unwrap();
    let err = write_all(&db.path, &out).unwrap_err();
    assert!(matches!(err, ResultsError::Json { column: "config_json", .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("state.db") && msg.contains("bad"), "{msg}");

    let plain = dir.path().join("not-a-db.db");
    std::fs::write(&plain, "hello").unwrap();
    let err = write_all(&plain, &out).unwrap_err();
    assert!(err.to_string().contains("not-a-db.db"), "{err}");
}

#[test]
fn report_lists_artifacts_per_trial() {
    let (_dir, out, _) = run_main();
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let start = report.find("## Artifacts").expect("an artifacts section");
    let rest = &report[start..];
    let section = &rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)];
    for s in ["aaaa1111", "model.safetensors", "1234", "artifacts/aaaa1111/model.safetensors"] {
        assert!(section.contains(s), "artifacts section lacks {s:?}:\n{section}");
    }
    assert!(!section.contains("bbbb2222"), "{section}");
    // An image artifact is shown, not only linked.
    assert!(report.contains("![grid.png of aaaa1111](artifacts/aaaa1111/grid.png)"), "{report}");
}

/// The section of `report` under the heading `title`, up to the next one.
fn report_section(report: &str, title: &str) -> String {
    let start = report.find(title).unwrap_or_else(|| panic!("no section {title}:\n{report}"));
    let rest = &report[start + title.len()..];
    rest[..rest.find("\n## ").unwrap_or(rest.len())].to_string()
}

/// An image sweep over the model: a U-Net with a sample grid, an MLP whose sampler is `none`,
/// a failed U-Net. Its key tables show the image metrics the rows carry (not the toy ones, not
/// the reference values), and each image trial has its grid or the reason it has none.
#[test]
fn image_trials_get_their_metrics_in_the_key_tables_and_their_sample_grids() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::new(dir.path());
    let cfg = |model: &str, sampler: &str| json!({"data.preset": "mnist", "model.kind": model, "objective.kind": "edm", "sampler.kind": sampler, "seed": 0});
    let image_metrics = |eval_loss: f64, fid: f64, sampled: bool| {
        let mut m = json!({
            "steps_done": 100.0, "eval_loss": eval_loss, "train_seconds": 2.0, "eval_seconds": 0.5, "parameters": 1000.0,
            "n_held_out": 200.0, "fid_real_floor": 1.5, "real_pixel_mean": -0.7, "classifier_accuracy": 0.98,
        });
        if sampled {
            for (k, v) in [
                ("fid", fid),
                ("class_match", 0.9),
                ("which_digit_accuracy", 0.8),
                ("nfe", 35.0),
                ("pixel_mean", -0.6),
                ("sample_seconds", 1.0),
                ("images_per_second_sampling", 50.0),
            ] {
                m[k] = json!(v);
            }
        }
        m
    };
    db.trial("img1aaaaaa", 0, cfg("unet", "heun"), true, Status::Done, None);
    db.result("img1aaaaaa", image_metrics(0.25, 40.0, true));
    db.artifact("img1aaaaaa", "samples.png", 4321, &"ef".repeat(32));
    db.artifact("img1aaaaaa", "model.safetensors", 99, &"ab".repeat(32));
    db.trial("img2bbbbbb", 1, cfg("mlp", "none"), true, Status::Done, None);
    db.result("img2bbbbbb", image_metrics(0.5, 0.0, false));
    db.trial("img3cccccc", 2, cfg("unet", "pc"), true, Status::Failed, Some("out of memory"));
    let out = dir.path().join("out");
    write_all(&db.path, &out).unwrap();
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();

    let tables = report_section(&report, "## Key tables");
    let header = "| scope | model.kind | n | eval_loss | fid | class_match | which_digit_accuracy | nfe | parameters | pixel_mean | train_seconds |";
    assert!(tables.contains(header), "image metrics, lead ones first, train_seconds last:\n{tables}");
    assert!(tables.contains("| data.preset=mnist | unet | 1 | 0.25 | 40 | 0.9 | 0.8 | 35 |"), "{tables}");
    assert!(tables.contains("| data.preset=mnist | mlp | 1 | 0.5 | — | — | — | — |"), "an unsampled trial has no sample metrics:\n{tables}");
    for absent in ["l_esm", "gap", "steps_done", "fid_real_floor", "real_pixel_mean", "classifier_accuracy", "n_held_out", "sample_seconds", "per_second"] {
        assert!(!tables.contains(absent), "{absent} in the key tables:\n{tables}");
    }

    let grids = report_section(&report, "## Sample grids");
    assert!(grids.contains("**`img1aaaaaa`** sampler.kind=heun, model.kind=unet\n\n![samples.png of img1aaaaaa](artifacts/img1aaaaaa/samples.png)"), "{grids}");
    assert!(grids.contains("**`img2bbbbbb`** sampler.kind=none, model.kind=mlp\n\nNo sample grid: `sampler.kind = \"none\"` draws no samples."), "{grids}");
    assert!(grids.contains("**`img3cccccc`** sampler.kind=pc, model.kind=unet\n\nNo sample grid: the trial is failed."), "{grids}");
    assert!(!grids.contains("model.safetensors"), "{grids}");
}

/// Trials on a colour set without the digit judge (`shapes3`: no classifier, class_match,
/// FID or "which digit"; `digit_metrics_skipped` = 1): the report renders, their key tables
/// show what they carry (not the flag), their grids show, and no digit-target row is made
/// for them.
#[test]
fn image_trials_without_the_digit_judge_report_what_they_carry() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::new(dir.path());
    let cfg = |model: &str| json!({"data.preset": "shapes3", "model.kind": model, "objective.kind": "edm", "sampler.kind": "heun", "seed": 0});
    for (i, (id, model, loss)) in [("shp1aaaaaa", "unet", 0.3), ("shp2bbbbbb", "mlp", 0.4)].into_iter().enumerate() {
        db.trial(id, i as i64, cfg(model), true, Status::Done, None);
        db.result(id, json!({"steps_done": 50.0, "eval_loss": loss, "nfe": 11.0, "memorisation": 0.0, "digit_metrics_skipped": 1.0, "train_seconds": 1.0}));
        db.artifact(id, "samples.png", 1234, &"cd".repeat(32));
    }
    let out = dir.path().join("out");
    write_all(&db.path, &out).unwrap();
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let tables = report_section(&report, "## Key tables");
    assert!(tables.contains("| scope | model.kind | n | eval_loss | memorisation | nfe | train_seconds |"), "{tables}");
    assert!(tables.contains("| data.preset=shapes3 | unet | 1 | 0.3 |"), "{tables}");
    for absent in ["digit_metrics_skipped", "fid", "class_match", "which_digit"] {
        assert!(!tables.contains(absent), "{absent} in the key tables:\n{tables}");
    }
    let grids = report_section(&report, "## Sample grids");
    assert!(grids.contains("![samples.png of shp1aaaaaa](artifacts/shp1aaaaaa/samples.png)"), "{grids}");
    assert!(!report.contains("## Digit targets"), "no digit targets without the judge:\n{report}");
}

/// A toy sweep without pictures has no sample-grid section.
#[test]
fn toy_sweeps_have_no_sample_grid_section() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::new(dir.path());
    db.trial("toy1aaaaaa", 0, config("ncsn2d", "dsm", 1.0, "langevin", 0), true, Status::Done, None);
    db.result("toy1aaaaaa", metrics(-1.9, 0.8, 0.1));
    let out = dir.path().join("out");
    write_all(&db.path, &out).unwrap();
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(!report.contains("## Sample grids"), "{report}");
}

#[test]
fn a_diverged_trial_is_finished_but_not_done() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::new(dir.path());
    db.trial("good", 0, config("ncsn2d", "ism", 1.0, "langevin", 0), true, Status::Done, None);
    db.result("good", metrics(-1.9, 0.5, 0.1));
    db.trial("wild", 1, config("ncsn2d", "ism", 2.0, "langevin", 0), true, Status::Diverged, None);
    db.conn
        .execute(
            "INSERT INTO results(trial_id, trial_hash, attempt_id, status, diverged_step, metrics_json, wall_seconds) VALUES (?1, 'wild', ?2, ?3, 17, '{}', 1.0)",
            params![db.id("wild"), db.attempt, Status::Diverged.as_str()],
        )
        .unwrap();
    let out = dir.path().join("out");
    let summary = write_all(&db.path, &out).unwrap();
    assert_eq!((summary.trials, summary.done, summary.failed), (2, 1, 1), "diverged counts as unusable");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let failed = &report[report.find("## Failed trials").unwrap()..];
    assert!(failed.contains("`wild`") && failed.contains("| 17 |"), "{failed}");
}

#[test]
fn a_database_in_another_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE trials(id INTEGER PRIMARY KEY, hash TEXT);").unwrap();
        conn.pragma_update(None, "user_version", LAYOUT_VERSION - 1).unwrap();
    }
    let err = write_all(&path, &dir.path().join("out")).unwrap_err();
    assert!(matches!(err, ResultsError::Layout(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("layout") && msg.contains("state.db") && msg.contains("--out"), "{msg}");
    let err = layout::open_checked(&path).unwrap_err().to_string();
    assert!(err.contains("layout"), "{err}");
}

/// What workers choose cannot break the tables or the report (issue 20, items 4 and 12):
/// metric names and curve keys equal to fixed columns or to their prefixed forms still give
/// unique column names; a device with a line break cannot forge a section, names and errors
/// cannot inject HTML or links, and no CSV cell starts a spreadsheet formula.
#[test]
fn worker_chosen_names_keep_columns_unique_and_the_report_inert() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::new(dir.path());
    db.trial("aaaa1111", 0, config("ncsn2d", "ism", 1.0, "langevin", 0), true, Status::Done, None);
    db.result("aaaa1111", json!({"l_ism": -1.0, "wall_seconds": 11.0, "status": 12.0, "metric.status": 13.0, "metric.status#2": 14.0, "worker": 15.0, "hash": 16.0}));
    db.curve("aaaa1111", &[json!({"step": 0, "hash": 1.0, "curve.hash": 2.0, "row": 3.0, "curve.row": 4.0}), json!({"step": 1, "hash": 5.0})]);
    let forged_device = "cpu\n\n## Claims\n\n| forged | **pass** |";
    let formula_worker = "=HYPERLINK(\"http://evil.example\")#1.00ff";
    db.conn.execute("UPDATE attempts SET device = ?1, worker = ?2", params![forged_device, formula_worker]).unwrap();
    db.conn
        .execute(
            "INSERT INTO workers(seq, id, name, registered_at, cores, gpus, version, device) VALUES (1, ?1, '<b>w</b>', 0.0, 1, 0, 'v', ?2)",
            params!["<b>w</b>#1.00ff", forged_device],
        )
        .unwrap();
    db.artifact("aaaa1111", "a](javascript:alert(1)).png", 3, &"ab".repeat(32));
    db.trial("bbbb2222", 1, config("ncsn2d", "ism", 2.0, "langevin", 0), true, Status::Failed, Some("<img src=x onerror=alert(1)> [click](javascript:alert(1))\n## Claims"));
    let out = dir.path().join("out");
    write_all(&db.path, &out).expect("the report is written whatever the names");

    // Unique column names by construction; each metric under a name of its own.
    for (file, df) in [("trials.parquet", read_parquet(&out.join("trials.parquet"))), ("curves.parquet", read_parquet(&out.join("curves.parquet")))] {
        let cols = names(&df);
        let distinct: std::collections::BTreeSet<&String> = cols.iter().collect();
        assert_eq!(distinct.len(), cols.len(), "{file}: {cols:?}");
    }
    let trials = read_parquet(&out.join("trials.parquet"));
    let value = |col: &str| trials.column(col).unwrap_or_else(|e| panic!("{col}: {e} in {:?}", names(&trials))).f64().unwrap().get(0);
    for (col, want) in [
        ("metric.wall_seconds", 11.0),
        ("metric.status#3", 12.0),
        ("metric.status", 13.0),
        ("metric.status#2", 14.0),
        ("metric.worker", 15.0),
        ("metric.hash", 16.0),
        ("wall_seconds", 1.5),
    ] {
        assert_eq!(value(col), Some(want), "{col}");
    }
    assert_eq!(strings(&trials, "status")[0], "done");
    let curves = read_parquet(&out.join("curves.parquet"));
    let curve = |col: &str| curves.column(col).unwrap_or_else(|e| panic!("{col}: {e} in {:?}", names(&curves))).f64().unwrap().get(0);
    for (col, want) in [("curve.hash", 2.0), ("curve.hash#2", 1.0), ("curve.row", 4.0), ("curve.row#2", 3.0)] {
        assert_eq!(curve(col), Some(want), "{col}");
    }

    // trials.csv: the worker cell is text, not a formula; the device stays on its line.
    let csv = std::fs::read_to_string(out.join("trials.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "a header and two rows:\n{csv}");
    assert!(!csv.contains(",=") && !csv.contains(",\"=") && csv.contains("'=HYPERLINK"), "{csv}");

    // report.md: one Claims section, no HTML, no link but to the artifact's own path.
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert_eq!(report.matches("\n## Claims").count(), 1, "{report}");
    assert!(!report.contains("<img") && !report.contains("<b>") && !report.contains("[click](") && !report.contains("**pass** |\n"), "{report}");
    assert!(report.match_indices("](javascript").all(|(i, _)| report[..i].ends_with('\\')), "{report}");
    assert!(report.contains("(artifacts/aaaa1111/a%5D%28javascript%3Aalert%281%29%29.png)") && report.contains("&lt;b&gt;w&lt;/b&gt;"), "{report}");
}
