//! Processes dying under a running sweep, with the real binaries: a local worker killed with
//! SIGKILL is respawned and the run finishes; one stopped with SIGTERM gives its attempt back
//! at once (not counted as a try); local workers exit within about a second of
//! their coordinator's death (a worker started by hand keeps its retry window); and a sweep
//! whose workers and coordinator are killed many times at random (seeded) ends, after a rerun,
//! with every trial recorded once, the same table as an undisturbed run (timing columns aside)
//! and no process left behind. Processes are found through /proc (Linux).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{bin, count, table, tmp, try_count, wait_for};

// ------------------------------------------------------------------ processes, from /proc

/// (pid, parent pid, state) of every process; zombies (state `Z`) count as gone.
fn processes() -> Vec<(u32, u32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
        let mut f = rest.split(' ');
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        out.push((pid, ppid, state));
    }
    out
}

fn alive(pid: u32) -> bool {
    processes().iter().any(|&(p, _, s)| p == pid && s != 'Z')
}

/// Live children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    processes().into_iter().filter(|&(_, pp, s)| pp == pid && s != 'Z').map(|(p, _, _)| p).collect()
}

/// Live processes whose environment holds `tag` (set on the coordinator, inherited by its
/// workers).
fn tagged(tag: &str) -> Vec<u32> {
    let needle = tag.as_bytes();
    processes()
        .into_iter()
        .filter(|&(_, _, s)| s != 'Z')
        .filter(|&(p, _, _)| std::fs::read(format!("/proc/{p}/environ")).is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == needle)))
        .map(|(p, _, _)| p)
        .collect()
}

fn kill(pid: u32) {
    signal(pid, "KILL");
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill").args(["-s", name, &pid.to_string()]).status();
}

/// `coordinator run SWEEP --out OUT ARGS…` in a process group of its own (so the test's own
/// group is never signalled), with `tag` in its environment and its output discarded.
fn start_run(sweep: &Path, out: &Path, args: &[&str], tag: &str) -> Child {
    let (k, v) = tag.split_once('=').unwrap();
    Command::new(bin("coordinator")).arg("run").arg(sweep).arg("--out").arg(out).args(args).env(k, v).process_group(0).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

/// xorshift64*: the kill schedule is reproducible from the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ------------------------------------------------------------------ tests

#[test]
fn a_killed_local_worker_is_respawned_and_the_run_finishes() {
    let dir = tmp("respawn");
    let sweep = dir.join("sleep.toml");
    std::fs::write(&sweep, "timeout = 60\nretries = 3\nrepeats = 4\n[base]\nseed = 0\n[base.sleep]\nseconds = 0.6\n").unwrap();
    let out = dir.join("out");
    let tag = format!("SCORESWEEP_TEST_TAG=respawn-{}", std::process::id());
    let (k, v) = tag.split_once('=').unwrap();
    let child = Command::new(bin("coordinator"))
        .arg("run")
        .arg(&sweep)
        .arg("--out")
        .arg(&out)
        .args(["--workers", "1", "--lease-secs", "1"])
        .env(k, v)
        .process_group(0)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let coordinator = child.id();
    // Kill the only worker twice, each time once it has leased a trial.
    for kills in 1..=2i64 {
        wait_for("a lease of the live worker", 30.0, || try_count(&out, "SELECT COUNT(*) FROM attempts").unwrap_or(0) >= kills && children(coordinator).len() == 1);
        let victim = children(coordinator)[0];
        kill(victim);
        wait_for("the respawn", 30.0, || children(coordinator).iter().any(|&p| p != victim));
        wait_for("the respawn event", 5.0, || try_count(&out, "SELECT COUNT(*) FROM events WHERE kind = 'respawn'") == Some(kills));
    }
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("was killed by signal 9; respawning it") && stderr.contains("2 local worker respawn(s)"), "{stderr}");
    assert_eq!(count(&out, "SELECT COUNT(*) FROM results"), 4);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Workers") && report.contains("2 local worker(s) died") && report.contains("local0 respawned (2 of at most 100)"), "{report}");
    assert!(tagged(&tag).is_empty(), "processes left behind");
}

