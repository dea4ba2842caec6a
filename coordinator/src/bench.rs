//! `coordinator bench`: scheduler throughput and overhead, measured on loopback.
//! 1. Round trips: an in-process server with a sweep of no-op trials; C concurrent clients each
//!    loop lease → report as fast as they can; reports round trips (lease + report) per second.
//!    The piggybacked run is also measured with a browser connected to the run's dashboard: a
//!    client that does what the page does (holds `/api/events` open and fetches `/api/run` after
//!    each `change`, one fetch at a time), twice: with the page loaded before the run starts
//!    (what an open page costs between rebuilds), and with the page opening as the run starts,
//!    so that a rebuild of `/api/run` falls inside the measured window (what a rebuild costs
//!    while it runs). Together they give the steady state, which no short run can show
//!    directly (see [`RoundTrips::steady_loss`]).
//! 2. Overhead: `run` of a sweep of T one-second sleep trials with W local workers against the
//!    ideal ceil(T/W) seconds.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sweep_proto::pb::sweep_client::SweepClient;
use sweep_proto::pb::{self, lease_reply};

use crate::artifacts::{Artifacts, DEFAULT_MAX_BYTES};
use crate::launch::LaunchConfig;
use crate::run::{RunOptions, run};
use sweep_proto::pb::sweep_server::{Sweep as SweepRpc, SweepServer};
use tonic::{Request, Response, Status};

use crate::service::{Service, Shared, incoming};
use crate::state::State;
use crate::sweep::Sweep;

fn sleep_sweep(dir: &Path, trials: usize, seconds: f64) -> anyhow::Result<Sweep> {
    let src = format!(
        "name = \"bench\"\ntimeout = 600\nseeds = [{}]\n[base]\nseed = 0\n[base.sleep]\nseconds = {seconds}\n",
        (0..trials).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    );
    let path = dir.join("bench.toml");
    std::fs::write(&path, &src)?;
    Ok(Sweep::parse(&src, &path)?)
}

/// Round trips (lease + report) per second, measured four ways.
#[derive(Debug, Clone, Copy)]
pub struct RoundTrips {
    /// The real service; a Lease call and a Report call per trial.
    pub two_calls: f64,
    /// The no-op baseline, two calls.
    pub two_calls_baseline: f64,
    /// The real service; the next lease rides on the report (`lease_next`, what workers do).
    pub piggyback: f64,
    /// The no-op baseline, piggybacked.
    pub piggyback_baseline: f64,
    /// The real service, piggybacked, with a browser connected to its dashboard (the page
    /// loaded before the run).
    pub piggyback_browser: f64,
    /// `/api/run` answers that browser read during its run.
    pub browser_fetches: u64,
    /// The real service, piggybacked, with the page opening as the run starts.
    pub piggyback_opening: f64,
    /// Seconds of the opening run's measured window during which `/api/run` was rebuilt.
    pub opening_rebuild_seconds: f64,
    /// The measured window of the runs, seconds.
    pub window_seconds: f64,
    /// Mean requests per commit in the piggybacked run (group commit at work).
    pub batch_mean: f64,
    /// Share of the piggybacked run's wall time the store spent running batches.
    pub store_busy: f64,
}

impl RoundTrips {
    /// Round trips lost while a rebuild runs, as a share of the scheduler's rate: what the
    /// opening page lost beyond the open one, spread over the window's rebuild seconds. None
    /// when no rebuild fell in the window.
    pub fn rebuild_cost(&self) -> Option<f64> {
        (self.opening_rebuild_seconds > 0.0).then(|| (self.piggyback_browser - self.piggyback_opening) / self.piggyback * self.window_seconds / self.opening_rebuild_seconds)
    }

    /// The share of round trips a watching page costs in the steady state of a long run: the
    /// open page's loss between rebuilds, plus the rebuild cost for the share of the time a
    /// live dashboard rebuilds (at most [`crate::dashboard::DUTY`]). A run as short as a bench
    /// run never reaches that state on its own: its database must hold more trials than the
    /// run leases, so one rebuild of it sets the next one further off than the run lasts.
    pub fn steady_loss(&self) -> Option<f64> {
        Some(1.0 - self.piggyback_browser / self.piggyback + crate::dashboard::DUTY * self.rebuild_cost()?)
    }
}

