//! Adaptive sweeps with the real binaries: a sweep with `[early_stop]` ends with some trials
//! `pruned` (curve and last checkpoint kept) and the best one run to the end, every decision
//! agreeing with the ASHA cutoff recomputed from the decisions before it; and a coordinator
//! killed with SIGKILL in the middle of an ASHA sweep, then run again, keeps every decision it
//! had made and records every trial once.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

mod common;
use common::{bin, count, tmp, try_count, wait_for};

/// Four learning rates of a clean-score MLP on 1D data, the best second (so it is not the first
/// trial at any rung); one worker, so the order of arrival at the rungs is the sweep's.
const PRUNE: &str = r#"
name = "prune"
timeout = 300
[base]
seed = 0
[base.data]
preset = "seed1d"
[base.model]
kind = "mlp"
hidden = 32
[base.objective]
kind = "ism"
[base.train]
steps = 600
batch = 128
eval_every = 100
[base.eval]
n = 5000
[base.sampler]
kind = "none"
[search]
[search.space]
"train.lr" = { choice = [3e-5, 3e-3, 1e-5, 1e-4] }
[early_stop]
kind = "asha"
metric = "l_esm"
mode = "min"
grace = 1
eta = 3
"#;

fn db(out: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(out.join("state.db")).unwrap()
}

/// (id, trial, rung, checkpoint, value, cutoff, decision) of every decision, in order.
type Row = (i64, String, i64, i64, f64, Option<f64>, String);

fn decisions(out: &Path) -> Vec<Row> {
    let c = db(out);
    let mut st = c.prepare("SELECT id, trial_hash, rung, checkpoint, value, cutoff, decision FROM decisions ORDER BY id").unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))).unwrap().map(Result::unwrap).collect()
}

/// Each decision's cutoff is the 1/η quantile (linear interpolation) of the values decided
/// before it at its rung, and it stops exactly when its value is above that (mode min).
fn check_asha(rows: &[Row], eta: f64) {
    for (i, (_, trial, rung, checkpoint, value, cutoff, decision)) in rows.iter().enumerate() {
        let mut before: Vec<f64> = rows[..i].iter().filter(|r| r.2 == *rung).map(|r| r.4).collect();
        before.sort_by(f64::total_cmp);
        let want = (!before.is_empty()).then(|| {
            let pos = (before.len() - 1) as f64 / eta;
            let lo = pos.floor() as usize;
            before[lo] + (pos - lo as f64) * (before[pos.ceil() as usize] - before[lo])
        });
        match (cutoff, want) {
            (None, None) => {}
            (Some(c), Some(w)) => assert!((c - w).abs() <= 1e-12 * w.abs().max(1.0), "decision {i}: cutoff {c} vs {w}"),
            other => panic!("decision {i}: cutoff {other:?}"),
        }
        let stop = want.is_some_and(|w| *value > w);
        assert_eq!(decision, if stop { "stop" } else { "continue" }, "decision {i} of {trial} at rung {rung}");
        assert_eq!(*checkpoint, 3i64.pow(*rung as u32), "rung {rung} is at checkpoint 3^{rung}");
    }
}

