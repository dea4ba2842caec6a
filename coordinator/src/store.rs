//! Group commit: one thread owns the [`State`] and runs every request in it. Requests that
//! arrive while a commit is in progress are queued and then run together in a single
//! transaction, and each caller gets its answer only after the commit that holds its change —
//! so an acknowledged lease or report is as durable as with one transaction per change, while
//! the per-commit cost (locks, WAL frames) is paid once per batch instead of once per request.
//!
//! Each request stays all-or-nothing without paying for a savepoint: a batch is run
//! optimistically as one transaction, and if any request in it fails, the whole batch is
//! rolled back and every request is run again on its own (requests are `Fn`, re-runnable), so
//! a failing request never leaves half its changes and never takes the others down.
//!
//! Async callers (`call`) never block an executor thread on SQLite; the run loop and the
//! expiry timer go through the same queue, so all access to the database is serialized here.
//! Answers of a batch go back through one task on the async runtime (one cross-thread wake-up
//! per batch, not per request).

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use crate::state::State;

/// Why a store request has no answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database commit failed: {0}")]
    Commit(String),
    #[error("state store is closed")]
    Closed,
}

/// A queued request: run (possibly twice, see the module docs), then answer.
trait Request: Send {
    /// Runs against the state; false if it failed (its answer is then the error).
    fn run(&mut self, st: &mut State) -> bool;
    /// Hands over the answer once the commit outcome is known (None: committed).
    fn deliver(self: Box<Self>, commit_error: Option<String>);
}

struct Req<F, T> {
    f: F,
    answer: Option<rusqlite::Result<T>>,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<F: Fn(&mut State) -> rusqlite::Result<T> + Send, T: Send> Request for Req<F, T> {
    fn run(&mut self, st: &mut State) -> bool {
        let r = (self.f)(st);
        let ok = r.is_ok();
        self.answer = Some(r);
        ok
    }
    fn deliver(self: Box<Self>, commit_error: Option<String>) {
        let answer = match (commit_error, self.answer) {
            (Some(e), _) => Err(StoreError::Commit(e)),
            (None, Some(r)) => r.map_err(StoreError::from),
            (None, None) => Err(StoreError::Closed),
        };
        let _ = self.reply.send(answer);
    }
}

type Job = Box<dyn Request>;

/// Where the store thread sends a committed batch's requests to be answered: a task on the
/// async runtime, so waking the waiting handlers costs one cross-thread wake-up per batch.
type Deliverer = tokio::sync::mpsc::UnboundedSender<(Vec<Job>, Option<String>)>;

enum Msg {
    Job(Job),
    Stop,
}


/// Most requests in one transaction.
const MAX_BATCH: usize = 512;

/// Counters of the store thread (for `coordinator bench`).
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    /// Transactions committed.
    pub batches: u64,
    /// Requests run.
    pub requests: u64,
    /// Seconds the thread spent running and committing batches.
    pub busy_seconds: f64,
}

pub struct Store {
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    deliverer: Arc<OnceLock<Deliverer>>,
    stats: Arc<Mutex<StoreStats>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Bumped after a commit that may wake a waiting lease (see `State::woke`).
    changed: tokio::sync::watch::Sender<u64>,
}

impl Store {
    pub fn spawn(state: State) -> Store {
        let (tx, rx) = mpsc::channel::<Msg>();
        let (changed, _) = tokio::sync::watch::channel(0u64);
        let notify = changed.clone();
        let stats = Arc::new(Mutex::new(StoreStats::default()));
        let counters = stats.clone();
        let deliverer = Arc::new(OnceLock::new());
        let to = deliverer.clone();
        let thread = std::thread::Builder::new().name("state-store".into()).spawn(move || serve(state, rx, notify, counters, to)).expect("spawn the state store thread");
        Store { tx: Mutex::new(Some(tx)), deliverer, stats, thread: Mutex::new(Some(thread)), changed }
    }

