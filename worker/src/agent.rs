//! `worker --coordinator URL`: the gRPC client loop. Registers, leases trials, runs each on a
//! plain thread (training never blocks the async executor, so heartbeats keep going during long
//! steps), reports results, and exits when the coordinator says the sweep is done. Connection
//! failures are retried with backoff, and a finished result is kept until it is delivered — a
//! restarted coordinator still receives it. A local worker of `coordinator run`
//! (`--parent-pid`) exits within 0.2 s of its coordinator's death instead.
//!
//! SIGTERM (a batch scheduler cancelling the job, `kill`), and SIGINT unless
//! `--ignore-interrupt`, stop the worker: it gives its running attempt back (the `Cancel` call:
//! the trial is queued again at once and the attempt does not count as a try) and exits with an
//! error naming the signal, without waiting for the trial's next step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use engine::device::{self, DeviceChoice};
use engine::outcome::{self, TrialOutcome, TrialStatus};
use engine::outputs::{json_number, weights_safetensors};
use engine::trial;
use schema::{Status, TrialConfig};
use sweep_proto::pb::sweep_client::SweepClient;
use sweep_proto::pb::{self, lease_reply};
use sweep_proto::{MAX_CHUNK_BYTES, PROTOCOL_VERSION, status_to_wire};
use tokio::sync::watch;
use tonic::transport::Channel;

#[derive(clap::Args, Default)]
pub struct AgentArgs {
    /// Name shown in the coordinator's attempt records.
    #[arg(long, default_value = "worker")]
    pub name: String,
    /// Give up after the coordinator has been unreachable this many seconds.
    #[arg(long, default_value_t = 600.0)]
    pub max_unreachable: f64,
    /// Ignore SIGINT: a terminal's Ctrl-C reaches every process of its group, including the
    /// local workers of `coordinator run`, and stopping is the coordinator's call (first
    /// Ctrl-C: running trials finish; second: they are cancelled through heartbeats).
    #[arg(long, hide = true)]
    pub ignore_interrupt: bool,
    /// Exit as soon as process PID is no longer this worker's parent. `coordinator run` starts
    /// its local workers with its own pid: once it is gone their results could never be
    /// delivered (a restarted run listens on another port). Workers started by hand keep their
    /// `--max-unreachable` window.
    #[arg(long, hide = true, value_name = "PID")]
    pub parent_pid: Option<u32>,
    /// Read the run's token from this file (the coordinator writes `<out>/token`); otherwise
    /// it comes from the environment variable SCORESWEEP_TOKEN (never from the command line,
    /// where other users' `ps` would show it).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Read the run's token from the first line of standard input (the `ssh` launcher writes
    /// it there: neither a command line nor a file on the remote host holds it).
    #[arg(long, conflicts_with = "token_file")]
    pub token_stdin: bool,
    /// Exit as soon as standard input reaches end-of-file: the `ssh` launcher keeps it open, so
    /// a worker started over ssh stops when its ssh client is killed or the coordinator dies.
    #[arg(long)]
    pub exit_on_stdin_eof: bool,
    /// Verify the coordinator's TLS certificate with this CA certificate (PEM); needs an
    /// https:// URL. Launched workers get the PEM text in SCORESWEEP_TLS_CA instead.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
}

/// The environment variable that carries the run's token.
const TOKEN_ENV: &str = "SCORESWEEP_TOKEN";

/// The environment variable that carries the CA certificate (PEM text) of a TLS coordinator.
const TLS_CA_ENV: &str = "SCORESWEEP_TLS_CA";

/// Largest message this worker sends or accepts (the coordinator's limit too).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Adds `authorization: Bearer <token>` to every call (none without a token).
#[derive(Clone)]
pub struct Token(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The token from `--token-file`, else the first line of stdin (`--token-stdin`), else
/// SCORESWEEP_TOKEN, else none.
fn token(args: &AgentArgs) -> anyhow::Result<Token> {
    let text = match &args.token_file {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("failed to read the token file {}", p.display()))?),
        None if args.token_stdin => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("failed to read the token from standard input")?;
            anyhow::ensure!(!line.trim().is_empty(), "--token-stdin: standard input gave no token");
            Some(line)
        }
        None => std::env::var(TOKEN_ENV).ok(),
    };
    let Some(t) = text.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) else { return Ok(Token(None)) };
    let v = format!("Bearer {t}").parse().map_err(|_| anyhow::anyhow!("the token is not printable ASCII"))?;
    Ok(Token(Some(v)))
}