#[test]
fn an_asha_sweep_prunes_and_the_best_trial_survives() {
    let dir = tmp("prune");
    let sweep = dir.join("prune.toml");
    std::fs::write(&sweep, PRUNE).unwrap();
    let out = dir.join("out");
    let o = Command::new(bin("coordinator")).arg("run").arg(&sweep).arg("--out").arg(&out).args(["--workers", "1", "--quiet"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pruned = count(&out, "SELECT COUNT(*) FROM trials WHERE status = 'pruned'");
    let done = count(&out, "SELECT COUNT(*) FROM trials WHERE status = 'done'");
    assert!(pruned >= 1 && done >= 1 && pruned + done == 4, "{pruned} pruned, {done} done");
    // The best trial, by its last recorded l_esm over every trial, ran to the end.
    let c = db(&out);
    let best: (String, String, f64) = c
        .query_row(
            "SELECT t.status, json_extract(t.config_json, '$.\"train.lr\"'), json_extract(r.metrics_json, '$.l_esm') AS v FROM trials t JOIN results r ON r.trial_id = t.id ORDER BY v LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get::<_, f64>(1)?.to_string(), r.get(2)?)),
        )
        .unwrap();
    assert_eq!((best.0.as_str(), best.1.as_str()), ("done", "0.003"), "{best:?}");
    // Each pruned trial stopped at its stop decision: its curve ends there, its result carries
    // the last checkpoint's metrics, and it trained fewer steps.
    let mut st = c
        .prepare(
            "SELECT d.step, (SELECT MAX(json_extract(values_json, '$.step')) FROM curves cu WHERE cu.trial_hash = d.trial_hash), json_extract(r.metrics_json, '$.steps_done'), json_extract(r.metrics_json, '$.l_esm') \
             FROM decisions d JOIN results r ON r.trial_hash = d.trial_hash WHERE d.decision = 'stop'",
        )
        .unwrap();
    let stops: Vec<(i64, f64, f64, Option<f64>)> = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap().map(Result::unwrap).collect();
    assert_eq!(stops.len() as i64, pruned);
    for (step, last, steps_done, l_esm) in &stops {
        assert_eq!((*last, *steps_done), (*step as f64, *step as f64), "stopped at step {step}");
        assert!(*steps_done < 600.0 && l_esm.is_some());
    }
    let rows = decisions(&out);
    check_asha(&rows, 3.0);
    // decisions.csv holds every decision; the report counts them per rung.
    let csv = std::fs::read_to_string(out.join("decisions.csv")).unwrap();
    assert_eq!(csv.lines().count(), rows.len() + 1);
    assert!(csv.lines().next().unwrap().starts_with("trial_hash,attempt_id,rule,metric,rung,checkpoint,step,value,cutoff,decision,at"));
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Early stopping") && report.contains("| rung | at checkpoint(s) | reached | stopped | continued |"), "{report}");
    assert!(std::fs::read_to_string(out.join("trials.csv")).unwrap().contains(",pruned,"));
}

/// Nine configurations drawn by Sobol, ASHA with η = 3 on two workers.
const RESTART: &str = r#"
name = "restart"
timeout = 300
[base]
seed = 0
[base.data]
preset = "ncsn2d"
[base.model]
kind = "mlp"
hidden = 32
[base.objective]
kind = "dsm"
noise = { ladder = "geometric", sigma_max = 10.0, sigma_min = 0.5, levels = 4 }
[base.train]
steps = 4000
batch = 128
eval_every = 100
[base.eval]
n = 2000
[base.sampler]
kind = "none"
[search]
kind = "sobol"
trials = 9
seed = 1
[search.space]
"train.lr" = { log_uniform = [1e-4, 1e-2] }
"objective.noise.sigma_max" = { log_uniform = [2.0, 20.0] }
[early_stop]
kind = "asha"
metric = "l_esm"
eta = 3
"#;

#[test]
fn a_coordinator_killed_mid_asha_sweep_keeps_its_decisions() {
    let dir = tmp("asharestart");
    let sweep = dir.join("restart.toml");
    std::fs::write(&sweep, RESTART).unwrap();
    let out = dir.join("out");
    let args = ["--workers", "2", "--quiet", "--lease-secs", "2"];
    let mut child = Command::new(bin("coordinator")).arg("run").arg(&sweep).arg("--out").arg(&out).args(args).process_group(0).spawn().unwrap();
    wait_for("a few decisions", 120.0, || try_count(&out, "SELECT COUNT(*) FROM decisions").unwrap_or(0) >= 4);
    let pgid = child.id();
    assert!(Command::new("kill").args(["-s", "KILL", "--", &format!("-{pgid}")]).status().unwrap().success());
    let _ = child.wait();
    let before = decisions(&out);
    let recorded = count(&out, "SELECT COUNT(*) FROM results");
    assert!(recorded < 9, "killed before the end ({recorded} results)");

    let o = Command::new(bin("coordinator")).arg("run").arg(&sweep).arg("--out").arg(&out).args(args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = decisions(&out);
    assert_eq!(&after[..before.len()], &before[..], "every decision made before the kill is kept as it was");
    // One decision per trial and rung, and the history still follows the rule.
    let mut seen = std::collections::HashSet::new();
    for r in &after {
        assert!(seen.insert((r.1.clone(), r.2)), "two decisions for {} at rung {}", r.1, r.2);
    }
    check_asha(&after, 3.0);
    // Every trial recorded once: one result each, from one finished attempt.
    assert_eq!(count(&out, "SELECT COUNT(*) FROM results"), 9);
    assert_eq!(count(&out, "SELECT COUNT(*) FROM trials WHERE status NOT IN ('done', 'pruned')"), 0);
    assert_eq!(count(&out, "SELECT COUNT(*) FROM attempts WHERE outcome IN ('done', 'pruned')"), 9);
    // A trial stopped before the kill is pruned, at the checkpoint it was stopped at.
    let c = db(&out);
    for (_, trial, _, checkpoint, ..) in before.iter().filter(|r| r.6 == "stop") {
        let (status, rows): (String, i64) = c
            .query_row("SELECT t.status, (SELECT COUNT(*) FROM curves cu WHERE cu.trial_id = t.id) FROM trials t WHERE t.hash = ?1", [trial], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!((status.as_str(), rows), ("pruned", checkpoint + 1), "trial {trial}");
    }
    assert!(count(&out, "SELECT COUNT(*) FROM trials WHERE status = 'pruned'") >= 1);
}
