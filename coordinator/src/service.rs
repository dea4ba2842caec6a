//! The gRPC adapter: a thin tonic service over [`Shared`] that converts wire types to domain
//! types (statuses through `sweep_proto`'s conversions, `Points` to sample BLOBs) and maps
//! errors to `Status` in one place. Scheduling decisions live in `state`; artifact files in
//! `artifacts`.
//!
//! Refusals ([`Refusal`], nothing changed): an unregistered worker id (`NOT_FOUND`), an unknown
//! attempt (`NOT_FOUND`), an attempt leased to another worker (`PERMISSION_DENIED`), a report
//! naming another trial than its attempt's (`FAILED_PRECONDITION`). A report that cannot be
//! taken as sent (undecodable curve or samples, a `done` result without its trial's required
//! metrics, …) is not refused but recorded as a failed attempt with the reason.
//!
//! Every field is bounded first ([`crate::limits`]: `RESOURCE_EXHAUSTED` over a limit,
//! `INVALID_ARGUMENT` when malformed), and every report is checked against its attempt's
//! holder before any of it is parsed (and again, atomically, when it is recorded). A transient storage error (busy database, full disk, I/O) answers
//! `UNAVAILABLE`, which workers retry: a finished result is never dropped for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use schema::Status as TrialStatus;
use sweep_proto::PROTOCOL_VERSION;
use sweep_proto::pb::sweep_server::{Sweep as SweepRpc, SweepServer};
use sweep_proto::pb::{self, lease_reply};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

use crate::artifacts::{Artifacts, UploadError};
use crate::limits::{self, Exceeded, Invalid, Refused};
use crate::state::{AttemptResult, Lease, LeaseOutcome, Refusal, Registration, Samples, State};
use crate::store::{Store, StoreError};
use crate::sweep::Trial;

/// Largest message the server decodes (a Report with samples and curves; artifacts stream in
/// chunks of at most 1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Largest header list of a call the server accepts.
pub const MAX_HEADER_BYTES: u32 = 64 << 10;

/// Server state shared by the gRPC handlers and the run loop. All database access goes through
/// the [`Store`] thread (group commit); handlers only await its answers.
pub struct Shared {
    pub store: Store,
    /// Trial TOML by hash, sent with each lease.
    pub trials: HashMap<String, String>,
    /// The metrics a `done` result must carry, by trial hash.
    pub required_metrics: HashMap<String, Vec<&'static str>>,
    pub lease_secs: f64,
    pub heartbeat_secs: f64,
    /// First Ctrl-C: lease nothing more.
    pub stopping: AtomicBool,
    /// Second Ctrl-C: ask running attempts to cancel.
    pub cancel_all: AtomicBool,
    /// Uploaded files waiting for their report, and where recorded ones go.
    pub artifacts: Artifacts,
    /// Bumped after every change a person watching the run would see (a registration, a
    /// lease, a report, a cancel, an expiry, a respawn): the dashboard's live feed.
    pub activity: tokio::sync::watch::Sender<u64>,
    /// Leases ask workers to report each checkpoint (the sweep has an `[early_stop]` rule).
    pub report_checkpoints: AtomicBool,
    /// Longest an upload may go without a chunk ([`UPLOAD_IDLE`]; tests shorten it).
    pub upload_idle: Duration,
}

/// Longest an upload may go without a chunk.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(60);

/// Concurrent calls (HTTP/2 streams) one connection may have open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// Longest a Lease call is held while nothing is queued (the worker then calls again).
const LONG_POLL: Duration = Duration::from_secs(5);

impl Shared {
    /// Serves `trials` (the loaded sweep's) from `state`.
    pub fn new(state: State, trials: &[Trial], lease_secs: f64, artifacts: Artifacts) -> Arc<Shared> {
        let report_checkpoints = AtomicBool::new(state.rule().is_some());
        Arc::new(Shared {
            artifacts,
            store: Store::new(state),
            trials: trials.iter().map(|t| (t.hash.clone(), t.toml.clone())).collect(),
            required_metrics: trials.iter().map(|t| (t.hash.clone(), t.required_metrics.clone())).collect(),
            lease_secs,
            heartbeat_secs: (lease_secs / 4.0).clamp(0.05, 10.0),
            stopping: AtomicBool::new(false),
            cancel_all: AtomicBool::new(false),
            activity: tokio::sync::watch::channel(0).0,
            report_checkpoints,
            upload_idle: UPLOAD_IDLE,
        })
    }

