//! The dashboard against a real run on loopback: every route answers 401 without the token
//! and serves with it (the link's token becomes an HttpOnly, SameSite=Strict cookie); the
//! event stream announces a report within a second; `/api/run` carries what workers sent as
//! data (a `<script>` device string included) and the numbers the claims are computed from;
//! a finished run served from its database shows the numbers of claims.csv and report.md;
//! `coordinator export optuna` writes a journal that Optuna itself loads as the same study.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coordinator::artifacts::{Artifacts, DEFAULT_MAX_BYTES};
use coordinator::dashboard::{self, Live};
use coordinator::service::{Shared, serve};
use coordinator::state::State;
use coordinator::sweep::Sweep;
use schema::Status;
use serde_json::Value;
use sweep_proto::pb::sweep_client::SweepClient;
use sweep_proto::pb::{self, lease_reply};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

type Client = SweepClient<tonic::transport::Channel>;

const SWEEP: &str = "retries = 0\nseeds = [0, 1]\n[base]\nseed = 0\n[base.sleep]\nseconds = 0.001\n[grid]\n\"sleep.seconds\" = [0.001, 0.002]\n";
const EVIL_DEVICE: &str = "<script>alert(1)</script><img src=x onerror=alert(2)>";

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("scoresweep-dashboard-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An HTTP answer: status, headers (names lowercased), body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends `method path` with `headers`, reads the whole answer (Connection: close).
async fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    // The head, then Content-Length bytes (or everything up to the close).
    let mut raw = Vec::new();
    while !raw.ends_with(b"\r\n\r\n") {
        raw.push(s.read_u8().await.unwrap());
    }
    let head = String::from_utf8(raw).unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    // (Chromium's DevTools server writes `Name:value`, without the space.)
    let headers: Vec<(String, String)> = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string())).collect();
    let mut body = Vec::new();
    match headers.iter().find(|(k, _)| k == "content-length") {
        Some((_, n)) => {
            body.resize(n.parse().unwrap(), 0);
            s.read_exact(&mut body).await.unwrap();
        }
        None => {
            s.read_to_end(&mut body).await.unwrap();
        }
    }
    let body = String::from_utf8(body).unwrap();
    Reply { status, headers, body }
}

/// An open event stream, positioned after the answer's headers.
async fn events(addr: &str, cookie: &str) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\r\n").as_bytes()).await.unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    loop {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            return r;
        }
    }
}

/// The name of the next event (`change`, `end`), skipping comments and data lines.
async fn next_event(r: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).await.unwrap() > 0, "event stream closed");
        if let Some(name) = line.trim_end().strip_prefix("event: ") {
            return name.to_string();
        }
    }
}

async fn register(c: &mut Client, name: &str, device: &str) -> String {
    let r = pb::RegisterRequest { protocol_version: sweep_proto::PROTOCOL_VERSION, name: name.into(), device: device.into(), cores: 1, ..Default::default() };
    c.register(r).await.unwrap().into_inner().worker_id
}

async fn lease(c: &mut Client, worker: &str) -> pb::Lease {
    match c.lease(pb::LeaseRequest { worker_id: worker.into() }).await.unwrap().into_inner().reply {
        Some(lease_reply::Reply::Lease(l)) => l,
        other => panic!("expected a lease, got {other:?}"),
    }
}

/// The checkpoint rows trial `k` reports: (step, gap, gap_se, c_true, c_se).
fn rows(k: usize) -> Vec<(f64, f64, f64, f64, f64)> {
    (0..4).map(|i| (100.0 * i as f64, 2.0 + 0.01 * (i as f64 - 1.5) * (k as f64 + 1.0), 0.02, 2.0 + 0.001 * k as f64, 0.01)).collect()
}

