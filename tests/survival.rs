//! The real binaries against what a careless or hostile run setup gives them (issue 20):
//! `--lease-secs nan` is refused before anything runs; a coordinator without TLS off loopback
//! warns that the token crosses the network in clear; a worker given a CA with an `http://`
//! URL refuses to start; `coordinator status` prints no terminal escape a worker registered.
//! And hostile clients against real runs: the Python probes of items 1, 4, 6, 7, 8, 10 and 12,
//! and a soak beside a real sweep.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

mod common;
use common::{bin, count, table, tmp};

const SLEEP: &str = "name = \"s\"\n[base]\nseed = 0\n[base.sleep]\nseconds = 0.01\n";

#[test]
fn bad_lease_seconds_are_refused_before_anything_runs() {
    let dir = tmp("lease-secs");
    let sweep = dir.join("s.toml");
    std::fs::write(&sweep, SLEEP).unwrap();
    for bad in ["nan", "-1", "0"] {
        let out = dir.join(format!("out-{bad}"));
        let o = Command::new(bin("coordinator")).arg("serve").arg(&sweep).arg("--out").arg(&out).arg(format!("--lease-secs={bad}")).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("--lease-secs") && err.contains("above 0"), "{bad}: {err}");
        assert!(!out.exists(), "{bad}: nothing written");
    }
}

#[test]
fn cleartext_off_loopback_warns_and_a_ca_with_http_is_refused() {
    let dir = tmp("cleartext");
    let sweep = dir.join("s.toml");
    std::fs::write(&sweep, SLEEP).unwrap();
    let mut child =
        Command::new(bin("coordinator")).arg("serve").arg(&sweep).arg("--out").arg(dir.join("out")).args(["--listen", "0.0.0.0:0"]).stderr(Stdio::piped()).spawn().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.starts_with("serving on ");
        seen.push(line);
        if done {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let text = seen.join("\n");
    assert!(text.contains("WARNING: serving without TLS") && text.contains("in clear") && text.contains("--tls-cert"), "{text}");

    let o = Command::new(bin("worker"))
        .args(["--coordinator", "http://127.0.0.1:9", "--name", "w"])
        .env("SCORESWEEP_TLS_CA", "-----BEGIN CERTIFICATE-----\n")
        .env("SCORESWEEP_TOKEN", "t")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("SCORESWEEP_TLS_CA") && err.contains("http://"), "{err}");
}

#[test]
fn status_prints_no_terminal_escapes() {
    let dir = tmp("status-escapes");
    // The workers table as the layout writes it; `status` creates the rest.
    let conn = rusqlite::Connection::open(dir.join("state.db")).unwrap();
    conn.execute_batch("CREATE TABLE workers(seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL, registered_at REAL NOT NULL, cores INTEGER NOT NULL, gpus INTEGER NOT NULL, version TEXT NOT NULL, device TEXT NOT NULL DEFAULT '')").unwrap();
    conn.execute(
        "INSERT INTO workers(seq, id, name, registered_at, cores, gpus, version, device) VALUES (1, ?1, 'x', 0.0, 1, 0, 'v', ?2)",
        ["evil\u{1b}]0;pwned\u{7}#1.00ff", "cpu\u{1b}[2J\u{202E}"],
    )
    .unwrap();
    drop(conn);
    let o = Command::new(bin("coordinator")).arg("status").arg(&dir).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("evil<U+001B>]0;pwned<U+0007>#1") && text.contains("cpu<U+001B>[2J<U+202E>"), "{text}");
    assert!(!text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\u{202E}'), "{text:?}");
}