    /// Tells the dashboard's live feed that the run changed.
    pub fn touched(&self) {
        self.activity.send_modify(|v| *v += 1);
    }

    /// Stops leasing and wakes every held Lease call so it answers "done".
    pub fn stop_leasing(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.store.wake_all();
    }

    async fn with_state<T: Send + 'static>(&self, f: impl Fn(&mut State) -> rusqlite::Result<T> + Send + 'static) -> Result<T, Status> {
        self.store.call(f).await.map_err(store_status)
    }

    /// As [`Shared::with_state`] for a request that may be refused.
    async fn checked<T: Send + 'static>(&self, f: impl Fn(&mut State) -> rusqlite::Result<Result<T, Refusal>> + Send + 'static) -> Result<T, Status> {
        self.with_state(f).await?.map_err(refused)
    }

    fn lease_of(&self, l: Lease) -> Result<lease_reply::Reply, Status> {
        let toml = self.trials.get(&l.hash).cloned().ok_or_else(|| Status::internal(format!("trial {} is not in the loaded sweep", l.hash)))?;
        Ok(lease_reply::Reply::Lease(pb::Lease {
            trial_hash: l.hash,
            attempt_id: l.attempt,
            trial_toml: toml,
            deadline_unix: l.deadline,
            heartbeat_seconds: self.heartbeat_secs,
            report_checkpoints: self.report_checkpoints.load(Ordering::Relaxed),
        }))
    }

    /// One lease attempt: a lease, "done" (nothing queued, nothing running, or stopping), or
    /// None (nothing queued while attempts run).
    async fn try_lease(&self, worker: &str) -> Result<Option<lease_reply::Reply>, Status> {
        if self.stopping.load(Ordering::SeqCst) {
            return Ok(Some(lease_reply::Reply::Done(true)));
        }
        let (w, secs) = (worker.to_string(), self.lease_secs);
        match self.checked(move |st| st.next_lease(&w, secs)).await? {
            LeaseOutcome::Leased(l) => {
                self.touched();
                Ok(Some(self.lease_of(l)?))
            }
            LeaseOutcome::Done => Ok(Some(lease_reply::Reply::Done(true))),
            LeaseOutcome::Wait { .. } => Ok(None),
        }
    }

    /// Lease with long polling: while nothing is queued but attempts run, waits for a change
    /// (a re-queued trial, a finished attempt, a stop) instead of telling the worker to sleep,
    /// so the tail of a sweep and its end reach workers at once.
    async fn lease_wait(&self, worker: &str) -> Result<lease_reply::Reply, Status> {
        let until = tokio::time::Instant::now() + LONG_POLL;
        let mut changed = self.store.changed();
        loop {
            changed.borrow_and_update();
            if let Some(r) = self.try_lease(worker).await? {
                return Ok(r);
            }
            match tokio::time::timeout_at(until, changed.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Ok(lease_reply::Reply::WaitSeconds(0.0)),
            }
        }
    }
}

#[derive(Clone)]
pub struct Service(pub Arc<Shared>);

/// The domain form of a report (its sizes checked by [`check_report`]). A report that cannot
/// be taken as sent (a status other than DONE, DIVERGED, CANCELLED or FAILED, a curve or
/// samples that do not decode) becomes a malformed one, recorded as FAILED with the reason;
/// metrics or a curve over the limits of [`crate::limits`] are refused. The curve is parsed
/// one row at a time, each row kept as its JSON text.
fn to_domain(r: &mut pb::ReportRequest) -> Result<AttemptResult, Exceeded> {
    let status = match sweep_proto::status_from_wire(r.status) {
        Ok(s @ (TrialStatus::Done | TrialStatus::Diverged | TrialStatus::Cancelled | TrialStatus::Failed | TrialStatus::Pruned)) => s,
        Ok(s) => return Ok(AttemptResult::malformed(&format!("status {s}; {}", r.error), r.wall_seconds)),
        Err(e) => return Ok(AttemptResult::malformed(&format!("{e}; {}", r.error), r.wall_seconds)),
    };
    // Over a limit: refused. Malformed: [`AttemptResult::check`] says how.
    let _ = limits::metrics(&r.metrics_json)?;
    let curve_rows = match limits::curve_rows(&r.curve_json)? {
        Ok(rows) => rows,
        Err(e) => return Ok(AttemptResult::malformed(&e, r.wall_seconds)),
    };
    let samples = match samples(r.samples.take(), r.data.take()) {
        Ok(s) => s,
        Err(e) => return Ok(AttemptResult::malformed(&e, r.wall_seconds)),
    };
    Ok(AttemptResult {
        status,
        diverged_step: r.diverged_step,
        metrics_json: std::mem::take(&mut r.metrics_json),
        curve_rows,
        samples,
        wall_seconds: r.wall_seconds,
        error: std::mem::take(&mut r.error),
        artifacts: Vec::new(),
        device: std::mem::take(&mut r.device),
    })
}