async fn report(c: &mut Client, worker: &str, l: &pb::Lease, k: usize) {
    let curve: Vec<Value> = rows(k).iter().map(|r| serde_json::json!({"step": r.0, "gap": r.1, "gap_se": r.2, "c_true": r.3, "c_se": r.4})).collect();
    let r = pb::ReportRequest {
        worker_id: worker.into(),
        attempt_id: l.attempt_id,
        trial_hash: l.trial_hash.clone(),
        status: sweep_proto::status_to_wire(Status::Done),
        metrics_json: format!(r#"{{"slept_seconds": {}, "gap": {}}}"#, 0.25 + k as f64, rows(k)[3].1),
        curve_json: Value::Array(curve).to_string(),
        wall_seconds: 0.5,
        device: EVIL_DEVICE.into(),
        ..Default::default()
    };
    assert!(c.report(r).await.unwrap().into_inner().recorded);
}

/// Max |gap − C| / sqrt(gap_se² + c_se²) over every checkpoint row of `trials`: the offset
/// claim's statistic, computed here from what was sent.
fn worst_z(trials: usize) -> f64 {
    (0..trials).flat_map(rows).map(|(_, g, gs, c, cs)| ((g - c) / gs.hypot(cs)).abs()).fold(0.0, f64::max)
}

fn cookie_of(r: &Reply) -> String {
    r.header("set-cookie").unwrap().split(';').next().unwrap().to_string()
}

/// Runs the sweep's server and a live dashboard; `f` gets a client, the dashboard's address
/// and its printed link.
fn with_run<Fut: std::future::Future<Output = ()>>(dir: &Path, f: impl FnOnce(Client, String, String) -> Fut) {
    let path = dir.join("sweep.toml");
    std::fs::write(&path, SWEEP).unwrap();
    let sweep = Sweep::parse(SWEEP, &path).unwrap();
    let mut st = State::open(&dir.join("state.db"), sweep.retries + 1, sweep.timeout).unwrap();
    st.sync(&sweep, false).unwrap();
    let shared = Shared::new(st, &sweep.trials, 60.0, Artifacts::new(dir, DEFAULT_MAX_BYTES));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, shared.clone(), async {
            let _ = stopped.await;
        }));
        let live = Live { activity: shared.activity.subscribe(), lease_secs: 60.0 };
        let bound = dashboard::bind("127.0.0.1:0", dir.join("state.db"), Some(live)).await.unwrap();
        let addr = bound.listener.local_addr().unwrap().to_string();
        let link = bound.url.clone();
        let (dstop, dstopped) = tokio::sync::oneshot::channel::<()>();
        let dash = tokio::spawn(dashboard::serve(bound.listener, bound.dashboard, async {
            let _ = dstopped.await;
        }));
        f(SweepClient::connect(url).await.unwrap(), addr, link).await;
        let _ = stop.send(());
        let _ = dstop.send(());
        server.await.unwrap().unwrap();
        dash.await.unwrap();
    });
    shared.store.close();
}

const ROUTES: [&str; 6] = ["/", "/app.js", "/app.css", "/api/run", "/api/trial?hash=0", "/api/events"];

