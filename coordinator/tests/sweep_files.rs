//! Sweep files that must be refused: each case is (the file's text, fragments the message must
//! contain: the file, line:column, the key, the reason). A refused sweep never panics and never
//! expands (a sweep far over the trial limit is refused before anything is materialised).

use std::path::{Path, PathBuf};

use coordinator::sweep::{MAX_TRIALS, Sweep};

const BASE: &str = "name = \"t\"\n[base]\nseed = 0\n[base.sleep]\nseconds = 0.01\n";

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("scoresweep-sweepfiles-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Parses `src` as `sweep.toml` and checks that it is refused with every fragment of `want`.
fn check_refused(case: &str, src: &str, want: &[&str]) {
    let err = Sweep::parse(src, Path::new("sweep.toml")).err().unwrap_or_else(|| panic!("case `{case}`: accepted")).to_string();
    for w in want {
        assert!(err.contains(w), "case `{case}`: `{w}` not in: {err}");
    }
}

#[test]
fn bad_sweeps_are_refused_with_file_line_column_and_key() {
    let limit = format!("limit of {MAX_TRIALS}");
    let train = "name = \"t\"\n[base]\nseed = 0\n[base.data]\npreset = \"seed1d\"\n[base.model]\nkind = \"mlp\"\n[base.objective]\nkind = \"ism\"\n";
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("empty seeds", format!("seeds = []\n{BASE}"), vec!["sweep.toml:1:1:", "key `seeds`", "empty"]),
        ("empty grid list", format!("{BASE}[grid]\n\"sleep.seconds\" = []\n"), vec!["sweep.toml:7:1:", "grid.sleep.seconds", "empty"]),
        ("empty zip group", format!("{BASE}[[zip]]\n"), vec!["sweep.toml:6:", "zip[0]", "at least one key"]),
        (
            "same key in grid and zip",
            format!("{BASE}[grid]\n\"sleep.seconds\" = [0.1, 0.2]\n[[zip]]\n\"sleep.seconds\" = [0.3, 0.4]\n"),
            vec!["sweep.toml:9:1:", "key `zip[0].sleep.seconds`", "also set by `grid.sleep.seconds`"],
        ),
        (
            "same key in two zip groups",
            format!("{BASE}[[zip]]\n\"sleep.seconds\" = [0.1]\n[[zip]]\n\"sleep.seconds\" = [0.3]\n"),
            vec!["sweep.toml:9:1:", "zip[1].sleep.seconds", "also set by `zip[0].sleep.seconds`"],
        ),
        (
            "a key and its parent table",
            format!("{train}[grid]\n\"objective.noise\" = [{{ ladder = \"list\", sigmas = [1.0] }}]\n[[zip]]\n\"objective.noise.sigmas\" = [[0.5], [0.2]]\n"),
            vec!["sweep.toml:13:1:", "zip[0].objective.noise.sigmas", "overlaps the key set by `grid.objective.noise`"],
        ),
        (
            "over the limit, by repeats",
            format!("repeats = 5000\n{BASE}[grid]\n\"sleep.seconds\" = [0.1, 0.2, 0.3]\n"),
            vec!["sweep.toml:1:1:", "key `repeats`", "expands to 15000 trials", limit.as_str()],
        ),
        (
            // 10^40 points: refused by arithmetic, never expanded.
            "over the limit, by a huge grid",
            {
                let list = format!("[{}]", (0..100).map(|i| format!("{}.0", i + 1)).collect::<Vec<_>>().join(", "));
                let keys: String = (0..20).map(|i| format!("\"sleep.k{i}\" = {list}\n")).collect();
                format!("{BASE}[grid]\n{keys}")
            },
            vec!["sweep.toml:7:1:", "key `grid.sleep.k0`", "more than the limit"],
        ),
        (
            "a variant's gpu that is not a boolean",
            format!("{BASE}[[variants]]\n\"sleep.seconds\" = 0.02\ngpu = \"yes\"\n"),
            vec!["sweep.toml:8:1:", "key `variants[0].gpu`", "true or false"],
        ),
        (
            "over the limit, by seeds",
            format!("seeds = [{}]\n{BASE}", (0..10_001).map(|i| i.to_string()).collect::<Vec<_>>().join(",")),
            vec!["sweep.toml:1:1:", "key `seeds`", "10001 trials"],
        ),
        ("a bad slurm time limit", format!("{BASE}[launcher.slurm]\ntime = \"1h\"\n"), vec!["sweep.toml:7:1:", "key `launcher.slurm.time`", "not a Slurm time limit"]),
        ("an unknown slurm key", format!("{BASE}[launcher.slurm]\nqueue = \"x\"\n"), vec!["sweep.toml:7:1:", "launcher.slurm", "unknown field `queue`"]),
        ("zero slurm workers", format!("{BASE}[launcher.slurm]\nworkers = 0\n"), vec!["sweep.toml:7:1:", "key `launcher.slurm.workers`", "at least 1"]),
        ("an ssh host with no workers", format!("{BASE}[launcher.ssh]\nhosts = [\"a:2\", \"b:0\"]\n"), vec!["sweep.toml:7:1:", "key `launcher.ssh.hosts`", "`b:0`", "≥ 1"]),
        (
            "an unknown launcher",
            format!("{BASE}[launcher.lsf]\nqueue = \"x\"\n"),
            vec!["sweep.toml:6:11:", "key `launcher.lsf`", "unknown launcher `lsf` (known: local, slurm, ssh, pbs)"],
        ),
        ("a bad pbs walltime", format!("{BASE}[launcher.pbs]\nwalltime = \"2h\"\n"), vec!["sweep.toml:7:1:", "key `launcher.pbs.walltime`", "not a PBS walltime"]),
        // A sweep file must not run commands nor write outside its run (issue 20, item 13).
        (
            "an ssh ProxyCommand",
            format!("{BASE}[launcher.ssh]\nhosts = [\"a\"]\nssh_args = [\"-oProxyCommand=touch /tmp/pwned\"]\n"),
            vec!["sweep.toml:8:1:", "key `launcher.ssh.ssh_args`", "ProxyCommand", "not allowed"],
        ),
        (
            "an sbatch --output",
            format!("{BASE}[launcher.slurm]\nsbatch_args = [\"--output=/any/file\"]\n"),
            vec!["sweep.toml:7:1:", "key `launcher.slurm.sbatch_args`", "--output"],
        ),
        ("a slurm output path", format!("{BASE}[launcher.slurm]\noutput = \"/etc/x\"\n"), vec!["sweep.toml:7:1:", "key `launcher.slurm.output`", "path separator"]),
        ("a name with ..", BASE.replace("name = \"t\"", "name = \"../../etc\""), vec!["sweep.toml:1:1:", "key `name`", "one plain file name"]),
        // Sizes each within limits whose product is not (issue 20, item 15): 10⁷ points of
        // dimension 4096 are 164 GB of f32.
        (
            "a trial that cannot fit in memory",
            format!("{train}[base.train]\nsteps = 10\n[base.sampler]\nkind = \"none\"\n[grid]\n\"data.preset\" = [\"iso\"]\n\"data.dim\" = [4096]\n\"eval.n\" = [10000000]\n"),
            vec!["sweep.toml:", "key `eval.n`", "GB", "more than the 64 GiB a trial may use"],
        ),
        ("a name that is ..", BASE.replace("name = \"t\"", "name = \"..\""), vec!["sweep.toml:1:1:", "key `name`", "`.` or `..`"]),
    ];
    for (case, src, want) in &cases {
        check_refused(case, src, want);
    }
}