/// The sizes of a report's fields, before anything in it is parsed or looked up.
fn check_report(r: &pb::ReportRequest) -> Result<(), Exceeded> {
    limits::text("worker_id", &r.worker_id, limits::MAX_ID_BYTES)?;
    limits::text("trial_hash", &r.trial_hash, limits::MAX_ID_BYTES)?;
    limits::text("metrics_json", &r.metrics_json, limits::MAX_METRICS_JSON_BYTES)?;
    limits::text("curve_json", &r.curve_json, limits::MAX_CURVE_JSON_BYTES)?;
    limits::text("error", &r.error, limits::MAX_ERROR_BYTES)?;
    limits::text("device", &r.device, limits::MAX_DEVICE_BYTES)?;
    limits::at_most("artifacts", r.artifacts.len(), limits::MAX_REPORT_ARTIFACTS, "names")?;
    for name in &r.artifacts {
        limits::text("an artifact name", name, crate::artifacts::MAX_NAME_BYTES)?;
    }
    for (field, p) in [("samples", &r.samples), ("data", &r.data)] {
        if let Some(p) = p.as_ref().filter(|p| p.dim > 0) {
            limits::at_most(field, p.dim as usize, limits::MAX_DIM as usize, "dimensions")?;
            limits::at_most(field, p.f32_le.len() / 4 / p.dim as usize, limits::MAX_POINTS, "points")?;
        }
    }
    Ok(())
}

/// The sizes of a registration's fields, and its GPU count against its GPU list.
fn check_registration(r: &pb::RegisterRequest) -> Result<(), Refused> {
    limits::text("name", &r.name, limits::MAX_NAME_BYTES)?;
    limits::text("version", &r.version, limits::MAX_VERSION_BYTES)?;
    limits::text("device", &r.device, limits::MAX_DEVICE_BYTES)?;
    limits::at_most("gpu_devices", r.gpu_devices.len(), limits::MAX_GPU_DEVICES, "entries")?;
    for g in &r.gpu_devices {
        limits::text("a GPU name", &g.name, limits::MAX_GPU_NAME_BYTES)?;
    }
    if r.gpus as usize != r.gpu_devices.len() {
        return Err(Invalid(format!("gpus = {} but gpu_devices lists {}: the GPUs a worker offers are the ones it lists", r.gpus, r.gpu_devices.len())).into());
    }
    limits::at_most("slots", r.slots as usize, limits::MAX_SLOTS as usize, "attempts")?;
    Ok(())
}

/// The domain form of a registration (checked by [`check_registration`]); its device for
/// people: `cpu`, or the device label with the GPU's name and memory (`cuda:0 (NVIDIA H100
/// 80GB HBM3, 79.2 GiB)`). Its GPUs are the ones it lists.
fn registration(r: &pb::RegisterRequest) -> Registration {
    let gpu_count = r.gpu_devices.len() as u32;
    let label = if r.device.is_empty() { if gpu_count > 0 { "gpu".to_string() } else { "cpu".to_string() } } else { r.device.clone() };
    let gpus: Vec<String> = r.gpu_devices.iter().map(|g| format!("{}, {:.1} GiB", g.name, g.memory_bytes as f64 / (1u64 << 30) as f64)).collect();
    let device = if gpus.is_empty() { label } else { format!("{label} ({})", gpus.join("; ")) };
    Registration { name: r.name.clone(), cores: r.cores, gpus: gpu_count, version: r.version.clone(), device, slots: r.slots }
}

/// The gRPC status of a store error: `UNAVAILABLE` for a transient one (the worker retries
/// the same request), `INTERNAL` otherwise.
fn store_status(e: StoreError) -> Status {
    if e.is_transient() { Status::unavailable(format!("{e} (transient: send the request again)")) } else { Status::internal(e.to_string()) }
}

/// The gRPC status of a request refused by [`crate::limits`].
fn limit_status(e: impl Into<Refused>) -> Status {
    match e.into() {
        Refused::Exceeded(e) => Status::resource_exhausted(e.to_string()),
        Refused::Invalid(e) => Status::invalid_argument(e.to_string()),
    }
}