/// The mean of `v` and its 95% interval (Student's t; the mean alone for one value).
pub fn mean_interval(v: &[f64]) -> (f64, f64, f64) {
    // t quantiles at 0.975 for 1..=30 degrees of freedom; 1.96 beyond.
    const T975: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n.max(1) as f64;
    if n < 2 {
        return (mean, mean, mean);
    }
    let se = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64 / n as f64).sqrt();
    let t = T975.get(n - 2).copied().unwrap_or(1.96);
    (mean, mean - t * se, mean + t * se)
}

/// How the piggybacked run is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Browser {
    None,
    /// The page loaded (its first `/api/run` read) before the run starts.
    Open,
    /// The page opens as the run starts.
    Opening,
}

/// Round trips per second with `clients` concurrent clients for about `seconds` each, against
/// the real service (SQLite state, group commit) and, as a baseline, against a no-op service
/// that answers at once without state — the gRPC/HTTP2 ceiling of this machine, clients
/// included — so the ratio shows what the scheduler itself costs. The four runs are
/// interleaved (real, baseline, real, baseline) and the whole set repeated `repeat` times, so
/// that load from elsewhere hits both sides alike; one result per repetition.
pub fn round_trips(dir: &Path, clients: usize, seconds: f64, repeat: usize) -> anyhow::Result<Vec<RoundTrips>> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // Enough queued trials that no run drains the queue (the sweep file format caps a sweep
    // at 10k trials; the bench replicates them under fresh hashes). Synced once into a
    // template database that each run starts from a copy of.
    let base = sleep_sweep(dir, 10_000, 0.001)?;
    let copies = ((seconds * 40_000.0) as usize).div_ceil(base.trials.len()).max(1);
    let mut sweep = base.clone();
    sweep.trials = (0..copies)
        .flat_map(|k| base.trials.iter().map(move |t| (k, t)))
        .enumerate()
        .map(|(i, (k, t))| crate::sweep::Trial { hash: format!("{}-{k}", t.hash), idx: i, ..t.clone() })
        .collect();
    let template = dir.join("template.db");
    remove_db(&template);
    {
        let mut state = State::open(&template, 1, 600.0)?;
        state.sync(&sweep, false)?;
    }
    // (rate, store stats, /api/run answers read, window seconds, rebuild seconds in it)
    let real = |piggyback: bool, browser: Browser| -> anyhow::Result<(f64, crate::store::StoreStats, u64, f64, f64)> {
        let db = dir.join("rt.db");
        remove_db(&db);
        std::fs::copy(&template, &db)?;
        let shared = Shared::new(State::open(&db, 1, 600.0)?, &sweep.trials, 60.0, Artifacts::new(dir, DEFAULT_MAX_BYTES));
        let (rate, fetches, window, rebuilding) = rt.block_on(async {
            let watcher = match browser {
                Browser::None => None,
                b => Some(Watcher::start(&shared, &db, b == Browser::Open).await?),
            };
            let (rate, window) = drive(SweepServer::new(Service(shared.clone())), clients, seconds, piggyback).await?;
            let (fetches, rebuilding) = match watcher {
                Some(w) => w.stop(window).await?,
                None => (0, 0.0),
            };
            anyhow::Ok((rate, fetches, window.1.duration_since(window.0).as_secs_f64(), rebuilding))
        })?;
        let stats = shared.store.stats();
        shared.store.close();
        Ok((rate, stats, fetches, window, rebuilding))
    };
    let baseline = |piggyback: bool| rt.block_on(drive(SweepServer::new(NullService), clients, seconds, piggyback)).map(|(rate, _)| rate);
    // One run first, not counted: the first run of a process is slower (caches, allocator).
    real(true, Browser::None)?;
    let mut out = Vec::with_capacity(repeat);
    for _ in 0..repeat.max(1) {
        let (two_calls, ..) = real(false, Browser::None)?;
        let two_calls_baseline = baseline(false)?;
        let piggyback_baseline = baseline(true)?;
        // The three piggybacked runs side by side.
        let (piggyback, st, ..) = real(true, Browser::None)?;
        let (piggyback_browser, _, browser_fetches, ..) = real(true, Browser::Open)?;
        let (piggyback_opening, _, _, window_seconds, opening_rebuild_seconds) = real(true, Browser::Opening)?;
        out.push(RoundTrips {
            two_calls,
            two_calls_baseline,
            piggyback,
            piggyback_baseline,
            piggyback_browser,
            browser_fetches,
            piggyback_opening,
            opening_rebuild_seconds,
            window_seconds,
            batch_mean: st.requests as f64 / st.batches.max(1) as f64,
            store_busy: st.busy_seconds / seconds,
        });
    }
    remove_db(&template);
    remove_db(&dir.join("rt.db"));
    Ok(out)
}