/// The channel to the coordinator: plain for http://, TLS for https:// (verified with the CA
/// of `--tls-ca` or SCORESWEEP_TLS_CA; there are no built-in roots).
fn channel(url: &str, args: &AgentArgs) -> anyhow::Result<Channel> {
    let endpoint = Channel::from_shared(url.to_string()).context("bad coordinator URL")?;
    let ca = match (&args.tls_ca, std::env::var(TLS_CA_ENV).ok().filter(|s| !s.trim().is_empty())) {
        (Some(p), _) => Some(std::fs::read_to_string(p).with_context(|| format!("failed to read the CA certificate {}", p.display()))?),
        (None, pem) => pem,
    };
    let https = url.starts_with("https://");
    let endpoint = match (https, ca) {
        (true, Some(pem)) => {
            let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem));
            endpoint.tls_config(tls).context("bad TLS settings")?
        }
        (true, None) => anyhow::bail!("{url} is https: give the CA certificate that signed the coordinator's (--tls-ca FILE or {TLS_CA_ENV})"),
        (false, Some(_)) if args.tls_ca.is_some() => anyhow::bail!("--tls-ca needs an https:// coordinator URL (got {url})"),
        // A CA given for a cleartext URL: the token would cross the network in clear when the
        // user meant it not to.
        (false, Some(_)) => anyhow::bail!("{TLS_CA_ENV} is set but the coordinator URL {url} is http://: use its https:// URL (or unset {TLS_CA_ENV})"),
        (false, None) => endpoint,
    };
    Ok(endpoint.connect_lazy())
}

/// Exits the process once standard input reaches end-of-file (`--exit-on-stdin-eof`).
fn exit_on_stdin_eof() {
    std::thread::Builder::new()
        .name("stdin-watchdog".into())
        .spawn(|| {
            use std::io::Read;
            let mut buf = [0u8; 256];
            loop {
                match std::io::stdin().read(&mut buf) {
                    Ok(0) | Err(_) => {
                        eprintln!("worker: standard input closed (its ssh session ended); exiting");
                        std::process::exit(3)
                    }
                    Ok(_) => {}
                }
            }
        })
        .expect("failed to start the stdin watchdog thread");
}

type Client = SweepClient<tonic::service::interceptor::InterceptedService<Channel, Token>>;

/// How often the parent watchdog looks.
const PARENT_POLL: Duration = Duration::from_millis(200);

/// Exits the process (whatever its threads are doing, a training step included) once `pid`
/// is no longer its parent: checked at once (the parent may have died before this worker got
/// here), then every [`PARENT_POLL`] on a thread of its own.
fn exit_with_parent(pid: u32) {
    let orphaned = move || std::os::unix::process::parent_id() != pid;
    let exit = move || -> ! {
        eprintln!("worker: parent process {pid} is gone; exiting");
        std::process::exit(3)
    };
    if orphaned() {
        exit();
    }
    std::thread::Builder::new()
        .name("parent-watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(PARENT_POLL);
                if orphaned() {
                    exit();
                }
            }
        })
        .expect("failed to start the parent watchdog thread");
}

/// Samples sent back for plots.
const MAX_SAMPLES: usize = 2000;

/// Where this worker's trials run: the GPU it found for `--device` (None: the CPU), and that
/// GPU's description for the registration.
struct Placement {
    ordinal: Option<u32>,
    gpus: Vec<device::GpuInfo>,
    label: String,
}

fn placement(choice: DeviceChoice) -> anyhow::Result<Placement> {
    let found = device::detect();
    let ordinal = device::resolve(choice, &found).with_context(|| format!("--device {choice}"))?;
    let gpus: Vec<device::GpuInfo> = found.gpus.iter().filter(|g| Some(g.index) == ordinal).cloned().collect();
    let label = ordinal.map_or_else(|| "cpu".to_string(), |i| format!("cuda:{i}"));
    match (gpus.first(), &found.note) {
        (Some(g), _) => eprintln!("worker: trials run on {label} ({}, {:.1} GiB)", g.name, g.memory_bytes as f64 / (1u64 << 30) as f64),
        (None, Some(note)) => eprintln!("worker: trials run on the CPU ({note})"),
        (None, None) => eprintln!("worker: trials run on the CPU ({} GPU(s) not used: --device {choice})", found.gpus.len()),
    }
    Ok(Placement { ordinal, gpus, label })
}