/// A worker id of a request, bounded.
fn worker_id(id: &str) -> Result<(), Status> {
    limits::text("worker_id", id, limits::MAX_ID_BYTES).map_err(limit_status)
}

/// Samples and data points as BLOBs of the same dimension; None when there are no samples.
fn samples(samples: Option<pb::Points>, data: Option<pb::Points>) -> Result<Option<Samples>, String> {
    let (samples, data) = (samples.unwrap_or_default(), data.unwrap_or_default());
    for (what, p) in [("samples", &samples), ("data", &data)] {
        p.to_f32().map_err(|e| format!("{what}: {e}"))?;
    }
    if samples.is_empty() {
        return Ok(None);
    }
    if !data.is_empty() && data.dim != samples.dim {
        return Err(format!("samples have dimension {} but data {}", samples.dim, data.dim));
    }
    Ok(Some(Samples { dim: samples.dim, samples: samples.f32_le, data: data.f32_le }))
}

/// The gRPC status of a refused request.
fn refused(r: Refusal) -> Status {
    match r {
        Refusal::UnknownWorker(_) | Refusal::UnknownAttempt(_) => Status::not_found(r.to_string()),
        Refusal::NotHolder { .. } => Status::permission_denied(r.to_string()),
        Refusal::WrongTrial { .. } => Status::failed_precondition(r.to_string()),
        Refusal::TooManyWorkers { .. } => Status::resource_exhausted(r.to_string()),
    }
}

