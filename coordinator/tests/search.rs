//! Search spaces (`[search]`) and early-stopping rules (`[early_stop]`) in sweep files: bad
//! ones are refused at file:line:column with the key; draws are reproducible (same file, same
//! trials, same hashes) and uniform (Kolmogorov–Smirnov and chi-square tests on the drawn
//! values, with thresholds a biased draw fails); a space combines with `[grid]`.

use std::path::Path;

use coordinator::search::{self, Kind};
use coordinator::sweep::Sweep;

const BASE: &str = "# a sweep\nname = \"t\"\n[base]\nseed = 0\n[base.data]\npreset = \"seed1d\"\n[base.model]\nkind = \"mlp\"\nhidden = 16\n[base.objective]\nkind = \"ism\"\n[base.train]\nsteps = 10\neval_every = 5\n[base.sampler]\nkind = \"none\"\n";
// BASE has 16 lines: the first line after it is line 17.

fn parse(src: &str) -> Result<Sweep, String> {
    Sweep::parse(src, Path::new("sweep.toml")).map_err(|e| e.to_string())
}

#[test]
fn bad_spaces_and_rules_are_refused_with_file_line_column_and_key() {
    let s = |body: &str| format!("{BASE}{body}");
    // (case, the file, fragments the message must contain)
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "inverted range",
            s("[search]\nkind = \"random\"\ntrials = 4\n[search.space]\n\"train.lr\" = { uniform = [0.1, 0.01] }\n"),
            vec!["sweep.toml:21:16:", "key `search.space.train.lr.uniform`", "empty or inverted"],
        ),
        ("empty range", s("[search]\nkind = \"random\"\ntrials = 4\n[search.space]\n\"train.lr\" = { uniform = [0.1, 0.1] }\n"), vec!["sweep.toml:21:16:", "empty or inverted"]),
        (
            "log of zero",
            s("[search]\nkind = \"sobol\"\ntrials = 4\n[search.space]\n\"train.lr\" = { log_uniform = [0.0, 0.01] }\n"),
            vec!["sweep.toml:21:16:", "key `search.space.train.lr.log_uniform`", "must be positive"],
        ),
        (
            "log of a negative",
            s("[search]\nkind = \"random\"\ntrials = 4\n[search.space]\n\"train.lr\" = { log_uniform = [-1.0, 0.01] }\n"),
            vec!["sweep.toml:21:16:", "must be positive"],
        ),
        (
            "empty choice",
            s("[search]\nkind = \"random\"\ntrials = 4\n[search.space]\n\"model.hidden\" = { choice = [] }\n"),
            vec!["sweep.toml:21:20:", "search.space.model.hidden.choice", "empty"],
        ),
        ("inverted ints", s("[search]\nkind = \"random\"\ntrials = 4\n[search.space]\n\"model.depth\" = { int_uniform = [3, 1] }\n"), vec!["sweep.toml:21:19:", "inverted"]),
        (
            "float int bounds",
            s("[search]\nkind = \"random\"\ntrials = 4\n[search.space]\n\"model.depth\" = { int_uniform = [1.0, 3.0] }\n"),
            vec!["sweep.toml:21:19:", "integer bounds"],
        ),
        (
            "unknown distribution",
            s("[search]\nkind = \"random\"\ntrials = 4\n[search.space]\n\"train.lr\" = { normal = [0.0, 1.0] }\n"),
            vec!["sweep.toml:21:16:", "unknown distribution `normal`"],
        ),
        (
            "two distributions",
            s("[search]\nkind = \"random\"\ntrials = 4\n[search.space]\n\"train.lr\" = { uniform = [0.1, 0.2], choice = [1] }\n"),
            vec!["sweep.toml:21:1:", "key `search.space.train.lr`", "exactly one"],
        ),
        ("not a table", s("[search]\nkind = \"random\"\ntrials = 4\n[search.space]\n\"train.lr\" = [0.1, 0.2]\n"), vec!["sweep.toml:21:1:", "must be a table"]),
        (
            "a key not in the trial schema",
            s("[search]\nkind = \"random\"\ntrials = 4\n[search.space]\n\"train.learning_rate\" = { log_uniform = [1e-4, 1e-2] }\n"),
            vec!["sweep.toml:21:1:", "learning_rate", "unknown field"],
        ),
        (
            "a value of the wrong type",
            s("[search]\nkind = \"random\"\ntrials = 4\n[search.space]\n\"model.hidden\" = { uniform = [16.0, 64.0] }\n"),
            vec!["sweep.toml:21:1:", "model.hidden", "(in trial"],
        ),
        (
            "a key also in [grid]",
            s("[grid]\n\"train.lr\" = [0.001, 0.01]\n[search]\nkind = \"random\"\ntrials = 4\n[search.space]\n\"train.lr\" = { log_uniform = [1e-4, 1e-2] }\n"),
            vec!["sweep.toml:23:1:", "key `search.space.train.lr`", "also set by `grid.train.lr`"],
        ),
        (
            "random without trials",
            s("[search]\nkind = \"random\"\n[search.space]\n\"train.lr\" = { uniform = [0.1, 0.2] }\n"),
            vec!["sweep.toml:18:1:", "key `search.kind`", "needs `trials`"],
        ),
        (
            "zero trials",
            s("[search]\nkind = \"random\"\ntrials = 0\n[search.space]\n\"train.lr\" = { uniform = [0.1, 0.2] }\n"),
            vec!["sweep.toml:19:1:", "key `search.trials`", "from 1"],
        ),
        ("a grid over a range", s("[search]\n[search.space]\n\"train.lr\" = { uniform = [0.1, 0.2] }\n"), vec!["sweep.toml:19:1:", "grid search takes `choice`"]),
        (
            "unknown kind",
            s("[search]\nkind = \"bayes\"\ntrials = 3\n[search.space]\n\"train.lr\" = { uniform = [0.1, 0.2] }\n"),
            vec!["sweep.toml:18:1:", "key `search.kind`", "\"sobol\""],
        ),
        ("empty space", s("[search]\nkind = \"random\"\ntrials = 3\n"), vec!["sweep.toml:17:2:", "at least one key"]),
        (
            "over the trial limit",
            format!("repeats = 3\n{BASE}[search]\nkind = \"random\"\ntrials = 5000\n[search.space]\n\"train.lr\" = {{ uniform = [0.1, 0.2] }}\n"),
            vec!["key `search.trials`", "15000 trials"],
        ),
        (
            "early stop: a metric no trial reports",
            s("[early_stop]\nkind = \"asha\"\nmetric = \"fid\"\n"),
            vec!["sweep.toml:19:1:", "key `early_stop.metric`", "does not report `fid`"],
        ),
        (
            "early stop: l_dsm without a noise ladder",
            s("[early_stop]\nkind = \"median\"\nmetric = \"l_dsm\"\n"),
            vec!["sweep.toml:19:1:", "key `early_stop.metric`", "it reports: train_loss, l_esm"],
        ),
        ("early stop: eta 1", s("[early_stop]\nkind = \"asha\"\nmetric = \"l_esm\"\neta = 1\n"), vec!["sweep.toml:20:1:", "key `early_stop.eta`", "from 2"]),
        ("early stop: grace 0", s("[early_stop]\nkind = \"asha\"\nmetric = \"l_esm\"\ngrace = 0\n"), vec!["sweep.toml:20:1:", "key `early_stop.grace`"]),
        ("early stop: bad mode", s("[early_stop]\nkind = \"asha\"\nmetric = \"l_esm\"\nmode = \"lowest\"\n"), vec!["sweep.toml:20:1:", "key `early_stop.mode`"]),
        ("early stop: no metric", s("[early_stop]\nkind = \"asha\"\n"), vec!["sweep.toml:18:1:", "needs `metric`"]),
        ("early stop: unknown key", s("[early_stop]\nkind = \"asha\"\nmetric = \"l_esm\"\npatience = 3\n"), vec!["sweep.toml:20:1:", "unknown key `patience`"]),
    ];
    for (case, src, want) in &cases {
        let err = parse(src).err().unwrap_or_else(|| panic!("case `{case}`: accepted"));
        for w in want {
            assert!(err.contains(w), "case `{case}`: `{w}` not in: {err}");
        }
    }
    // A sleep trial has no checkpoints: no metric will do.
    let sleep = "name = \"t\"\n[base]\n[base.sleep]\nseconds = 0.01\n[early_stop]\nkind = \"asha\"\nmetric = \"train_loss\"\n";
    let err = parse(sleep).unwrap_err();
    assert!(err.contains("sweep.toml:7:1:") && err.contains("it reports: none"), "{err}");
}