/// SIGTERM (what `scancel`, `qdel` and `kill` send) makes a worker give its running attempt back
/// (`Cancel`): the trial is queued again at once, long before its 60 s lease would expire. The
/// attempt counts as a try (a worker-initiated cancel always does: otherwise lease → cancel
/// would hold a trial for ever), so one retry lets it finish.
#[test]
fn a_worker_stopped_with_sigterm_gives_its_attempt_back() {
    let dir = tmp("sigterm");
    let sweep = dir.join("sleep.toml");
    std::fs::write(&sweep, "timeout = 120\nretries = 1\nrepeats = 2\n[base]\nseed = 0\n[base.sleep]\nseconds = 2.0\n").unwrap();
    let out = dir.join("out");
    let child = Command::new(bin("coordinator"))
        .arg("run")
        .arg(&sweep)
        .arg("--out")
        .arg(&out)
        .args(["--workers", "1", "--lease-secs", "60"])
        .process_group(0)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let coordinator = child.id();
    wait_for("a running attempt", 30.0, || try_count(&out, "SELECT COUNT(*) FROM attempts WHERE outcome = 'running'") == Some(1) && children(coordinator).len() == 1);
    let victim = children(coordinator)[0];
    let stopped = Instant::now();
    signal(victim, "TERM");
    wait_for("the attempt given back", 10.0, || try_count(&out, "SELECT COUNT(*) FROM attempts WHERE outcome = 'cancelled'") == Some(1));
    assert!(stopped.elapsed() < Duration::from_secs(10), "given back, not expired");
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM; attempt 1 of trial") && stderr.contains("given back"), "{stderr}");
    // Both are done; the trial given back was run again, its cancelled attempt counted.
    assert_eq!(count(&out, "SELECT COUNT(*) FROM trials WHERE status = 'done'"), 2, "{stderr}");
    assert_eq!(count(&out, "SELECT COUNT(*) FROM attempts"), 3);
    assert_eq!(count(&out, "SELECT MAX(attempts) FROM trials"), 2, "the attempt given back counts as a try");
}

#[test]
fn local_workers_exit_within_a_second_of_their_coordinators_death() {
    let dir = tmp("orphans");
    let sweep = dir.join("sleep.toml");
    std::fs::write(&sweep, "timeout = 120\nrepeats = 4\n[base]\nseed = 0\n[base.sleep]\nseconds = 60\n").unwrap();
    let out = dir.join("out");
    let tag = format!("SCORESWEEP_TEST_TAG=orphans-{}", std::process::id());
    let mut coordinator = start_run(&sweep, &out, &["--workers", "2"], &tag);
    wait_for("two running trials", 30.0, || try_count(&out, "SELECT COUNT(*) FROM attempts WHERE outcome = 'running'") == Some(2));
    let workers = children(coordinator.id());
    assert_eq!(workers.len(), 2, "{workers:?}");
    // The coordinator alone (not its process group), as a crash or the OOM killer would.
    kill(coordinator.id());
    let killed = Instant::now();
    coordinator.wait().unwrap();
    wait_for("the orphaned workers to exit", 1.5, || workers.iter().all(|&p| !alive(p)));
    eprintln!("orphaned workers gone {:.2}s after the coordinator", killed.elapsed().as_secs_f64());
    assert!(tagged(&tag).is_empty(), "processes left behind");

    // A worker started by hand keeps retrying after its parent (here a shell) is gone.
    let sh =
        Command::new("sh").arg("-c").arg(format!("{} --coordinator http://127.0.0.1:9 --max-unreachable 30 >/dev/null 2>&1 & echo $!", bin("worker").display())).output().unwrap();
    let pid: u32 = String::from_utf8_lossy(&sh.stdout).trim().parse().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let survived = alive(pid);
    kill(pid);
    assert!(survived, "a worker started by hand must keep its retry window");
}