/// The registration: cores, and the GPUs this worker's trials run on.
fn register_request(args: &AgentArgs, place: &Placement) -> pb::RegisterRequest {
    let cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    pb::RegisterRequest {
        protocol_version: PROTOCOL_VERSION,
        name: args.name.clone(),
        cores,
        gpus: place.gpus.len() as u32,
        version: env!("CARGO_PKG_VERSION").into(),
        gpu_devices: place.gpus.iter().map(|g| pb::GpuInfo { index: g.index, name: g.name.clone(), memory_bytes: g.memory_bytes }).collect(),
        device: place.label.clone(),
        // One trial at a time.
        slots: 1,
    }
}

pub fn run(url: &str, args: &AgentArgs, choice: DeviceChoice) -> anyhow::Result<()> {
    if let Some(pid) = args.parent_pid {
        exit_with_parent(pid);
    }
    // The token first: with --token-stdin it is the first line of stdin, which the watchdog
    // must not swallow.
    let token = token(args)?;
    if args.exit_on_stdin_eof {
        exit_on_stdin_eof();
    }
    let place = placement(choice)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let stop = stop_signals(args.ignore_interrupt)?;
        agent(url, args, token, &place, stop).await
    })
}

/// The signal that asked this worker to stop, once one has: SIGTERM, or SIGINT unless
/// `ignore_interrupt`. Listening replaces the signals' default action (exit) for the life of
/// the process, so an ignored SIGINT stays ignored.
fn stop_signals(ignore_interrupt: bool) -> std::io::Result<watch::Receiver<Option<&'static str>>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                Some(()) = term.recv() => "SIGTERM",
                Some(()) = int.recv() => "SIGINT",
                else => return,
            };
            if name == "SIGINT" && ignore_interrupt {
                continue;
            }
            let _ = tx.send(Some(name));
            // Keeps listening (and the receivers open) for the life of the process.
            while term.recv().await.is_some() {}
            return;
        }
    });
    Ok(rx)
}

/// Waits for a stop signal; returns its name.
async fn stopped(stop: &mut watch::Receiver<Option<&'static str>>) -> &'static str {
    match stop.wait_for(Option::is_some).await {
        Ok(sig) => sig.unwrap_or("a signal"),
        // The listener is gone (never, while the runtime runs): no signal will come.
        Err(_) => std::future::pending().await,
    }
}

/// Retries `f` with exponential backoff (0.1 s … 5 s) while the error is a transport failure.
async fn retry<T, F, Fut>(args: &AgentArgs, what: &str, f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    match retry_status(args, what, f).await? {
        Ok(v) => Ok(v),
        Err(s) => anyhow::bail!("{what} refused: {}", s.message()),
    }
}

/// As [`retry`], with the coordinator's refusal (any status but a transport failure) given
/// back for the caller to handle.
async fn retry_status<T, F, Fut>(args: &AgentArgs, what: &str, mut f: F) -> anyhow::Result<Result<T, tonic::Status>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let start = Instant::now();
    let mut wait = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return Ok(Ok(v)),
            Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded) => {
                if start.elapsed().as_secs_f64() > args.max_unreachable {
                    anyhow::bail!("coordinator unreachable for {:.0}s during {what}: {s}", args.max_unreachable);
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(s) => return Ok(Err(s)),
        }
    }
}

