//! The dashboard against a real run on loopback: every route answers 401 without the token
//! and serves with it (the link's token becomes an HttpOnly, SameSite=Strict cookie); the
//! event stream announces a report within a second; `/api/run` carries what workers sent as
//! data (a `<script>` device string included) and the numbers the claims are computed from;
//! a finished run served from its database shows the numbers of claims.csv and report.md;
//! `/api/artifact` serves only the artifacts recorded for a trial (404 for anything else,
//! traversal included) and `/api/run` carries an ASHA sweep's decisions and pruned trials;
//! headless Chromium follows a running sweep and shows an image trial's sample grid and the
//! decisions; `coordinator status --watch` follows a run until it ends;
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

/// An HTTP answer: status, headers (names lowercased), body (as bytes, and as text).
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    bytes: Vec<u8>,
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
        _ if method == "HEAD" => {}
        Some((_, n)) => {
            body.resize(n.parse().unwrap(), 0);
            s.read_exact(&mut body).await.unwrap();
        }
        None => {
            s.read_to_end(&mut body).await.unwrap();
        }
    }
    Reply { status, headers, body: String::from_utf8_lossy(&body).into_owned(), bytes: body }
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
    with_sweep(dir, SWEEP, f)
}

/// [`with_run`] of the sweep file `text` (its `[early_stop]` rule in force, as `run` sets it).
fn with_sweep<Fut: std::future::Future<Output = ()>>(dir: &Path, text: &str, f: impl FnOnce(Client, String, String) -> Fut) {
    let path = dir.join("sweep.toml");
    std::fs::write(&path, text).unwrap();
    let sweep = Sweep::parse(text, &path).unwrap();
    let mut st = State::open(&dir.join("state.db"), sweep.retries + 1, sweep.timeout).unwrap();
    st.sync(&sweep, false).unwrap();
    st.set_rule(sweep.early_stop.clone());
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

const ROUTES: [&str; 7] = ["/", "/app.js", "/app.css", "/api/run", "/api/trial?hash=0", "/api/artifact?hash=0&name=samples.png", "/api/events"];

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

// ---- image trials and early stopping -------------------------------------------------------

/// Three image trials (the MNIST MLP denoiser, never trained here: the test plays the worker)
/// stopped early by ASHA on `eval_loss`.
const IMAGE_SWEEP: &str = "name = \"img\"\nretries = 0\n[base]\nseed = 0\n[base.data]\npreset = \"mnist\"\nheld_out = 1000\nlimit = 3000\n[base.model]\nkind = \"mlp\"\nhidden = 32\n[base.objective]\nkind = \"edm\"\n[base.train]\nsteps = 30\nbatch = 64\nlr = 1e-3\neval_every = 10\n[base.eval]\nn = 500\n[base.sampler]\nkind = \"heun\"\nn = 100\n[grid]\n\"train.lr\" = [0.001, 0.002, 0.003]\n[early_stop]\nkind = \"asha\"\nmetric = \"eval_loss\"\neta = 3\n";
/// The sample grid's size (a picture of GRID_W × GRID_H gray pixels).
const GRID_W: u32 = 40;
const GRID_H: u32 = 20;
/// A file that is not a picture, its name needing percent-encoding in a query.
const NOTES: &str = "notes (v2) é+ü.txt";

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// A grayscale PNG of `w` × `h` pixels (zlib with stored blocks: no compressor needed).
fn png_gray(w: u32, h: u32, px: impl Fn(u32, u32) -> u8) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0);
        raw.extend((0..w).map(|x| px(x, y)));
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65535).collect();
    for (i, b) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let n = b.len() as u16;
        z.extend(n.to_le_bytes());
        z.extend((!n).to_le_bytes());
        z.extend(*b);
    }
    let (mut a, mut s) = (1u32, 0u32);
    for &x in &raw {
        a = (a + u32::from(x)) % 65521;
        s = (s + a) % 65521;
    }
    z.extend(((s << 16) | a).to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend(data);
        png.extend(&c);
        png.extend(crc32(&c).to_be_bytes());
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &z);
    chunk(b"IEND", &[]);
    png
}

fn grid_png() -> Vec<u8> {
    png_gray(GRID_W, GRID_H, |x, y| ((x * 7 + y * 13) % 256) as u8)
}

/// The notes file: 300 kB, several frames of the streamed answer.
fn notes() -> Vec<u8> {
    (0..300_000u32).map(|i| b"0123456789abcdef\n"[(i % 17) as usize]).collect()
}

