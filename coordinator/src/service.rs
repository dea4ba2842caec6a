//! The gRPC adapter: a thin tonic service over [`Shared`] that converts wire types to domain
//! types and maps errors to `Status` in one place. Scheduling decisions live in `state`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sweep_proto::pb::sweep_server::{Sweep as SweepRpc, SweepServer};
use sweep_proto::pb::{self, lease_reply};
use sweep_proto::PROTOCOL_VERSION;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::state::{AttemptResult, State};
use crate::store::Store;

/// Server state shared by the gRPC handlers and the run loop. All database access goes through
/// the [`Store`] thread (group commit); handlers only await its answers.
pub struct Shared {
    pub store: Store,
    /// Trial TOML by hash, sent with each lease.
    pub trials: HashMap<String, String>,
    pub lease_secs: f64,
    pub heartbeat_secs: f64,
    /// First Ctrl-C: lease nothing more.
    pub stopping: AtomicBool,
    /// Second Ctrl-C: ask running attempts to cancel.
    pub cancel_all: AtomicBool,
    next_worker: AtomicU64,
}

/// Longest a Lease call is held while nothing is queued (the worker then calls again).
const LONG_POLL: Duration = Duration::from_secs(5);

impl Shared {
    pub fn new(state: State, trials: HashMap<String, String>, lease_secs: f64) -> Arc<Shared> {
        Arc::new(Shared {
            store: Store::new(state),
            trials,
            lease_secs,
            heartbeat_secs: (lease_secs / 4.0).clamp(0.05, 10.0),
            stopping: AtomicBool::new(false),
            cancel_all: AtomicBool::new(false),
            next_worker: AtomicU64::new(1),
        })
    }

    /// Stops leasing and wakes every held Lease call so it answers "done".
    pub fn stop_leasing(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.store.wake_all();
    }

    async fn with_state<T: Send + 'static>(&self, f: impl Fn(&mut State) -> rusqlite::Result<T> + Send + 'static) -> Result<T, Status> {
        self.store.call(f).await.map_err(|e| Status::internal(e.to_string()))
    }

    fn lease_of(&self, hash: String, attempt: u64, deadline: f64) -> Result<lease_reply::Reply, Status> {
        let toml = self.trials.get(&hash).cloned().ok_or_else(|| Status::internal(format!("trial {hash} is not in the loaded sweep")))?;
        Ok(lease_reply::Reply::Lease(pb::Lease { trial_hash: hash, attempt_id: attempt, trial_toml: toml, deadline_unix: deadline, heartbeat_seconds: self.heartbeat_secs }))
    }

    /// One lease attempt: a lease, "done" (nothing queued, nothing running, or stopping), or
    /// None (nothing queued while attempts run).
    async fn try_lease(&self, worker: &str) -> Result<Option<lease_reply::Reply>, Status> {
        if self.stopping.load(Ordering::SeqCst) {
            return Ok(Some(lease_reply::Reply::Done(true)));
        }
        let (w, secs) = (worker.to_string(), self.lease_secs);
        let got = self
            .with_state(move |st| st.lease_or_running(&w, secs))
            .await?;
        match got {
            Ok((hash, attempt, deadline)) => Ok(Some(self.lease_of(hash, attempt, deadline)?)),
            Err(0) => Ok(Some(lease_reply::Reply::Done(true))),
            Err(_) => Ok(None),
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

fn to_domain(r: &mut pb::ReportRequest) -> Result<AttemptResult, Status> {
    let curve: Vec<serde_json::Value> = serde_json::from_str(&r.curve_json).map_err(|e| Status::invalid_argument(format!("curve_json: {e}")))?;
    Ok(AttemptResult {
        status: std::mem::take(&mut r.status),
        diverged_step: r.diverged_step,
        metrics_json: std::mem::take(&mut r.metrics_json),
        curve_rows: curve.iter().map(|v| v.to_string()).collect(),
        dim: r.dim,
        samples_json: std::mem::take(&mut r.samples_json),
        data_json: std::mem::take(&mut r.data_json),
        wall_seconds: r.wall_seconds,
        error: std::mem::take(&mut r.error),
    })
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
        let id = self.0.next_worker.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(pb::RegisterReply { worker_id: format!("{}#{id}", r.name) }))
    }

    async fn lease(&self, req: Request<pb::LeaseRequest>) -> Result<Response<pb::LeaseReply>, Status> {
        let worker = req.into_inner().worker_id;
        let reply = self.0.lease_wait(&worker).await?;
        Ok(Response::new(pb::LeaseReply { reply: Some(reply) }))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatReply>, Status> {
        let r = req.into_inner();
        let s = &self.0;
        let (secs, cancel_all) = (s.lease_secs, s.cancel_all.load(Ordering::Relaxed));
        let (cancel, deadline) = s.with_state(move |st| st.heartbeat(r.attempt_id, secs, cancel_all)).await?;
        Ok(Response::new(pb::HeartbeatReply { cancel, deadline_unix: deadline }))
    }

    async fn report(&self, req: Request<pb::ReportRequest>) -> Result<Response<pb::ReportReply>, Status> {
        let mut r = req.into_inner();
        let result = to_domain(&mut r)?;
        let s = &self.0;
        // With lease_next, the report and the next lease are one atomic change (one job).
        let lease_next = r.lease_next && !s.stopping.load(Ordering::SeqCst);
        let (attempt, hash, worker, secs) = (r.attempt_id, r.trial_hash, r.worker_id, s.lease_secs);
        let (recorded, next) = s
            .with_state(move |st| {
                let recorded = st.report(attempt, &hash, &result)?;
                let next = if lease_next { Some(st.lease_or_running(&worker, secs)?) } else { None };
                Ok((recorded, next))
            })
            .await?;
        let reply = match next {
            Some(Ok((hash, attempt, deadline))) => Some(s.lease_of(hash, attempt, deadline)?),
            // Nothing queued or running: the sweep is over (the coordinator may exit at once).
            Some(Err(0)) => Some(lease_reply::Reply::Done(true)),
            // Nothing to hand out at once: the worker asks with Lease (which long-polls).
            Some(Err(_)) => Some(lease_reply::Reply::WaitSeconds(0.0)),
            // Asked for, but the coordinator is stopping.
            None if r.lease_next => Some(lease_reply::Reply::Done(true)),
            None => None,
        };
        let next = reply.map(|reply| pb::LeaseReply { reply: Some(reply) });
        let note = if recorded { String::new() } else { "attempt no longer running or trial already has a result: ignored".into() };
        Ok(Response::new(pb::ReportReply { recorded, note, next }))
    }

    async fn cancel(&self, req: Request<pb::CancelRequest>) -> Result<Response<pb::CancelReply>, Status> {
        let r = req.into_inner();
        self.0
            .with_state(move |st| {
                if let Some(hash) = st.attempt_trial(r.attempt_id)? {
                    let res = AttemptResult { status: "cancelled".into(), diverged_step: None, metrics_json: "{}".into(), curve_rows: vec![], dim: 0, samples_json: String::new(), data_json: String::new(), wall_seconds: 0.0, error: String::new() };
                    st.report(r.attempt_id, &hash, &res)?;
                }
                Ok(())
            })
            .await?;
        Ok(Response::new(pb::CancelReply {}))
    }
}

/// Serves the protocol on a bound listener until `shutdown` resolves (tests bind port 0).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(SweepServer::new(Service(shared)))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
}

/// Accepted connections with Nagle's algorithm off (small request/reply messages).
pub fn incoming(listener: TcpListener) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(s)
    })
}
