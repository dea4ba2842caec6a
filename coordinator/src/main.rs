//! The `coordinator` binary: `run`, `serve`, `status`, `report`, `dashboard`, `export`,
//! `bench` and `k8s-manifest` over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coordinator::artifacts::DEFAULT_MAX_BYTES;
use coordinator::launch;
use coordinator::run::{RunOptions, db_path, run};
use coordinator::sweep::Sweep;
use results::escape::terminal;

#[derive(Parser)]
#[command(name = "coordinator", version, about = "scoresweep: run score-matching experiment sweeps")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Expand, persist and run a sweep with local workers (re-running resumes).
    Run {
        sweep: PathBuf,
        /// Workers: local CPU worker processes (default: one per core not given to GPU
        /// workers), or batch jobs (default: `workers` of the launcher's table, else one per
        /// core here).
        #[arg(long)]
        workers: Option<usize>,
        /// Output directory (default: out/<sweep name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Address to listen on (default: 127.0.0.1:0 for local workers, 0.0.0.0:0 for the
        /// launchers whose workers run on other machines: slurm, ssh, pbs).
        #[arg(long)]
        listen: Option<String>,
        /// Host name or address the workers dial (default: 127.0.0.1 for local workers; for
        /// remote ones this machine's host name, or its outward IP address).
        #[arg(long, value_name = "HOST")]
        advertise: Option<String>,
        /// Re-queue trials that failed or timed out in an earlier run.
        #[arg(long)]
        retry_failed: bool,
        /// Seconds a lease lives without a heartbeat.
        #[arg(long, default_value_t = 30.0, value_parser = coordinator::limits::parse_lease_secs)]
        lease_secs: f64,
        /// How workers are started: `local` (processes on this machine), `slurm` (one sbatch
        /// job each), `ssh` (on the hosts of --ssh-hosts), `pbs` (one qsub job each).
        #[arg(long, default_value = "local")]
        launcher: String,
        /// Each launcher's own settings (`--gpu-workers`, `--slurm-*`, `--ssh-*`, `--pbs-*`).
        #[command(flatten)]
        launcher_flags: Box<launch::LauncherFlags>,
        /// The worker executable's path on the machines of a remote launcher (`worker_bin` of
        /// its table; default: the local one's path).
        #[arg(long, value_name = "PATH")]
        remote_worker_bin: Option<PathBuf>,
        #[command(flatten)]
        tls: TlsArgs,
        /// Worker executable (default: $SCORESWEEP_WORKER, else `worker` next to this one).
        #[arg(long)]
        worker_bin: Option<PathBuf>,
        /// Largest artifact (e.g. model file) a trial may upload, in bytes.
        #[arg(long, default_value_t = DEFAULT_MAX_BYTES)]
        max_artifact_bytes: u64,
        /// Local workers that die (killed, out of memory) are replaced, at most this many
        /// times per run.
        #[arg(long, default_value_t = launch::DEFAULT_MAX_RESPAWNS)]
        max_respawns: usize,
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        dashboard: DashboardArgs,
    },
    /// Like `run` without spawning workers: workers started elsewhere join with
    /// `worker --coordinator URL`.
    Serve {
        sweep: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: String,
        /// Host name or address printed for workers to dial (default: the listen address, or
        /// this machine's name when listening on a wildcard address).
        #[arg(long, value_name = "HOST")]
        advertise: Option<String>,
        #[command(flatten)]
        tls: TlsArgs,
        #[arg(long)]
        retry_failed: bool,
        #[arg(long, default_value_t = 30.0, value_parser = coordinator::limits::parse_lease_secs)]
        lease_secs: f64,
        /// Largest artifact (e.g. model file) a trial may upload, in bytes.
        #[arg(long, default_value_t = DEFAULT_MAX_BYTES)]
        max_artifact_bytes: u64,
        #[command(flatten)]
        dashboard: DashboardArgs,
    },
    /// Serve the web page of a finished or interrupted run (read from its state database)
    /// until Ctrl-C; prints its link.
    Dashboard {
        dir: PathBuf,
        /// Loopback address to serve on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// Write a run (finished, interrupted or going on) to stdout in another tool's format.
    Export {
        #[command(subcommand)]
        format: ExportFormat,
    },
    /// Counts of a run (finished, interrupted or going on), its workers and their devices, the
    /// running attempts, and whether trials wait for a GPU worker.
    Status {
        dir: PathBuf,
        /// Also one line per trial: status, worker and device.
        #[arg(long)]
        trials: bool,
        /// Redraw every second (in place on a terminal) until the run ends: nothing queued or
        /// running, or its coordinator stopped.
        #[arg(long)]
        watch: bool,
    },
    /// Print a Kubernetes Secret (the run's token) and a Job of N workers joining a coordinator
    /// started with `serve` (YAML for `kubectl apply -f -`).
    K8sManifest {
        /// The URL the pods dial (e.g. http://coordinator.example:50051).
        #[arg(long)]
        coordinator: String,
        /// Container image with the worker executable.
        #[arg(long)]
        image: String,
        /// The worker executable's path in the image.
        #[arg(long, default_value = "/usr/local/bin/worker")]
        worker_path: String,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// The run's token file (OUT/token, written by `serve`).
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
        /// CA certificate (PEM) the workers verify an https:// coordinator with.
        #[arg(long, value_name = "FILE")]
        tls_ca: Option<PathBuf>,
        /// Job name (the Secret is NAME-token).
        #[arg(long, default_value = "scoresweep-workers")]
        name: String,
        #[arg(long)]
        namespace: Option<String>,
        /// CPU request and limit per pod (e.g. 2).
        #[arg(long)]
        cpu: Option<String>,
        /// Memory request and limit per pod (e.g. 4Gi).
        #[arg(long)]
        memory: Option<String>,
        /// GPUs per pod (nvidia.com/gpu).
        #[arg(long, default_value_t = 0)]
        gpus: u32,
    },
    /// Re-write tables, claims, plots and report.md from a run's state database.
    Report { dir: PathBuf },
    /// Scheduler benchmark: lease + report round trips per second on loopback, and the
    /// wall-clock overhead of a sweep of one-second trials.
    Bench {
        /// Concurrent gRPC clients in the round-trip runs.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Seconds per round-trip run.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Repetitions of the four interleaved round-trip runs (the median is reported).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// One-second sleep trials in the overhead run.
        #[arg(long, default_value_t = 20)]
        trials: usize,
        /// Local worker processes in the overhead run.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Worker executable for the overhead run (default as for `run`).
        #[arg(long)]
        worker_bin: Option<PathBuf>,
    },
}

