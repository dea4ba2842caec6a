//! The cluster launchers against a real one-node Slurm cluster and a real sshd on localhost
//! (both brought up by `scripts/cluster-up.sh`, which `.ci/run` calls): a sweep runs end to
//! end through each; a Slurm job cancelled mid-trial (`scancel`) is survived with every trial
//! recorded once; Ctrl-C cancels the run's jobs; an ssh host that cannot be reached is reported
//! and skipped; remote workers without the token or with a wrong one are refused; remote
//! workers stop when their coordinator dies; remote workers verify a TLS coordinator with the
//! CA they are given; and the token is in no process's command line, no Slurm job record or
//! batch script, and in a file of mode 0600.
//!
//! Without Slurm or the sshd each test prints `SKIPPED: …` and passes, unless
//! `SCORESWEEP_REQUIRE_CLUSTER=1` (set by `.ci/run`), which makes a missing cluster a failure.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{bin, count, make_ca, tmp, try_count, wait_for};

/// Whether a missing cluster fails the test instead of skipping it.
fn required() -> bool {
    std::env::var("SCORESWEEP_REQUIRE_CLUSTER").is_ok_and(|v| v == "1")
}

/// Skips (prints and returns false) or, under `SCORESWEEP_REQUIRE_CLUSTER=1`, fails.
fn available(what: &str, problem: Option<String>) -> bool {
    match problem {
        None => true,
        Some(p) if required() => panic!("{what} is required (SCORESWEEP_REQUIRE_CLUSTER=1) but not usable: {p}; run scripts/cluster-up.sh"),
        Some(p) => {
            eprintln!("SKIPPED: {what} not usable ({p}); run scripts/cluster-up.sh, or set SCORESWEEP_REQUIRE_CLUSTER=1 to make this a failure");
            false
        }
    }
}

fn slurm_problem() -> Option<String> {
    match Command::new("sinfo").args(["-h", "-o", "%t"]).output() {
        Err(e) => Some(format!("sinfo: {e}")),
        Ok(o) if !o.status.success() => Some(format!("sinfo: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Ok(o) => {
            let states = String::from_utf8_lossy(&o.stdout).to_string();
            if states.lines().any(|s| s.starts_with("idle") || s.starts_with("mix") || s.starts_with("alloc")) {
                None
            } else {
                Some(format!("no usable node (sinfo: {})", states.trim()))
            }
        }
    }
}

/// The ssh configuration written by scripts/cluster-up.sh (host `scoresweep-ssh`).
fn ssh_config() -> PathBuf {
    std::env::var_os("SCORESWEEP_SSH_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/scoresweep-cluster/ssh_config"))
}

const SSH_HOST: &str = "scoresweep-ssh";