#[test]
fn every_route_needs_the_token_and_the_page_follows_the_run_live() {
    let dir = tmpdir("live");
    with_run(&dir, |mut c, addr, link| async move {
        let token = link.split_once("?token=").unwrap().1.to_string();
        assert_eq!(link, format!("http://{addr}/?token={token}"));
        assert_eq!(token.len(), 64);
        // Without the token (or with a wrong one, or the wrong cookie), every route is 401.
        let wrong_cookie = format!("scoresweep_dashboard_{}={}", addr.rsplit(':').next().unwrap(), "0".repeat(64));
        for route in ROUTES {
            assert_eq!(http(&addr, "GET", route, &[]).await.status, 401, "{route} without the token");
            assert_eq!(http(&addr, "GET", route, &[("Cookie", &wrong_cookie)]).await.status, 401, "{route} with a wrong cookie");
        }
        assert_eq!(http(&addr, "GET", &format!("/?token={}", "f".repeat(64)), &[]).await.status, 401);
        // The link sets the cookie and redirects to the address without the token.
        let first = http(&addr, "GET", &format!("/?token={token}"), &[]).await;
        assert_eq!(first.status, 303);
        assert_eq!(first.header("location"), Some("/"));
        let set = first.header("set-cookie").unwrap();
        for part in ["HttpOnly", "SameSite=Strict", "Path=/", &token] {
            assert!(set.contains(part), "`{part}` not in Set-Cookie: {set}");
        }
        let cookie = cookie_of(&first);
        let with = [("Cookie", cookie.as_str())];
        // Read-only: nothing but GET and HEAD, even with the cookie.
        for method in ["POST", "PUT", "DELETE"] {
            assert_eq!(http(&addr, method, "/api/run", &with).await.status, 405, "{method}");
        }
        // The page and its parts, each with a policy that runs only the page's own script.
        for (route, kind) in [("/", "text/html"), ("/app.js", "text/javascript"), ("/app.css", "text/css"), ("/api/run", "application/json")] {
            let r = http(&addr, "GET", route, &with).await;
            assert_eq!(r.status, 200, "{route}: {}", r.body);
            assert!(r.header("content-type").unwrap().starts_with(kind), "{route}");
            assert!(r.header("content-security-policy").unwrap().contains("script-src 'self'"), "{route}");
            assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        }
        let page = http(&addr, "GET", "/", &with).await.body;
        assert!(page.contains("src=\"/app.js\"") && !page.contains("http://") && !page.contains("https://"), "the page loads nothing from elsewhere");
        let js = http(&addr, "GET", "/app.js", &[("Authorization", &format!("Bearer {token}"))]).await;
        assert_eq!(js.status, 200, "a bearer header works as well as the cookie");
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
            assert!(!js.body.contains(sink), "app.js uses {sink}");
        }

        let run = http(&addr, "GET", "/api/run", &with).await.json();
        assert_eq!(run["progress"]["total"], 4);
        assert_eq!(run["progress"]["queued"], 4);
        assert_eq!(run["live"], true);

        // A report reaches an open event stream within a second.
        let mut stream = events(&addr, &cookie).await;
        assert_eq!(next_event(&mut stream).await, "change", "the first event");
        let worker = register(&mut c, "w", EVIL_DEVICE).await;
        assert_eq!(next_event(&mut stream).await, "change", "after a registration");
        let l = lease(&mut c, &worker).await;
        assert_eq!(next_event(&mut stream).await, "change", "after a lease");
        let run = http(&addr, "GET", "/api/run", &with).await.json();
        assert_eq!(run["progress"]["running"], 1);
        let running = &run["running"][0];
        assert_eq!(running["worker"], run["workers"][0]["name"]);
        assert_eq!(running["device"], EVIL_DEVICE, "a worker's device is data, byte for byte");
        assert_eq!(run["workers"][0]["device"], EVIL_DEVICE);
        // The heartbeat is the deadline less the lease (60 s); just leased, so about now.
        let hb = running["last_heartbeat"].as_f64().unwrap();
        assert!((hb - running["leased_at"].as_f64().unwrap()).abs() < 1.0, "{running}");
        let t0 = Instant::now();
        report(&mut c, &worker, &l, 0).await;
        assert_eq!(next_event(&mut stream).await, "change", "after a report");
        let latency = t0.elapsed();
        assert!(latency < Duration::from_secs(1), "the report reached the page after {latency:?}");
        let run = http(&addr, "GET", "/api/run", &with).await.json();
        assert_eq!(run["progress"]["done"], 1);
        let t = run["trials"].as_array().unwrap().iter().find(|t| t["hash"] == l.trial_hash.as_str()).unwrap().clone();
        assert_eq!(t["status"], "done");
        assert_eq!(t["metrics"]["slept_seconds"].as_f64(), Some(0.25));
        assert_eq!(t["device"], EVIL_DEVICE);
        assert_eq!(t["checkpoints"], 4);
        // Its curve, as sent.
        let trial = http(&addr, "GET", &format!("/api/trial?hash={}", l.trial_hash), &with).await;
        assert_eq!(trial.status, 200);
        let curve = trial.json()["curve"].clone();
        for (row, sent) in curve.as_array().unwrap().iter().zip(rows(0)) {
            assert_eq!(row["step"].as_f64(), Some(sent.0));
            assert!((row["gap"].as_f64().unwrap() - sent.1).abs() < 1e-12, "{row}");
        }
        assert_eq!(http(&addr, "GET", "/api/trial?hash=ffff", &with).await.status, 404);
        // The claim is computed from those rows: its statistic is the worst |z| of them.
        let claim = run["claims"].as_array().unwrap().iter().find(|c| c["claim"] == "esm_ism_offset").cloned().unwrap_or_else(|| panic!("no ESM claim in {}", run["claims"]));
        assert!((claim["statistic"].as_f64().unwrap() - worst_z(1)).abs() < 1e-9, "{claim} against {}", worst_z(1));
        drop(stream);
    });
}