async fn agent(url: &str, args: &AgentArgs, token: Token, place: &Placement, mut stop: watch::Receiver<Option<&'static str>>) -> anyhow::Result<()> {
    let client = SweepClient::with_interceptor(channel(url, args)?, token).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);
    let register = register_request(args, place);
    let register = || {
        retry(args, "register", || {
            let mut c = client.clone();
            let r = register.clone();
            async move { c.register(r).await }
        })
    };
    let mut id = register().await?.into_inner().worker_id;
    // Registered again since the last lease answer (a second "unknown worker" then is fatal).
    let mut fresh = true;
    // The next lease rides on each report (`lease_next`); Lease is called only when the
    // report brought none (nothing queued at that moment; Lease then long-polls).
    let mut next: Option<pb::LeaseReply> = None;
    loop {
        let reply = match next.take() {
            Some(r @ pb::LeaseReply { reply: Some(lease_reply::Reply::Lease(_) | lease_reply::Reply::Done(_)) }) => r,
            _ => {
                let lease = retry_status(args, "lease", || {
                    let mut c = client.clone();
                    let req = pb::LeaseRequest { worker_id: id.clone() };
                    async move { c.lease(req).await }
                });
                let asked = tokio::select! {
                    asked = lease => asked?,
                    sig = stopped(&mut stop) => anyhow::bail!("stopped by {sig} (no trial was running)"),
                };
                match asked {
                    Ok(r) => {
                        fresh = false;
                        r.into_inner()
                    }
                    // A coordinator that does not know this id (its state database was
                    // replaced): register again.
                    Err(s) if s.code() == tonic::Code::NotFound && !fresh => {
                        fresh = true;
                        eprintln!("worker: {}; registering again", s.message());
                        id = register().await?.into_inner().worker_id;
                        continue;
                    }
                    Err(s) => anyhow::bail!("lease refused: {}", s.message()),
                }
            }
        };
        match reply.reply {
            Some(lease_reply::Reply::Lease(lease)) => next = run_lease(&client, &id, lease, args, place.ordinal, &mut stop).await?,
            Some(lease_reply::Reply::WaitSeconds(s)) => tokio::select! {
                _ = tokio::time::sleep(seconds(s, 0.0, 30.0)) => {}
                sig = stopped(&mut stop) => anyhow::bail!("stopped by {sig} (no trial was running)"),
            },
            Some(lease_reply::Reply::Done(_)) | None => return Ok(()),
        }
    }
}

struct Shared {
    progress: Mutex<outcome::Progress>,
    cancel: AtomicBool,
    /// The coordinator answered "stop" to a checkpoint: the cancelled run ends `pruned`.
    pruned: AtomicBool,
}

/// A checkpoint on its way from the training thread to the coordinator: (curve row, step,
/// total steps, metrics, where the answer goes: true = stop).
type CheckpointMsg = (u32, u64, u64, Vec<(String, f64)>, std::sync::mpsc::Sender<bool>);

/// How long the training thread waits for the coordinator's answer to a checkpoint before it
/// trains on (the checkpoint then goes undecided).
const CHECKPOINT_ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// The metrics of a checkpoint as a progress report carries them (None for progress between
/// checkpoints and while sampling); `train_loss` added where the runner reports it apart.
fn checkpoint_metrics(p: &outcome::Progress) -> Option<Vec<(String, f64)>> {
    if p.latest.is_empty() || p.latest.iter().any(|(k, _)| k == "sampling_step") {
        return None;
    }
    let mut m = p.latest.clone();
    if !m.iter().any(|(k, _)| k == "train_loss") {
        m.push(("train_loss".into(), p.train_loss));
    }
    Some(m)
}

/// How long a stopping worker tries to give its attempt back.
const GIVE_BACK_WITHIN: Duration = Duration::from_secs(5);

