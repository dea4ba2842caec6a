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
        /// Local worker processes (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
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
    /// Counts of a finished or interrupted run.
    Status { dir: PathBuf },
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

/// The launcher of `run`, built before anything is written; an unknown kind or a missing worker
/// executable is a usage error (exit code 2).
fn make_launcher(kind: &str, worker_bin: Option<&std::path::Path>, workers: usize, token: &str) -> Result<Box<dyn Launcher>, ExitCode> {
    let usage = |e: launch::LaunchError| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    };
    if !launch::KINDS.contains(&kind) {
        return Err(usage(launch::LaunchError::UnknownKind { kind: kind.to_string() }));
    }
    let worker_bin = launch::worker_executable(worker_bin).map_err(usage)?;
    launch::launcher(kind, &LaunchConfig { worker_bin, workers, token: Some(token.to_string()) }).map_err(usage)
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
        Command::Run { sweep, workers, out, listen, retry_failed, lease_secs, launcher, worker_bin, max_artifact_bytes, max_respawns, quiet } => {
            let sw = match load(&sweep) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let out = out.unwrap_or_else(|| default_out(&sw));
            let workers = workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            let token = match coordinator::auth::new_token() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: no random token: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let launcher = if workers == 0 {
                None
            } else {
                match make_launcher(&launcher, worker_bin.as_deref(), workers, &token) {
                    Ok(l) => Some(l),
                    Err(code) => return code,
                }
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
        Command::Status { dir } => status(&dir),
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

fn status(dir: &std::path::Path) -> anyhow::Result<()> {
    let db = db_path(dir);
    anyhow::ensure!(db.exists(), "{} has no state database (state.db)", dir.display());
    let st = coordinator::state::State::open(&db, 1, f64::INFINITY)?;
    let c = st.counts()?;
    // `failed` counts every finished trial without a usable result (diverged and timed out
    // too), as the run summary does.
    println!("{} trials: {} done, {} running, {} queued, {} failed", c.total(), c.done, c.running, c.queued, c.failed);
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