/// The gRPC status of a refused upload.
fn upload_status(e: UploadError) -> Status {
    match e {
        UploadError::TooLarge { .. } | UploadError::Budget { .. } => Status::resource_exhausted(e.to_string()),
        UploadError::BadName(..) | UploadError::Malformed { .. } => Status::invalid_argument(e.to_string()),
        UploadError::Io { .. } => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl SweepRpc for Service {
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterReply>, Status> {
        let r = req.into_inner();
        if r.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol version mismatch: worker speaks {}, coordinator speaks {PROTOCOL_VERSION}; use matching builds",
                r.protocol_version
            )));
        }
        check_registration(&r).map_err(limit_status)?;
        let w = registration(&r);
        let id = self.0.checked(move |st| st.register(&w)).await?;
        self.0.touched();
        Ok(Response::new(pb::RegisterReply { worker_id: id }))
    }

    async fn lease(&self, req: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseReply>, Status> {
        let worker = req.into_inner().worker_id;
        worker_id(&worker)?;
        let reply = self.0.lease_wait(&worker).await?;
        Ok(Response::new(pb::LeaseReply { reply: Some(reply) }))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatReply>, Status> {
        let r = req.into_inner();
        worker_id(&r.worker_id)?;
        let s = &self.0;
        let (secs, cancel_all) = (s.lease_secs, s.cancel_all.load(Ordering::Relaxed));
        let (cancel, deadline) = s.checked(move |st| st.heartbeat(&r.worker_id, r.attempt_id, secs, cancel_all)).await?;
        Ok(Response::new(pb::HeartbeatReply { cancel, deadline_unix: deadline }))
    }

    async fn report(&self, req: Request<pb::ReportRequest>) -> Result<Response<pb::ReportReply>, Status> {
        let mut r = req.into_inner();
        let s = &self.0;
        check_report(&r).map_err(limit_status)?;
        // Who sends it, before parsing anything: only an attempt's holder costs the coordinator
        // a parse. Checked again with the report, atomically.
        {
            let (worker, attempt, hash) = (r.worker_id.clone(), r.attempt_id, r.trial_hash.clone());
            s.checked(move |st| st.check_holder(&worker, attempt, &hash)).await?;
        }
        // Checked against what its trial must produce (unknown for a trial no longer in the
        // sweep).
        let mut result = to_domain(&mut r).map_err(limit_status)?.checked(s.required_metrics.get(&r.trial_hash).map(Vec::as_slice));
        let (kept, missing) = s.artifacts.lookup(r.attempt_id, &r.artifacts);
        result.artifacts = kept;
        let with_result = matches!(result.status, TrialStatus::Done | TrialStatus::Diverged | TrialStatus::Pruned);
        // With lease_next, the report and the next lease are one atomic change (one job).
        let lease_next = r.lease_next && !s.stopping.load(Ordering::SeqCst);
        let (attempt, hash, worker, secs) = (r.attempt_id, r.trial_hash, r.worker_id, s.lease_secs);
        let artifacts = result.artifacts.clone();
        let (recorded, next) = {
            let hash = hash.clone();
            s.checked(move |st| {
                let recorded = match st.report(&worker, attempt, &hash, &result)? {
                    Ok(recorded) => recorded,
                    Err(refused) => return Ok(Err(refused)),
                };
                let next = if lease_next { st.next_lease(&worker, secs)?.ok() } else { None };
                Ok(Ok((recorded, next)))
            })
            .await?
        };
        s.touched();
        // After the commit: recorded artifacts move into place, the others are dropped.
        let mut note = Vec::new();
        if recorded && with_result {
            if let Err(e) = s.artifacts.keep(attempt, &hash, &artifacts) {
                // Recorded and on disk in `.partial`: moved into place when the run ends or
                // starts again (`Artifacts::recover`).
                eprintln!("coordinator: failed to move the artifacts of trial {hash} into place: {e}; kept in artifacts/.partial until the run ends");
                note.push(format!("artifacts recorded but not yet moved into place ({e}): moved when the run ends"));
            }
        } else {
            s.artifacts.discard(attempt);
        }
        if !recorded {
            note.push("attempt no longer running or trial already has a result: ignored".to_string());
        }
        if !missing.is_empty() {
            note.push(format!("artifact(s) not uploaded, not recorded: {}", missing.join(", ")));
        }
        let reply = match next {
            Some(LeaseOutcome::Leased(l)) => Some(s.lease_of(l)?),
            // Nothing queued or running: the sweep is over (the coordinator may exit at once).
            Some(LeaseOutcome::Done) => Some(lease_reply::Reply::Done(true)),
            // Nothing to hand out at once: the worker asks with Lease (which long-polls).
            Some(LeaseOutcome::Wait { .. }) => Some(lease_reply::Reply::WaitSeconds(0.0)),
            // Asked for, but the coordinator is stopping.
            None if r.lease_next => Some(lease_reply::Reply::Done(true)),
            None => None,
        };
        let next = reply.map(|reply| pb::LeaseReply { reply: Some(reply) });
        Ok(Response::new(pb::ReportReply { recorded, note: note.join("; "), next }))
    }

    async fn cancel(&self, req: Request<pb::CancelRequest>) -> Result<Response<pb::CancelReply>, Status> {
        let r = req.into_inner();
        worker_id(&r.worker_id)?;
        let attempt = r.attempt_id;
        self.0.checked(move |st| st.cancel(&r.worker_id, attempt)).await?;
        self.0.touched();
        self.0.artifacts.discard(r.attempt_id);
        Ok(Response::new(pb::CancelReply {}))
    }

    async fn checkpoint(&self, req: Request<pb::CheckpointRequest>) -> Result<Response<pb::CheckpointReply>, Status> {
        let r = req.into_inner();
        worker_id(&r.worker_id)?;
        limits::text("trial_hash", &r.trial_hash, limits::MAX_ID_BYTES).map_err(limit_status)?;
        limits::at_most("metrics", r.metrics.len(), limits::MAX_CURVE_KEYS, "entries").map_err(limit_status)?;
        limits::at_most("index", r.index as usize, limits::MAX_CURVE_ROWS, "checkpoints").map_err(limit_status)?;
        let mut metrics: Vec<(String, f64)> = Vec::with_capacity(r.metrics.len());
        for (k, v) in &r.metrics {
            limits::text("a metric name", k, limits::MAX_KEY_BYTES).map_err(limit_status)?;
            metrics.push((k.clone(), *v));
        }
        metrics.sort_by(|a, b| a.0.cmp(&b.0));
        let json = serde_json::Value::Object(
            metrics.iter().map(|(k, v)| (k.clone(), serde_json::Number::from_f64(*v).map_or(serde_json::Value::Null, serde_json::Value::Number))).collect(),
        )
        .to_string();
        let (worker, attempt, hash, index, step, last) = (r.worker_id, r.attempt_id, r.trial_hash, r.index, r.step, r.step >= r.total_steps);
        let (stop, note) = self.0.checked(move |st| st.checkpoint(&worker, attempt, &hash, index, step, last, &json, &metrics)).await?;
        // A checkpoint may have recorded a decision (continue or stop): the dashboard shows it.
        self.0.touched();
        Ok(Response::new(pb::CheckpointReply { stop, note }))
    }

    /// Streams an artifact of a running attempt into a partial file (see `artifacts`).
    async fn upload_artifact(&self, req: Request<Streaming<pb::ArtifactChunk>>) -> Result<Response<pb::ArtifactReply>, Status> {
        let mut chunks = req.into_inner();
        let first = chunks.message().await?.ok_or_else(|| Status::invalid_argument("empty artifact stream: the first chunk names the artifact"))?;
        let (attempt, worker) = (first.attempt_id, first.worker_id.clone());
        worker_id(&worker)?;
        crate::artifacts::check_name(&first.name).map_err(upload_status)?;
        limits::text("media_type", &first.media_type, limits::MAX_NAME_BYTES).map_err(limit_status)?;
        let outcome = {
            let worker = worker.clone();
            self.0.with_state(move |st| st.attempt_of(&worker, attempt)).await?
        };
        match outcome {
            Ok(TrialStatus::Running) => {}
            Ok(other) => return Err(Status::failed_precondition(format!("attempt {attempt} is {other}, not running: artifact `{}` refused", first.name))),
            Err(r) => {
                let status = refused(r);
                return Err(Status::new(status.code(), format!("{}: artifact `{}` refused", status.message(), first.name)));
            }
        }
        let mut upload = self.0.artifacts.begin(attempt, &first.name, &first.media_type, first.total_bytes).await.map_err(upload_status)?;
        upload.write(&first.data).await.map_err(upload_status)?;
        // An upload that stops sending is dropped (its file removed) after `upload_idle`.
        let limit = self.0.upload_idle;
        let idle = |name: &str| Status::deadline_exceeded(format!("artifact `{name}`: no data for {:.1} s", limit.as_secs_f64()));
        while let Some(chunk) = tokio::time::timeout(limit, chunks.message()).await.map_err(|_| idle(&first.name))?? {
            if chunk.attempt_id != attempt || chunk.worker_id != worker {
                return Err(Status::invalid_argument(format!("artifact `{}`: a chunk of another attempt or worker in the stream of attempt {attempt}", first.name)));
            }
            upload.write(&chunk.data).await.map_err(upload_status)?;
        }
        let a = upload.finish().await.map_err(upload_status)?;
        Ok(Response::new(pb::ArtifactReply { bytes: a.bytes, sha256: a.sha256 }))
    }
}

/// Serves the protocol on a bound listener until `shutdown` resolves (tests bind port 0).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), tonic::transport::Error> {
    serve_with_token(listener, shared, None, shutdown).await
}

