//! What the batch-scheduler launchers (`slurm`, `pbs`) share: one job per worker, submitted by
//! the scheduler's client, watched by asking the scheduler on a thread about once a second,
//! and cancelled when the run stops (pending jobs at once, running ones after the grace), fails
//! or is dropped. A scheduler says how to submit, ask and cancel ([`Scheduler`]);
//! [`BatchLauncher`] does the rest. Every job submitted is listed in `<out>/<kind>/jobs.tsv`
//! (for the record, and for cancelling by hand after a `kill -9` of the coordinator).
//!
//! A job that ends before the sweep does (cancelled, time limit, node failure) is a lost
//! worker: its attempt's lease expires and the trial is retried; the run loop submits a
//! replacement as the [`super::Respawner`] decides.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{BoxFuture, Exited, LaunchConfig, LaunchError, Launcher};

/// `<out>/<kind>/jobs.tsv`: one line per submitted job, `JOB_ID<TAB>WORKER_NAME`.
pub const JOBS_FILE: &str = "jobs.tsv";

/// How often job states are asked of the scheduler.
const QUERY_EVERY: Duration = Duration::from_secs(1);

/// A job the scheduler does not know this long after its submission is gone.
const UNKNOWN_AFTER: Duration = Duration::from_secs(10);

/// What the scheduler says of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for resources (cancelled at once when the run stops).
    Pending,
    /// Running, or on its way there or out.
    Active,
    /// Ended: how, as an [`Exited`] whose `name` the launcher fills in.
    Finished(Exited),
}

/// A batch scheduler: how jobs are submitted, asked about and cancelled.
pub trait Scheduler: Send + 'static {
    /// The launcher's kind (`slurm`): its directory under the run's output, and its logs.
    const KIND: &'static str;
    /// Submits the job of worker `name` joining the coordinator at `url`, with its log under
    /// `dir` (`<out>/<KIND>`, absolute, existing); returns the job's id.
    fn submit(&self, config: &LaunchConfig, url: &str, name: &str, dir: &Path) -> Result<String, LaunchError>;
    /// The states of the jobs `ids` (blocking; called on a thread). A job missing from the
    /// answer is not known to the scheduler (any more).
    fn query(ids: &[String]) -> Result<HashMap<String, JobState>, String>;
    /// Cancels the jobs `ids` (best effort, blocking).
    fn cancel(ids: &[String]);
}

struct Job {
    name: String,
    id: String,
    submitted: Instant,
}

type Found = Result<HashMap<String, JobState>, String>;

/// The launcher of a batch scheduler `S`: one job per worker.
pub struct BatchLauncher<S: Scheduler> {
    pub(super) config: LaunchConfig,
    pub(super) scheduler: S,
    pub(super) url: String,
    /// Jobs submitted and not yet seen ending.
    jobs: Vec<Job>,
    /// Every job this launcher submitted that may still exist (cancelled on stop and drop).
    live_ids: Vec<String>,
    query: Option<std::thread::JoinHandle<Found>>,
    last_query: Option<Instant>,
}

impl<S: Scheduler> BatchLauncher<S> {
    /// Submits nothing yet: `start` does.
    pub fn new(config: LaunchConfig, scheduler: S) -> BatchLauncher<S> {
        BatchLauncher { config, scheduler, url: String::new(), jobs: Vec::new(), live_ids: Vec::new(), query: None, last_query: None }
    }

    fn submit(&mut self, name: &str) -> Result<(), LaunchError> {
        use std::io::Write;
        let out = std::path::absolute(&self.config.out).unwrap_or_else(|_| self.config.out.clone());
        let dir = out.join(S::KIND);
        std::fs::create_dir_all(&dir).map_err(|source| LaunchError::Spawn { path: dir.clone(), source })?;
        let id = self.scheduler.submit(&self.config, &self.url, name, &dir)?;
        let line = format!("{id}\t{name}\n");
        let _ = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(JOBS_FILE)).and_then(|mut f| f.write_all(line.as_bytes()));
        self.jobs.push(Job { name: name.to_string(), id: id.clone(), submitted: Instant::now() });
        self.live_ids.push(id);
        Ok(())
    }

    fn spawn_query(ids: Vec<String>) -> std::thread::JoinHandle<Found> {
        std::thread::spawn(move || S::query(&ids))
    }
}

impl<S: Scheduler> Launcher for BatchLauncher<S> {
    fn start(&mut self, url: &str) -> Result<(), LaunchError> {
        self.url = url.to_string();
        for i in 0..self.config.workers {
            self.submit(&format!("{}{i}", S::KIND))?;
        }
        Ok(())
    }

    fn respawn(&mut self, name: &str) -> Result<(), LaunchError> {
        self.submit(name)
    }

    fn poll(&mut self) -> Vec<Exited> {
        let mut gone = Vec::new();
        if self.query.as_ref().is_some_and(|q| q.is_finished())
            && let Some(q) = self.query.take()
        {
            // A failed query (the scheduler busy or restarting) declares nobody dead.
            if let Ok(Ok(found)) = q.join() {
                let now = Instant::now();
                self.jobs.retain(|j| match found.get(&j.id) {
                    Some(JobState::Finished(e)) => {
                        gone.push(Exited { name: j.name.clone(), ..e.clone() });
                        false
                    }
                    Some(_) => true,
                    // Purged from the scheduler's memory (or never known): gone, status unknown.
                    None if now.duration_since(j.submitted) > UNKNOWN_AFTER => {
                        gone.push(Exited { name: j.name.clone(), code: None, signal: None, detail: Some(format!("{} job {}: no longer known to {}", S::KIND, j.id, S::KIND)) });
                        false
                    }
                    None => true,
                });
                let alive: Vec<&String> = self.jobs.iter().map(|j| &j.id).collect();
                self.live_ids.retain(|id| alive.contains(&id));
            }
        }
        if self.query.is_none() && !self.jobs.is_empty() && self.last_query.is_none_or(|t| t.elapsed() >= QUERY_EVERY) {
            self.last_query = Some(Instant::now());
            self.query = Some(Self::spawn_query(self.jobs.iter().map(|j| j.id.clone()).collect()));
        }
        gone
    }

    fn alive(&self) -> usize {
        self.jobs.len()
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let deadline = Instant::now() + grace;
            // Workers that were told "done" end their jobs; pending jobs have nothing to do.
            while !self.jobs.is_empty() && Instant::now() < deadline {
                let ids: Vec<String> = self.jobs.iter().map(|j| j.id.clone()).collect();
                let found = tokio::task::spawn_blocking(move || S::query(&ids)).await;
                let Ok(Ok(found)) = found else { break };
                let pending: Vec<String> = self.jobs.iter().filter(|j| found.get(&j.id) == Some(&JobState::Pending)).map(|j| j.id.clone()).collect();
                S::cancel(&pending);
                self.jobs.retain(|j| found.get(&j.id) == Some(&JobState::Active));
                let jobs = &self.jobs;
                self.live_ids.retain(|id| jobs.iter().any(|j| &j.id == id));
                if self.jobs.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let all = std::mem::take(&mut self.live_ids);
            S::cancel(&all);
            self.jobs.clear();
        })
    }
}

impl<S: Scheduler> Drop for BatchLauncher<S> {
    /// A run that fails or is dropped cancels every job it may still have.
    fn drop(&mut self) {
        S::cancel(&self.live_ids);
    }
}