    fn submit<T: Send + 'static>(&self, f: impl Fn(&mut State) -> rusqlite::Result<T> + Send + 'static) -> Result<tokio::sync::oneshot::Receiver<Result<T, StoreError>>, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(Req { f, answer: None, reply });
        let guard = self.tx.lock().map_err(|_| StoreError::Closed)?;
        guard.as_ref().ok_or(StoreError::Closed)?.send(Msg::Job(job)).map_err(|_| StoreError::Closed)?;
        Ok(rx)
    }

    /// Runs `f` atomically in the next batch and returns its answer after the commit. `f` may
    /// run twice (the first run rolled back), so it must not have effects outside the state.
    pub async fn call<T: Send + 'static>(&self, f: impl Fn(&mut State) -> rusqlite::Result<T> + Send + 'static) -> Result<T, StoreError> {
        self.deliverer.get_or_init(|| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Vec<Job>, Option<String>)>();
            tokio::spawn(async move {
                while let Some((batch, error)) = rx.recv().await {
                    for j in batch {
                        j.deliver(error.clone());
                    }
                }
            });
            tx
        });
        self.submit(f)?.await.map_err(|_| StoreError::Closed)?
    }

    /// `call` for threads outside the async runtime.
    pub fn call_blocking<T: Send + 'static>(&self, f: impl Fn(&mut State) -> rusqlite::Result<T> + Send + 'static) -> Result<T, StoreError> {
        self.submit(f)?.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// A receiver that sees a new value whenever a trial may have been re-queued or the sweep
    /// may have ended.
    pub fn changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn stats(&self) -> StoreStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Wakes every waiting lease (e.g. when the coordinator stops leasing).
    pub fn wake_all(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Finishes the queued requests, closes the database and joins the thread; later calls
    /// answer `Closed`.
    pub fn close(&self) {
        if let Ok(mut g) = self.tx.lock() {
            if let Some(tx) = g.take() {
                let _ = tx.send(Msg::Stop);
            }
        }
        if let Some(t) = self.thread.lock().ok().and_then(|mut g| g.take()) {
            let _ = t.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn serve(mut state: State, rx: mpsc::Receiver<Msg>, changed: tokio::sync::watch::Sender<u64>, stats: Arc<Mutex<StoreStats>>, deliverer: Arc<OnceLock<Deliverer>>) {
    let mut stop = false;
    while !stop {
        let Ok(first) = rx.recv() else { break };
        let mut jobs = Vec::new();
        match first {
            Msg::Job(j) => jobs.push(j),
            Msg::Stop => break,
        }
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Job(j)) => jobs.push(j),
                Ok(Msg::Stop) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let t0 = std::time::Instant::now();
        let n = jobs.len();
        let error = run_batch(&mut state, &mut jobs);
        // Through the runtime's deliverer when there is one (and it is still running);
        // otherwise (blocking callers, runtime gone) right here.
        let jobs = match deliverer.get() {
            Some(to) => match to.send((jobs, error.clone())) {
                Ok(()) => Vec::new(),
                Err(tokio::sync::mpsc::error::SendError((back, _))) => back,
            },
            None => jobs,
        };
        for j in jobs {
            j.deliver(error.clone());
        }
        if std::mem::take(&mut state.woke) {
            changed.send_modify(|v| *v += 1);
        }
        if let Ok(mut s) = stats.lock() {
            s.batches += 1;
            s.requests += n as u64;
            s.busy_seconds += t0.elapsed().as_secs_f64();
        }
    }
    // Dropping the state closes the connection (and checkpoints the WAL).
    drop(state);
}

/// Runs a batch as one transaction; on a failed request, rolls it all back and runs each
/// request as its own transaction. Returns the commit error that voids every answer, if any.
fn run_batch(state: &mut State, jobs: &mut [Job]) -> Option<String> {
    if state.begin().is_ok() {
        if jobs.iter_mut().all(|j| j.run(state)) {
            match state.commit() {
                Ok(()) => return None,
                Err(e) => {
                    state.rollback();
                    state.woke = false;
                    return Some(e.to_string());
                }
            }
        }
        state.rollback();
        state.woke = false;
    }
    for j in jobs.iter_mut() {
        // `atomic` outside a transaction: the request's own transaction, all or nothing.
        let _ = state.atomic(|st| if j.run(st) { Ok(()) } else { Err(rusqlite::Error::InvalidQuery) });
    }
    None
}
