//! Early-stopping rules against worked examples: ASHA with η = 3 on 27 trials with known
//! curves (the trials that stop, and where, as Ray Tune's `ASHAScheduler` stops them — worked
//! out independently by a line-for-line transcription of its `_Bracket.on_result` in Python,
//! the first decisions by hand below); the median rule on a small example by hand; and the
//! decisions kept in the state database across a restart of the coordinator's state, a
//! `pruned` report accepted only after a stop decision.

use std::path::Path;

use coordinator::early_stop::{Kind, MemHistory, Mode, Rule, Verdict};
use coordinator::state::{AttemptResult, LeaseOutcome, Registration, State};
use coordinator::sweep::Sweep;
use schema::Status;

fn asha(eta: u32, grace: u32) -> Rule {
    Rule { kind: Kind::Asha, metric: "m".into(), mode: Mode::Min, grace, eta, min_trials: 3 }
}

/// Trial i's metric at checkpoint c: a_i + b_i / c, curves that cross.
fn curve(i: u32, c: u32) -> f64 {
    let a = ((7 * i) % 27) as f64 / 27.0;
    let b = ((11 * i + 5) % 27) as f64 / 9.0;
    a + b / c as f64
}

#[test]
fn asha_stops_exactly_the_trials_of_the_worked_example() {
    // 27 trials, η = 3, grace = 1: rungs at checkpoints 1, 3 and 9. At each checkpoint the
    // trials still running report in the order of (13i + 5c) mod 27.
    //
    // By hand, checkpoint 1: trial 10 reports first (13·10 + 5 = 135 ≡ 0): nothing recorded at
    // rung 0, so it continues with 16/27 + 7/9 = 1.3704. Trial 8 is next (13·8 + 5 = 109 ≡ 1):
    // 2/27 + 12/9 = 1.4074 > the 1/3-quantile of {1.3704} → stop at checkpoint 1.
    //
    // The rest, from Ray Tune's `_Bracket.on_result` transcribed to Python (rewards negated
    // for mode min; numpy's linear percentile):
    let expected_stops: [(u32, u32); 23] = [
        (1, 1),
        (2, 9),
        (3, 1),
        (4, 1),
        (6, 1),
        (7, 3),
        (8, 1),
        (9, 1),
        (10, 3),
        (11, 1),
        (13, 1),
        (14, 1),
        (15, 1),
        (16, 1),
        (17, 3),
        (18, 1),
        (19, 1),
        (21, 1),
        (22, 9),
        (23, 1),
        (24, 1),
        (25, 1),
        (26, 1),
    ];
    let rule = asha(3, 1);
    let mut h = MemHistory::default();
    let mut alive: Vec<u32> = (0..27).collect();
    let mut stopped: Vec<(u32, u32)> = Vec::new();
    for c in 1..=9u32 {
        let mut order = alive.clone();
        order.sort_by_key(|&i| (13 * i + 5 * c) % 27);
        for i in order {
            let v = h.report(&rule, &format!("t{i}"), c, curve(i, c));
            if v.stop() {
                stopped.push((i, c));
                alive.retain(|&j| j != i);
            }
        }
    }
    stopped.sort();
    assert_eq!(stopped, expected_stops);
    assert_eq!(alive, [0, 5, 12, 20]);
    // How many reached each rung (Ray's recorded counts: 27, 9, 6).
    let at = |r: u32| h.decisions.iter().filter(|d| d.rung == r).count();
    assert_eq!((at(0), at(1), at(2)), (27, 9, 6));
    // The first decision of rung 0 has nothing to compare with; the second is the hand-worked one.
    assert_eq!((h.decisions[0].trial.as_str(), h.decisions[0].cutoff, h.decisions[0].stop), ("t10", None, false));
    let d = &h.decisions[1];
    assert_eq!((d.trial.as_str(), d.rung, d.checkpoint, d.stop), ("t8", 0, 1, true));
    assert!((d.cutoff.unwrap() - (16.0 / 27.0 + 7.0 / 9.0)).abs() < 1e-12);
    // A stopped trial that reports again (a retried attempt) is stopped again at once; one
    // reporting the same checkpoint twice gets no second decision.
    assert_eq!(h.report(&rule, "t8", 1, 0.0), Verdict::Stopped);
    let n = h.decisions.len();
    assert_eq!(h.report(&rule, "t0", 9, curve(0, 9)), Verdict::Continue);
    assert_eq!(h.decisions.len(), n);
}

#[test]
fn median_rule_by_hand() {
    let rule = Rule { kind: Kind::Median, metric: "m".into(), mode: Mode::Min, grace: 2, eta: 3, min_trials: 2 };
    let mut h = MemHistory::default();
    // Checkpoint 1 is before grace: no decisions.
    for (t, v) in [("a", 4.0), ("b", 2.0), ("c", 9.0)] {
        assert_eq!(h.report(&rule, t, 1, v), Verdict::Continue);
    }
    // Checkpoint 2: a reports first, only 0 others at checkpoint 2 (< min_trials): continue,
    // decided with no cutoff.
    let Verdict::Decided(d) = h.report(&rule, "a", 2, 3.0) else { panic!() };
    assert_eq!((d.cutoff, d.stop), (None, false));
    // b: one other (a: mean of 4, 3 = 3.5) < 2 → no cutoff.
    assert!(!h.report(&rule, "b", 2, 1.0).stop());
    // c: others a (3.5) and b (mean of 2, 1 = 1.5): median 2.5; c's best so far is 8 > 2.5: stop.
    let Verdict::Decided(d) = h.report(&rule, "c", 2, 8.0) else { panic!() };
    assert_eq!((d.cutoff, d.value, d.stop), (Some(2.5), 8.0, true));
    // Mode max turns it round: c's best (9) beats the median of the others' means.
    let max = Rule { mode: Mode::Max, ..rule.clone() };
    let mut h = MemHistory::default();
    for (t, v1, v2) in [("a", 4.0, 3.0), ("b", 2.0, 1.0)] {
        h.report(&max, t, 1, v1);
        h.report(&max, t, 2, v2);
    }
    h.report(&max, "c", 1, 9.0);
    assert!(!h.report(&max, "c", 2, 8.0).stop());
}

