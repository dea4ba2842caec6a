//! The real binaries against what a careless or hostile run setup gives them (issue 20):
//! `--lease-secs nan` is refused before anything runs; a coordinator without TLS off loopback
//! warns that the token crosses the network in clear; a worker given a CA with an `http://`
//! URL refuses to start; `coordinator status` prints no terminal escape a worker registered.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

mod common;
use common::{bin, tmp};

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