/// TLS for the control plane (PEM files).
#[derive(clap::Args)]
struct TlsArgs {
    /// Serve TLS with this certificate chain (PEM); workers then dial https://.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificate launched workers verify the coordinator with (default: the --tls-cert
    /// file, right for a self-signed certificate).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ExportFormat {
    /// Optuna's JournalStorage log: `coordinator export optuna OUT > journal.log`, then
    /// `optuna-dashboard journal.log` (swept keys as params, the metric as value, its
    /// checkpoints as intermediate values).
    Optuna {
        dir: PathBuf,
        /// The final metric that is each trial's value (default: the only metric every result
        /// has).
        #[arg(long)]
        metric: Option<String>,
        /// `minimize` or `maximize` the metric.
        #[arg(long, default_value = "minimize")]
        direction: String,
    },
}

/// `export optuna`: the journal on stdout; a missing database, an unknown or ambiguous metric,
/// or an unknown direction is a usage error (exit 2).
fn export_optuna(dir: &std::path::Path, metric: Option<&str>, direction: &str) -> Result<(), ExitCode> {
    use results::optuna::{self, Direction};
    let direction = match direction {
        "minimize" => Direction::Minimize,
        "maximize" => Direction::Maximize,
        d => return Err(usage(format_args!("--direction `{d}`: `minimize` or `maximize`"))),
    };
    let db = db_path(dir);
    if !db.exists() {
        return Err(usage(format_args!("{} has no state database (state.db)", dir.display())));
    }
    let state = results::state::State::load(&db).map_err(usage)?;
    let known: std::collections::BTreeSet<&str> = state.in_sweep().filter_map(|t| t.result.as_ref()).flat_map(|r| r.metrics.keys().map(String::as_str)).collect();
    let list = || known.iter().copied().collect::<Vec<_>>().join(", ");
    let metric = match metric {
        Some(m) if known.contains(m) => m.to_string(),
        Some(m) => return Err(usage(format_args!("--metric `{m}`: no result has it (metrics: {})", list()))),
        None => match optuna::common_metrics(&state).as_slice() {
            [one] => one.clone(),
            [] if known.is_empty() => return Err(usage("the run has no results yet: nothing to take as the value (give --metric)")),
            _ => return Err(usage(format_args!("choose the value with --metric (metrics: {})", list()))),
        },
    };
    let text = optuna::journal(&state, &metric, direction).map_err(|e| usage(format_args!("failed to read {}: {e}", db.display())))?;
    print!("{text}");
    Ok(())
}