fn ssh_problem() -> Option<String> {
    let cfg = ssh_config();
    if !cfg.is_file() {
        return Some(format!("{} does not exist", cfg.display()));
    }
    match Command::new("ssh").arg("-F").arg(&cfg).args([SSH_HOST, "true"]).stdin(Stdio::null()).output() {
        Err(e) => Some(format!("ssh: {e}")),
        Ok(o) if !o.status.success() => Some(format!("ssh {SSH_HOST}: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Ok(_) => None,
    }
}

/// A running `coordinator run`: its process, its URL and everything it printed so far.
struct Coordinator {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Coordinator {
    fn start(sweep: &Path, out: &Path, args: &[&str]) -> Coordinator {
        let mut child = Command::new(bin("coordinator")).arg("run").arg(sweep).arg("--out").arg(out).args(args).stderr(Stdio::piped()).spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = loop {
            let l = lines.next().unwrap_or_else(|| panic!("coordinator exited: {}", log.lock().unwrap())).unwrap();
            log.lock().unwrap().push_str(&format!("{l}\n"));
            if let Some(u) = l.strip_prefix("serving on ") {
                break u.trim().to_string();
            }
        };
        let sink = log.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                sink.lock().unwrap().push_str(&format!("{l}\n"));
            }
        });
        Coordinator { child, url, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for the run to end (at most `secs`) and asserts it succeeded.
    fn succeeds(mut self, secs: f64) -> String {
        let t = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if t.elapsed().as_secs_f64() > secs {
                let _ = self.child.kill();
                panic!("the run took over {secs} s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        std::thread::sleep(Duration::from_millis(200));
        let log = self.log();
        eprintln!("--- coordinator ---\n{log}");
        assert!(status.success(), "the run failed:\n{log}");
        log
    }
}

/// Command lines of every process (pid, text with spaces for NULs).
fn command_lines() -> Vec<(String, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.bytes().all(|b| b.is_ascii_digit())
            && let Ok(c) = std::fs::read(e.path().join("cmdline"))
        {
            v.push((name, String::from_utf8_lossy(&c).replace('\0', " ")));
        }
    }
    v
}

fn assert_token_on_no_command_line(token: &str) {
    for (pid, cmd) in command_lines() {
        assert!(!cmd.contains(token), "the token is on the command line of process {pid}: {cmd}");
    }
}

/// Reads the run's token once it is written, checking its mode.
fn token(out: &Path) -> String {
    let path = out.join("token");
    wait_for("the token file", 30.0, || path.exists());
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "token file mode");
    std::fs::read_to_string(&path).unwrap()
}

fn sleep_sweep(dir: &Path, trials: usize, seconds: f64, retries: u32) -> PathBuf {
    let sweep = dir.join("sleep.toml");
    std::fs::write(&sweep, format!("timeout = 120\nretries = {retries}\nrepeats = {trials}\n[base]\nseed = 0\n[base.sleep]\nseconds = {seconds}\n")).unwrap();
    sweep
}

/// Slurm job ids of a run's workers, with the worker names, from `slurm/jobs.tsv`.
fn slurm_jobs(out: &Path) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(out.join("slurm/jobs.tsv")).unwrap_or_default();
    let mut v: Vec<(String, u64)> = text.lines().filter_map(|l| l.split_once('\t')).filter_map(|(id, name)| Some((name.to_string(), id.parse().ok()?))).collect();
    v.sort_by_key(|(_, id)| *id);
    v
}

/// Jobs Slurm still holds as pending or running, among `ids`.
fn slurm_active(ids: &[u64]) -> Vec<u64> {
    let o = Command::new("squeue").args(["-h", "-o", "%i %T"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, st)| !matches!(*st, "COMPLETED" | "CANCELLED" | "FAILED" | "TIMEOUT"))
        .filter_map(|(id, _)| id.parse().ok())
        .filter(|id| ids.contains(id))
        .collect()
}

fn output_of(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn slurm_runs_a_sweep_survives_a_cancelled_job_and_keeps_the_token_out_of_job_records() {
    if !available("Slurm", slurm_problem()) {
        return;
    }
    let dir = tmp("slurm");
    let out = dir.join("out");
    let sweep = sleep_sweep(&dir, 6, 2.0, 3);
    let coord = Coordinator::start(&sweep, &out, &["--launcher", "slurm", "--workers", "2", "--lease-secs", "2", "--slurm-time", "10"]);
    assert!(!coord.url.contains("0.0.0.0"), "a wildcard address was advertised: {}", coord.url);
    let token = token(&out);
    // A trial running on a Slurm worker: cancel that worker's job mid-trial.
    wait_for("a running attempt", 60.0, || try_count(&out, "SELECT COUNT(*) FROM attempts WHERE outcome = 'running' AND worker LIKE 'slurm%'").unwrap_or(0) > 0);
    let worker: String = rusqlite::Connection::open(out.join("state.db"))
        .unwrap()
        .query_row("SELECT worker FROM attempts WHERE outcome = 'running' AND worker LIKE 'slurm%' LIMIT 1", [], |r| r.get(0))
        .unwrap();
    let name = worker.split('#').next().unwrap().to_string();
    let job = slurm_jobs(&out).into_iter().rev().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no job log for {name}")).1;
    // The token is in no job record, batch script or command line.
    let id = job.to_string();
    for (what, text) in [
        ("scontrol show job", output_of("scontrol", &["-dd", "show", "job", &id])),
        ("squeue", output_of("squeue", &["-o", "%all"])),
        ("the batch script", output_of("scontrol", &["write", "batch_script", &id, "-"])),
    ] {
        assert!(text.contains(&id) || what == "the batch script", "{what} does not show job {id}: {text}");
        assert!(!text.contains(&token), "the token is in {what}");
    }
    assert!(output_of("scontrol", &["write", "batch_script", &id, "-"]).contains("exec "), "batch script not readable");
    assert_token_on_no_command_line(&token);
    let o = Command::new("scancel").arg(&id).output().unwrap();
    assert!(o.status.success(), "scancel: {}", String::from_utf8_lossy(&o.stderr));

    let log = coord.succeeds(180.0);
    assert!(log.contains(&format!("slurm job {id}: CANCELLED")), "the cancelled job was not reported:\n{log}");
    assert_eq!(count(&out, "SELECT COUNT(*) FROM results"), 6, "every trial recorded");
    assert_eq!(count(&out, "SELECT COUNT(DISTINCT trial_id) FROM results"), 6, "each once");
    assert_eq!(count(&out, "SELECT COUNT(*) FROM trials WHERE status = 'done'"), 6);
    // scancel sends SIGTERM: the worker gives its attempt back (or, killed first, its lease expires).
    assert!(count(&out, "SELECT COUNT(*) FROM attempts WHERE outcome IN ('cancelled', 'expired')") >= 1, "the cancelled job's attempt was given back or expired");
    assert!(count(&out, "SELECT COUNT(*) FROM events WHERE kind = 'respawn'") >= 1, "the lost worker was replaced");
    // Every job of the run is gone.
    let ids: Vec<u64> = slurm_jobs(&out).into_iter().map(|(_, id)| id).collect();
    assert!(ids.len() >= 3, "two workers and a replacement: {ids:?}");
    wait_for("the run's jobs to end", 30.0, || slurm_active(&ids).is_empty());
}

/// Ctrl-C twice, or SIGTERM once: running trials are cancelled and every job of the run ends;
/// jobs that never started are `scancel`led (they would otherwise wait in the queue).
#[test]
fn slurm_jobs_are_cancelled_when_the_run_is_interrupted_or_terminated() {
    if !available("Slurm", slurm_problem()) {
        return;
    }
    for signals in [&["-INT", "-INT"][..], &["-TERM"][..]] {
        let dir = tmp(&format!("slurm-int{}", signals.len()));
        let out = dir.join("out");
        // Sleep trials far longer than the test: only the interruption ends them.
        let sweep = sleep_sweep(&dir, 4, 600.0, 0);
        let coord = Coordinator::start(&sweep, &out, &["--launcher", "slurm", "--workers", "2", "--lease-secs", "4"]);
        wait_for("a running attempt", 60.0, || try_count(&out, "SELECT COUNT(*) FROM attempts WHERE outcome = 'running'").unwrap_or(0) > 0);
        let pid = coord.child.id().to_string();
        // First Ctrl-C: no new trials; second: running ones are cancelled; then the jobs go.
        for sig in signals {
            assert!(Command::new("kill").args([*sig, pid.as_str()]).status().unwrap().success());
            std::thread::sleep(Duration::from_millis(500));
        }
        let log = coord.succeeds(60.0);
        assert!(log.contains("cancelling running trials"), "{signals:?}: {log}");
        let ids: Vec<u64> = slurm_jobs(&out).into_iter().map(|(_, id)| id).collect();
        assert_eq!(ids.len(), 2, "two jobs submitted");
        wait_for("the run's jobs to end", 30.0, || slurm_active(&ids).is_empty());
        assert_eq!(count(&out, "SELECT COUNT(*) FROM results"), 0);
    }
    // Jobs that cannot start yet (`--begin` an hour away): an interrupted run cancels them.
    let dir = tmp("slurm-pending");
    let out = dir.join("out");
    let sweep = sleep_sweep(&dir, 2, 1.0, 0);
    let coord = Coordinator::start(&sweep, &out, &["--launcher", "slurm", "--workers", "2", "--slurm-arg=--begin=now+1hour"]);
    wait_for("two submitted jobs", 30.0, || slurm_jobs(&out).len() == 2);
    let ids: Vec<u64> = slurm_jobs(&out).into_iter().map(|(_, id)| id).collect();
    assert_eq!(slurm_active(&ids).len(), 2, "the jobs wait in the queue");
    assert!(Command::new("kill").args(["-INT", &coord.child.id().to_string()]).status().unwrap().success());
    coord.succeeds(30.0);
    assert!(slurm_active(&ids).is_empty(), "pending jobs left in the queue");
    for id in &ids {
        let s = output_of("scontrol", &["-o", "show", "job", &id.to_string()]);
        assert!(s.contains("JobState=CANCELLED"), "job {id} not cancelled: {s}");
    }
}

const TRAIN: &str = r#"
timeout = 120
repeats = 3
[base]
seed = 0
[base.data]
preset = "seed1d"
[base.model]
kind = "mlp"
hidden = 16
[base.objective]
kind = "ism"
[base.train]
steps = 60
batch = 64
eval_every = 30
[base.eval]
n = 2000
[base.sampler]
kind = "none"
"#;

#[test]
fn ssh_runs_a_sweep_on_the_reachable_hosts_and_artifacts_come_back() {
    if !available("sshd on localhost", ssh_problem()) {
        return;
    }
    let dir = tmp("ssh");
    let out = dir.join("out");
    let sweep = dir.join("train.toml");
    std::fs::write(&sweep, TRAIN).unwrap();
    let cfg = ssh_config();
    let cfg_arg = format!("--ssh-arg={}", cfg.display());
    // Over TLS: the remote workers get the CA certificate with their command.
    make_ca(&dir, "ca", Some("server"));
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let tls = ["--tls-cert", &p("server.pem"), "--tls-key", &p("server.key"), "--tls-ca", &p("ca.pem"), "--advertise", "127.0.0.1"];
    let hosts = format!("{SSH_HOST}:2,nohost.invalid");
    let coord = Coordinator::start(&sweep, &out, &[&["--launcher", "ssh", "--ssh-hosts", &hosts, "--ssh-arg=-F", &cfg_arg][..], &tls].concat());
    assert!(coord.url.starts_with("https://127.0.0.1:"), "{}", coord.url);
    let token = token(&out);
    wait_for("a lease", 60.0, || try_count(&out, "SELECT COUNT(*) FROM attempts").unwrap_or(0) > 0);
    assert_token_on_no_command_line(&token);
    let remote: Vec<String> = command_lines().into_iter().map(|(_, c)| c).filter(|c| c.contains("--exit-on-stdin-eof") && c.contains(&coord.url) && !c.contains("sh -c")).collect();
    assert!(remote.iter().any(|c| c.contains("--token-stdin")), "no remote worker found: {remote:?}");
    let url = coord.url.clone();
    let log = coord.succeeds(180.0);
    assert!(log.contains("host nohost.invalid") && log.contains("not started"), "the bad host was not reported:\n{log}");
    assert_eq!(count(&out, "SELECT COUNT(*) FROM results"), 3);
    assert_eq!(count(&out, "SELECT COUNT(DISTINCT worker) FROM attempts"), count(&out, "SELECT COUNT(DISTINCT worker) FROM attempts WHERE worker LIKE 'scoresweep-ssh:%'"));
    // The checkpoints came back over the protocol into this run's output directory.
    assert_eq!(count(&out, "SELECT COUNT(*) FROM artifacts WHERE name = 'model.safetensors'"), 3);
    let kept = std::fs::read_dir(out.join("artifacts")).unwrap().flatten().filter(|e| e.path().join("model.safetensors").is_file()).count();
    assert_eq!(kept, 3);
    // The remote workers are gone.
    wait_for("the remote workers to exit", 10.0, || !command_lines().iter().any(|(_, c)| c.contains("--exit-on-stdin-eof") && c.contains(&url)));
}

#[test]
fn ssh_workers_need_the_token_and_die_with_their_coordinator() {
    if !available("sshd on localhost", ssh_problem()) {
        return;
    }
    let dir = tmp("ssh-kill");
    let out = dir.join("out");
    let sweep = sleep_sweep(&dir, 4, 600.0, 0);
    let cfg = ssh_config();
    let cfg_arg = format!("--ssh-arg={}", cfg.display());
    let mut coord = Coordinator::start(&sweep, &out, &["--launcher", "ssh", "--ssh-hosts", &format!("{SSH_HOST}:1"), "--ssh-arg=-F", &cfg_arg]);
    wait_for("a lease", 60.0, || try_count(&out, "SELECT COUNT(*) FROM attempts").unwrap_or(0) > 0);
    // Remote workers without the token, or with a wrong one, are refused.
    let worker = bin("worker");
    for (what, env) in [("no token", ""), ("a wrong token", "SCORESWEEP_TOKEN=0000000000000000 ")] {
        let remote = format!("{env}{} --coordinator {} --name intruder --max-unreachable 5", worker.display(), coord.url);
        let o = Command::new("ssh").arg("-F").arg(&cfg).args([SSH_HOST, &remote]).stdin(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what}: the intruder was admitted");
        assert!(err.contains("token"), "{what}: {err}");
    }
    assert_eq!(count(&out, "SELECT COUNT(*) FROM workers WHERE name = 'intruder'"), 0);
    // A coordinator killed outright: its remote workers see their ssh session end and exit.
    let url = coord.url.clone();
    assert!(command_lines().iter().any(|(_, c)| c.contains("--exit-on-stdin-eof") && c.contains(&url)));
    coord.child.kill().unwrap();
    coord.child.wait().unwrap();
    wait_for("the remote workers to exit", 10.0, || !command_lines().iter().any(|(_, c)| c.contains("--exit-on-stdin-eof") && c.contains(&url)));
}