#[test]
fn a_finished_run_shows_the_numbers_of_claims_csv_and_report_md() {
    let dir = tmpdir("finished");
    with_run(&dir, |mut c, _, _| async move {
        let worker = register(&mut c, "w", "cpu").await;
        for k in 0..3 {
            let l = lease(&mut c, &worker).await;
            report(&mut c, &worker, &l, k).await;
        }
    });
    results::write_all(&dir.join("state.db"), &dir).unwrap();
    let report_md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    let claims_csv = std::fs::read_to_string(dir.join("claims.csv")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let bound = dashboard::bind("127.0.0.1:0", dir.join("state.db"), None).await.unwrap();
        let addr = bound.listener.local_addr().unwrap().to_string();
        let link = bound.url.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let dash = tokio::spawn(dashboard::serve(bound.listener, bound.dashboard, async {
            let _ = stopped.await;
        }));
        let path = link.split_once(addr.as_str()).unwrap().1.to_string();
        let cookie = cookie_of(&http(&addr, "GET", &path, &[]).await);
        let run = http(&addr, "GET", "/api/run", &[("Cookie", &cookie)]).await.json();
        assert_eq!(run["live"], false);
        assert_eq!(run["progress"]["done"], 3);
        assert_eq!(run["progress"]["queued"], 1);
        let header: Vec<&str> = claims_csv.lines().next().unwrap().split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let claims = run["claims"].as_array().unwrap();
        assert!(!claims.is_empty());
        for line in claims_csv.lines().skip(1) {
            // The first columns (claim, scope, verdict, statistic) hold no commas.
            let f: Vec<&str> = line.split(',').collect();
            let c = claims.iter().find(|c| c["claim"] == f[col("claim")] && c["scope"] == f[col("scope")]).unwrap_or_else(|| panic!("{line}"));
            assert_eq!(c["verdict"], f[col("verdict")]);
            if let Ok(s) = f[col("statistic")].parse::<f64>() {
                assert!((c["statistic"].as_f64().unwrap() - s).abs() <= 1e-9 * s.abs().max(1.0), "{c} against {line}");
            }
            // report.md prints the same value.
            if let Some(v) = c["value"].as_f64() {
                let shown = results::claims::fmt_num(v);
                assert!(report_md.contains(&shown), "{shown} not in report.md");
            }
        }
        let esm = claims.iter().find(|c| c["claim"] == "esm_ism_offset").unwrap();
        assert!((esm["statistic"].as_f64().unwrap() - worst_z(3)).abs() < 1e-9, "{esm}");
        // A finished run's event stream says so at once.
        let mut stream = events(&addr, &cookie).await;
        assert_eq!(next_event(&mut stream).await, "end");
        let _ = stop.send(());
        dash.await.unwrap();
    });
}

/// The sweep's trials by hash, with the swept keys' values.
fn sweep_trials(dir: &Path) -> Sweep {
    Sweep::parse(SWEEP, &dir.join("sweep.toml")).unwrap()
}