#[test]
fn a_sweep_file_that_is_not_utf8_is_refused_at_the_bad_byte() {
    let dir = tmpdir("utf8");
    let path = dir.join("latin1.toml");
    let mut bytes = BASE.as_bytes().to_vec();
    // `seconds = 0.01 # caf\xe9`: line 5, the byte after "seconds = 0.01 # caf".
    bytes.truncate(bytes.len() - 1);
    bytes.extend_from_slice(b" # caf\xe9\n");
    std::fs::write(&path, &bytes).unwrap();
    let err = Sweep::load(&path).expect_err("refused").to_string();
    assert!(err.contains("latin1.toml:5:21:") && err.contains("not UTF-8"), "{err}");
}

#[test]
fn keys_set_by_one_axis_each_are_accepted() {
    // A variant may replace a grid key (it is its own trial), and distinct keys may share a
    // prefix that is not a dotted parent (`sleep.s` and `sleep.seconds`).
    let src = format!("{BASE}[grid]\n\"sleep.seconds\" = [0.1, 0.2]\n[[variants]]\n\"sleep.seconds\" = 0.3\n");
    let sweep = Sweep::parse(&src, Path::new("sweep.toml")).unwrap();
    assert_eq!(sweep.trials.len(), 3);
}

#[test]
fn every_committed_sweep_expands() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sweeps");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let sweep = Sweep::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!sweep.trials.is_empty(), "{}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 5, "only {seen} sweep files under {}", dir.display());
}
