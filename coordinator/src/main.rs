//! The `coordinator` binary: `run`, `serve`, `status`, `report`, `bench` and `k8s-manifest` over
//! the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coordinator::artifacts::DEFAULT_MAX_BYTES;
use coordinator::launch::{self, LaunchConfig, Launcher};
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
        /// Address to listen on (default: 127.0.0.1:0 for local workers, 0.0.0.0:0 for the
        /// slurm and ssh launchers).
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
        /// job each), `ssh` (on the hosts of --ssh-hosts).
        #[arg(long, default_value = "local")]
        launcher: String,
        #[command(flatten)]
        cluster: Box<ClusterArgs>,
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
    },
    /// Counts of a run (finished, interrupted or going on), its workers and their devices, the
    /// running attempts, and whether trials wait for a GPU worker.
    Status {
        dir: PathBuf,
        /// Also one line per trial: status, worker and device.
        #[arg(long)]
        trials: bool,
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

/// Settings of the slurm and ssh launchers; each wins over its key in `[launcher.*]`.
#[derive(clap::Args)]
struct ClusterArgs {
    /// Slurm partition (`[launcher.slurm] partition`).
    #[arg(long, value_name = "NAME")]
    slurm_partition: Option<String>,
    /// Slurm time limit per worker job, e.g. 2:00:00 (`time`).
    #[arg(long, value_name = "TIME")]
    slurm_time: Option<String>,
    /// GPUs per worker job (`gpus`).
    #[arg(long, value_name = "N")]
    slurm_gpus: Option<u32>,
    /// CPUs per worker job (`cpus`).
    #[arg(long, value_name = "N")]
    slurm_cpus: Option<u32>,
    /// An extra sbatch argument (repeat for more), e.g. --slurm-arg=--qos=short.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    slurm_arg: Vec<String>,
    /// Hosts of the ssh launcher with their worker counts: host1:2,host2 (`hosts`).
    #[arg(long, value_name = "HOST[:N],…")]
    ssh_hosts: Option<String>,
    /// An extra ssh argument (repeat for more), e.g. --ssh-arg=-p2222 (`ssh_args`).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    ssh_arg: Vec<String>,
    /// The worker executable's path on Slurm nodes or ssh hosts (`worker_bin`; default: the
    /// local one's path).
    #[arg(long, value_name = "PATH")]
    remote_worker_bin: Option<PathBuf>,
}

impl ClusterArgs {
    /// The flags that only a cluster launcher reads, by name, when given.
    fn given(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let slurm = [
            ("--slurm-partition", self.slurm_partition.is_some()),
            ("--slurm-time", self.slurm_time.is_some()),
            ("--slurm-gpus", self.slurm_gpus.is_some()),
            ("--slurm-cpus", self.slurm_cpus.is_some()),
            ("--slurm-arg", !self.slurm_arg.is_empty()),
        ];
        let ssh = [("--ssh-hosts", self.ssh_hosts.is_some()), ("--ssh-arg", !self.ssh_arg.is_empty())];
        v.extend(slurm.iter().chain(ssh.iter()).filter(|(_, g)| *g).map(|(n, _)| *n));
        v
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

/// What `run` needs of the command line beside the sweep, checked.
struct LaunchRequest<'a> {
    kind: &'a str,
    worker_bin: Option<&'a std::path::Path>,
    workers: Option<usize>,
    token: &'a str,
    gpu_workers: &'a str,
    gpu_threads: usize,
    tls_ca: Option<String>,
    out: PathBuf,
    cluster: &'a ClusterArgs,
}

/// The launcher of `run`, built before anything is written; an unknown kind, a missing worker
/// executable, a bad `--gpu-workers`, a flag of another launcher or a bad cluster setting is a
/// usage error (exit code 2). Returns None when no worker is to be started.
fn make_launcher(req: LaunchRequest<'_>, tables: &launch::LauncherTables) -> Result<Option<Box<dyn Launcher>>, ExitCode> {
    let LaunchRequest { kind, worker_bin, workers, gpu_workers, gpu_threads, token, tls_ca, out, cluster } = req;
    if !launch::KINDS.contains(&kind) {
        return Err(usage(launch::LaunchError::UnknownKind { kind: kind.to_string() }));
    }
    let foreign: Vec<&str> = cluster.given().into_iter().filter(|f| !f.starts_with(&format!("--{kind}-"))).collect();
    if let Some(f) = foreign.first() {
        return Err(usage(format_args!("{f} is a setting of --launcher {}, not of --launcher {kind}", f.trim_start_matches('-').split('-').next().unwrap_or_default())));
    }
    if kind == "local" && cluster.remote_worker_bin.is_some() {
        return Err(usage("--remote-worker-bin is for --launcher slurm or ssh; local workers use --worker-bin"));
    }
    let mut slurm = tables.slurm.clone().unwrap_or_default();
    let mut ssh = tables.ssh.clone().unwrap_or_default();
    if let Some(t) = &cluster.slurm_time {
        launch::slurm::check_time(t).map_err(|m| usage(format_args!("--slurm-time: {m}")))?;
    }
    slurm.partition = cluster.slurm_partition.clone().or(slurm.partition);
    slurm.time = cluster.slurm_time.clone().or(slurm.time);
    slurm.gpus = cluster.slurm_gpus.or(slurm.gpus);
    slurm.cpus = cluster.slurm_cpus.or(slurm.cpus);
    slurm.sbatch_args.extend(cluster.slurm_arg.iter().cloned());
    if let Some(h) = &cluster.ssh_hosts {
        ssh.hosts = h.split(',').map(str::to_string).collect();
    }
    ssh.ssh_args.extend(cluster.ssh_arg.iter().cloned());
    let asked = match gpu_workers {
        "auto" => None,
        n => Some(n.parse::<usize>().map_err(|_| usage(format_args!("--gpu-workers: `{n}` is neither `auto` nor a number of GPU workers")))?),
    };
    if gpu_threads == 0 {
        return Err(usage("--gpu-worker-threads must be at least 1"));
    }
    let cores = || std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if kind == "local" {
        return local_launcher(worker_bin, workers, asked, gpu_threads, token, tls_ca, out);
    }
    let workers = match kind {
        "ssh" => {
            if workers.is_some() {
                return Err(usage("--workers does not apply to --launcher ssh: give each host's count in --ssh-hosts host:N"));
            }
            let hosts = launch::ssh::parse_hosts(&ssh.hosts).map_err(|m| usage(format_args!("--ssh-hosts: {m}")))?;
            if hosts.is_empty() {
                return Err(usage(launch::LaunchError::NoHostsGiven));
            }
            hosts.iter().map(|(_, n)| n).sum()
        }
        _ => workers.or(slurm.workers).unwrap_or_else(cores),
    };
    if workers == 0 {
        return Ok(None);
    }
    // A worker path on other machines is not checked here; otherwise the local executable
    // must exist (and its path is the default on the other machines). GPUs are the nodes'
    // business (`--slurm-gpus`; `--device auto` on the workers).
    let remote_bin = cluster.remote_worker_bin.clone().or_else(|| if kind == "slurm" { slurm.worker_bin.clone() } else { ssh.worker_bin.clone() });
    let worker_bin = match remote_bin {
        Some(p) => p,
        None => launch::worker_executable(worker_bin).map_err(usage)?,
    };
    slurm.worker_bin = Some(worker_bin.clone());
    ssh.worker_bin = Some(worker_bin.clone());
    let config = LaunchConfig { worker_bin, workers, token: Some(token.to_string()), tls_ca, out, slurm, ssh, ..Default::default() };
    launch::launcher(kind, &config).map(Some).map_err(usage)
}

/// The local launcher: `workers` CPU workers (default: the cores GPU workers leave) and one
/// GPU worker per visible GPU (`asked`: how many; None: all).
fn local_launcher(
    worker_bin: Option<&std::path::Path>,
    workers: Option<usize>,
    asked: Option<usize>,
    gpu_threads: usize,
    token: &str,
    tls_ca: Option<String>,
    out: PathBuf,
) -> Result<Option<Box<dyn Launcher>>, ExitCode> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if workers == Some(0) && asked == Some(0) {
        return Ok(None);
    }
    let worker_bin = launch::worker_executable(worker_bin).map_err(usage)?;
    let gpus = if asked != Some(0) {
        let found = launch::local::visible_gpus(&worker_bin).map_err(usage)?;
        match asked {
            Some(n) if n > found.len() => {
                return Err(usage(format_args!("--gpu-workers {n}: `{} devices` finds {} GPU(s)", worker_bin.display(), found.len())));
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
    let config = LaunchConfig { worker_bin, workers, token: Some(token.to_string()), tls_ca, out, gpus, gpu_threads, ..Default::default() };
    launch::launcher("local", &config).map(Some).map_err(usage)
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
    eprintln!("{} trials: {} done, {} failed; results in {}{respawns}", s.trials, s.done, s.failed, out.display());
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
            gpu_workers,
            gpu_worker_threads,
            out,
            listen,
            advertise,
            retry_failed,
            lease_secs,
            launcher,
            cluster,
            tls,
            worker_bin,
            max_artifact_bytes,
            max_respawns,
            quiet,
        } => {
            let sw = match load(&sweep) {
                Ok(s) => s,
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
            let kind = launcher;
            let req = LaunchRequest {
                kind: &kind,
                worker_bin: worker_bin.as_deref(),
                workers,
                gpu_workers: &gpu_workers,
                gpu_threads: gpu_worker_threads,
                token: &token,
                tls_ca,
                out: out.clone(),
                cluster: &cluster,
            };
            let launcher = match make_launcher(req, &sw.launcher) {
                Ok(l) => l,
                Err(code) => return code,
            };
            let remote_workers = kind != "local";
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
            };
            run(&opts, sw, launcher).map(|s| print_summary(&s, &out))
        }
        Command::Serve { sweep, out, listen, advertise, tls, retry_failed, lease_secs, max_artifact_bytes } => {
            let sw = match load(&sweep) {
                Ok(s) => s,
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
            };
            run(&opts, sw, None).map(|s| print_summary(&s, &out))
        }
        Command::Status { dir, trials } => status(&dir, trials),
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
            // Names and devices are the workers' own text: no terminal escapes pass.
            let device = if w.device.is_empty() { "an unrecorded device".to_string() } else { terminal(&w.device) };
            println!("  {} on {device}, {} core(s): {n} result(s)", terminal(&w.name), w.cores);
        }
    }
    for (hash, worker, device) in &running {
        println!(
            "running: trial {} on {} ({})",
            &hash[..hash.len().min(10)],
            terminal(&results::state::worker_display(worker)),
            if device.is_empty() { "device not recorded".to_string() } else { terminal(device) }
        );
    }
    if per_trial {
        for t in state.in_sweep() {
            let (worker, device) = t.result.as_ref().map(|r| (r.worker.as_str(), r.device.as_str())).unwrap_or(("", ""));
            let on = if worker.is_empty() { String::new() } else { format!(" by {} on {}", terminal(worker), if device.is_empty() { "?".to_string() } else { terminal(device) }) };
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