#[test]
fn export_optuna_writes_a_journal_optuna_loads() {
    let dir = tmpdir("optuna");
    let hashes = std::sync::Mutex::new(Vec::new());
    with_run(&dir, |mut c, _, _| {
        let hashes = &hashes;
        async move {
            let worker = register(&mut c, "w", "cpu").await;
            let done = lease(&mut c, &worker).await;
            report(&mut c, &worker, &done, 0).await;
            let failed = lease(&mut c, &worker).await;
            let r = pb::ReportRequest {
                worker_id: worker.clone(),
                attempt_id: failed.attempt_id,
                trial_hash: failed.trial_hash.clone(),
                status: sweep_proto::status_to_wire(Status::Failed),
                error: "boom".into(),
                curve_json: "[]".into(),
                ..Default::default()
            };
            assert!(c.report(r).await.unwrap().into_inner().recorded);
            let running = lease(&mut c, &worker).await;
            hashes.lock().unwrap().extend([done.trial_hash, failed.trial_hash, running.trial_hash]);
        }
    });
    let hashes = hashes.into_inner().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coordinator")).args(["export", "optuna"]).arg(&dir).args(["--metric", "gap"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let journal = String::from_utf8(out.stdout).unwrap();
    let records: Vec<Value> = journal.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let sweep = sweep_trials(&dir);
    assert_eq!(records.len(), 1 + sweep.trials.len());
    assert_eq!(records[0]["op_code"], 0);
    assert_eq!(records[0]["study_name"], sweep.name.as_str());
    // What each trial must be, from what the test did and the sweep file (sweep order).
    let mut expected = Vec::new();
    for (rec, t) in records[1..].iter().zip(&sweep.trials) {
        assert_eq!(rec["op_code"], 4);
        let (state, value, intermediate) = match hashes.iter().position(|h| *h == t.hash) {
            Some(0) => ("COMPLETE", Some(rows(0)[3].1), rows(0).iter().map(|r| ((r.0 as i64).to_string(), r.1)).collect()),
            Some(1) => ("FAIL", None, BTreeMap::new()),
            Some(_) => ("RUNNING", None, BTreeMap::new()),
            None => ("WAITING", None, BTreeMap::new()),
        };
        let params = serde_json::json!({"seed": t.flat["seed"], "sleep.seconds": t.flat["sleep.seconds"]});
        expected.push(serde_json::json!({"state": state, "params": params, "value": value, "intermediate": intermediate}));
        assert_eq!(rec["user_attrs"]["hash"], t.hash.as_str());
    }
    let want = serde_json::json!({"study": sweep.name, "direction": "MINIMIZE", "trials": expected});
    // Optuna itself, when the CI's venv is there.
    let Some(python) = std::env::var_os("SCORESWEEP_OPTUNA_PYTHON") else {
        assert!(std::env::var_os("SCORESWEEP_REQUIRE_OPTUNA").is_none(), "SCORESWEEP_REQUIRE_OPTUNA is set but SCORESWEEP_OPTUNA_PYTHON is not");
        eprintln!("skipped loading the journal with Optuna: set SCORESWEEP_OPTUNA_PYTHON to a Python with optuna (.ci/run makes one)");
        return;
    };
    std::fs::write(dir.join("journal.log"), &journal).unwrap();
    std::fs::write(dir.join("expected.json"), want.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/check_optuna_journal.py");
    let check = std::process::Command::new(python).arg(script).arg(dir.join("journal.log")).arg(dir.join("expected.json")).output().unwrap();
    assert!(check.status.success(), "optuna: {}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    eprintln!("{}", String::from_utf8_lossy(&check.stdout).trim());
}

// ---- a real browser -----------------------------------------------------------------------

/// A DevTools-protocol session over a minimal WebSocket client (text frames only, as Chromium
/// sends them), collecting the events that arrive between answers.
struct Cdp {
    s: TcpStream,
    next: u64,
    events: Vec<Value>,
}

impl Cdp {
    async fn connect(ws_url: &str) -> Cdp {
        let rest = ws_url.strip_prefix("ws://").unwrap();
        let (host, path) = rest.split_once('/').unwrap();
        let mut s = TcpStream::connect(host).await.unwrap();
        let req = format!(
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(s.read_u8().await.unwrap());
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        Cdp { s, next: 1, events: Vec::new() }
    }

    async fn send(&mut self, text: &str) {
        let p = text.as_bytes();
        let mut f = vec![0x81u8];
        match p.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend((n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend((n as u64).to_be_bytes());
            }
        }
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        f.extend(mask);
        f.extend(p.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.s.write_all(&f).await.unwrap();
    }

    async fn message(&mut self) -> Value {
        let mut data = Vec::new();
        loop {
            let (b0, b1) = (self.s.read_u8().await.unwrap(), self.s.read_u8().await.unwrap());
            let len = match b1 & 0x7f {
                126 => self.s.read_u16().await.unwrap() as usize,
                127 => self.s.read_u64().await.unwrap() as usize,
                n => n as usize,
            };
            let mut buf = vec![0u8; len];
            self.s.read_exact(&mut buf).await.unwrap();
            if b0 & 0x0f >= 0x8 {
                continue; // a control frame
            }
            data.extend(buf);
            if b0 & 0x80 != 0 {
                return serde_json::from_slice(&data).unwrap();
            }
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        self.send(&serde_json::json!({"id": id, "method": method, "params": params}).to_string()).await;
        loop {
            let m = self.message().await;
            if m["id"] == id {
                assert!(m.get("error").is_none(), "{method}: {m}");
                return m["result"].clone();
            }
            self.events.push(m);
        }
    }

    async fn eval(&mut self, expression: &str) -> Value {
        let r = self.call("Runtime.evaluate", serde_json::json!({"expression": expression, "returnByValue": true})).await;
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Evaluates `expression` every 50 ms until it is `true`; the time that took.
    async fn wait_for(&mut self, expression: &str, limit: Duration) -> Duration {
        let t0 = Instant::now();
        while self.eval(expression).await != Value::Bool(true) {
            assert!(t0.elapsed() < limit, "not true after {limit:?}: {expression}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        t0.elapsed()
    }

    /// Console errors, uncaught exceptions and failed loads seen so far.
    fn errors(&self) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => true,
                Some("Runtime.consoleAPICalled") => e["params"]["type"] == "error" || e["params"]["type"] == "assert",
                Some("Log.entryAdded") => e["params"]["entry"]["level"] == "error",
                _ => false,
            })
            .collect()
    }
}

/// Standard base64 (the screenshot).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let n = chunk.iter().filter(|c| **c != b'=').count();
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= u32::from(if *c == b'=' { 0 } else { val(*c) }) << (18 - 6 * i);
        }
        out.extend(&acc.to_be_bytes()[1..n]);
    }
    out
}

/// Chromium for the browser test: $SCORESWEEP_CHROMIUM, else `chromium` on the PATH; None
/// (the test skips, saying so) when neither runs, unless SCORESWEEP_REQUIRE_BROWSER is set.
fn chromium() -> Option<PathBuf> {
    let candidate = std::env::var_os("SCORESWEEP_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("chromium"));
    let ok = std::process::Command::new(&candidate).arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var_os("SCORESWEEP_REQUIRE_BROWSER").is_none(), "SCORESWEEP_REQUIRE_BROWSER is set but {} does not run", candidate.display());
        eprintln!("skipped the browser test: no Chromium (install Debian's `chromium`, or set SCORESWEEP_CHROMIUM)");
        return None;
    }
    Some(candidate)
}

/// Kills the browser however the test ends.
struct Browser(std::process::Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Headless Chromium opens the printed link of a running sweep: the trial rows appear, a
/// trial changes status live after a report, the claims table and a curve are drawn, a
/// `<script>` device string shows as text, and the console has no errors. The screenshot's
/// path is printed.
#[test]
fn headless_chromium_follows_a_running_sweep() {
    let Some(chromium) = chromium() else { return };
    let dir = tmpdir("browser");
    let profile = dir.join("profile");
    with_run(&dir, |mut c, addr, link| {
        let dir = &dir;
        async move {
            let mut child = std::process::Command::new(&chromium)
                .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"])
                .args(["--disable-dev-shm-usage", "--remote-debugging-port=0", "--window-size=1400,1800"])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg("about:blank")
                .stderr(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let stderr = child.stderr.take().unwrap();
            let _browser = Browser(child);
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(url) = line.strip_prefix("DevTools listening on ") {
                        let _ = tx.send(url.trim().to_string());
                    }
                }
            });
            let browser_ws = rx.recv_timeout(Duration::from_secs(30)).expect("Chromium printed no DevTools address");
            let devtools = browser_ws.strip_prefix("ws://").unwrap().split('/').next().unwrap().to_string();
            let pages = http(&devtools, "GET", "/json/list", &[]).await.json();
            let page = pages.as_array().unwrap().iter().find(|p| p["type"] == "page").unwrap_or_else(|| panic!("no page in {pages}"));
            let mut cdp = Cdp::connect(page["webSocketDebuggerUrl"].as_str().unwrap()).await;
            for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
                cdp.call(domain, serde_json::json!({})).await;
            }
            let worker = register(&mut c, "w", EVIL_DEVICE).await;
            let first = lease(&mut c, &worker).await;
            report(&mut c, &worker, &first, 0).await;
            cdp.call("Page.navigate", serde_json::json!({"url": link})).await;
            // The link's token became a cookie: the page's address has none.
            cdp.wait_for("document.querySelectorAll('#trials tbody tr').length === 4", Duration::from_secs(20)).await;
            assert_eq!(cdp.eval("location.href").await, format!("http://{addr}/"));
            // A trial changes status while the page is open.
            let second = lease(&mut c, &worker).await;
            let row = format!("document.querySelector('#trials tr[data-hash=\"{}\"]')", second.trial_hash);
            cdp.wait_for(&format!("{row}.dataset.status === 'running'"), Duration::from_secs(3)).await;
            let t0 = Instant::now();
            report(&mut c, &worker, &second, 1).await;
            cdp.wait_for(&format!("{row}.dataset.status === 'done'"), Duration::from_secs(3)).await;
            eprintln!("browser: a report showed on the page after {:?}", t0.elapsed());
            // The claims table, a curve with the line of C, the worker's device as text.
            cdp.wait_for("document.querySelectorAll('#claims tbody tr').length >= 1", Duration::from_secs(3)).await;
            assert_eq!(cdp.eval("document.querySelector('#claims tbody tr td').textContent").await, "esm_ism_offset");
            cdp.wait_for("document.querySelectorAll('#curves path.curve').length === 2 && !!document.querySelector('#curves line.constant')", Duration::from_secs(3)).await;
            cdp.wait_for("document.querySelectorAll('#parallel path.pc-line').length === 2", Duration::from_secs(3)).await;
            assert_eq!(cdp.eval("document.querySelector('#workers tbody td:nth-child(2)').textContent").await, EVIL_DEVICE);
            assert_eq!(cdp.eval("document.querySelectorAll('script').length").await, 1, "only the page's own script");
            assert_eq!(cdp.eval("document.querySelectorAll('img').length").await, 0, "no element from a device string");
            let shot = cdp.call("Page.captureScreenshot", serde_json::json!({"format": "png"})).await;
            let png = dir.join("dashboard.png");
            std::fs::write(&png, base64_decode(shot["data"].as_str().unwrap())).unwrap();
            eprintln!("screenshot: {}", png.display());
            let errors = cdp.errors();
            assert!(errors.is_empty(), "console errors: {errors:#?}");
        }
    });
}