/// A browser on the run's dashboard, as the page behaves: `/api/events` held open, and after
/// each `change` one `/api/run` fetch (a change during a fetch makes one more after it).
struct Watcher {
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    client: tokio::task::JoinHandle<anyhow::Result<u64>>,
    dashboard: Arc<crate::dashboard::Dashboard>,
}

impl Watcher {
    /// `loaded`: return once the page has read its first `/api/run` answer (else at once).
    async fn start(shared: &Arc<Shared>, db: &Path, loaded: bool) -> anyhow::Result<Watcher> {
        let live = crate::dashboard::Live { activity: shared.activity.subscribe(), lease_secs: shared.lease_secs };
        let bound = crate::dashboard::bind("127.0.0.1:0", db.to_path_buf(), Some(live)).await?;
        let addr = bound.listener.local_addr()?;
        let token = bound.url.split_once("token=").map(|(_, t)| t.to_string()).unwrap_or_default();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let dashboard = bound.dashboard.clone();
        // Stopped by `stop` once the browser has stopped.
        let server = tokio::spawn(crate::dashboard::serve(bound.listener, bound.dashboard, std::future::pending()));
        let fetched = Arc::new(AtomicU64::new(0));
        let client = tokio::spawn(browse(addr, token, stopped, fetched.clone()));
        let t = Instant::now();
        while loaded && fetched.load(Ordering::Relaxed) == 0 {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(120) && !client.is_finished(), "the browser read no /api/run answer");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Watcher { stop, server, client, dashboard })
    }

    /// Stops the browser and the dashboard: the `/api/run` answers read during the run (after
    /// the first), and the seconds of `window` during which `/api/run` was being rebuilt.
    async fn stop(self, window: (Instant, Instant)) -> anyhow::Result<(u64, f64)> {
        let _ = self.stop.send(true);
        let fetches = self.client.await??;
        self.server.abort();
        let rebuilding = self.dashboard.rebuild_spans().iter().map(|&(a, b)| b.min(window.1).saturating_duration_since(a.max(window.0)).as_secs_f64()).sum();
        Ok((fetches, rebuilding))
    }
}

/// One GET over a fresh HTTP/1.1 connection, read to its end; the body's length.
async fn get(addr: std::net::SocketAddr, path: &str, token: &str) -> anyhow::Result<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).await?;
    anyhow::ensure!(body.starts_with(b"HTTP/1.1 200"), "{path}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]));
    Ok(body.len())
}

async fn browse(addr: std::net::SocketAddr, token: String, mut stopped: tokio::sync::watch::Receiver<bool>, fetched: Arc<AtomicU64>) -> anyhow::Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut events = tokio::net::TcpStream::connect(addr).await?;
    events.write_all(format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes()).await?;
    let changed = Arc::new(tokio::sync::Notify::new());
    let fetcher = {
        let (changed, token, mut stopped) = (changed.clone(), token.clone(), stopped.clone());
        tokio::spawn(async move {
            let mut fetches = 0u64;
            loop {
                tokio::select! {
                    biased;
                    _ = stopped.wait_for(|s| *s) => return anyhow::Ok(fetches),
                    _ = changed.notified() => {}
                }
                get(addr, "/api/run", &token).await?;
                fetches += 1;
                fetched.store(fetches, Ordering::Relaxed);
            }
        })
    };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        tokio::select! {
            _ = stopped.wait_for(|s| *s) => break,
            n = events.read(&mut buf) => {
                let n = n?;
                anyhow::ensure!(n > 0, "the dashboard closed its event stream");
                if buf[..n].windows(13).any(|w| w == b"event: change") {
                    // Notify keeps one permit: changes during a fetch make one fetch after it.
                    changed.notify_one();
                }
            }
        }
    }
    Ok(fetcher.await??.saturating_sub(1))
}

