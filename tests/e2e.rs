//! End-to-end tests of the real binaries on loopback: a small sweep completes with the exact
//! row count and a passing ESM−ISM claim and resumes without re-running; bad sweep files give
//! located errors and write nothing; a worker killed with SIGKILL mid-trial loses nothing; a
//! coordinator killed with SIGKILL resumes to the same table as an undisturbed run; Ctrl-C lets
//! running trials finish, and the rerun does the rest; a missing worker executable or an
//! unknown launcher is refused before anything is written.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::{bin, count, make_ca, table, tmp, try_count, wait_for};

const SMALL: &str = r#"
name = "small"
timeout = 120
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
steps = 150
batch = 128
lr = 3e-3
eval_every = 50
[base.eval]
n = 20000
[base.sampler]
kind = "none"
[grid]
"data.preset" = ["seed1d", "ncsn2d"]
"objective.kind" = ["ism", "ssm_vr"]
"#;

fn run(sweep: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(bin("coordinator")).arg("run").arg(sweep).arg("--out").arg(out).args(["--workers", "2"]).args(extra).output().unwrap()
}

fn db(out: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(out.join("state.db")).unwrap()
}

#[test]
fn small_sweep_completes_resumes_and_tracks_edits() {
    let dir = tmp("small");
    let sweep = dir.join("small.toml");
    std::fs::write(&sweep, SMALL).unwrap();
    let out = dir.join("out");
    let o = run(&sweep, &out, &["--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(table(&out).len(), 4, "one row per trial");
    let claims = std::fs::read_to_string(out.join("claims.csv")).unwrap();
    let offset: Vec<&str> = claims.lines().filter(|l| l.starts_with("esm_ism_offset,")).collect();
    assert_eq!(offset.len(), 2, "{claims}");
    assert!(offset.iter().all(|l| l.split(',').nth(2) == Some("pass")), "{claims}");
    for f in ["trials.parquet", "curves.parquet", "report.md"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert_eq!(count(&out, "SELECT COUNT(*) FROM attempts"), 4);

    // Same command again: nothing re-runs.
    let o = run(&sweep, &out, &[]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("0 new, 4 already finished"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(count(&out, "SELECT COUNT(*) FROM attempts"), 4);

    // An edited sweep adds its new trials and marks the dropped ones.
    std::fs::write(&sweep, SMALL.replace("[\"ism\", \"ssm_vr\"]", "[\"ism\", \"esm\"]")).unwrap();
    let o = run(&sweep, &out, &["--quiet"]);
    assert!(o.status.success());
    assert_eq!(count(&out, "SELECT COUNT(*) FROM attempts"), 6, "only the two new trials ran");
    assert_eq!(count(&out, "SELECT COUNT(*) FROM trials WHERE in_sweep = 0"), 2);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.to_lowercase().contains("no longer"), "report lists out-of-sweep trials");
}

#[test]
fn bad_sweeps_are_located_and_write_nothing() {
    // (edit of SMALL, fragments the message must contain)
    let cases: Vec<(String, Vec<&str>)> = vec![
        (SMALL.replace("[\"ism\", \"ssm_vr\"]", "[\"ism\", \"sm\"]"), vec!["small.toml:24:", "objective.kind", "sm"]),
        (
            SMALL.replace("[grid]", "[grid]\n\"objective.noise\" = [{ ladder = \"geometric\", sigma_max = 1.0, sigma_min = -2.0, levels = 3 }]"),
            vec!["small.toml:23:", "objective.noise.sigma_min", "positive", "in trial"],
        ),
        (SMALL.replace("steps = 150", "stepz = 150"), vec!["small.toml:", "stepz"]),
        (SMALL.replace("timeout = 120", "timeout = -1"), vec!["small.toml:3:", "timeout"]),
        (SMALL.replace("[grid]", "[grid]\n\"seed\" = [0]\n\"train.lr\" = [1e-3]\n[[zip]]\n\"eval.n\" = [100, 200]\n\"train.batch\" = [8]"), vec!["zip[0]", "same"]),
        (SMALL.replace("[grid]", "[grid]\n\"train.lr\" = [\n"), vec!["small.toml:25:", "invalid TOML"]),
        (
            format!("repeats = 100\n{}", SMALL.replace("[grid]", "[grid]\n\"model.hidden\" = [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30]")),
            vec!["small.toml:1:1:", "repeats", "expands to 12000 trials"],
        ),
        (format!("seeds = []\n{SMALL}"), vec!["small.toml:1:1:", "seeds", "empty"]),
        (SMALL.replace("[grid]", "[[zip]]\n\"objective.kind\" = [\"ism\", \"esm\"]\n[grid]"), vec!["small.toml:", "objective.kind", "also set by"]),
    ];
    for (i, (src, want)) in cases.iter().enumerate() {
        let dir = tmp(&format!("bad{i}"));
        let sweep = dir.join("small.toml");
        std::fs::write(&sweep, src).unwrap();
        let out = dir.join("out");
        let o = run(&sweep, &out, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "case {i}: {err}");
        for w in want {
            assert!(err.contains(w), "case {i}: `{w}` not in: {err}");
        }
        assert!(!out.exists(), "case {i}: output written");
    }
    // Not UTF-8: located at the bad byte (line 2 here).
    let dir = tmp("badutf8");
    let sweep = dir.join("small.toml");
    std::fs::write(&sweep, [b"# sweep\n# caf\xe9\n".as_slice(), SMALL.as_bytes()].concat()).unwrap();
    let out = dir.join("out");
    let o = run(&sweep, &out, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("small.toml:2:6:") && err.contains("not UTF-8"), "{err}");
    assert!(!out.exists(), "output written");
}

#[test]
fn a_missing_worker_or_unknown_launcher_is_refused_before_anything_runs() {
    let dir = tmp("noworker");
    let sweep = dir.join("sleep.toml");
    std::fs::write(&sweep, "repeats = 2\n[base]\nseed = 0\n[base.sleep]\nseconds = 0.1\n").unwrap();
    let out = dir.join("out");
    let missing = dir.join("no-such-worker");
    let o = run(&sweep, &out, &["--worker-bin", missing.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("worker executable not found at") && err.contains("no-such-worker") && err.contains("cargo build --release -p worker") && err.contains("--worker-bin"),
        "{err}"
    );
    assert!(!out.exists(), "output written");
    // The environment variable is the fallback of --worker-bin.
    let o = Command::new(bin("coordinator")).arg("run").arg(&sweep).arg("--out").arg(&out).env("SCORESWEEP_WORKER", &missing).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no-such-worker"));
    let o = run(&sweep, &out, &["--launcher", "lsf"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown launcher `lsf`") && err.contains("local, slurm, ssh, pbs"), "{err}");
    assert!(!out.exists(), "output written");
}

#[test]
fn one_gpu_worker_per_gpu_with_its_device_and_threads() {
    let dir = tmp("gpuworkers");
    let sweep = dir.join("sleep.toml");
    std::fs::write(&sweep, "repeats = 6\n[base]\nseed = 0\n[base.sleep]\nseconds = 0.2\n").unwrap();
    // A worker executable whose `devices` reports two GPUs; this machine has none, so it runs
    // its trials on the CPU, after logging how it was started.
    let log = dir.join("starts.log");
    let fake = dir.join("worker");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nif [ \"$1\" = devices ]; then printf 'cuda: compiled in\\ngpus: 2\\ngpu 0: Fake GPU, 80.0 GiB\\ngpu 1: Fake GPU, 80.0 GiB\\n'; exit 0; fi\n\
             echo \"${{CUDA_VISIBLE_DEVICES:-none}} $RAYON_NUM_THREADS $*\" >> '{}'\n\
             for a; do shift; if [ \"$a\" = cuda ]; then set -- \"$@\" cpu; else set -- \"$@\" \"$a\"; fi; done\n\
             exec '{}' \"$@\"\n",
            log.display(),
            bin("worker").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let coordinator = |out: &Path, extra: &[&str]| {
        Command::new(bin("coordinator"))
            .arg("run")
            .arg(&sweep)
            .arg("--out")
            .arg(out)
            .arg("--worker-bin")
            .arg(&fake)
            .args(extra)
            .env("CUDA_VISIBLE_DEVICES", "3,6")
            .output()
            .unwrap()
    };
    // Asking for more GPU workers than GPUs, or for a non-number, is refused before anything runs.
    let out = dir.join("refused");
    for (flag, want) in [("3", "finds 2 GPU(s)"), ("two", "neither `auto` nor a number")] {
        let o = coordinator(&out, &["--gpu-workers", flag]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "--gpu-workers {flag}: {err}");
        assert!(!out.exists(), "output written");
    }
    let out = dir.join("out");
    let o = coordinator(&out, &["--workers", "1", "--gpu-worker-threads", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // One GPU worker per inherited CUDA_VISIBLE_DEVICES entry, alone on it with --device cuda,
    // and the CPU worker on the CPU.
    let mut starts: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let at = |k: &str| f.iter().position(|x| *x == k).map(|i| f[i + 1]).unwrap_or("-");
            format!("{} {} {} {}", at("--name"), f[0], at("--device"), if at("--name").starts_with("gpu") { f[1] } else { "n" })
        })
        .collect();
    starts.sort();
    assert_eq!(starts, ["gpu0 3 cuda 1", "gpu1 6 cuda 1", "local0 none cpu n"]);
    assert_eq!(count(&out, "SELECT COUNT(*) FROM results"), 6);
    // Every row says which worker and device produced it; so do `status` and the report.
    let csv = std::fs::read_to_string(out.join("trials.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let (wi, di) = (header.iter().position(|h| *h == "worker").unwrap(), header.iter().position(|h| *h == "device").unwrap());
    for row in csv.lines().skip(1) {
        let f: Vec<&str> = row.split(',').collect();
        assert!(["gpu0#", "gpu1#", "local0#"].iter().any(|p| f[wi].starts_with(p)) && !f[wi].contains('.'), "worker {row}");
        assert_eq!(f[di], "cpu", "{row}");
    }
    let st = Command::new(bin("coordinator")).args(["status", "--trials"]).arg(&out).output().unwrap();
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success() && text.contains("6 trials: 6 done") && text.contains("workers (3):") && text.matches(" on cpu").count() >= 9, "{text}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Workers") && report.contains("Results by device: 6 on cpu"), "{report}");
}

/// Starts `coordinator serve` on port 0 and returns it with its URL.
fn serve(sweep: &Path, out: &Path, lease_secs: &str) -> (std::process::Child, String) {
    let mut child = Command::new(bin("coordinator"))
        .arg("serve")
        .arg(sweep)
        .arg("--out")
        .arg(out)
        .args(["--listen", "127.0.0.1:0", "--lease-secs", lease_secs])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let l = lines.next().expect("coordinator exited").unwrap();
        if let Some(u) = l.strip_prefix("serving on ") {
            break u.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}

/// An independent client (`tests/python/stranger_client.py`: Python grpcio stubs generated from
/// `proto/sweep.proto`, no scoresweep code) runs a sweep of sleep trials against `serve` and
/// checks the refusals the protocol promises. Needs `$SCORESWEEP_PYTHON`, a Python with grpcio
/// and grpcio-tools (`.ci/run` makes one); skipped, saying so, without it.
#[test]
fn an_independent_python_client_runs_a_sweep() {
    let Some(python) = std::env::var_os("SCORESWEEP_PYTHON").filter(|p| !p.is_empty()) else {
        eprintln!("skipped: set SCORESWEEP_PYTHON to a Python with grpcio and grpcio-tools (.ci/run does)");
        return;
    };
    let dir = tmp("python");
    let sweep = dir.join("py.toml");
    std::fs::write(&sweep, "name = \"py\"\nrepeats = 3\n[base]\nseed = 0\n[base.sleep]\nseconds = 0.01\n").unwrap();
    let out = dir.join("out");
    let (mut coordinator, url) = serve(&sweep, &out, "30");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new(python).arg(root.join("tests/python/stranger_client.py")).arg(root.join("proto")).arg(&url).arg(out.join("token")).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success() && text.contains("stranger: 3 trials reported"), "{text}");
    assert!(coordinator.wait().unwrap().success(), "the sweep ends when the client has reported every trial");
    assert_eq!(count(&out, "SELECT COUNT(*) FROM results WHERE status = 'done'"), 3);
    assert_eq!(count(&out, "SELECT COUNT(*) FROM artifacts WHERE name = 'note.txt'"), 3);
    let csv = std::fs::read_to_string(out.join("trials.csv")).unwrap();
    assert_eq!(csv.lines().filter(|l| l.ends_with(",stranger#1,cpu")).count(), 3, "{csv}");
}

#[test]
fn worker_killed_mid_trial_loses_nothing() {
    let dir = tmp("killworker");
    let sweep = dir.join("sleep.toml");
    std::fs::write(&sweep, "timeout = 60\nretries = 2\nrepeats = 3\n[base]\nseed = 0\n[base.sleep]\nseconds = 1.5\n").unwrap();
    let out = dir.join("out");
    let (mut coord, url) = serve(&sweep, &out, "1.0");
    let token = out.join("token");
    let mut victim = Command::new(bin("worker")).args(["--coordinator", &url, "--name", "victim"]).arg("--token-file").arg(&token).spawn().unwrap();
    wait_for("a lease", 20.0, || try_count(&out, "SELECT COUNT(*) FROM attempts WHERE worker LIKE 'victim%'").unwrap_or(0) > 0);
    std::thread::sleep(Duration::from_millis(300));
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    let mut rescuer = Command::new(bin("worker")).args(["--coordinator", &url, "--name", "rescuer"]).arg("--token-file").arg(&token).spawn().unwrap();
    assert!(rescuer.wait().unwrap().success());
    assert!(coord.wait().unwrap().success());
    assert_eq!(count(&out, "SELECT COUNT(*) FROM results"), 3, "each trial once");
    assert_eq!(count(&out, "SELECT COUNT(*) FROM trials WHERE status = 'done'"), 3);
    assert!(count(&out, "SELECT COUNT(*) FROM attempts WHERE outcome = 'expired'") >= 1, "the killed attempt expired and is kept");
}

/// The control plane's token: written mode 0600 in the output directory, required of every
/// call (a worker without it, or with a wrong one, is refused and exits with a message), handed
/// through the environment or a file, and on no process's command line.
#[test]
fn workers_need_the_runs_token() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp("token");
    let sweep = dir.join("sleep.toml");
    std::fs::write(&sweep, "timeout = 60\nrepeats = 4\n[base]\nseed = 0\n[base.sleep]\nseconds = 0.5\n").unwrap();
    let out = dir.join("out");
    let (mut coord, url) = serve(&sweep, &out, "5.0");
    let token_path = out.join("token");
    let token = std::fs::read_to_string(&token_path).unwrap();
    assert_eq!(token.len(), 64);
    assert_eq!(std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777, 0o600);
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "0".repeat(64)).unwrap();
    for (what, file) in [("no token", None), ("a wrong token", Some(&wrong))] {
        let mut cmd = Command::new(bin("worker"));
        cmd.args(["--coordinator", &url, "--name", "stranger", "--max-unreachable", "5"]).env_remove("SCORESWEEP_TOKEN");
        if let Some(f) = file {
            cmd.arg("--token-file").arg(f);
        }
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what}: a worker was admitted");
        assert!(err.contains("token"), "{what}: {err}");
    }
    assert_eq!(count(&out, "SELECT COUNT(*) FROM workers"), 0, "nobody registered without the token");
    let mut w = Command::new(bin("worker")).args(["--coordinator", &url, "--name", "friend"]).env("SCORESWEEP_TOKEN", &token).spawn().unwrap();
    wait_for("a lease", 20.0, || count(&out, "SELECT COUNT(*) FROM attempts") > 0);
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            assert!(!String::from_utf8_lossy(&cmdline).contains(&token), "the token is on the command line of {:?}", entry.path());
        }
    }
    assert!(w.wait().unwrap().success());
    assert!(coord.wait().unwrap().success());
    assert_eq!(count(&out, "SELECT COUNT(*) FROM results"), 4);
}

const RESUME: &str = r#"
timeout = 120
repeats = 3
[base]
seed = 0
[base.data]
preset = "ring8"
[base.model]
kind = "mlp"
hidden = 32
[base.objective]
kind = "dsm"
noise = { ladder = "geometric", sigma_max = 4.0, sigma_min = 0.2, levels = 4 }
[base.train]
steps = 3000
batch = 128
eval_every = 1000
[base.eval]
n = 5000
[base.sampler]
kind = "annealed_langevin"
steps_per_level = 200
n = 2000
[grid]
"objective.kind" = ["dsm", "ssm_vr"]
"#;

#[test]
fn coordinator_killed_mid_sweep_resumes_to_the_same_table() {
    let dir = tmp("killcoord");
    let sweep = dir.join("resume.toml");
    std::fs::write(&sweep, RESUME).unwrap();
    let reference = dir.join("reference");
    assert!(run(&sweep, &reference, &["--quiet"]).status.success());

    let out = dir.join("out");
    // Own process group, so SIGKILL takes the coordinator and its local workers down together.
    let mut child = Command::new(bin("coordinator")).arg("run").arg(&sweep).arg("--out").arg(&out).args(["--workers", "2", "--quiet"]).process_group(0).spawn().unwrap();
    wait_for("a finished trial", 120.0, || try_count(&out, "SELECT COUNT(*) FROM results").unwrap_or(0) >= 1);
    let pgid = child.id();
    assert!(Command::new("kill").args(["-s", "KILL", "--", &format!("-{pgid}")]).status().unwrap().success());
    let _ = child.wait();
    let finished: Vec<(String, i64)> = {
        let c = db(&out);
        let mut st = c.prepare("SELECT trial_hash, attempt_id FROM results ORDER BY trial_hash").unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect()
    };
    assert!(finished.len() < 6, "killed before the end");

    let o = run(&sweep, &out, &["--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (hash, attempt) in &finished {
        let a: i64 = db(&out).query_row("SELECT attempt_id FROM results WHERE trial_hash = ?1", [hash], |r| r.get(0)).unwrap();
        assert_eq!(a, *attempt, "finished trial {hash} re-ran");
    }
    assert_eq!(count(&out, "SELECT COUNT(*) FROM results"), 6);
    assert_eq!(table(&out), table(&reference), "same seeds, same metrics as an undisturbed run");
}

/// Ctrl-C at a terminal sends SIGINT to the whole process group: the coordinator and its local
/// workers. The first stops leasing while the running trials finish and are recorded (the
/// workers do not die with it); the same command then runs only what is left.
#[test]
fn ctrl_c_lets_running_trials_finish_then_resume_runs_the_rest() {
    let dir = tmp("ctrlc");
    let sweep = dir.join("sleep.toml");
    std::fs::write(&sweep, "timeout = 60\nrepeats = 5\n[base]\nseed = 0\n[base.sleep]\nseconds = 2.0\n").unwrap();
    let out = dir.join("out");
    let child =
        Command::new(bin("coordinator")).arg("run").arg(&sweep).arg("--out").arg(&out).args(["--workers", "2", "--quiet"]).process_group(0).stderr(Stdio::piped()).spawn().unwrap();
    wait_for("two running trials", 30.0, || try_count(&out, "SELECT COUNT(*) FROM attempts WHERE outcome = 'running'") == Some(2));
    let pgid = child.id();
    assert!(Command::new("kill").args(["-s", "INT", "--", &format!("-{pgid}")]).status().unwrap().success());
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("stopping"), "{stderr}");
    assert_eq!(count(&out, "SELECT COUNT(*) FROM results"), 2, "the two running trials finished and were recorded");
    assert_eq!(count(&out, "SELECT COUNT(*) FROM attempts"), 2, "nothing leased after the Ctrl-C");
    assert_eq!(count(&out, "SELECT COUNT(*) FROM attempts WHERE outcome != 'done'"), 0, "no attempt lost with a dead worker");
    assert_eq!(count(&out, "SELECT COUNT(*) FROM trials WHERE status = 'queued'"), 3);

    let o = run(&sweep, &out, &["--quiet"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(count(&out, "SELECT COUNT(*) FROM results"), 5);
    assert_eq!(count(&out, "SELECT COUNT(*) FROM attempts"), 5, "each trial ran once");
}

/// TLS with a certificate the user provides: `run` serves https:// and its local workers verify
/// the coordinator with `--tls-ca`; a `serve`d run refuses plain-text workers and workers that
/// trust another CA or none; a worker with the right CA completes the sweep; unusable TLS
/// files are refused before anything is written (exit code 2).
#[test]
fn tls_runs_serve_https_and_workers_verify_the_certificate() {
    let dir = tmp("tls");
    make_ca(&dir, "ca", Some("server"));
    make_ca(&dir, "other", None);
    let sweep = dir.join("sleep.toml");
    std::fs::write(&sweep, "timeout = 60\nrepeats = 3\n[base]\nseed = 0\n[base.sleep]\nseconds = 0.2\n").unwrap();
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let tls = ["--tls-cert", &p("server.pem"), "--tls-key", &p("server.key")];

    let out = dir.join("run");
    let o = run(&sweep, &out, &[&tls[..], &["--tls-ca", &p("ca.pem")]].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("serving on https://127.0.0.1:"), "{err}");
    assert_eq!(count(&out, "SELECT COUNT(*) FROM results"), 3);

    // Unusable files: a key that is not a key, another certificate's key, a CA that is not a
    // certificate.
    let (server_pem, ca_pem, other_key, server_key) = (p("server.pem"), p("ca.pem"), p("other.key"), p("server.key"));
    let cases = [
        ("key", vec!["--tls-cert", &server_pem, "--tls-key", &ca_pem], "not a PEM"),
        ("pair", vec!["--tls-cert", &server_pem, "--tls-key", &other_key], "not usable together"),
        ("ca", [&tls[..], &["--tls-ca", &server_key]].concat(), "not a PEM"),
    ];
    for (what, args, want) in cases {
        let bad = dir.join(format!("bad-{what}"));
        let o = run(&sweep, &bad, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains(want), "{what}: {err}");
        assert!(!bad.exists(), "{what}: output written");
    }

    let out = dir.join("serve");
    let mut coord =
        Command::new(bin("coordinator")).arg("serve").arg(&sweep).arg("--out").arg(&out).args(["--listen", "127.0.0.1:0"]).args(tls).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(coord.stderr.take().unwrap()).lines();
    let url = loop {
        let l = lines.next().expect("coordinator exited").unwrap();
        if let Some(u) = l.strip_prefix("serving on ") {
            break u.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let token = out.join("token");
    let worker = |url: &str, ca: Option<&str>| {
        let mut cmd = Command::new(bin("worker"));
        cmd.args(["--coordinator", url, "--max-unreachable", "2"]).arg("--token-file").arg(&token).env_remove("SCORESWEEP_TLS_CA");
        if let Some(ca) = ca {
            cmd.arg("--tls-ca").arg(dir.join(ca));
        }
        cmd.output().unwrap()
    };
    let plain = url.replacen("https://", "http://", 1);
    for (what, o) in [("plain text", worker(&plain, None)), ("another CA", worker(&url, Some("other.pem"))), ("no CA", worker(&url, None))] {
        assert!(!o.status.success(), "{what}: the worker got in");
    }
    let o = worker(&url, None);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--tls-ca"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(count(&out, "SELECT COUNT(*) FROM workers"), 0, "nobody registered");
    let o = worker(&url, Some("ca.pem"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(coord.wait().unwrap().success());
    assert_eq!(count(&out, "SELECT COUNT(*) FROM results"), 3);
}

/// Cluster settings are checked before anything runs (exit code 2, nothing written): a flag of
/// another launcher, an ssh launcher without hosts or with a bad count, a bad Slurm time limit,
/// `--workers` with ssh.
#[test]
fn bad_cluster_settings_are_refused_before_anything_runs() {
    let dir = tmp("clusterflags");
    let sweep = dir.join("sleep.toml");
    std::fs::write(&sweep, "[base]\nseed = 0\n[base.sleep]\nseconds = 0.1\n").unwrap();
    let out = dir.join("out");
    let cases: [(&[&str], &str); 9] = [
        (&["--launcher", "local", "--ssh-hosts", "a"], "--ssh-hosts is a setting of --launcher ssh"),
        (&["--launcher", "slurm", "--pbs-queue", "q"], "--pbs-queue is a setting of --launcher pbs, not of --launcher slurm"),
        (&["--launcher", "pbs", "--pbs-walltime", "2h"], "--pbs-walltime: `2h` is not a PBS walltime"),
        (&["--launcher", "local", "--remote-worker-bin", "/opt/worker"], "--remote-worker-bin is for launchers whose workers run on other machines"),
        (&["--launcher", "slurm", "--ssh-arg=-p2222"], "--ssh-arg is a setting of --launcher ssh"),
        (&["--launcher", "ssh"], "--ssh-hosts"),
        (&["--launcher", "ssh", "--ssh-hosts", "a:0"], "`a:0`"),
        (&["--launcher", "slurm", "--slurm-time", "1h"], "not a Slurm time limit"),
        (&["--launcher", "ssh", "--ssh-hosts", "a:1", "--workers", "3"], "--workers does not apply"),
    ];
    for (args, want) in cases {
        let o = Command::new(bin("coordinator")).arg("run").arg(&sweep).arg("--out").arg(&out).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: `{want}` not in {err}");
        assert!(!out.exists(), "{args:?}: output written");
    }
}

/// `coordinator k8s-manifest` prints the Secret and the Job; a missing token file or a URL
/// that is not one is a usage error.
#[test]
fn k8s_manifest_prints_a_secret_and_a_job() {
    let dir = tmp("k8s");
    let token = dir.join("token");
    std::fs::write(&token, "ab".repeat(32)).unwrap();
    let k8s = |extra: &[&str]| {
        Command::new(bin("coordinator")).args(["k8s-manifest", "--image", "scoresweep/worker:1", "--workers", "4"]).arg("--token-file").arg(&token).args(extra).output().unwrap()
    };
    let o = k8s(&["--coordinator", "http://10.0.0.5:50051"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let yaml = String::from_utf8_lossy(&o.stdout);
    for want in ["kind: Secret", "kind: Job", "parallelism: 4", "secretKeyRef", "\"http://10.0.0.5:50051\""] {
        assert!(yaml.contains(want), "`{want}` not in:\n{yaml}");
    }
    let o = k8s(&["--coordinator", "10.0.0.5:50051"]);
    assert_eq!(o.status.code(), Some(2));
    std::fs::remove_file(&token).unwrap();
    let o = k8s(&["--coordinator", "http://10.0.0.5:50051"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("token file"));
}