/// [`serve`], admitting only calls that carry `token` when one is given (`crate::auth`).
pub async fn serve_with_token(
    listener: TcpListener,
    shared: Arc<Shared>,
    token: Option<&str>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_secured(listener, shared, token, None, shutdown).await
}

/// [`serve_with_token`], over TLS when `tls` is given (`crate::tls`). Every message, either
/// way, is limited to [`MAX_MESSAGE_BYTES`]: a larger one is refused (`RESOURCE_EXHAUSTED` or
/// `OUT_OF_RANGE`), as is one that does not decode (`INTERNAL`), and nothing else changes.
pub async fn serve_secured(
    listener: TcpListener,
    shared: Arc<Shared>,
    token: Option<&str>,
    tls: Option<&crate::tls::ServerTls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let svc = SweepServer::new(Service(shared)).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Headers are bounded too (a call carries a few hundred bytes of them).
    // Streams per connection are bounded, and dead connections found by keep-alive pings.
    let mut builder = tonic::transport::Server::builder()
        .http2_max_header_list_size(MAX_HEADER_BYTES)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(t) = tls {
        builder = builder.tls_config(t.config())?;
    }
    match token {
        Some(t) => {
            builder
                .add_service(tonic::service::interceptor::InterceptedService::new(svc, crate::auth::Check::new(t)))
                .serve_with_incoming_shutdown(incoming(listener), shutdown)
                .await
        }
        None => builder.add_service(svc).serve_with_incoming_shutdown(incoming(listener), shutdown).await,
    }
}

/// Accepted connections with Nagle's algorithm off (small request/reply messages). A failed
/// accept (out of file descriptors, say) waits 100 ms instead of being retried at once, so the
/// accept loop does not spin while the process is at its descriptor limit.
pub fn incoming(listener: TcpListener) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener)
        .then(|s| async move {
            match s.and_then(|s| s.set_nodelay(true).map(|()| s)) {
                Ok(s) => Some(s),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    None
                }
            }
        })
        .filter_map(|s| s.map(Ok))
}
