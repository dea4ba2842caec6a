//! Helpers shared by the end-to-end tests of the real binaries (`e2e.rs`, `chaos.rs`): where the
//! binaries are, scratch directories, numbers from a run's state database, the trial table
//! without timing columns, polling for a condition, and test certificates (`make_ca`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub fn bin(name: &str) -> PathBuf {
    // tests run from target/<profile>/deps; the binaries sit one level up (or in
    // $SCORESWEEP_BIN_DIR).
    let exe = std::env::current_exe().unwrap();
    let dir = std::env::var_os("SCORESWEEP_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| exe.parent().unwrap().parent().unwrap().to_path_buf());
    let p = dir.join(name);
    assert!(p.exists(), "{} not built (run `cargo test --workspace`)", p.display());
    p
}

/// A fresh scratch directory for `name`, unique to this test binary and process.
pub fn tmp(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let stem = exe.file_stem().and_then(|s| s.to_str()).unwrap_or("test").split('-').next().unwrap_or("test").to_string();
    let d = std::env::temp_dir().join(format!("scoresweep-{stem}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One number from the run's state database.
pub fn count(out: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(out.join("state.db")).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
}

/// `count` while the database may not exist yet or have no tables yet.
pub fn try_count(out: &Path, sql: &str) -> Option<i64> {
    if !out.join("state.db").exists() {
        return None;
    }
    rusqlite::Connection::open(out.join("state.db")).ok()?.query_row(sql, [], |r| r.get(0)).ok()
}

/// trials.csv without timing (`*seconds`), attempt-count and worker columns (which worker ran a
/// trial varies run to run; the device does not, on CPU), sorted.
pub fn table(out: &Path) -> Vec<String> {
    let csv = std::fs::read_to_string(out.join("trials.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let keep: Vec<usize> = header.iter().enumerate().filter(|(_, h)| !h.ends_with("seconds") && **h != "attempts" && **h != "worker").map(|(i, _)| i).collect();
    let mut rows: Vec<String> = lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            keep.iter().map(|&i| f.get(i).copied().unwrap_or("")).collect::<Vec<_>>().join(",")
        })
        .collect();
    rows.sort();
    rows
}

pub fn wait_for(what: &str, secs: f64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed().as_secs_f64() < secs, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `openssl` with `args` in `dir`, asserting success.
pub fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (the tests make their certificates with it)");
    assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// A CA (`<ca>.pem`, `<ca>.key`) and, when `server` is given, a server certificate it signs
/// for localhost and 127.0.0.1 (`<server>.pem`, `<server>.key`).
pub fn make_ca(dir: &Path, ca: &str, server: Option<&str>) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let (ca_key, ca_pem) = (format!("{ca}.key"), format!("{ca}.pem"));
    openssl(dir, &[&["req", "-x509"][..], &ec, &["-keyout", &ca_key, "-out", &ca_pem, "-days", "2", "-subj", &format!("/CN={ca}")]].concat());
    if let Some(s) = server {
        let (key, csr, pem) = (format!("{s}.key"), format!("{s}.csr"), format!("{s}.pem"));
        openssl(dir, &[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]].concat());
        std::fs::write(dir.join("ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
        openssl(dir, &["x509", "-req", "-in", &csr, "-CA", &ca_pem, "-CAkey", &ca_key, "-CAcreateserial", "-out", &pem, "-days", "2", "-extfile", "ext"]);
    }
}
