//! The agent's flags for remote launchers, without a coordinator: `--exit-on-stdin-eof` ends
//! the worker as soon as its standard input closes (however long its retry window), the token
//! of `--token-stdin` must be there, and an https:// URL needs a CA.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_worker"))
}

/// A coordinator URL nobody listens on: the worker keeps retrying it.
const NOBODY: &str = "http://127.0.0.1:9";

#[test]
fn a_closed_stdin_ends_the_worker_within_a_second() {
    let mut w = worker()
        .args(["--coordinator", NOBODY, "--token-stdin", "--exit-on-stdin-eof", "--max-unreachable", "600", "--device", "cpu"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = w.stdin.take().unwrap();
    stdin.write_all(b"0123456789abcdef\n").unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(w.try_wait().unwrap().is_none(), "the worker exited while its stdin was open");
    let closed = Instant::now();
    drop(stdin);
    let out = w.wait_with_output().unwrap();
    assert!(closed.elapsed() < Duration::from_secs(2), "took {:?}", closed.elapsed());
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("standard input closed"));
}

#[test]
fn missing_tokens_and_cas_are_refused_at_once() {
    let cases: [(&[&str], &str); 2] = [(&["--coordinator", NOBODY, "--token-stdin"], "gave no token"), (&["--coordinator", "https://127.0.0.1:9"], "give the CA certificate")];
    for (args, want) in cases {
        let t = Instant::now();
        let out = worker().args(args).env_remove("SCORESWEEP_TLS_CA").stdin(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(t.elapsed() < Duration::from_secs(5), "{args:?}: not at once");
    }
}
