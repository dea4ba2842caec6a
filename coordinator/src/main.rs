//! The `coordinator` binary: `run`, `serve`, `status`, `report` and `bench` over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coordinator::artifacts::DEFAULT_MAX_BYTES;
use coordinator::launch::{self, LaunchConfig, Launcher};
use coordinator::run::{RunOptions, db_path, run};
use coordinator::sweep::Sweep;

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
        /// Local CPU worker processes (default: one per core not given to GPU workers).
        #[arg(long)]
        workers: Option<usize>,
        /// Local GPU workers: `auto` (one per GPU that `worker devices` finds, each alone in
        /// its CUDA_VISIBLE_DEVICES), or a number up to that many (0: none).
        #[arg(long, default_value = "auto")]
        gpu_workers: String,
        /// CPU threads of each local GPU worker (data, host-side work).
        #[arg(long, default_value_t = 4)]
        gpu_worker_threads: usize,
        /// Output directory (default: out/<sweep name>).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Re-queue trials that failed or timed out in an earlier run.
        #[arg(long)]
        retry_failed: bool,
        /// Seconds a lease lives without a heartbeat.
        #[arg(long, default_value_t = 30.0)]
        lease_secs: f64,
        /// How workers are started (`local`: processes on this machine).
        #[arg(long, default_value = "local")]
        launcher: String,
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
    },
    /// Like `run` without spawning workers: workers started elsewhere join with
    /// `worker --coordinator URL`.
    Serve {
        sweep: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: String,
        #[arg(long)]
        retry_failed: bool,
        #[arg(long, default_value_t = 30.0)]
        lease_secs: f64,
        /// Largest artifact (e.g. model file) a trial may upload, in bytes.
        #[arg(long, default_value_t = DEFAULT_MAX_BYTES)]
        max_artifact_bytes: u64,
    },
    /// Counts of a run (finished, interrupted or going on), its workers and their devices, the
    /// running attempts, and whether trials wait for a GPU worker.
    Status {
        dir: PathBuf,
        /// Also one line per trial: status, worker and device.
        #[arg(long)]
        trials: bool,
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

fn default_out(sweep: &Sweep) -> PathBuf {
    PathBuf::from("out").join(&sweep.name)
}

fn load(path: &std::path::Path) -> Result<Sweep, ExitCode> {
    Sweep::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// The launcher of `run`, built before anything is written (None: no workers to start); an
/// unknown kind, a missing worker executable or a bad `--gpu-workers` is a usage error (exit
/// code 2).
fn make_launcher(
    kind: &str,
    worker_bin: Option<&std::path::Path>,
    workers: Option<usize>,
    gpu_workers: &str,
    gpu_threads: usize,
    token: &str,
) -> Result<Option<Box<dyn Launcher>>, ExitCode> {
    let usage = |e: &dyn std::fmt::Display| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    };
    if !launch::KINDS.contains(&kind) {
        return Err(usage(&launch::LaunchError::UnknownKind { kind: kind.to_string() }));
    }
    let asked = match gpu_workers {
        "auto" => None,
        n => Some(n.parse::<usize>().map_err(|_| usage(&format!("--gpu-workers: `{n}` is neither `auto` nor a number of GPU workers")))?),
    };
    if gpu_threads == 0 {
        return Err(usage(&"--gpu-worker-threads must be at least 1"));
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if workers == Some(0) && asked == Some(0) {
        return Ok(None);
    }
    let worker_bin = launch::worker_executable(worker_bin).map_err(|e| usage(&e))?;
    // GPUs matter to the local launcher only (other launchers place their workers elsewhere).
    let gpus = if kind == "local" && asked != Some(0) {
        let found = launch::local::visible_gpus(&worker_bin).map_err(|e| usage(&e))?;
        match asked {
            Some(n) if n > found.len() => {
                return Err(usage(&format!("--gpu-workers {n}: `{} devices` finds {} GPU(s)", worker_bin.display(), found.len())));
            }
            Some(n) => found[..n].to_vec(),
            None => found,
        }
    } else {
        Vec::new()
    };
    let workers = workers.unwrap_or_else(|| launch::local::default_cpu_workers(cores, gpus.len(), gpu_threads));
    if workers == 0 && gpus.is_empty() {
        return Ok(None);
    }
    if !gpus.is_empty() {
        eprintln!("starting {} GPU worker(s) (CUDA_VISIBLE_DEVICES {}) and {workers} CPU worker(s)", gpus.len(), gpus.join(", "));
    }
    let config = LaunchConfig { worker_bin, workers, token: Some(token.to_string()), gpus, gpu_threads };
    launch::launcher(kind, &config).map(Some).map_err(|e| usage(&e))
}

fn print_summary(s: &results::Summary, out: &std::path::Path) {
    let respawns = if s.respawns > 0 { format!("; {} local worker respawn(s), see report.md", s.respawns) } else { String::new() };
    eprintln!("{} trials: {} done, {} failed; results in {}{respawns}", s.trials, s.done, s.failed, out.display());
    for (claim, scope, verdict) in &s.claims {
        eprintln!("  {claim} [{scope}]: {verdict}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { sweep, workers, gpu_workers, gpu_worker_threads, out, listen, retry_failed, lease_secs, launcher, worker_bin, max_artifact_bytes, max_respawns, quiet } => {
            let sw = match load(&sweep) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let out = out.unwrap_or_else(|| default_out(&sw));
            let token = match coordinator::auth::new_token() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: no random token: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let launcher = match make_launcher(&launcher, worker_bin.as_deref(), workers, &gpu_workers, gpu_worker_threads, &token) {
                Ok(l) => l,
                Err(code) => return code,
            };
            let opts = RunOptions { sweep, out: out.clone(), listen, retry_failed, lease_secs, max_artifact_bytes, max_respawns, quiet, token: Some(token) };
            run(&opts, sw, launcher).map(|s| print_summary(&s, &out))
        }
        Command::Serve { sweep, out, listen, retry_failed, lease_secs, max_artifact_bytes } => {
            let sw = match load(&sweep) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let out = out.unwrap_or_else(|| default_out(&sw));
            let token = match coordinator::auth::new_token() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: no random token: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let opts = RunOptions { sweep, out: out.clone(), listen, retry_failed, lease_secs, max_artifact_bytes, max_respawns: 0, quiet: false, token: Some(token) };
            run(&opts, sw, None).map(|s| print_summary(&s, &out))
        }
        Command::Status { dir, trials } => status(&dir, trials),
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

fn status(dir: &std::path::Path, per_trial: bool) -> anyhow::Result<()> {
    let db = db_path(dir);
    anyhow::ensure!(db.exists(), "{} has no state database (state.db)", dir.display());
    let st = coordinator::state::State::open(&db, 1, f64::INFINITY)?;
    let c = st.counts()?;
    // `failed` counts every finished trial without a usable result (diverged and timed out
    // too), as the run summary does.
    println!("{} trials: {} done, {} running, {} queued, {} failed", c.total(), c.done, c.running, c.queued, c.failed);
    let shortage = st.gpu_shortage()?;
    if shortage > 0 {
        println!("waiting for a GPU worker: {shortage} queued trial(s) need a GPU (gpu = true) and no worker with a GPU has registered since the run started");
    }
    let running = st.running()?;
    drop(st);
    let state = results::state::State::load(&db)?;
    let mut by_worker: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for r in state.in_sweep().filter_map(|t| t.result.as_ref()) {
        *by_worker.entry(r.worker.as_str()).or_default() += 1;
    }
    if !state.workers.is_empty() {
        println!("workers ({}):", state.workers.len());
        for w in &state.workers {
            let n = by_worker.get(w.name.as_str()).copied().unwrap_or(0);
            println!("  {} on {}, {} core(s): {n} result(s)", w.name, if w.device.is_empty() { "an unrecorded device" } else { &w.device }, w.cores);
        }
    }
    for (hash, worker, device) in &running {
        println!(
            "running: trial {} on {} ({})",
            &hash[..hash.len().min(10)],
            results::state::worker_display(worker),
            if device.is_empty() { "device not recorded" } else { device }
        );
    }
    if per_trial {
        for t in state.in_sweep() {
            let (worker, device) = t.result.as_ref().map(|r| (r.worker.as_str(), r.device.as_str())).unwrap_or(("", ""));
            let on = if worker.is_empty() { String::new() } else { format!(" by {worker} on {}", if device.is_empty() { "?" } else { device }) };
            println!("  {} #{:<4} {:<9}{on}", t.short_hash(), t.idx, t.status.as_str());
        }
    }
    Ok(())
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
    let batch = median(runs.iter().map(|r| r.batch_mean).collect());
    let busy = median(runs.iter().map(|r| r.store_busy).collect());
    println!("  group commit (piggybacked, median): {batch:.1} requests per transaction; state store busy (SQLite work) {:.0}% of the time", 100.0 * busy);
    let (wall, ideal) = coordinator::bench::overhead(&dir, trials, workers, worker_bin)?;
    println!("{trials} one-second trials on {workers} local workers: {wall:.2} s against {ideal:.0} s ideal ({:+.1}% overhead)", 100.0 * (wall / ideal - 1.0));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