/// The Python of `$SCORESWEEP_PYTHON` (grpcio and grpcio-tools; `.ci/run` makes one), or None
/// (the test says it is skipped).
fn python() -> Option<std::ffi::OsString> {
    let p = std::env::var_os("SCORESWEEP_PYTHON").filter(|p| !p.is_empty());
    if p.is_none() {
        eprintln!("skipped: set SCORESWEEP_PYTHON to a Python with grpcio and grpcio-tools (.ci/run does)");
    }
    p
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `PROTOCOL_VERSION` as proto/src/lib.rs declares it, for the Python probes.
fn protocol_version() -> String {
    let src = std::fs::read_to_string(root().join("proto/src/lib.rs")).unwrap();
    let line = src.lines().find(|l| l.contains("const PROTOCOL_VERSION: u32")).expect("PROTOCOL_VERSION in proto/src/lib.rs");
    line.rsplit('=').next().unwrap().trim().trim_end_matches(';').trim().to_string()
}

/// Starts `coordinator <args>` with stderr read on a thread; returns it with the URL it serves on.
fn start_coordinator(args: &[&std::ffi::OsStr]) -> (std::process::Child, String) {
    let mut child = Command::new(bin("coordinator")).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = loop {
        let l = lines.next().expect("coordinator exited before serving").unwrap();
        if let Some(u) = l.strip_prefix("serving on ") {
            break u.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}

/// Issue 20's probes (`tests/python/hostile_probes.py`) against a real `serve`: a late report of
/// a lost lease (item 1), metric names that collide with the table's columns (4), impossible GPU
/// lists (6), reports refused before they are read (7), upload budgets and cleanup (8), hoarding
/// and registration floods (10), worker strings in the outputs (12). Each prints what it tried
/// and what held.
#[test]
fn hostile_probes_hold_against_a_real_serve() {
    let Some(python) = python() else { return };
    let dir = tmp("probes");
    let sweep = dir.join("probes.toml");
    std::fs::write(&sweep, "name = \"probes\"\nretries = 5\nrepeats = 12\n[base]\nseed = 0\n[base.sleep]\nseconds = 0.01\n").unwrap();
    let out = dir.join("out");
    let (mut coordinator, url) =
        start_coordinator(&["serve".as_ref(), sweep.as_os_str(), "--out".as_ref(), out.as_os_str(), "--listen=127.0.0.1:0".as_ref(), "--lease-secs=8".as_ref()]);
    let script = root().join("tests/python/hostile_probes.py");
    let o = Command::new(&python)
        .arg(&script)
        .arg("probes")
        .arg(root().join("proto"))
        .arg(&url)
        .arg(out.join("token"))
        .arg(&out)
        .env("SCORESWEEP_PROTOCOL_VERSION", protocol_version())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    eprintln!("{text}");
    if !o.status.success() {
        let _ = coordinator.kill();
    }
    assert!(o.status.success() && text.contains("probes: every promise held"), "{text}");
    for item in [1, 4, 6, 7, 8, 10, 12] {
        assert!(text.contains(&format!("item {item}: ")), "item {item} not probed: {text}");
    }
    assert!(coordinator.wait().unwrap().success(), "the run ends once every trial is reported");
    assert_eq!(count(&out, "SELECT COUNT(*) FROM results"), 12, "every trial recorded once");
    let o = Command::new(&python).arg(&script).arg("outputs").arg(&out).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    eprintln!("{text}");
    assert!(o.status.success() && text.contains("item 4: ") && text.contains("item 12: "), "{text}");
}

/// The peak resident memory (VmHWM, KiB) and the most open descriptors of process `pid`, polled
/// every 20 ms until it exits.
fn watch(pid: u32) -> std::thread::JoinHandle<(u64, usize)> {
    std::thread::spawn(move || {
        let (mut rss, mut fds) = (0, 0);
        while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if status.lines().any(|l| l.starts_with("State:") && l.contains('Z')) {
                break;
            }
            if let Some(kb) = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()) {
                rss = rss.max(kb);
            }
            if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                fds = fds.max(d.count());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        (rss, fds)
    })
}

const SOAK: &str = r#"
name = "soak"
timeout = 120
retries = 4
repeats = 12
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

/// A soak: a real sweep (24 toy trials, two local workers) while a hostile client
/// (`hostile_probes.py soak`, loopback, bounded loops) registers, hoards, cancels (at most 3
/// leases, within the sweep's retries), floods uploads, holds idle uploads open and sends reports
/// of attempts it does not hold and over the message limit. The sweep finishes with every trial
/// recorded once and the same table as an undisturbed run; the coordinator's peak memory and open
/// descriptors stay near the undisturbed run's (both printed; README, "Limits").
#[test]
fn a_sweep_finishes_beside_a_hostile_client_with_bounded_memory_and_files() {
    let Some(python) = python() else { return };
    let dir = tmp("soak");
    let sweep = dir.join("soak.toml");
    std::fs::write(&sweep, SOAK).unwrap();
    fn run<'a>(sweep: &'a Path, out: &'a Path) -> Vec<&'a std::ffi::OsStr> {
        vec!["run".as_ref(), sweep.as_os_str(), "--out".as_ref(), out.as_os_str(), "--workers=2".as_ref(), "--listen=127.0.0.1:0".as_ref()]
    }
    let (reference, soaked) = (dir.join("reference"), dir.join("soaked"));

    let (mut c, _) = start_coordinator(&run(&sweep, &reference));
    let quiet = watch(c.id());
    assert!(c.wait().unwrap().success());
    let (quiet_rss, quiet_fds) = quiet.join().unwrap();
    let n = count(&reference, "SELECT COUNT(*) FROM trials");
    assert_eq!(n, 24);

    let (mut c, url) = start_coordinator(&run(&sweep, &soaked));
    let loud = watch(c.id());
    let o = Command::new(&python)
        .arg(root().join("tests/python/hostile_probes.py"))
        .arg("soak")
        .arg(root().join("proto"))
        .arg(&url)
        .arg(soaked.join("token"))
        .arg("120")
        .env("SCORESWEEP_PROTOCOL_VERSION", protocol_version())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(c.wait().unwrap().success(), "{text}");
    let (soak_rss, soak_fds) = loud.join().unwrap();
    eprintln!("{text}");
    eprintln!("coordinator peak: undisturbed {} MiB, {quiet_fds} descriptors; beside the hostile client {} MiB, {soak_fds} descriptors", quiet_rss / 1024, soak_rss / 1024);
    assert!(o.status.success() && text.contains("every promise held"), "{text}");
    assert!(text.contains("leases cancelled") && !text.contains(" 0 rounds"), "the hostile client did its work: {text}");

    assert_eq!(count(&soaked, "SELECT COUNT(*) FROM results"), n, "every trial has a result");
    assert_eq!(count(&soaked, "SELECT COUNT(*) FROM attempts WHERE outcome IN ('done', 'diverged')"), n, "each trial recorded once");
    assert_eq!(table(&soaked), table(&reference), "the same table as an undisturbed run");
    // Bounded: every oversized message is refused before it is buffered whole, and idle uploads
    // and streams are limited per attempt and connection.
    assert!(soak_rss < quiet_rss + 256 * 1024 && soak_rss < 1024 * 1024, "peak memory {soak_rss} KiB beside the hostile client, {quiet_rss} KiB without");
    assert!(soak_fds <= quiet_fds + 32, "{soak_fds} descriptors beside the hostile client, {quiet_fds} without");
}