fn remove_db(db: &Path) {
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
}

/// Serves `svc` on a loopback port and runs `clients` lease → report loops against it: round
/// trips per second, and the measured window.
async fn drive<S: SweepRpc>(svc: SweepServer<S>, clients: usize, seconds: f64, piggyback: bool) -> anyhow::Result<(f64, (Instant, Instant))> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tonic::transport::Server::builder().add_service(svc).serve_with_incoming_shutdown(incoming(listener), async {
        let _ = stop_rx.await;
    }));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let url = url.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = SweepClient::connect(url).await?;
            let register = pb::RegisterRequest { protocol_version: sweep_proto::PROTOCOL_VERSION, name: format!("bench{c}"), ..Default::default() };
            let id = client.register(register).await?.into_inner().worker_id;
            let mut next: Option<pb::LeaseReply> = None;
            while Instant::now() < deadline {
                let reply = match next.take() {
                    Some(r @ pb::LeaseReply { reply: Some(lease_reply::Reply::Lease(_)) }) => r,
                    _ => client.lease(pb::LeaseRequest { worker_id: id.clone() }).await?.into_inner(),
                };
                let Some(lease_reply::Reply::Lease(l)) = reply.reply else { break };
                let report = pb::ReportRequest {
                    worker_id: id.clone(),
                    attempt_id: l.attempt_id,
                    trial_hash: l.trial_hash,
                    status: sweep_proto::status_to_wire(schema::Status::Done),
                    metrics_json: r#"{"slept_seconds":0.001}"#.into(),
                    curve_json: "[]".into(),
                    lease_next: piggyback,
                    ..Default::default()
                };
                let r = client.report(report).await?.into_inner();
                anyhow::ensure!(r.recorded, "report not recorded: {}", r.note);
                next = r.next;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let start = Instant::now();
    for t in tasks {
        t.await??;
    }
    let end = Instant::now();
    let rate = done.load(Ordering::Relaxed) as f64 / (end - start).as_secs_f64();
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok((rate, (start, end)))
}

fn null_lease() -> pb::LeaseReply {
    let lease = pb::Lease {
        trial_hash: "0".repeat(16),
        attempt_id: 1,
        trial_toml: "[sleep]\nseconds = 0.001\n".into(),
        deadline_unix: 0.0,
        heartbeat_seconds: 1.0,
        report_checkpoints: false,
    };
    pb::LeaseReply { reply: Some(lease_reply::Reply::Lease(lease)) }
}

/// The baseline: the same protocol with no state behind it (every lease is attempt 1 of a
/// fixed trial, every report is accepted).
struct NullService;

