//! `coordinator run` / `serve`: expand and persist the sweep, serve it, start workers through a
//! [`Launcher`] (none for `serve`), show progress, handle Ctrl-C, and write the results.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::artifacts::Artifacts;
use crate::launch::{Launcher, Respawner};
use crate::service::{Shared, serve_secured};
use crate::state::State;
use crate::sweep::Sweep;

/// How long `serve` keeps answering "done" after the sweep ends.
const SERVE_GRACE: Duration = Duration::from_millis(500);

pub struct RunOptions {
    pub sweep: PathBuf,
    pub out: PathBuf,
    pub listen: String,
    pub retry_failed: bool,
    /// Seconds a lease lives without a heartbeat.
    pub lease_secs: f64,
    /// Largest artifact an attempt may upload, in bytes.
    pub max_artifact_bytes: u64,
    /// Replacements of dead workers this run may start (see [`Respawner`]).
    pub max_respawns: usize,
    pub quiet: bool,
    /// Calls must carry this token (`crate::auth`); None: no check (benchmarks).
    pub token: Option<String>,
    /// The host workers dial (`--advertise`); None: see `crate::address`.
    pub advertise: Option<String>,
    /// Workers run elsewhere (a cluster launcher, or `serve`): a wildcard listen address is
    /// advertised as this machine's name, not loopback.
    pub remote_workers: bool,
    /// Serve TLS with this certificate (`https://` URLs).
    pub tls: Option<crate::tls::ServerTls>,
    /// Serve the dashboard (`crate::dashboard`) on this loopback address; None: no dashboard.
    pub dashboard: Option<String>,
}

/// How long stopping waits for workers to exit on their own before killing them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Moves recorded artifacts left in `.partial` into place ([`Artifacts::recover`]), saying what
/// was moved and what is lost.
fn recover_artifacts(artifacts: &Artifacts, recorded: &[(String, String, u64)]) {
    let (moved, lost) = artifacts.recover(recorded);
    if moved > 0 {
        eprintln!("coordinator: moved {moved} recorded artifact(s) left in artifacts/.partial into place");
    }
    if !lost.is_empty() {
        let more = if lost.len() > 5 { format!(" and {} more", lost.len() - 5) } else { String::new() };
        eprintln!("warning: {} recorded artifact(s) have no file: {}{more}", lost.len(), lost[..lost.len().min(5)].join(", "));
    }
}

pub fn db_path(out: &Path) -> PathBuf {
    out.join("state.db")
}