/// The run's web page (`coordinator::dashboard`).
#[derive(clap::Args)]
struct DashboardArgs {
    /// Serve the run's live web page on this loopback address; its link (with a token) is
    /// printed as `dashboard: http://…`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    dashboard: String,
    /// Serve no web page.
    #[arg(long, conflicts_with = "dashboard")]
    no_dashboard: bool,
}

impl DashboardArgs {
    /// The checked address to serve on; None with --no-dashboard.
    fn address(&self) -> Result<Option<String>, ExitCode> {
        if self.no_dashboard {
            return Ok(None);
        }
        coordinator::dashboard::check_address(&self.dashboard).map_err(usage)?;
        Ok(Some(self.dashboard.clone()))
    }
}

fn default_out(sweep: &Sweep) -> PathBuf {
    PathBuf::from("out").join(&sweep.name)
}

fn load(path: &std::path::Path) -> Result<Sweep, ExitCode> {
    Sweep::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

/// `--tls-cert`/`--tls-key`/`--tls-ca`: the server's TLS and the CA PEM for launched workers.
fn load_tls(tls: &TlsArgs) -> Result<(Option<coordinator::tls::ServerTls>, Option<String>), ExitCode> {
    let server = coordinator::tls::ServerTls::from_flags(tls.tls_cert.as_deref(), tls.tls_key.as_deref()).map_err(usage)?;
    let ca = match (&server, &tls.tls_ca) {
        (Some(_), Some(p)) => Some(coordinator::tls::read_ca(p).map_err(usage)?),
        (Some(s), None) => Some(s.cert_pem().to_string()),
        (None, _) => None,
    };
    Ok((server, ca))
}

/// The run's random token; without a random source the run cannot start.
fn run_token() -> Result<String, ExitCode> {
    coordinator::auth::new_token().map_err(|e| {
        eprintln!("error: no random token: {e}");
        ExitCode::FAILURE
    })
}

fn print_summary(s: &results::Summary, out: &std::path::Path) {
    let respawns = if s.respawns > 0 { format!("; {} local worker respawn(s), see report.md", s.respawns) } else { String::new() };
    let pruned = if s.pruned > 0 { format!(", {} pruned", s.pruned) } else { String::new() };
    eprintln!("{} trials: {} done{pruned}, {} failed; results in {}{respawns}", s.trials, s.done, s.failed, out.display());
    for (claim, scope, verdict) in &s.claims {
        eprintln!("  {claim} [{scope}]: {verdict}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            sweep,
            workers,
            out,
            listen,
            advertise,
            retry_failed,
            lease_secs,
            launcher,
            launcher_flags,
            remote_worker_bin,
            tls,
            worker_bin,
            max_artifact_bytes,
            max_respawns,
            quiet,
            dashboard,
        } => {
            let sw = match load(&sweep) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let dashboard = match dashboard.address() {
                Ok(d) => d,
                Err(code) => return code,
            };
            let out = out.unwrap_or_else(|| default_out(&sw));
            let (tls, tls_ca) = match load_tls(&tls) {
                Ok(t) => t,
                Err(code) => return code,
            };
            let token = match run_token() {
                Ok(t) => t,
                Err(code) => return code,
            };
            // The launcher, built before anything is written: an unknown kind, a missing worker
            // executable, a flag of another launcher or a bad launcher setting is a usage error.
            let kind = launcher;
            let shared = launch::Shared { worker_bin, remote_worker_bin, workers, token: Some(token.clone()), tls_ca, out: out.clone() };
            let launcher = match launch::launcher(&kind, &shared, &sw.launcher, &launcher_flags) {
                Ok(l) => l,
                Err(e) => return usage(e),
            };
            let remote_workers = launch::is_remote(&kind);
            let listen = listen.unwrap_or_else(|| if remote_workers { "0.0.0.0:0" } else { "127.0.0.1:0" }.to_string());
            let opts = RunOptions {
                sweep,
                out: out.clone(),
                listen,
                retry_failed,
                lease_secs,
                max_artifact_bytes,
                max_respawns,
                quiet,
                token: Some(token),
                advertise,
                remote_workers,
                tls,
                dashboard,
            };
            run(&opts, sw, launcher).map(|s| print_summary(&s, &out))
        }
        Command::Serve { sweep, out, listen, advertise, tls, retry_failed, lease_secs, max_artifact_bytes, dashboard } => {
            let sw = match load(&sweep) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let dashboard = match dashboard.address() {
                Ok(d) => d,
                Err(code) => return code,
            };
            if tls.tls_ca.is_some() {
                return usage("--tls-ca is the CA handed to launched workers (`run`); workers joining `serve` take `worker --tls-ca`");
            }
            let tls = match load_tls(&tls) {
                Ok((t, _)) => t,
                Err(code) => return code,
            };
            let out = out.unwrap_or_else(|| default_out(&sw));
            let token = match run_token() {
                Ok(t) => t,
                Err(code) => return code,
            };
            let opts = RunOptions {
                sweep,
                out: out.clone(),
                listen,
                retry_failed,
                lease_secs,
                max_artifact_bytes,
                max_respawns: 0,
                quiet: false,
                token: Some(token),
                advertise,
                remote_workers: true,
                tls,
                dashboard,
            };
            run(&opts, sw, None).map(|s| print_summary(&s, &out))
        }
        Command::Status { dir, trials, watch } => status(&dir, trials, watch),
        Command::Export { format: ExportFormat::Optuna { dir, metric, direction } } => {
            return match export_optuna(&dir, metric.as_deref(), &direction) {
                Ok(()) => ExitCode::SUCCESS,
                Err(code) => code,
            };
        }
        Command::Dashboard { dir, listen } => {
            if let Err(e) = coordinator::dashboard::check_address(&listen) {
                return usage(e);
            }
            coordinator::dashboard::serve_finished(&dir, &listen)
        }
        Command::K8sManifest { coordinator, image, worker_path, workers, token_file, tls_ca, name, namespace, cpu, memory, gpus } => {
            let token = match std::fs::read_to_string(&token_file) {
                Ok(t) => t,
                Err(e) => return usage(format_args!("failed to read the token file {}: {e}", token_file.display())),
            };
            let tls_ca = match tls_ca.as_deref().map(coordinator::tls::read_ca).transpose() {
                Ok(c) => c,
                Err(e) => return usage(e),
            };
            let m = coordinator::k8s::Manifest { name, namespace, image, worker_path, workers, coordinator, token, tls_ca, cpu, memory, gpus };
            match m.render() {
                Ok(yaml) => {
                    print!("{yaml}");
                    return ExitCode::SUCCESS;
                }
                Err(e) => return usage(e),
            }
        }
        Command::Bench { clients, seconds, repeat, trials, workers, worker_bin } => {
            let worker_bin = match launch::worker_executable(worker_bin.as_deref()) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            bench(clients, seconds, repeat, trials, workers, &worker_bin)
        }
        Command::Report { dir } => results::write_all(&db_path(&dir), &dir).map(|s| print_summary(&s, &dir)).map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// `status`: once, or with `--watch` redrawn every second until the run ends: no trial is
/// queued or running, or its coordinator recorded its end (or Ctrl-C). On a terminal each
/// frame replaces the last in place; otherwise the frames follow each other, a blank line
/// between two.
fn status(dir: &std::path::Path, per_trial: bool, watch: bool) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stdout().is_terminal();
    loop {
        let (text, over) = status_text(dir, per_trial)?;
        let mut out = std::io::stdout().lock();
        if watch && terminal {
            // Cursor home, clear the screen below it: the next frame replaces this one.
            write!(out, "\x1b[H\x1b[J")?;
        }
        write!(out, "{text}")?;
        if !watch || over {
            return Ok(());
        }
        if !terminal {
            writeln!(out)?;
        }
        out.flush()?;
        drop(out);
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// What `status` prints, and whether the run is over (nothing queued or running).
fn status_text(dir: &std::path::Path, per_trial: bool) -> anyhow::Result<(String, bool)> {
    use std::fmt::Write;
    let mut o = String::new();
    let db = db_path(dir);
    anyhow::ensure!(db.exists(), "{} has no state database (state.db)", dir.display());
    let st = coordinator::state::State::open(&db, 1, f64::INFINITY)?;
    let c = st.counts()?;
    // `failed` counts every finished trial without a usable result (diverged and timed out
    // too), as the run summary does.
    writeln!(o, "{} trials: {} done, {} pruned, {} running, {} queued, {} failed", c.total(), c.done, c.pruned, c.running, c.queued, c.failed)?;
    let shortage = st.gpu_shortage()?;
    if shortage > 0 {
        writeln!(o, "waiting for a GPU worker: {shortage} queued trial(s) need a GPU (gpu = true) and no worker with a GPU has registered since the run started")?;
    }
    let running = st.running()?;
    drop(st);
    let state = results::state::State::load(&db)?;
    // The run's coordinator recorded its end (a run stopped early, or one of before these
    // events, is over once nothing is queued or running).
    let ended = state.events.iter().rev().find(|e| e.kind == "start" || e.kind == "end").is_some_and(|e| e.kind == "end");
    if ended && c.queued + c.running > 0 {
        writeln!(o, "the run is not going on: its coordinator stopped with trials left (run the sweep again to resume)")?;
    }
    let mut by_worker: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for r in state.in_sweep().filter_map(|t| t.result.as_ref()) {
        *by_worker.entry(r.worker.as_str()).or_default() += 1;
    }
    if !state.workers.is_empty() {
        writeln!(o, "workers ({}):", state.workers.len())?;
        for w in &state.workers {
            let n = by_worker.get(w.name.as_str()).copied().unwrap_or(0);
            writeln!(
                o,
                "  {} on {}, {} core(s): {n} result(s)",
                terminal(&w.name),
                if w.device.is_empty() { "an unrecorded device".to_string() } else { terminal(&w.device) },
                w.cores
            )?;
        }
    }
    for (hash, worker, device) in &running {
        writeln!(
            o,
            "running: trial {} on {} ({})",
            &hash[..hash.len().min(10)],
            terminal(&results::state::worker_display(worker)),
            if device.is_empty() { "device not recorded".to_string() } else { terminal(device) }
        )?;
    }
    if per_trial {
        for t in state.in_sweep() {
            let (worker, device) = t.result.as_ref().map(|r| (r.worker.as_str(), r.device.as_str())).unwrap_or(("", ""));
            let on = if worker.is_empty() { String::new() } else { format!(" by {} on {}", terminal(worker), if device.is_empty() { "?".to_string() } else { terminal(device) }) };
            writeln!(o, "  {} #{:<4} {:<9}{on}", t.short_hash(), t.idx, t.status.as_str())?;
        }
    }
    Ok((o, ended || c.queued + c.running == 0))
}

fn bench(clients: usize, seconds: f64, repeat: usize, trials: usize, workers: usize, worker_bin: &std::path::Path) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("scoresweep-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let runs = coordinator::bench::round_trips(&dir, clients, seconds, repeat)?;
    println!("round trips (lease + report) per second, {clients} concurrent clients, {} repetitions of {seconds} s runs:", runs.len());
    println!("  {:<42} {:>9} {:>16} {:>7}", "", "scheduler", "no-op baseline", "ratio");
    type Pick = fn(&coordinator::bench::RoundTrips) -> (f64, f64);
    let rows: [(&str, Pick); 2] =
        [("two calls (Lease, Report)", |r| (r.two_calls, r.two_calls_baseline)), ("piggybacked (Report + lease_next)", |r| (r.piggyback, r.piggyback_baseline))];
    for (name, pick) in rows {
        for (i, r) in runs.iter().enumerate() {
            let (a, b) = pick(r);
            println!("  {:<42} {a:>9.0} {b:>16.0} {:>7.2}", format!("{name} #{}", i + 1), a / b);
        }
        let med = |f: &dyn Fn(&coordinator::bench::RoundTrips) -> f64| median(runs.iter().map(f).collect());
        let (a, b) = (med(&|r| pick(r).0), med(&|r| pick(r).1));
        println!("  {:<42} {a:>9.0} {b:>16.0} {:>7.2}", format!("{name}, median"), med(&|r| pick(r).0 / pick(r).1));
    }
    // A browser on the dashboard: the piggybacked scheduler with it against without it, the
    // three runs of each repetition side by side.
    println!("  {:<42} {:>9} {:>16} {:>7}", "", "browser", "no browser", "ratio");
    for (i, r) in runs.iter().enumerate() {
        let open = format!("{} /api/run answers read", r.browser_fetches);
        let opening = format!("rebuilding /api/run {:.2} s of the {:.2} s window", r.opening_rebuild_seconds, r.window_seconds);
        for (page, rate, note) in [("open", r.piggyback_browser, open), ("opening", r.piggyback_opening, opening)] {
            println!("  {:<42} {rate:>9.0} {:>16.0} {:>7.3}  ({note})", format!("piggybacked, page {page} #{}", i + 1), r.piggyback, rate / r.piggyback);
        }
    }
    let open: Vec<f64> = runs.iter().map(|r| r.piggyback_browser / r.piggyback).collect();
    let (m, lo, hi) = coordinator::bench::mean_interval(&open);
    println!("  page open / no browser: median {:.3}, mean {m:.3}, 95% interval [{lo:.3}, {hi:.3}] ({} repetitions)", median(open.clone()), open.len());
    let cost: Vec<f64> = runs.iter().filter_map(|r| r.rebuild_cost()).collect();
    let steady: Vec<f64> = runs.iter().filter_map(|r| r.steady_loss()).collect();
    if cost.len() < runs.len() {
        println!("  {} of {} opening runs had no rebuild in their window", runs.len() - cost.len(), runs.len());
    }
    if !cost.is_empty() {
        let (m, lo, hi) = coordinator::bench::mean_interval(&cost);
        let duty = coordinator::dashboard::DUTY;
        println!("  round trips lost while /api/run is rebuilt: {:.1}% of the rate, 95% interval [{:.1}%, {:.1}%]", 100.0 * m, 100.0 * lo, 100.0 * hi);
        println!(
            "  steady state, the rebuilds' part ({:.0}% duty × that): {:.2}% of round trips, 95% interval [{:.2}%, {:.2}%]",
            100.0 * duty,
            100.0 * duty * m,
            100.0 * duty * lo,
            100.0 * duty * hi
        );
        let (m, lo, hi) = coordinator::bench::mean_interval(&steady);
        let verdict = if hi < 0.02 { "met" } else { "not shown" };
        println!(
            "  steady state in all (open-page loss + the rebuilds' part): {:.2}% of round trips lost, 95% interval [{:.2}%, {:.2}%]; target < 2%: {verdict}",
            100.0 * m,
            100.0 * lo,
            100.0 * hi
        );
    }
    let batch = median(runs.iter().map(|r| r.batch_mean).collect());
    let busy = median(runs.iter().map(|r| r.store_busy).collect());
    println!("  group commit (piggybacked, median): {batch:.1} requests per transaction; state store busy (SQLite work) {:.0}% of the time", 100.0 * busy);
    let (wall, ideal) = coordinator::bench::overhead(&dir, trials, workers, worker_bin)?;
    println!("{trials} one-second trials on {workers} local workers: {wall:.2} s against {ideal:.0} s ideal ({:+.1}% overhead)", 100.0 * (wall / ideal - 1.0));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