const SPACE: &str = "[search]\nkind = \"KIND\"\ntrials = 64\nseed = SEED\n[search.space]\n\"train.lr\" = { log_uniform = [1e-4, 1e-2] }\n\"train.batch\" = { choice = [32, 64, 128] }\n\"model.hidden\" = { int_uniform = [8, 12] }\n\"model.depth\" = { int_uniform = [1, 2] }\n";

fn space(kind: &str, seed: u64) -> String {
    format!("{BASE}{}", SPACE.replace("KIND", kind).replace("SEED", &seed.to_string()))
}

#[test]
fn draws_are_reproducible_and_combine_with_a_grid() {
    for kind in ["random", "sobol"] {
        let a = parse(&space(kind, 3)).unwrap();
        let b = parse(&space(kind, 3)).unwrap();
        let c = parse(&space(kind, 4)).unwrap();
        let hashes = |s: &Sweep| s.trials.iter().map(|t| t.hash.clone()).collect::<Vec<_>>();
        assert_eq!(a.trials.len(), 64, "{kind}");
        assert_eq!(hashes(&a), hashes(&b), "{kind}: same file, same trials");
        assert_ne!(hashes(&a), hashes(&c), "{kind}: another seed, other trials");
        for t in &a.trials {
            let lr = t.flat["train.lr"].as_f64().unwrap();
            assert!((1e-4..=1e-2).contains(&lr), "{lr}");
            assert!([32, 64, 128].contains(&t.flat["train.batch"].as_i64().unwrap()));
            assert!((8..=12).contains(&t.flat["model.hidden"].as_i64().unwrap()));
            assert!(t.label.contains("train.lr="), "{}", t.label);
        }
    }
    // Crossed with a grid key and the seeds: 2 × 64 × 2.
    let src = format!("repeats = 2\n{}", space("random", 0).replace("[search]", "[grid]\n\"data.preset\" = [\"seed1d\", \"ring8\"]\n[search]"));
    let s = parse(&src).unwrap();
    assert_eq!(s.trials.len(), 256);
    let rule = s.search.as_ref().unwrap();
    assert_eq!((rule.kind, rule.trials, rule.seed), (Kind::Random, 64, 0));
    // A grid search crosses every value: 3 × 5 × 2.
    let grid = format!(
        "{BASE}[search]\n[search.space]\n\"train.batch\" = {{ choice = [32, 64, 128] }}\n\"model.hidden\" = {{ int_uniform = [8, 12] }}\n\"model.depth\" = {{ int_uniform = [1, 2] }}\n"
    );
    assert_eq!(parse(&grid).unwrap().trials.len(), 30);
}