/// Runs (or resumes) a sweep to completion with the workers of `launcher` (None: `serve`,
/// workers join from elsewhere); the sweep is validated, and the launcher built, before
/// anything is written.
pub fn run(opts: &RunOptions, sweep: Sweep, mut launcher: Option<Box<dyn Launcher>>) -> anyhow::Result<results::Summary> {
    crate::limits::check_lease_secs(opts.lease_secs).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&opts.out).with_context(|| format!("failed to create {}", opts.out.display()))?;
    let mut state = State::open(&db_path(&opts.out), sweep.retries + 1, sweep.timeout).context("failed to open the state database")?;
    let sync = state.sync(&sweep, opts.retry_failed).context("failed to record the sweep")?;
    state.set_rule(sweep.early_stop.clone());
    if !opts.quiet {
        eprintln!(
            "sweep `{}`: {} trials ({} new, {} already finished, {} re-queued, {} no longer in the sweep)",
            sweep.name,
            sweep.trials.len(),
            sync.new,
            sync.finished,
            sync.requeued,
            sync.out_of_sweep
        );
    }
    // The run's token, written before anything listens.
    if let Some(t) = &opts.token {
        let path = crate::auth::write_token(&opts.out, t).with_context(|| format!("failed to write the token file in {}", opts.out.display()))?;
        if !opts.quiet && launcher.is_none() {
            eprintln!("workers need the token in {} (as {} or --token-file)", path.display(), crate::auth::TOKEN_ENV);
        }
    }
    let artifacts = Artifacts::new(&opts.out, opts.max_artifact_bytes);
    // Recorded artifacts an earlier run did not get to move into place (a crash after the
    // commit) are moved now; the other partial uploads can no longer be reported.
    recover_artifacts(&artifacts, &state.recorded_artifacts().context("failed to read the recorded artifacts")?);
    artifacts.clear_partial();
    let shared = Shared::new(state, &sweep.trials, opts.lease_secs, artifacts);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // `start` and `end` events bracket the run, however it ends (`status --watch` stops at the
    // end of an interrupted run too).
    let _ = rt.block_on(shared.store.call(|st| st.note("start", "the coordinator started the run")));
    let outcome = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&opts.listen).await.with_context(|| format!("failed to listen on {}", opts.listen))?;
        let addr = listener.local_addr()?;
        let (host, warning) = crate::address::advertised_host(addr, opts.advertise.as_deref(), opts.remote_workers);
        let url = crate::address::url(&host, addr.port(), opts.tls.is_some());
        if let Some(w) = warning.filter(|_| launcher.is_some() && !opts.quiet) {
            eprintln!("warning: {w}");
        }
        // Said whether quiet or not: the run's token crosses the network in clear.
        if let Some(w) = crate::tls::cleartext_warning(addr, opts.tls.is_some()) {
            eprintln!("{w}");
        }
        if !opts.quiet {
            eprintln!("serving on {url}");
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let shared_for_server = shared.clone();
        let token = opts.token.clone();
        let tls = opts.tls.clone();
        let server = tokio::spawn(async move {
            serve_secured(listener, shared_for_server, token.as_deref(), tls.as_ref(), async {
                let _ = stop_rx.await;
            })
            .await
        });
        let dashboard = match &opts.dashboard {
            Some(addr) => {
                let live = crate::dashboard::Live { activity: shared.activity.subscribe(), lease_secs: opts.lease_secs };
                let bound = crate::dashboard::bind(addr, db_path(&opts.out), Some(live)).await?;
                if !opts.quiet {
                    eprintln!("dashboard: {}", bound.url);
                }
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let task = tokio::spawn(crate::dashboard::serve(bound.listener, bound.dashboard, async {
                    let _ = rx.await;
                }));
                Some((tx, task))
            }
            None => None,
        };
        // Lease expiry.
        let expiry = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    // An expired attempt's uploads can no longer be reported: drop them now.
                    if let Ok(expired) = shared.store.call(|st| st.expire()).await {
                        if !expired.is_empty() {
                            shared.touched();
                        }
                        for attempt in expired {
                            shared.artifacts.discard(attempt);
                        }
                    }
                }
            })
        };
        // Ctrl-C: first stops leasing, second cancels running attempts.
        {
            let shared = shared.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("\nstopping: no new trials; running ones finish (Ctrl-C again to cancel them)");
                    shared.stop_leasing();
                    if tokio::signal::ctrl_c().await.is_ok() {
                        eprintln!("\ncancelling running trials");
                        shared.cancel_all.store(true, Ordering::SeqCst);
                    }
                }
            });
        }
        // SIGTERM (a process manager, `kill`, Slurm ending the coordinator's own job): both
        // Ctrl-Cs at once, so that the run still ends through the launcher's `stop` (remote
        // jobs cancelled) rather than leaving its workers behind.
        {
            let shared = shared.clone();
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::spawn(async move {
                if term.recv().await.is_some() {
                    eprintln!("\nterminated: cancelling running trials and stopping the workers");
                    shared.stop_leasing();
                    shared.cancel_all.store(true, Ordering::SeqCst);
                }
            });
        }
        if let Some(l) = launcher.as_mut() {
            l.start(&url)?;
        }
        let mut respawner = Respawner::new(opts.max_respawns, Instant::now());
        let bar = if opts.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(0) };
        bar.set_style(indicatif::ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} {msg} (ETA {eta})").expect("template"));
        let started = Instant::now();
        // Woken by every finished or re-queued attempt (and a stop); the timeout keeps the
        // progress bar and the worker-exit check going in between.
        let mut changed = shared.store.changed();
        let mut warned_gpu = false;
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(250), changed.changed()).await;
            changed.borrow_and_update();
            // A transient storage error (busy, full disk) skips a round; the run goes on.
            let (c, shortage) = match shared.store.call(|st| Ok((st.counts()?, st.gpu_shortage()?))).await {
                Ok(v) => v,
                Err(e) if e.is_transient() => {
                    bar.suspend(|| eprintln!("coordinator: {e}; retrying"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            bar.set_length(c.total() as u64);
            bar.set_position(c.finished() as u64);
            let waiting = if shortage > 0 { format!(" — waiting: {shortage} trial(s) need a GPU (gpu = true) and no GPU worker is connected") } else { String::new() };
            bar.set_message(format!("done {} pruned {} running {} failed {} queued {}{waiting}", c.done, c.pruned, c.running, c.failed, c.queued));
            if shortage > 0 && !warned_gpu && !opts.quiet {
                warned_gpu = true;
                bar.suspend(|| {
                    eprintln!("{shortage} trial(s) need a GPU (gpu = true) and no connected worker has one: they wait for a GPU worker (worker --coordinator {url} --device cuda)")
                });
            }
            let stopping = shared.stopping.load(Ordering::SeqCst);
            if c.queued + c.running == 0 || (stopping && c.running == 0) {
                break;
            }
            if let Some(l) = launcher.as_mut() {
                // A worker that dies while trials remain is replaced (bounded, with backoff).
                for e in l.poll() {
                    if e.code == Some(0) {
                        continue;
                    }
                    let line = match respawner.exited(&e.name, Instant::now()) {
                        Some(d) if d.is_zero() => format!("worker {e}; respawning it"),
                        Some(d) => format!("worker {e}; respawning it in {:.1}s", d.as_secs_f64()),
                        None => format!("worker {e}; not respawned (--max-respawns {} reached)", respawner.max()),
                    };
                    if !opts.quiet {
                        // (`println` prints nothing while the bar is hidden, e.g. off a terminal.)
                        bar.suspend(|| eprintln!("{line}"));
                    }
                }
                for name in respawner.due(Instant::now()) {
                    l.respawn(&name)?;
                    let detail = format!("{name} respawned ({} of at most {})", respawner.count(), respawner.max());
                    let _ = shared.store.call(move |st| st.note("respawn", &detail)).await;
                    shared.touched();
                }
                if l.alive() == 0 && c.running == 0 && respawner.pending() == 0 {
                    anyhow::bail!("all launched workers exited with {} trials still queued ({} respawned, at most {})", c.queued, respawner.count(), respawner.max());
                }
            }
        }
        bar.finish();
        if !opts.quiet {
            let respawned = match respawner.count() {
                0 => String::new(),
                n => format!(" ({n} dead local worker(s) respawned)"),
            };
            eprintln!("finished in {:.1}s{respawned}", started.elapsed().as_secs_f64());
        }
        // Let workers see "done" (held Lease calls answer at once), then stop.
        shared.stop_leasing();
        if let Some(l) = launcher.as_mut() {
            l.stop(STOP_GRACE).await;
        } else {
            // `serve`: remote workers between two calls get "done" rather than a closed port.
            tokio::time::sleep(SERVE_GRACE).await;
        }
        expiry.abort();
        let _ = stop_tx.send(());
        let _ = server.await;
        if let Some((tx, task)) = dashboard {
            let _ = tx.send(());
            let _ = task.await;
        }
        anyhow::Ok(())
    });
    let _ = rt.block_on(shared.store.call(|st| {
        let c = st.counts()?;
        let detail = if c.queued + c.running == 0 { "every trial finished".to_string() } else { format!("stopped with {} trial(s) queued and {} running", c.queued, c.running) };
        st.note("end", &detail)
    }));
    outcome?;
    let recorded = rt.block_on(shared.store.call(|st| st.recorded_artifacts()));
    shared.store.close();
    if let Ok(recorded) = recorded {
        recover_artifacts(&shared.artifacts, &recorded);
    }
    shared.artifacts.clear_partial();
    drop(shared);
    let summary = results::write_all(&db_path(&opts.out), &opts.out).context("failed to write the results")?;
    Ok(summary)
}