#[tonic::async_trait]
impl SweepRpc for NullService {
    async fn register(&self, _: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterReply>, Status> {
        Ok(Response::new(pb::RegisterReply { worker_id: "null".into() }))
    }
    async fn lease(&self, _: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseReply>, Status> {
        Ok(Response::new(null_lease()))
    }
    async fn heartbeat(&self, _: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatReply>, Status> {
        Ok(Response::new(pb::HeartbeatReply { cancel: false, deadline_unix: 0.0 }))
    }
    async fn report(&self, r: Request<pb::ReportRequest>) -> Result<Response<pb::ReportReply>, Status> {
        let next = if r.into_inner().lease_next { Some(null_lease()) } else { None };
        Ok(Response::new(pb::ReportReply { recorded: true, note: String::new(), next }))
    }
    async fn cancel(&self, _: Request<pb::CancelRequest>) -> Result<Response<pb::CancelReply>, Status> {
        Ok(Response::new(pb::CancelReply {}))
    }
    async fn checkpoint(&self, _: Request<pb::CheckpointRequest>) -> Result<Response<pb::CheckpointReply>, Status> {
        Ok(Response::new(pb::CheckpointReply { stop: false, note: String::new() }))
    }
    async fn upload_artifact(&self, r: Request<tonic::Streaming<pb::ArtifactChunk>>) -> Result<Response<pb::ArtifactReply>, Status> {
        let mut chunks = r.into_inner();
        let mut bytes = 0;
        while let Some(c) = chunks.message().await? {
            bytes += c.data.len() as u64;
        }
        Ok(Response::new(pb::ArtifactReply { bytes, sha256: String::new() }))
    }
}

/// (wall seconds, ideal seconds) of a sweep of one-second trials with `workers` local workers
/// running `worker_bin`.
pub fn overhead(dir: &Path, trials: usize, workers: usize, worker_bin: &Path) -> anyhow::Result<(f64, f64)> {
    let sweep = sleep_sweep(dir, trials, 1.0)?;
    let out = dir.join("overhead");
    let _ = std::fs::remove_dir_all(&out);
    let opts = RunOptions {
        sweep: dir.join("bench.toml"),
        out,
        listen: "127.0.0.1:0".into(),
        retry_failed: false,
        lease_secs: 30.0,
        max_artifact_bytes: DEFAULT_MAX_BYTES,
        max_respawns: 0,
        quiet: true,
        token: None,
        advertise: None,
        remote_workers: false,
        tls: None,
        dashboard: None,
    };
    let launcher = crate::launch::local::LocalLauncher::new(&LaunchConfig::local(worker_bin.to_path_buf(), workers))?;
    let start = Instant::now();
    run(&opts, sweep, Some(Box::new(launcher)))?;
    let wall = start.elapsed().as_secs_f64();
    Ok((wall, trials.div_ceil(workers) as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trips(plain: f64, open: f64, opening: f64, rebuilding: f64) -> RoundTrips {
        RoundTrips {
            two_calls: 0.0,
            two_calls_baseline: 0.0,
            piggyback: plain,
            piggyback_baseline: 0.0,
            piggyback_browser: open,
            browser_fetches: 0,
            piggyback_opening: opening,
            opening_rebuild_seconds: rebuilding,
            window_seconds: 2.0,
            batch_mean: 0.0,
            store_busy: 0.0,
        }
    }

    #[test]
    fn steady_state_adds_the_duty_share_of_a_rebuilds_cost() {
        // A rebuild for 1 s of a 2 s window halves the rate while it runs: 1,000 → 750 overall.
        let r = trips(1000.0, 1000.0, 750.0, 1.0);
        assert!((r.rebuild_cost().unwrap() - 0.5).abs() < 1e-12);
        assert!((r.steady_loss().unwrap() - crate::dashboard::DUTY * 0.5).abs() < 1e-12);
        // The open page's own loss adds to it.
        let r = trips(1000.0, 990.0, 740.0, 1.0);
        assert!((r.steady_loss().unwrap() - (0.01 + crate::dashboard::DUTY * 0.5)).abs() < 1e-12);
        // No rebuild inside the window: nothing to say about the steady state.
        assert_eq!(trips(1000.0, 1000.0, 1000.0, 0.0).steady_loss(), None);
    }

    #[test]
    fn mean_interval_is_students_t() {
        // 1, 2, 3: mean 2, SD 1, SE 1/√3, t(2 d.f., 0.975) = 4.303.
        let (m, lo, hi) = mean_interval(&[1.0, 2.0, 3.0]);
        let half = 4.303 / 3f64.sqrt();
        assert!((m - 2.0).abs() < 1e-12 && (lo - (2.0 - half)).abs() < 1e-9 && (hi - (2.0 + half)).abs() < 1e-9);
        assert_eq!(mean_interval(&[5.0]), (5.0, 5.0, 5.0));
        // Beyond 31 values the normal quantile.
        let v: Vec<f64> = (0..40).map(|i| (i % 2) as f64).collect();
        let (m, lo, _) = mean_interval(&v);
        let se = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 39.0 / 40.0).sqrt();
        assert!((m - lo - 1.96 * se).abs() < 1e-12);
    }
}
