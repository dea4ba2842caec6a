//! The gRPC adapter: a thin tonic service over [`Shared`] that converts wire types to domain
//! types and maps errors to `Status` in one place. Scheduling decisions live in `state`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sweep_proto::pb::sweep_server::{Sweep as SweepRpc, SweepServer};
use sweep_proto::pb::{self, lease_reply};
use sweep_proto::PROTOCOL_VERSION;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::state::{AttemptResult, State};

/// Server state shared by the gRPC handlers and the run loop. A std Mutex guards the database:
/// it is never held across an `.await`, and every critical section is one short transaction.
pub struct Shared {
    pub state: Mutex<State>,
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

impl Shared {
    pub fn new(state: State, trials: HashMap<String, String>, lease_secs: f64) -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(state),
            trials,
            lease_secs,
            heartbeat_secs: (lease_secs / 4.0).clamp(0.05, 10.0),
            stopping: AtomicBool::new(false),
            cancel_all: AtomicBool::new(false),
            next_worker: AtomicU64::new(1),
        })
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> rusqlite::Result<T>) -> Result<T, Status> {
        let mut st = self.state.lock().map_err(|_| Status::internal("state lock poisoned"))?;
        f(&mut st).map_err(|e| Status::internal(format!("state database: {e}")))
    }
}

#[derive(Clone)]
pub struct Service(pub Arc<Shared>);

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
        let s = &self.0;
        if s.stopping.load(Ordering::Relaxed) {
            return Ok(Response::new(pb::LeaseReply { reply: Some(lease_reply::Reply::Done(true)) }));
        }
        let leased = s.with_state(|st| st.lease(&worker, s.lease_secs))?;
        let reply = match leased {
            Some((hash, attempt, deadline)) => {
                let toml = s.trials.get(&hash).cloned().ok_or_else(|| Status::internal(format!("trial {hash} is not in the loaded sweep")))?;
                lease_reply::Reply::Lease(pb::Lease { trial_hash: hash, attempt_id: attempt, trial_toml: toml, deadline_unix: deadline, heartbeat_seconds: s.heartbeat_secs })
            }
            None => {
                // Nothing queued: wait while attempts run (they may fail and be re-queued).
                let c = s.with_state(|st| st.counts())?;
                if c.running > 0 { lease_reply::Reply::WaitSeconds(0.2) } else { lease_reply::Reply::Done(true) }
            }
        };
        Ok(Response::new(pb::LeaseReply { reply: Some(reply) }))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatReply>, Status> {
        let r = req.into_inner();
        let s = &self.0;
        let (cancel, deadline) = s.with_state(|st| st.heartbeat(r.attempt_id, s.lease_secs, s.cancel_all.load(Ordering::Relaxed)))?;
        Ok(Response::new(pb::HeartbeatReply { cancel, deadline_unix: deadline }))
    }

    async fn report(&self, req: Request<pb::ReportRequest>) -> Result<Response<pb::ReportReply>, Status> {
        let r = req.into_inner();
        let curve: Vec<serde_json::Value> = serde_json::from_str(&r.curve_json).map_err(|e| Status::invalid_argument(format!("curve_json: {e}")))?;
        let result = AttemptResult {
            status: r.status,
            diverged_step: r.diverged_step,
            metrics_json: r.metrics_json,
            curve_rows: curve.iter().map(|v| v.to_string()).collect(),
            dim: r.dim,
            samples_json: r.samples_json,
            data_json: r.data_json,
            wall_seconds: r.wall_seconds,
            error: r.error,
        };
        let recorded = self.0.with_state(|st| st.report(r.attempt_id, &r.trial_hash, &result))?;
        let note = if recorded { String::new() } else { "attempt no longer running or trial already has a result: ignored".into() };
        Ok(Response::new(pb::ReportReply { recorded, note }))
    }

    async fn cancel(&self, req: Request<pb::CancelRequest>) -> Result<Response<pb::CancelReply>, Status> {
        let r = req.into_inner();
        let hash: Option<String> = self.0.with_state(|st| st.attempt_trial(r.attempt_id))?;
        if let Some(hash) = hash {
            let res = AttemptResult { status: "cancelled".into(), diverged_step: None, metrics_json: "{}".into(), curve_rows: vec![], dim: 0, samples_json: String::new(), data_json: String::new(), wall_seconds: 0.0, error: String::new() };
            self.0.with_state(|st| st.report(r.attempt_id, &hash, &res))?;
        }
        Ok(Response::new(pb::CancelReply {}))
    }
}

/// Serves the protocol on a bound listener until `shutdown` resolves (tests bind port 0).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(SweepServer::new(Service(shared)))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
        .await
}