async fn upload(c: &mut Client, worker: &str, attempt: u64, name: &str, media_type: &str, data: Vec<u8>) {
    let chunk = pb::ArtifactChunk { worker_id: worker.into(), attempt_id: attempt, name: name.into(), media_type: media_type.into(), total_bytes: data.len() as u64, data };
    c.upload_artifact(tokio_stream::iter(vec![chunk])).await.unwrap();
}

async fn checkpoint(c: &mut Client, worker: &str, l: &pb::Lease, index: u32, eval_loss: f64) -> pb::CheckpointReply {
    let r = pb::CheckpointRequest {
        worker_id: worker.into(),
        attempt_id: l.attempt_id,
        trial_hash: l.trial_hash.clone(),
        index,
        step: 10 * u64::from(index),
        metrics: [("eval_loss".to_string(), eval_loss), ("train_loss".to_string(), eval_loss)].into(),
        total_steps: 30,
    };
    c.checkpoint(r).await.unwrap().into_inner()
}

/// An image trial's report: `status` (done or pruned), its checkpoints so far, its artifacts.
async fn image_report(c: &mut Client, worker: &str, l: &pb::Lease, status: Status, losses: &[f64], artifacts: &[&str]) {
    let curve: Vec<Value> = losses.iter().enumerate().map(|(i, v)| serde_json::json!({"step": 10 * i, "eval_loss": v})).collect();
    let last = losses.last().copied().unwrap_or(f64::NAN);
    let metrics = serde_json::json!({"steps_done": 10 * (losses.len() - 1), "eval_loss": last, "train_seconds": 0.1, "eval_seconds": 0.1, "parameters": 1000, "nfe": 18, "sample_seconds": 0.1});
    let r = pb::ReportRequest {
        worker_id: worker.into(),
        attempt_id: l.attempt_id,
        trial_hash: l.trial_hash.clone(),
        status: sweep_proto::status_to_wire(status),
        metrics_json: metrics.to_string(),
        curve_json: Value::Array(curve).to_string(),
        wall_seconds: 0.3,
        device: "cpu".into(),
        artifacts: artifacts.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    assert!(c.report(r).await.unwrap().into_inner().recorded);
}

/// The image sweep played out: trial A reaches rung 0 first (continue, nothing to compare
/// with), uploads its sample grid and the notes and is done; trial B is worse at rung 0 (stop)
/// and reports pruned; trial C is leased and running. Returns (A, B, C) and the worker.
async fn image_trials(c: &mut Client) -> (pb::Lease, pb::Lease, pb::Lease, String) {
    let worker = register(c, "w", "cpu").await;
    let a = lease(c, &worker).await;
    assert!(a.report_checkpoints, "[early_stop]: leases ask for checkpoints");
    let r = checkpoint(c, &worker, &a, 1, 1.0).await;
    assert!(!r.stop, "{r:?}");
    upload(c, &worker, a.attempt_id, "samples.png", "image/png", grid_png()).await;
    upload(c, &worker, a.attempt_id, NOTES, "text/html", notes()).await;
    image_report(c, &worker, &a, Status::Done, &[2.0, 1.0, 0.8, 0.7], &["samples.png", NOTES]).await;
    let b = lease(c, &worker).await;
    let r = checkpoint(c, &worker, &b, 1, 5.0).await;
    assert!(r.stop, "5 is worse than rung 0's cutoff 1: {r:?}");
    image_report(c, &worker, &b, Status::Pruned, &[6.0, 5.0], &[]).await;
    let cc = lease(c, &worker).await;
    (a, b, cc, worker)
}

/// A query value percent-encoded as `encodeURIComponent` does.
fn encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

#[test]
fn artifacts_and_decisions_are_served_with_the_token_only() {
    let dir = tmpdir("artifacts");
    with_sweep(&dir, IMAGE_SWEEP, |mut c, addr, link| {
        let dir = &dir;
        async move {
            let (a, b, _, _) = image_trials(&mut c).await;
            let grid = format!("/api/artifact?hash={}&name=samples.png", a.trial_hash);
            assert_eq!(http(&addr, "GET", &grid, &[]).await.status, 401, "an artifact without the token");
            let token = link.split_once("?token=").unwrap().1.to_string();
            let cookie = cookie_of(&http(&addr, "GET", &format!("/?token={token}"), &[]).await);
            let with = [("Cookie", cookie.as_str())];

            // The sample grid: a picture, byte for byte, as image/png.
            let r = http(&addr, "GET", &grid, &with).await;
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.header("content-type"), Some("image/png"));
            assert_eq!(r.header("content-disposition"), None);
            assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
            assert_eq!(r.bytes, grid_png());
            let bearer = format!("Bearer {token}");
            assert_eq!(http(&addr, "GET", &grid, &[("Authorization", &bearer)]).await.status, 200);
            let head = http(&addr, "HEAD", &grid, &with).await;
            assert_eq!((head.status, head.header("content-length")), (200, Some(grid_png().len().to_string().as_str())));
            assert_eq!(http(&addr, "POST", &grid, &with).await.status, 405);
            // The notes: a download whatever media type the worker said (text/html here), its
            // name percent-decoded from the query; 300 kB, streamed whole.
            let notes_url = format!("/api/artifact?hash={}&name={}", a.trial_hash, encode(NOTES));
            let r = http(&addr, "GET", &notes_url, &with).await;
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.header("content-type"), Some("application/octet-stream"));
            let disposition = r.header("content-disposition").unwrap();
            assert!(disposition.starts_with("attachment;") && disposition.ends_with("filename*=UTF-8''notes%20%28v2%29%20%C3%A9%2B%C3%BC.txt"), "{disposition}");
            assert_eq!(r.header("content-length"), Some("300000"));
            assert_eq!(r.bytes, notes());
            // The hash may be percent-encoded too.
            let encoded_hash: String = a.trial_hash.bytes().map(|b| format!("%{b:02x}")).collect();
            assert_eq!(http(&addr, "GET", &format!("/api/artifact?hash={encoded_hash}&name=samples.png"), &with).await.status, 200);

            // Nothing but a recorded name of that trial: a file put beside it, the database, a
            // name of another trial, traversal (plain and percent-encoded), a `+` for a space,
            // a stray `%`, bytes that are not UTF-8, the short hash, another case.
            std::fs::write(dir.join("artifacts").join(&a.trial_hash).join("extra.png"), grid_png()).unwrap();
            let h = &a.trial_hash;
            let refused = [
                format!("hash={h}&name=extra.png"),
                format!("hash={h}&name=../../state.db"),
                format!("hash={h}&name=..%2F..%2Fstate.db"),
                format!("hash={h}&name=%2E%2E%2F%2E%2E%2Fstate.db"),
                format!("hash={h}&name=..%252F..%252Fstate.db"),
                format!("hash={h}&name=%2Fetc%2Fpasswd"),
                "hash=..&name=state.db".to_string(),
                "hash=..%2F..&name=state.db".to_string(),
                "hash=&name=state.db".to_string(),
                format!("hash={}&name=samples.png", b.trial_hash),
                format!("hash={}&name=samples.png", &h[..10]),
                format!("hash={h}&name=SAMPLES.PNG"),
                format!("hash={h}&name=samples.png%00"),
                format!("hash={h}&name=samples%2.png"),
                format!("hash={h}&name=samples.png%"),
                format!("hash={h}&name=%FF%FE"),
                format!("hash={h}&name={}", encode(NOTES).replace("%20", "+")),
                format!("hash={h}&name={}", encode(NOTES).replace("%2B", "+").replace("%20", " ").replace(' ', "%2520")),
            ];
            for q in &refused {
                let r = http(&addr, "GET", &format!("/api/artifact?{q}"), &with).await;
                assert_eq!(r.status, 404, "{q}: {}", r.body);
                assert!(!r.bytes.starts_with(b"SQLite") && !r.bytes.starts_with(b"\x89PNG"), "{q}");
            }
            for path in ["/api/artifact/../state.db", "/api/artifact/..%2Fstate.db", "/state.db", "/artifacts/x/samples.png"] {
                assert_eq!(http(&addr, "GET", path, &with).await.status, 404, "{path}");
            }
            assert_eq!(http(&addr, "GET", &format!("/api/artifact?hash={h}"), &with).await.status, 400);
            // Recorded, but its file gone: 404 too.
            std::fs::remove_file(dir.join("artifacts").join(h).join("samples.png")).unwrap();
            assert_eq!(http(&addr, "GET", &grid, &with).await.status, 404);
            std::fs::write(dir.join("artifacts").join(h).join("samples.png"), grid_png()).unwrap();

            // /api/trial names the artifacts; /api/run each trial's grid, the decisions, the
            // pruned trial.
            let trial = http(&addr, "GET", &format!("/api/trial?hash={h}"), &with).await.json();
            let names: Vec<(&str, bool)> = trial["artifacts"].as_array().unwrap().iter().map(|x| (x["name"].as_str().unwrap(), x["image"].as_bool().unwrap())).collect();
            assert_eq!(names, [(NOTES, false), ("samples.png", true)]);
            assert_eq!(trial["grid"], "samples.png");
            let run = http(&addr, "GET", "/api/run", &with).await.json();
            let by_hash = |hash: &str| run["trials"].as_array().unwrap().iter().find(|t| t["hash"] == hash).unwrap().clone();
            assert_eq!(by_hash(&a.trial_hash)["grid"], "samples.png");
            assert_eq!(by_hash(&b.trial_hash)["grid"], Value::Null);
            assert_eq!(by_hash(&b.trial_hash)["status"], "pruned");
            assert_eq!(run["progress"]["pruned"], 1);
            assert_eq!(run["progress"]["done"], 1);
            assert_eq!(run["progress"]["running"], 1);
            assert_eq!(run["early_stop"], serde_json::json!({"kind": "asha", "metric": "eval_loss", "mode": "min"}));
            assert_eq!(run["decisions_total"], 2);
            let d = run["decisions"].as_array().unwrap();
            assert_eq!(d.len(), 2);
            assert_eq!(
                (d[0]["trial"].as_str(), d[0]["decision"].as_str(), d[0]["rung"].as_i64(), d[0]["checkpoint"].as_i64()),
                (Some(h.as_str()), Some("continue"), Some(0), Some(1))
            );
            assert_eq!((d[0]["value"].as_f64(), &d[0]["cutoff"]), (Some(1.0), &Value::Null));
            assert_eq!((d[1]["trial"].as_str(), d[1]["decision"].as_str(), d[1]["step"].as_i64()), (Some(b.trial_hash.as_str()), Some("stop"), Some(10)));
            assert_eq!((d[1]["value"].as_f64(), d[1]["cutoff"].as_f64()), (Some(5.0), Some(1.0)));
            assert_eq!(d[1]["reason"], "eval_loss = 5 is worse than the cutoff 1 (mode min)");
            assert_eq!(d[1]["short"], by_hash(&b.trial_hash)["short"]);
        }
    });
    // decisions.csv says the same.
    results::write_all(&dir.join("state.db"), &dir).unwrap();
    let csv = std::fs::read_to_string(dir.join("decisions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(csv.lines().nth(2).unwrap().contains(",stop,"), "{csv}");
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

/// Starts headless Chromium on `profile` and connects to its page over the DevTools protocol
/// (runtime, log and page events on).
async fn open_browser(chromium: &Path, profile: &Path) -> (Browser, Cdp) {
    let mut child = std::process::Command::new(chromium)
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"])
        .args(["--disable-dev-shm-usage", "--remote-debugging-port=0", "--window-size=1400,1800"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let browser = Browser(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let browser_ws = tokio::task::block_in_place(|| rx.recv_timeout(Duration::from_secs(30))).expect("Chromium printed no DevTools address");
    let devtools = browser_ws.strip_prefix("ws://").unwrap().split('/').next().unwrap().to_string();
    let pages = http(&devtools, "GET", "/json/list", &[]).await.json();
    let page = pages.as_array().unwrap().iter().find(|p| p["type"] == "page").unwrap_or_else(|| panic!("no page in {pages}"));
    let mut cdp = Cdp::connect(page["webSocketDebuggerUrl"].as_str().unwrap()).await;
    for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
        cdp.call(domain, serde_json::json!({})).await;
    }
    (browser, cdp)
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
            let (_browser, mut cdp) = open_browser(&chromium, &profile).await;
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

/// Headless Chromium on a running ASHA sweep of image trials: the done trial's sample grid
/// loads as a picture of its size, its artifacts are listed by name, the decisions table shows
/// the rung-0 decisions (one more appears live after a checkpoint), the pruned trial is counted
/// and coloured and the status filter picks it, and the console has no errors.
#[test]
fn headless_chromium_shows_an_image_trials_grid_and_the_decisions() {
    let Some(chromium) = chromium() else { return };
    let dir = tmpdir("browser-images");
    let profile = dir.join("profile");
    with_sweep(&dir, IMAGE_SWEEP, |mut c, _, link| {
        let dir = &dir;
        async move {
            let (_browser, mut cdp) = open_browser(&chromium, &profile).await;
            let (a, b, running, worker) = image_trials(&mut c).await;
            cdp.call("Page.navigate", serde_json::json!({"url": link})).await;
            cdp.wait_for("document.querySelectorAll('#trials tbody tr').length === 3", Duration::from_secs(20)).await;
            // The grid: the done trial's samples.png, loaded (a picture of the size sent).
            let img = "document.querySelector('#samples img.grid')";
            cdp.wait_for(&format!("!!{img} && {img}.complete && {img}.naturalWidth > 0"), Duration::from_secs(5)).await;
            assert_eq!(cdp.eval(&format!("[{img}.naturalWidth, {img}.naturalHeight]")).await, serde_json::json!([GRID_W, GRID_H]));
            assert_eq!(cdp.eval(&format!("{img}.dataset.hash")).await, a.trial_hash.as_str());
            cdp.wait_for("document.querySelectorAll('#artifacts li a').length === 2", Duration::from_secs(3)).await;
            assert_eq!(cdp.eval("[...document.querySelectorAll('#artifacts li a')].map((a) => a.textContent)").await, serde_json::json!([NOTES, "samples.png"]));
            // The decisions, the latest first; the pruned trial counted, coloured, filtered.
            cdp.wait_for("document.querySelectorAll('#decisions tbody tr').length === 2 && !document.querySelector('#decisions-section').hidden", Duration::from_secs(3)).await;
            assert_eq!(cdp.eval("[...document.querySelectorAll('#decisions tbody tr')].map((r) => r.dataset.decision)").await, serde_json::json!(["stop", "continue"]));
            assert_eq!(cdp.eval("document.querySelector('#decisions tbody tr').dataset.trial").await, b.trial_hash.as_str());
            let reason = cdp.eval("document.querySelector('#decisions tbody tr td:last-child').textContent").await;
            assert_eq!(reason, "eval_loss = 5 is worse than the cutoff 1 (mode min)");
            let counts = cdp.eval("document.getElementById('counts').textContent").await;
            assert!(counts.as_str().unwrap().starts_with("2 / 3 finished: 1 done, 1 pruned, 0 failed; 1 running"), "{counts}");
            let pruned_row = format!("document.querySelector('#trials tr[data-hash=\"{}\"]')", b.trial_hash);
            assert_eq!(cdp.eval(&format!("{pruned_row}.dataset.status")).await, "pruned");
            assert_eq!(cdp.eval(&format!("getComputedStyle({pruned_row}.querySelector('.status-pruned')).color")).await, "rgb(142, 68, 173)");
            cdp.eval("(() => { const s = document.getElementById('status-filter'); s.value = 'pruned'; s.dispatchEvent(new Event('change')); })()").await;
            assert_eq!(cdp.eval("[...document.querySelectorAll('#trials tbody tr')].map((r) => r.dataset.hash)").await, serde_json::json!([b.trial_hash]));
            // A checkpoint of the running trial shows as a decision within a second or so.
            let t0 = Instant::now();
            assert!(!checkpoint(&mut c, &worker, &running, 1, 0.5).await.stop);
            cdp.wait_for("document.querySelectorAll('#decisions tbody tr').length === 3", Duration::from_secs(3)).await;
            eprintln!("browser: a decision showed on the page after {:?}", t0.elapsed());
            assert_eq!(cdp.eval("document.querySelector('#decisions tbody tr').dataset.trial").await, running.trial_hash.as_str());
            assert_eq!(cdp.eval("document.querySelectorAll('img').length").await, 1, "the grid is the page's only picture");
            let shot = cdp.call("Page.captureScreenshot", serde_json::json!({"format": "png"})).await;
            let png = dir.join("dashboard-images.png");
            std::fs::write(&png, base64_decode(shot["data"].as_str().unwrap())).unwrap();
            eprintln!("screenshot: {}", png.display());
            let errors = cdp.errors();
            assert!(errors.is_empty(), "console errors: {errors:#?}");
        }
    });
}

// ---- the terminal -------------------------------------------------------------------------

/// `coordinator status --watch DIR` off a terminal: its frames (a blank line between two), as
/// they come, and the process.
struct Watch {
    child: std::process::Child,
    frames: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Watch {
    fn start(dir: &Path) -> Watch {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_coordinator"))
            .args(["status", "--watch"])
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, frames) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut frame = String::new();
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.is_empty() {
                    let _ = tx.send(std::mem::take(&mut frame));
                } else {
                    frame.push_str(&line);
                    frame.push('\n');
                }
            }
            if !frame.is_empty() {
                let _ = tx.send(frame);
            }
        });
        Watch { child, frames, seen: Vec::new() }
    }

    /// Waits (at most `limit`) for a frame that contains every one of `parts`; returns it.
    fn frame_with(&mut self, parts: &[&str], limit: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let left = limit.saturating_sub(t0.elapsed());
            let frame = tokio::task::block_in_place(|| self.frames.recv_timeout(left))
                .unwrap_or_else(|e| panic!("no frame with {parts:?} after {limit:?} ({e}); frames: {:#?}", self.seen));
            self.seen.push(frame.clone());
            if parts.iter().all(|p| frame.contains(p)) {
                return frame;
            }
        }
    }

    /// Waits (at most `limit`) for the process to exit; its status, and every frame it printed.
    fn exit(mut self, limit: Duration) -> (std::process::ExitStatus, Vec<String>) {
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                panic!("status --watch still running after {limit:?}; frames: {:#?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.seen.extend(self.frames.iter());
        (status, self.seen)
    }
}

#[test]
fn status_watch_follows_a_run_until_it_ends() {
    let dir = tmpdir("watch");
    with_run(&dir, |mut c, _, _| {
        let dir = &dir;
        async move {
            let mut watch = Watch::start(dir);
            watch.frame_with(&["4 trials: 0 done, 0 pruned, 0 running, 4 queued, 0 failed"], Duration::from_secs(5));
            let worker = register(&mut c, "w", "cpu").await;
            let first = lease(&mut c, &worker).await;
            // Redrawn within about a second: the count, the worker, the running attempt.
            let t0 = Instant::now();
            let frame = watch.frame_with(
                &["0 done, 0 pruned, 1 running, 3 queued", "workers (1):", "cpu, 1 core(s): 0 result(s)", &format!("running: trial {} on ", &first.trial_hash[..10])],
                Duration::from_secs(3),
            );
            eprintln!("status --watch: a lease showed after {:?}", t0.elapsed());
            assert!(!frame.contains('\x1b'), "off a terminal, no escape sequences: {frame:?}");
            report(&mut c, &worker, &first, 0).await;
            watch.frame_with(&["1 done, 0 pruned, 0 running, 3 queued", "cpu, 1 core(s): 1 result(s)"], Duration::from_secs(3));
            for k in 1..4 {
                let l = lease(&mut c, &worker).await;
                report(&mut c, &worker, &l, k).await;
            }
            // The run is over: the last frame says so and the watch ends by itself.
            let (status, frames) = watch.exit(Duration::from_secs(5));
            assert!(status.success(), "{status}");
            let last = frames.last().unwrap();
            assert!(last.starts_with("4 trials: 4 done, 0 pruned, 0 running, 0 queued, 0 failed\n"), "{last}");
            assert!(!last.contains("running: trial"), "{last}");
            assert!(frames.len() >= 4, "{frames:#?}");
        }
    });
    // On a finished run it prints once and exits.
    let t0 = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coordinator")).args(["status", "--watch"]).arg(&dir).output().unwrap();
    assert!(out.status.success() && t0.elapsed() < Duration::from_secs(3), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("4 trials: 4 done, 0 pruned, 0 running, 0 queued, 0 failed\nworkers (1):\n") && !text.contains("\n\n"), "{text}");
}

#[test]
fn status_watch_ends_with_a_run_stopped_early() {
    let dir = tmpdir("watch-stopped");
    with_run(&dir, |_, _, _| {
        let dir = &dir;
        async move {
            // What `run` records: its start, and its end however it ends.
            let mut st = State::open(&dir.join("state.db"), 1, 60.0).unwrap();
            st.note("start", "the coordinator started the run").unwrap();
            let mut watch = Watch::start(dir);
            let frame = watch.frame_with(&["4 trials: 0 done, 0 pruned, 0 running, 4 queued, 0 failed"], Duration::from_secs(5));
            assert!(!frame.contains("not going on"), "{frame}");
            // Two more frames while it goes on: redrawn every second.
            watch.frame_with(&["4 queued"], Duration::from_secs(3));
            watch.frame_with(&["4 queued"], Duration::from_secs(3));
            st.note("end", "stopped with 4 trial(s) queued and 0 running").unwrap();
            let (status, frames) = watch.exit(Duration::from_secs(3));
            assert!(status.success(), "{status}");
            let last = frames.last().unwrap();
            assert!(last.contains("4 queued") && last.contains("the run is not going on"), "{last}");
        }
    });
}