/// The Kolmogorov–Smirnov statistic of `xs` against U(0, 1).
fn ks(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    v.iter().enumerate().map(|(i, &x)| ((i as f64 + 1.0) / n - x).max(x - i as f64 / n)).fold(0.0, f64::max)
}

/// Pearson's chi-square of `counts` against equal cell probabilities.
fn chi2(counts: &[usize]) -> f64 {
    let n: usize = counts.iter().sum();
    let e = n as f64 / counts.len() as f64;
    counts.iter().map(|&c| (c as f64 - e).powi(2) / e).sum()
}

#[test]
fn draws_are_uniform() {
    // The 1% critical value of the KS statistic for n = 2000 is 1.628/√n ≈ 0.0364; chi-square
    // with 4 degrees of freedom at 1%: 13.28. A draw that favoured the lower half (u² instead of
    // u) would give KS ≈ 0.25 and fail.
    let n = 2000;
    let crit_ks = 1.628 / (n as f64).sqrt();
    for kind in [Kind::Random, Kind::Sobol] {
        let pts = search::unit_points(kind, n, 4, 11);
        for d in 0..4 {
            let col: Vec<f64> = pts.iter().map(|p| p[d]).collect();
            let stat = ks(&col);
            assert!(stat < crit_ks, "{kind:?} dim {d}: KS = {stat:.4} ≥ {crit_ks:.4}");
            let squared: Vec<f64> = col.iter().map(|u| u * u).collect();
            assert!(ks(&squared) > crit_ks, "the test can fail: a biased draw is caught");
        }
    }
    // Through the sweep file: ln(lr) is uniform on [ln 1e-4, ln 1e-2]; hidden ∈ 8..=12 and the
    // batch choice are uniform over their values.
    let src = space("random", 5).replace("trials = 64", "trials = 2000");
    let s = parse(&src).unwrap();
    let (lo, hi) = (1e-4f64.ln(), 1e-2f64.ln());
    let u: Vec<f64> = s.trials.iter().map(|t| (t.flat["train.lr"].as_f64().unwrap().ln() - lo) / (hi - lo)).collect();
    // Rounding to 6 significant digits moves u by < 1e-5: far below the critical value.
    assert!(ks(&u) < crit_ks, "log_uniform: KS = {:.4}", ks(&u));
    let mut hidden = [0usize; 5];
    let mut batch = [0usize; 3];
    for t in &s.trials {
        hidden[(t.flat["model.hidden"].as_i64().unwrap() - 8) as usize] += 1;
        batch[[32, 64, 128].iter().position(|&b| b == t.flat["train.batch"].as_i64().unwrap()).unwrap()] += 1;
    }
    assert!(chi2(&hidden) < 13.28, "int_uniform: χ² = {:.2} ({hidden:?})", chi2(&hidden));
    assert!(chi2(&batch) < 9.21, "choice: χ² = {:.2} ({batch:?})", chi2(&batch));
    assert!(chi2(&[500, 300, 400, 400, 400]) > 13.28, "the test can fail");
}
