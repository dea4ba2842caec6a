//! `coordinator bench`: scheduler throughput and overhead, measured on loopback.
//! 1. Round trips: an in-process server with a sweep of no-op trials; C concurrent clients each
//!    loop lease → report as fast as they can; reports round trips (lease + report) per second.
//! 2. Overhead: `run` of a sweep of T one-second sleep trials with W local workers against the
//!    ideal ceil(T/W) seconds.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sweep_proto::pb::sweep_client::SweepClient;
use sweep_proto::pb::{self, lease_reply};

use crate::run::{run, RunOptions};
use crate::service::{serve, Shared};
use crate::state::State;
use crate::sweep::Sweep;

fn sleep_sweep(dir: &Path, trials: usize, seconds: f64) -> anyhow::Result<Sweep> {
    let src = format!("name = \"bench\"\ntimeout = 600\nseeds = [{}]\n[base]\nseed = 0\n[base.sleep]\nseconds = {seconds}\n", (0..trials).map(|i| i.to_string()).collect::<Vec<_>>().join(","));
    let path = dir.join("bench.toml");
    std::fs::write(&path, &src)?;
    Ok(Sweep::parse(&src, &path)?)
}

/// Round trips per second with `clients` concurrent clients for about `seconds`.
pub fn round_trips(dir: &Path, clients: usize, seconds: f64) -> anyhow::Result<f64> {
    let sweep = sleep_sweep(dir, 9_999, 0.001)?;
    let mut state = State::open(&dir.join("rt.db"), 1, 600.0)?;
    state.sync(&sweep, false)?;
    let shared = Shared::new(state, sweep.trials.iter().map(|t| (t.hash.clone(), t.toml.clone())).collect(), 60.0);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, shared, async {
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
                let id = format!("bench{c}");
                while Instant::now() < deadline {
                    let reply = client.lease(pb::LeaseRequest { worker_id: id.clone() }).await?.into_inner();
                    let Some(lease_reply::Reply::Lease(l)) = reply.reply else { break };
                    let report = pb::ReportRequest { worker_id: id.clone(), attempt_id: l.attempt_id, trial_hash: l.trial_hash, status: "ok".into(), metrics_json: "{}".into(), curve_json: "[]".into(), ..Default::default() };
                    client.report(report).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
        let start = Instant::now();
        for t in tasks {
            t.await??;
        }
        let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
        let _ = stop_tx.send(());
        let _ = server.await;
        anyhow::Ok(rate)
    })
}

/// (wall seconds, ideal seconds) of a sweep of one-second trials with `workers` workers.
pub fn overhead(dir: &Path, trials: usize, workers: usize) -> anyhow::Result<(f64, f64)> {
    let sweep = sleep_sweep(dir, trials, 1.0)?;
    let out = dir.join("overhead");
    let _ = std::fs::remove_dir_all(&out);
    let opts = RunOptions { sweep: dir.join("bench.toml"), out, listen: "127.0.0.1:0".into(), workers, retry_failed: false, lease_secs: 30.0, worker_bin: None, quiet: true };
    let start = Instant::now();
    run(&opts, sweep)?;
    let wall = start.elapsed().as_secs_f64();
    Ok((wall, trials.div_ceil(workers) as f64))
}