const SWEEP: &str = "name = \"es\"\n[base]\nseed = 0\n[base.data]\npreset = \"seed1d\"\n[base.model]\nkind = \"mlp\"\nhidden = 16\n[base.objective]\nkind = \"ism\"\n[base.train]\nsteps = 90\neval_every = 10\n[base.sampler]\nkind = \"none\"\n[grid]\n\"train.lr\" = [0.001, 0.002, 0.003]\n[early_stop]\nkind = \"asha\"\nmetric = \"l_esm\"\neta = 3\n";

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("scoresweep-earlystop-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn open(dir: &Path, sweep: &Sweep) -> State {
    let mut st = State::open(&dir.join("state.db"), 2, 600.0).unwrap();
    st.sync(sweep, false).unwrap();
    st.set_rule(sweep.early_stop.clone());
    st
}

fn lease(st: &mut State, w: &str) -> (String, u64) {
    match st.atomic(|s| s.next_lease(w, 60.0)).unwrap().unwrap() {
        LeaseOutcome::Leased(l) => (l.hash, l.attempt),
        other => panic!("{other:?}"),
    }
}

fn report(st: &mut State, w: &str, hash: &str, attempt: u64, c: u32, v: f64) -> (bool, String) {
    let m = vec![("l_esm".to_string(), v)];
    st.atomic(|s| s.checkpoint(w, attempt, hash, c, c as u64 * 10, false, "{}", &m)).unwrap().unwrap()
}

#[test]
fn decisions_are_kept_in_the_database_across_a_restart() {
    let dir = tmpdir("restart");
    let sweep = Sweep::parse(SWEEP, Path::new("es.toml")).unwrap();
    assert_eq!(sweep.early_stop.as_ref().map(|r| (r.kind, r.eta, r.grace)), Some((Kind::Asha, 3, 1)));
    let (h, w) = {
        let mut st = open(&dir, &sweep);
        let w = st.atomic(|s| s.register(&Registration { name: "w".into(), slots: 3, ..Default::default() })).unwrap().unwrap();
        let h: Vec<(String, u64)> = (0..3).map(|_| lease(&mut st, &w)).collect();
        assert!(!report(&mut st, &w, &h[0].0, h[0].1, 1, 1.0).0);
        assert!(!report(&mut st, &w, &h[1].0, h[1].1, 1, 0.5).0);
        // Checkpoint 2 of trial 0 is between rungs: no decision.
        assert!(!report(&mut st, &w, &h[0].0, h[0].1, 2, 0.9).0);
        (h, w)
    };
    // A new coordinator on the same database: the decisions made are the history it decides from.
    let mut st = open(&dir, &sweep);
    let (stop, note) = report(&mut st, &w, &h[2].0, h[2].1, 1, 2.0);
    // Cutoff: the 1/3-quantile of {1.0, 0.5} = 0.5 + (1/3)(0.5) = 0.6667; 2.0 is worse.
    assert!(stop, "{note}");
    assert!(note.contains("0.666667"), "{note}");
    let rows: Vec<(String, u32, Option<f64>, String)> = {
        let c = rusqlite::Connection::open(dir.join("state.db")).unwrap();
        let mut q = c.prepare("SELECT trial_hash, rung, cutoff, decision FROM decisions ORDER BY id").unwrap();
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(rows.len(), 3);
    assert_eq!((rows[0].2, rows[0].3.as_str()), (None, "continue"));
    assert_eq!((rows[1].2, rows[1].3.as_str()), (Some(1.0), "continue"));
    assert_eq!(rows[2].3, "stop");
    // The same checkpoint again (a retried call) gets the same answer and no new row.
    assert!(report(&mut st, &w, &h[2].0, h[2].1, 1, 2.0).0);
    // A pruned report is taken for the stopped trial only; the others' are malformed.
    let pruned = AttemptResult { status: Status::Pruned, metrics_json: "{\"l_esm\": 2.0}".into(), ..AttemptResult::cancelled() };
    assert!(st.atomic(|s| s.report(&w, h[2].1, &h[2].0, &pruned)).unwrap().unwrap());
    st.atomic(|s| s.report(&w, h[0].1, &h[0].0, &pruned)).unwrap().unwrap();
    let c = rusqlite::Connection::open(dir.join("state.db")).unwrap();
    let status = |hash: &str| c.query_row("SELECT status FROM trials WHERE hash = ?1", [hash], |r| r.get::<_, String>(0)).unwrap();
    assert_eq!(status(&h[2].0), "pruned");
    assert_eq!(c.query_row("SELECT status FROM results WHERE trial_hash = ?1", [&h[2].0], |r| r.get::<_, String>(0)).unwrap(), "pruned");
    assert_eq!(status(&h[0].0), "queued", "a pruned report without a stop decision is a failed attempt, retried");
    let err: String = c.query_row("SELECT error FROM attempts WHERE id = ?1", [h[0].1 as i64], |r| r.get(0)).unwrap();
    assert!(err.contains("never answered stop"), "{err}");
    let counts = st.counts().unwrap();
    assert_eq!((counts.pruned, counts.finished()), (1, 1));
    let _ = std::fs::remove_dir_all(&dir);
}