/// Runs one leased trial, heartbeating meanwhile, and delivers its report; returns the next
/// lease the coordinator sent back with the report, if any. A stop signal gives the attempt
/// back instead (and is returned as an error).
async fn run_lease(
    client: &Client,
    id: &str,
    lease: pb::Lease,
    args: &AgentArgs,
    ordinal: Option<u32>,
    stop: &mut watch::Receiver<Option<&'static str>>,
) -> anyhow::Result<Option<pb::LeaseReply>> {
    let started = Instant::now();
    let shared = Arc::new(Shared {
        progress: Mutex::new(outcome::Progress { step: 0, total_steps: 0, train_loss: f64::NAN, latest: vec![] }),
        cancel: AtomicBool::new(false),
        pruned: AtomicBool::new(false),
    });
    let (tx, mut rx) = tokio::sync::oneshot::channel::<Result<TrialOutcome, String>>();
    // With `report_checkpoints`, the training thread hands each checkpoint over and waits for
    // the coordinator's answer before the next step (a stop then ends the run right there).
    let (ck_tx, mut ck_rx) = tokio::sync::mpsc::unbounded_channel::<CheckpointMsg>();
    let ck_tx = lease.report_checkpoints.then_some(ck_tx);
    {
        let shared = shared.clone();
        let src = lease.trial_toml.clone();
        std::thread::spawn(move || {
            let out = (|| {
                let v: toml::Value = toml::from_str(&src).map_err(|e| format!("trial TOML: {e}"))?;
                let cfg = TrialConfig::from_value(&v).map_err(|e| format!("invalid trial: {e}"))?;
                // Opened on this thread: a CUDA device's stream belongs to the thread using it.
                let dev = device::open(ordinal).map_err(|e| e.to_string())?;
                let mut index = 0u32;
                let mut on_progress = |p: &outcome::Progress| {
                    *shared.progress.lock().expect("progress lock") = p.clone();
                    let (Some(ck_tx), Some(metrics)) = (&ck_tx, checkpoint_metrics(p)) else { return };
                    let (answer, answered) = std::sync::mpsc::channel();
                    if ck_tx.send((index, p.step, p.total_steps, metrics, answer)).is_ok() && answered.recv_timeout(CHECKPOINT_ANSWER_WITHIN) == Ok(true) {
                        shared.pruned.store(true, Ordering::Relaxed);
                        shared.cancel.store(true, Ordering::Relaxed);
                    }
                    index += 1;
                };
                trial::run_trial(&cfg, &dev, &mut on_progress, &shared.cancel).map_err(|e| e.to_string())
            })();
            let _ = tx.send(out);
        });
    }
    let beat = seconds(lease.heartbeat_seconds, 0.02, 30.0);
    let outcome = loop {
        tokio::select! {
            r = &mut rx => break r.unwrap_or_else(|_| Err("trial thread panicked".into())),
            Some((index, step, total_steps, metrics, answer)) = ck_rx.recv() => {
                let req = pb::CheckpointRequest {
                    worker_id: id.into(),
                    attempt_id: lease.attempt_id,
                    trial_hash: lease.trial_hash.clone(),
                    index,
                    step,
                    total_steps,
                    metrics: metrics.into_iter().collect(),
                };
                let asked = retry_status(args, "checkpoint", || {
                    let mut c = client.clone();
                    let r = req.clone();
                    async move { c.checkpoint(r).await }
                });
                // Unanswered (the coordinator gone for longer, or refusing): train on.
                let stop = match tokio::time::timeout(CHECKPOINT_ANSWER_WITHIN, asked).await {
                    Ok(Ok(Ok(r))) => {
                        let r = r.into_inner();
                        if r.stop {
                            eprintln!("worker: trial {} stopped at checkpoint {index} (step {step}): {}", short(&lease.trial_hash), r.note);
                        }
                        r.stop
                    }
                    _ => false,
                };
                let _ = answer.send(stop);
            }
            sig = stopped(stop) => {
                shared.cancel.store(true, Ordering::Relaxed);
                let req = pb::CancelRequest { worker_id: id.into(), attempt_id: lease.attempt_id };
                let given_back = tokio::time::timeout(GIVE_BACK_WITHIN, client.clone().cancel(req)).await;
                let trial = short(&lease.trial_hash);
                match given_back {
                    Ok(Ok(_)) => anyhow::bail!("stopped by {sig}; attempt {} of trial {trial} given back", lease.attempt_id),
                    Ok(Err(s)) => anyhow::bail!("stopped by {sig}; attempt {} of trial {trial} not given back ({}): its lease will expire", lease.attempt_id, s.message()),
                    Err(_) => anyhow::bail!("stopped by {sig}; attempt {} of trial {trial} not given back (no answer within {:?}): its lease will expire", lease.attempt_id, GIVE_BACK_WITHIN),
                }
            }
            _ = tokio::time::sleep(beat) => {
                let p = shared.progress.lock().expect("progress lock").clone();
                let req = pb::HeartbeatRequest { worker_id: id.into(), attempt_id: lease.attempt_id, step: p.step, total_steps: p.total_steps, train_loss: p.train_loss };
                // A missed heartbeat is not fatal: the result is still delivered later.
                if let Ok(r) = client.clone().heartbeat(req).await
                    && r.into_inner().cancel
                {
                    shared.cancel.store(true, Ordering::Relaxed);
                }
            }
        }
    };
    // The checkpoint travels as an artifact, streamed in chunks before the report; a refusal
    // (over the coordinator's size limit) is logged and the report goes on without it.
    // Other files the trial made (sample grids) go the same way.
    let mut files: Vec<(String, &'static str, Vec<u8>)> = Vec::new();
    let pruned = shared.pruned.load(Ordering::Relaxed);
    if let Ok(o) = &outcome
        && (o.status != TrialStatus::Cancelled || pruned)
    {
        match weights_safetensors(&o.weights) {
            Ok(Some(bytes)) => files.push(("model.safetensors".into(), "application/x-safetensors", bytes)),
            Ok(None) => {}
            Err(e) => eprintln!("worker: checkpoint not serialised: {e}"),
        }
        files.extend(o.files.iter().cloned());
    }
    match &outcome {
        Ok(o) => eprintln!("worker: trial {} {} on {} ({}) in {:.1}s", short(&lease.trial_hash), o.status, o.device, o.trainer, started.elapsed().as_secs_f64()),
        Err(e) => eprintln!("worker: trial {} failed: {e}", short(&lease.trial_hash)),
    }
    let mut report = to_report(id, &lease, outcome, started.elapsed().as_secs_f64());
    // Stopped on the coordinator's word: its checkpoints are results, the run is `pruned`.
    if pruned && report.status == status_to_wire(Status::Cancelled) {
        report.status = status_to_wire(Status::Pruned);
    }
    for (name, media_type, bytes) in files {
        match upload(client, id, lease.attempt_id, &name, media_type, bytes, args).await {
            Ok(()) => report.artifacts.push(name),
            Err(e) => eprintln!("worker: artifact {name} not delivered: {e:#}"),
        }
    }
    report.lease_next = true;
    deliver(client, report, args).await
}

/// A coordinator's answer as a wait: `secs` clamped to [lo, hi], NaN as `lo`.
fn seconds(secs: f64, lo: f64, hi: f64) -> Duration {
    Duration::from_secs_f64(if secs.is_nan() { lo } else { secs.clamp(lo, hi) })
}

/// Refusals of a report that may go away (`INTERNAL`, `ABORTED`: a coordinator's storage
/// failing) are retried this many times; `UNAVAILABLE` and lost connections are retried for
/// `--max-unreachable` seconds.
const REPORT_RETRIES: u32 = 8;

/// Delivers a finished report and returns the next lease that came back with it. Kept and
/// sent again while the coordinator cannot take it for now (bounded, with backoff); a report
/// refused as too large or malformed is replaced by a FAILED one that says why (the attempt
/// ends with the reason instead of expiring); any other refusal (e.g. the attempt is no
/// longer known) drops it.
async fn deliver(client: &Client, mut report: pb::ReportRequest, args: &AgentArgs) -> anyhow::Result<Option<pb::LeaseReply>> {
    let mut tries = 0;
    let mut wait = Duration::from_millis(200);
    let mut replaced = false;
    loop {
        let reply = retry_status(args, "report", || {
            let mut c = client.clone();
            let r = report.clone();
            async move { c.report(r).await }
        })
        .await?;
        match reply {
            Ok(r) => return Ok(r.into_inner().next),
            Err(s) if matches!(s.code(), tonic::Code::Internal | tonic::Code::Aborted) && tries < REPORT_RETRIES => {
                tries += 1;
                eprintln!("worker: report of attempt {} not taken ({}); sending it again in {:.1}s", report.attempt_id, s.message(), wait.as_secs_f64());
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            Err(s) if matches!(s.code(), tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted) && !replaced => {
                replaced = true;
                eprintln!("worker: report of attempt {} refused ({}); reporting the attempt as failed with the reason", report.attempt_id, s.message());
                report = refused_report(&report, s.message());
            }
            Err(s) => {
                eprintln!("worker: report of attempt {} refused, dropped: {}", report.attempt_id, s.message());
                return Ok(None);
            }
        }
    }
}

/// A FAILED report of `report`'s attempt saying why the coordinator refused it.
fn refused_report(report: &pb::ReportRequest, why: &str) -> pb::ReportRequest {
    pb::ReportRequest {
        worker_id: report.worker_id.clone(),
        attempt_id: report.attempt_id,
        trial_hash: report.trial_hash.clone(),
        status: status_to_wire(Status::Failed),
        metrics_json: "{}".into(),
        curve_json: "[]".into(),
        wall_seconds: report.wall_seconds,
        error: truncate(&format!("the coordinator refused the report: {why}"), MAX_ERROR_BYTES),
        lease_next: report.lease_next,
        device: report.device.clone(),
        ..Default::default()
    }
}

/// The coordinator's limit on a report's error text, in bytes.
const MAX_ERROR_BYTES: usize = 64 << 10;

/// `s` cut to at most `max` bytes (on a character boundary).
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The first 12 characters of a trial hash, for logs.
fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Streams one artifact in chunks of at most `MAX_CHUNK_BYTES`; transport failures are
/// retried as a whole, a refusal (e.g. over the size limit) is returned.
async fn upload(client: &Client, id: &str, attempt: u64, name: &str, media_type: &str, bytes: Vec<u8>, args: &AgentArgs) -> anyhow::Result<()> {
    let bytes = Arc::new(bytes);
    retry(args, "artifact upload", || {
        let mut c = client.clone();
        let bytes = bytes.clone();
        let total = bytes.len() as u64;
        let mut chunks: Vec<pb::ArtifactChunk> =
            bytes.chunks(MAX_CHUNK_BYTES).map(|data| pb::ArtifactChunk { worker_id: id.into(), attempt_id: attempt, data: data.to_vec(), ..Default::default() }).collect();
        if chunks.is_empty() {
            chunks.push(pb::ArtifactChunk { worker_id: id.into(), attempt_id: attempt, ..Default::default() });
        }
        chunks[0].name = name.into();
        chunks[0].media_type = media_type.into();
        chunks[0].total_bytes = total;
        async move { c.upload_artifact(tokio_stream_iter(chunks)).await }
    })
    .await?;
    Ok(())
}

/// A request stream over prepared chunks.
fn tokio_stream_iter(chunks: Vec<pb::ArtifactChunk>) -> impl tonic::codegen::tokio_stream::Stream<Item = pb::ArtifactChunk> + Send + 'static {
    tonic::codegen::tokio_stream::iter(chunks)
}

/// At most `MAX_SAMPLES` row-major points as little-endian f32 bytes.
fn points(p: &[Vec<f32>]) -> pb::Points {
    let dim = p.first().map_or(0, |s| s.len() as u32);
    let flat: Vec<f32> = p.iter().take(MAX_SAMPLES).flatten().copied().collect();
    pb::Points::from_f32(dim, &flat)
}

fn to_report(id: &str, lease: &pb::Lease, outcome: Result<TrialOutcome, String>, wall: f64) -> pb::ReportRequest {
    let mut r = pb::ReportRequest {
        worker_id: id.into(),
        attempt_id: lease.attempt_id,
        trial_hash: lease.trial_hash.clone(),
        wall_seconds: wall,
        curve_json: "[]".into(),
        metrics_json: "{}".into(),
        ..Default::default()
    };
    match outcome {
        Err(e) => {
            r.status = status_to_wire(Status::Failed);
            r.error = truncate(&e, MAX_ERROR_BYTES);
        }
        Ok(o) => {
            r.status = status_to_wire(o.status.into());
            r.device = o.device.clone();
            if let TrialStatus::Diverged { step } = o.status {
                r.diverged_step = Some(step);
            }
            let m: serde_json::Map<String, serde_json::Value> = o.metrics.iter().map(|(k, v)| (k.clone(), json_number(*v))).collect();
            r.metrics_json = serde_json::Value::Object(m).to_string();
            let rows: Vec<serde_json::Value> =
                o.curve_rows.iter().map(|row| serde_json::Value::Object(o.curve_columns.iter().cloned().zip(row.iter().map(|v| json_number(*v))).collect())).collect();
            r.curve_json = serde_json::Value::Array(rows).to_string();
            r.samples = Some(points(&o.samples));
            r.data = Some(points(&o.data_sample));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build without the `cuda` feature registers as a CPU worker: 0 GPUs, none listed,
    /// device "cpu", whatever `--device` asks short of a GPU (which is refused).
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_cuda_the_worker_registers_no_gpu() {
        for choice in [DeviceChoice::Auto, DeviceChoice::Cpu] {
            let place = placement(choice).unwrap();
            let r = register_request(&AgentArgs { name: "w".into(), ..Default::default() }, &place);
            assert_eq!((r.gpus, r.gpu_devices.len(), r.device.as_str(), place.ordinal), (0, 0, "cpu", None), "{choice}");
        }
        let e = placement(DeviceChoice::Cuda(0)).err().expect("no GPU to use");
        assert_eq!(format!("{e:#}"), "--device cuda:0: cannot use cuda:0: built without the `cuda` feature");
    }

    /// A coordinator whose Report answers each status of `script` in turn (then accepts),
    /// recording every report it sees.
    struct Flaky {
        script: Mutex<Vec<tonic::Code>>,
        seen: Arc<Mutex<Vec<pb::ReportRequest>>>,
    }

    #[tonic::async_trait]
    impl pb::sweep_server::Sweep for Flaky {
        async fn register(&self, _: tonic::Request<pb::RegisterRequest>) -> Result<tonic::Response<pb::RegisterReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("test"))
        }
        async fn lease(&self, _: tonic::Request<pb::LeaseRequest>) -> Result<tonic::Response<pb::LeaseReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("test"))
        }
        async fn heartbeat(&self, _: tonic::Request<pb::HeartbeatRequest>) -> Result<tonic::Response<pb::HeartbeatReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("test"))
        }
        async fn report(&self, req: tonic::Request<pb::ReportRequest>) -> Result<tonic::Response<pb::ReportReply>, tonic::Status> {
            self.seen.lock().unwrap().push(req.into_inner());
            let mut script = self.script.lock().unwrap();
            if script.is_empty() {
                return Ok(tonic::Response::new(pb::ReportReply { recorded: true, ..Default::default() }));
            }
            Err(tonic::Status::new(script.remove(0), "scripted refusal"))
        }
        async fn cancel(&self, _: tonic::Request<pb::CancelRequest>) -> Result<tonic::Response<pb::CancelReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("test"))
        }
        async fn checkpoint(&self, _: tonic::Request<pb::CheckpointRequest>) -> Result<tonic::Response<pb::CheckpointReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("test"))
        }
        async fn upload_artifact(&self, _: tonic::Request<tonic::Streaming<pb::ArtifactChunk>>) -> Result<tonic::Response<pb::ArtifactReply>, tonic::Status> {
            Err(tonic::Status::unimplemented("test"))
        }
    }

    /// Delivers a done report to a coordinator that answers `script` first; returns the
    /// reports it saw.
    fn deliver_against(script: Vec<tonic::Code>) -> Vec<pb::ReportRequest> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let flaky = Flaky { script: Mutex::new(script), seen: seen.clone() };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            // A free port (the client retries until the server listens).
            let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
            let url = format!("http://{addr}");
            let server = tokio::spawn(tonic::transport::Server::builder().add_service(pb::sweep_server::SweepServer::new(flaky)).serve(addr));
            let args = AgentArgs { max_unreachable: 30.0, ..Default::default() };
            let client = SweepClient::with_interceptor(channel(&url, &args).unwrap(), Token(None));
            let report = pb::ReportRequest {
                worker_id: "w#1.00".into(),
                attempt_id: 3,
                trial_hash: "h".into(),
                status: status_to_wire(Status::Done),
                metrics_json: r#"{"fd": 0.5}"#.into(),
                ..Default::default()
            };
            deliver(&client, report, &args).await.unwrap();
            server.abort();
        });
        seen.lock().unwrap().clone()
    }

    /// Issue 20, item 2: a finished report is kept and sent again while the coordinator's
    /// storage fails for a while (INTERNAL from an older coordinator, UNAVAILABLE from this
    /// one), and a report refused as over a limit becomes a FAILED one that says why.
    #[test]
    fn a_finished_report_survives_transient_refusals() {
        use tonic::Code::*;
        let seen = deliver_against(vec![Internal, Unavailable, Internal]);
        assert_eq!(seen.len(), 4, "three refusals, then taken");
        assert!(seen.iter().all(|r| r.status == status_to_wire(Status::Done) && r.metrics_json.contains("fd")), "the same report each time");
        let seen = deliver_against(vec![ResourceExhausted]);
        assert_eq!(seen.len(), 2);
        assert_eq!((seen[1].status, seen[1].attempt_id), (status_to_wire(Status::Failed), 3));
        assert!(seen[1].error.contains("refused the report") && seen[1].error.contains("scripted refusal"), "{}", seen[1].error);
        // A refusal that will not change drops it (no endless loop).
        assert_eq!(deliver_against(vec![PermissionDenied]).len(), 1);
    }

    /// The registration lists the GPU the worker uses, with its count.
    #[test]
    fn a_gpu_placement_is_advertised() {
        let gpu = device::GpuInfo { index: 1, name: "NVIDIA H100 80GB HBM3".into(), memory_bytes: 85_029_158_912 };
        let place = Placement { ordinal: Some(1), gpus: vec![gpu], label: "cuda:1".into() };
        let r = register_request(&AgentArgs::default(), &place);
        assert_eq!((r.gpus, r.device.as_str()), (1, "cuda:1"));
        assert_eq!(r.gpu_devices, vec![pb::GpuInfo { index: 1, name: "NVIDIA H100 80GB HBM3".into(), memory_bytes: 85_029_158_912 }]);
    }
}