/// Tiny real training trials (about half a second each): 40 of them.
const CHAOS: &str = r#"
timeout = 60
retries = 200
repeats = 20
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
steps = 20000
batch = 64
eval_every = 0
[base.eval]
n = 2000
c_samples = 5000
[base.sampler]
kind = "none"
[grid]
"train.steps" = [20000, 40000]
"#;

#[test]
fn a_sweep_survives_dozens_of_worker_kills_and_several_coordinator_kills() {
    const WORKER_KILLS: usize = 30;
    const COORDINATOR_KILLS: usize = 3;
    let dir = tmp("chaos");
    let sweep = dir.join("chaos.toml");
    std::fs::write(&sweep, CHAOS).unwrap();
    let tag = format!("SCORESWEEP_TEST_TAG=chaos-{}", std::process::id());
    let args = ["--workers", "2", "--lease-secs", "1", "--max-respawns", "1000", "--quiet"];

    let reference = dir.join("reference");
    let o = Command::new(bin("coordinator")).arg("run").arg(&sweep).arg("--out").arg(&reference).args(args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let n = count(&reference, "SELECT COUNT(*) FROM trials");
    assert_eq!(n, 40);

    let out = dir.join("out");
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let mut coordinator = start_run(&sweep, &out, &args, &tag);
    let (mut worker_kills, mut coordinator_kills) = (0, 0);
    let started = Instant::now();
    while worker_kills < WORKER_KILLS || coordinator_kills < COORDINATOR_KILLS {
        assert!(started.elapsed() < Duration::from_secs(240), "chaos phase too long ({worker_kills} worker kills, {coordinator_kills} coordinator kills)");
        std::thread::sleep(Duration::from_secs_f64(rng.uniform(0.15, 0.5)));
        if coordinator.try_wait().unwrap().is_some() {
            break; // the sweep finished despite everything
        }
        // A coordinator kill after every WORKER_KILLS / (COORDINATOR_KILLS + 1) worker kills.
        if coordinator_kills < COORDINATOR_KILLS && worker_kills >= (coordinator_kills + 1) * WORKER_KILLS / (COORDINATOR_KILLS + 1) {
            let workers = children(coordinator.id());
            kill(coordinator.id());
            coordinator.wait().unwrap();
            coordinator_kills += 1;
            wait_for("the dead coordinator's workers to exit", 2.0, || workers.iter().all(|&p| !alive(p)));
            coordinator = start_run(&sweep, &out, &args, &tag);
            continue;
        }
        let workers = children(coordinator.id());
        if !workers.is_empty() {
            kill(workers[rng.below(workers.len())]);
            worker_kills += 1;
        }
    }
    eprintln!("{worker_kills} worker kills, {coordinator_kills} coordinator kills in {:.1}s", started.elapsed().as_secs_f64());
    assert!(
        worker_kills >= 24 && coordinator_kills == COORDINATOR_KILLS,
        "the sweep ended before the chaos did: {worker_kills} worker kills, {coordinator_kills} coordinator kills"
    );
    // The last coordinator finishes undisturbed; then the same command once more.
    let status = coordinator.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let o = Command::new(bin("coordinator")).arg("run").arg(&sweep).arg("--out").arg(&out).args(args).env(tag.split_once('=').unwrap().0, "rerun").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    assert_eq!(count(&out, "SELECT COUNT(*) FROM results"), n, "every trial has a result");
    assert_eq!(count(&out, "SELECT COUNT(DISTINCT trial_hash) FROM results"), n);
    assert_eq!(count(&out, "SELECT COUNT(*) FROM attempts WHERE outcome IN ('done', 'diverged')"), n, "each trial recorded once");
    assert_eq!(count(&out, "SELECT COUNT(*) FROM trials WHERE status != 'done'"), 0);
    assert!(count(&out, "SELECT COUNT(*) FROM attempts") > n, "attempts were lost to the kills");
    assert!(count(&out, "SELECT COUNT(*) FROM events WHERE kind = 'respawn'") > 0);
    assert_eq!(table(&out), table(&reference), "same metrics as an undisturbed run");
    wait_for("no process left behind", 2.0, || tagged(&tag).is_empty());
}
