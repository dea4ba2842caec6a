//! The `slurm` launcher: one batch job per worker, submitted with `sbatch` (partition, time
//! limit, GPUs, CPUs and extra `sbatch` arguments from `[launcher.slurm]` in the sweep file or
//! `--slurm-*` flags), watched with `squeue` (and `scontrol show job` for the exit code of a
//! job that ended), cancelled with `scancel` when the run stops, fails or is dropped.
//!
//! **The token never appears in a job's description.** The batch script, given to `sbatch` on
//! its standard input, is only `exec WORKER --coordinator URL --name NAME …` (what `scontrol
//! write batch_script` shows); the token travels in `sbatch`'s environment (`SCORESWEEP_TOKEN`,
//! exported to the job as Slurm does by default: `--export=ALL` is passed first, so a later
//! `--export` of the user's must name `SCORESWEEP_TOKEN`). No `--wrap` (which puts the command
//! in the job's record) and no token file on the compute node: nothing assumes a file system
//! shared with the coordinator, except the job log directory (`output`, default
//! `<out>/slurm/%x-%j.out`) and the worker executable at `worker_bin` on the nodes.
//!
//! A job that ends before the sweep does (cancelled, time limit, node failure) is a lost worker:
//! its attempt's lease expires and the trial is retried; the run loop submits a replacement as
//! the [`super::Respawner`] decides. Every job submitted is listed in `<out>/slurm/jobs.tsv`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{BoxFuture, Exited, LaunchConfig, LaunchError, Launcher, shell_quote};

/// `[launcher.slurm]` in a sweep file; each key also has a `--slurm-*` flag (the flag wins).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlurmOptions {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--time` (Slurm's formats: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`).
    pub time: Option<String>,
    /// `--gpus` per job.
    pub gpus: Option<u32>,
    /// `--cpus-per-task` (also the worker's thread count).
    pub cpus: Option<u32>,
    /// Jobs (workers) to submit when `--workers` is not given.
    pub workers: Option<usize>,
    /// Extra `sbatch` arguments, e.g. `["--account=ml", "--qos=short"]`; none that names a file
    /// or runs a command (`crate::launch_checks::check_sbatch_args`).
    #[serde(default)]
    pub sbatch_args: Vec<String>,
    /// Job log file name (`--output`) under `<out>/slurm/`, one path component with Slurm's
    /// patterns (e.g. `%x-%j.log`); default `%x-%j.out`.
    pub output: Option<String>,
    /// The worker executable on the compute nodes (default: the local one's path).
    pub worker_bin: Option<PathBuf>,
}

/// Checks a Slurm time limit: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`, or
/// `UNLIMITED`/`INFINITE`.
pub fn check_time(t: &str) -> Result<(), String> {
    let digits = |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
    if matches!(t, "UNLIMITED" | "INFINITE" | "unlimited" | "infinite") {
        return Ok(());
    }
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (Some(d), r),
        None => (None, t),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let ok = days.is_none_or(digits) && parts.iter().all(|p| digits(p)) && parts.len() <= 3;
    if ok { Ok(()) } else { Err(format!("`{t}` is not a Slurm time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)")) }
}

/// `<out>/slurm/jobs.tsv`: one line per submitted job, `JOB_ID<TAB>WORKER_NAME`.
pub const JOBS_FILE: &str = "jobs.tsv";

/// How often job states are asked of Slurm.
const QUERY_EVERY: Duration = Duration::from_secs(1);
/// Workers started by a launcher on other machines give up on an unreachable coordinator
/// after this many seconds (a coordinator killed with SIGKILL cannot cancel its jobs).
pub const REMOTE_MAX_UNREACHABLE: u32 = 300;

/// Terminal job states (`squeue --states=all`).
fn finished(state: &str) -> bool {
    matches!(
        state,
        "COMPLETED" | "CANCELLED" | "FAILED" | "TIMEOUT" | "NODE_FAIL" | "PREEMPTED" | "OUT_OF_MEMORY" | "BOOT_FAIL" | "DEADLINE" | "SPECIAL_EXIT" | "REVOKED"
    )
}

struct Job {
    name: String,
    id: String,
    submitted: Instant,
}

/// What one background query found: job id → (state, `ExitCode=` of a finished job).
type Found = Result<HashMap<String, (String, Option<String>)>, String>;

pub struct SlurmLauncher {
    config: LaunchConfig,
    opts: SlurmOptions,
    url: String,
    /// Jobs submitted and not yet seen ending.
    jobs: Vec<Job>,
    /// Every job this launcher submitted that may still exist (cancelled on stop and drop).
    live_ids: Vec<String>,
    query: Option<std::thread::JoinHandle<Found>>,
    last_query: Option<Instant>,
}

impl SlurmLauncher {
    /// The batch script: no secret in it (it is stored with the job and shown to its owner).
    fn script(&self, name: &str) -> String {
        let bin = self.opts.worker_bin.as_ref().unwrap_or(&self.config.worker_bin);
        let args = ["--coordinator", &self.url, "--name", name, "--max-unreachable", &REMOTE_MAX_UNREACHABLE.to_string()].map(shell_quote).join(" ");
        format!(
            "#!/bin/sh\n# scoresweep worker {name}: the run's token comes in the job's environment (SCORESWEEP_TOKEN)\n\
             RAYON_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-${{SLURM_CPUS_ON_NODE:-1}}}}\nexport RAYON_NUM_THREADS\nexec {} {args}\n",
            shell_quote(&bin.to_string_lossy())
        )
    }

    /// `sbatch` arguments for worker `name` (the script comes on stdin).
    fn sbatch_args(&self, name: &str, out: &Path) -> Vec<String> {
        let o = &self.opts;
        let mut a = vec!["--parsable".to_string(), format!("--job-name=scoresweep-{name}"), "--export=ALL".to_string()];
        a.push(format!("--output={}", out.join("slurm").join(o.output.as_deref().unwrap_or("%x-%j.out")).display()));
        if let Some(p) = &o.partition {
            a.push(format!("--partition={p}"));
        }
        if let Some(t) = &o.time {
            a.push(format!("--time={t}"));
        }
        if let Some(g) = o.gpus.filter(|&g| g > 0) {
            a.push(format!("--gpus={g}"));
        }
        if let Some(c) = o.cpus {
            a.push(format!("--cpus-per-task={c}"));
        }
        a.extend(o.sbatch_args.iter().cloned());
        a
    }

    fn submit(&mut self, name: &str) -> Result<(), LaunchError> {
        use std::io::Write;
        let out = std::path::absolute(&self.config.out).unwrap_or_else(|_| self.config.out.clone());
        std::fs::create_dir_all(out.join("slurm")).map_err(|source| LaunchError::Spawn { path: out.join("slurm"), source })?;
        let mut cmd = Command::new("sbatch");
        cmd.args(self.sbatch_args(name, &out)).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(t) = &self.config.token {
            cmd.env(crate::auth::TOKEN_ENV, t);
        }
        if let Some(ca) = &self.config.tls_ca {
            cmd.env(super::TLS_CA_ENV, ca);
        }
        let mut child = cmd.spawn().map_err(|source| LaunchError::Spawn { path: PathBuf::from("sbatch"), source })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(self.script(name).as_bytes()).map_err(|source| LaunchError::Spawn { path: PathBuf::from("sbatch"), source })?;
        }
        let o = child.wait_with_output().map_err(|source| LaunchError::Spawn { path: PathBuf::from("sbatch"), source })?;
        let stdout = String::from_utf8_lossy(&o.stdout);
        let id = stdout.trim().split(';').next().unwrap_or_default().to_string();
        if !o.status.success() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(LaunchError::Command { what: format!("sbatch for worker {name}"), message: String::from_utf8_lossy(&o.stderr).trim().to_string() });
        }
        // Every job of the run, for the record (and for `scancel` by hand after a `kill -9`).
        let record = out.join("slurm").join(JOBS_FILE);
        let line = format!("{id}\t{name}\n");
        let _ = std::fs::OpenOptions::new().create(true).append(true).open(&record).and_then(|mut f| f.write_all(line.as_bytes()));
        self.jobs.push(Job { name: name.to_string(), id: id.clone(), submitted: Instant::now() });
        self.live_ids.push(id);
        Ok(())
    }

    /// Asks Slurm, off the async runtime, for the state of `ids`, and for the exit code of
    /// those that ended.
    fn spawn_query(ids: Vec<String>) -> std::thread::JoinHandle<Found> {
        std::thread::spawn(move || {
            let o = Command::new("squeue")
                .args(["--noheader", "--states=all", "--format=%i|%T"])
                .arg(format!("--jobs={}", ids.join(",")))
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("squeue: {e}"))?;
            if !o.status.success() {
                let err = String::from_utf8_lossy(&o.stderr);
                // Every id purged from slurmctld's memory: all of them are gone.
                if err.contains("Invalid job id") {
                    return Ok(HashMap::new());
                }
                return Err(format!("squeue: {}", err.trim()));
            }
            let mut found = HashMap::new();
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                if let Some((id, state)) = line.trim().split_once('|') {
                    // A state may carry a reason suffix (`CANCELLED by 0`).
                    let state = state.split_whitespace().next().unwrap_or_default().to_string();
                    let code = if finished(&state) { exit_code(id) } else { None };
                    found.insert(id.to_string(), (state, code));
                }
            }
            Ok(found)
        })
    }

    fn cancel(ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let _ = Command::new("scancel").args(ids).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// `ExitCode=` of job `id` (`code:signal`), from `scontrol show job`.
fn exit_code(id: &str) -> Option<String> {
    let o = Command::new("scontrol").args(["show", "job", "-o", id]).stdin(Stdio::null()).output().ok()?;
    String::from_utf8_lossy(&o.stdout).split_whitespace().find_map(|f| f.strip_prefix("ExitCode=").map(str::to_string))
}

/// An [`Exited`] from a job's final state and `ExitCode=code:signal`.
fn exited(name: &str, id: &str, state: &str, code: Option<&str>) -> Exited {
    let (c, s) = code.and_then(|c| c.split_once(':')).map(|(c, s)| (c.parse::<i32>().ok(), s.parse::<i32>().ok())).unwrap_or((None, None));
    let (code, signal) = match (state, c, s) {
        ("COMPLETED", Some(c), _) => (Some(c), None),
        (_, _, Some(s)) if s != 0 => (None, Some(s)),
        (_, Some(c), _) if c != 0 => (Some(c), None),
        _ => (None, None),
    };
    Exited { name: name.to_string(), code, signal, detail: Some(format!("slurm job {id}: {state}")) }
}

impl Launcher for SlurmLauncher {
    fn new(config: &LaunchConfig) -> Result<Self, LaunchError> {
        crate::launch_checks::check_sbatch_args(&config.slurm.sbatch_args).map_err(|m| LaunchError::Command { what: "--slurm-arg".into(), message: m })?;
        for tool in ["sbatch", "squeue", "scancel", "scontrol"] {
            if super::find_in_path(tool).is_none() {
                return Err(LaunchError::ToolMissing { tool: tool.to_string(), launcher: "slurm" });
            }
        }
        Ok(SlurmLauncher { config: config.clone(), opts: config.slurm.clone(), url: String::new(), jobs: Vec::new(), live_ids: Vec::new(), query: None, last_query: None })
    }

    fn start(&mut self, url: &str) -> Result<(), LaunchError> {
        self.url = url.to_string();
        for i in 0..self.config.workers {
            self.submit(&format!("slurm{i}"))?;
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
            // A failed query (slurmctld busy or restarting) declares nobody dead.
            if let Ok(Ok(found)) = q.join() {
                let now = Instant::now();
                self.jobs.retain(|j| match found.get(&j.id) {
                    Some((state, code)) if finished(state) => {
                        gone.push(exited(&j.name, &j.id, state, code.as_deref()));
                        false
                    }
                    Some(_) => true,
                    // Purged from slurmctld's memory (or never known): gone, status unknown.
                    None if now.duration_since(j.submitted) > Duration::from_secs(10) => {
                        gone.push(Exited { name: j.name.clone(), code: None, signal: None, detail: Some(format!("slurm job {}: no longer known to Slurm", j.id)) });
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
                let found = tokio::task::spawn_blocking(move || Self::spawn_query(ids).join()).await;
                let Ok(Ok(Ok(found))) = found else { break };
                let pending: Vec<String> = self.jobs.iter().filter(|j| found.get(&j.id).is_some_and(|(s, _)| s == "PENDING")).map(|j| j.id.clone()).collect();
                Self::cancel(&pending);
                self.jobs.retain(|j| found.get(&j.id).is_some_and(|(s, _)| !finished(s) && s != "PENDING"));
                let jobs = &self.jobs;
                self.live_ids.retain(|id| jobs.iter().any(|j| &j.id == id));
                if self.jobs.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let all = std::mem::take(&mut self.live_ids);
            Self::cancel(&all);
            self.jobs.clear();
        })
    }
}

impl Drop for SlurmLauncher {
    /// A run that fails or is dropped cancels every job it may still have.
    fn drop(&mut self) {
        Self::cancel(&self.live_ids);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_limits_in_slurms_formats_are_accepted_and_others_refused() {
        for ok in ["30", "10:00", "1:00:00", "2-12", "2-12:30", "2-12:30:00", "UNLIMITED"] {
            assert!(check_time(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1h", "1:2:3:4", "-1", "a-10", "1-", "10:", "1.5"] {
            assert!(check_time(bad).is_err(), "{bad}");
        }
    }

    fn launcher(opts: SlurmOptions) -> SlurmLauncher {
        let config = LaunchConfig { token: Some("secret-token".into()), slurm: opts.clone(), ..LaunchConfig::local(PathBuf::from("/opt/sw/worker"), 2) };
        SlurmLauncher { config, opts, url: "http://node0:4000".into(), jobs: Vec::new(), live_ids: Vec::new(), query: None, last_query: None }
    }

    #[test]
    fn the_script_and_arguments_carry_the_options_and_never_the_token() {
        let l = launcher(SlurmOptions {
            partition: Some("gpu".into()),
            time: Some("1:00:00".into()),
            gpus: Some(1),
            cpus: Some(4),
            sbatch_args: vec!["--qos=short".into()],
            worker_bin: Some(PathBuf::from("/shared/bin/worker")),
            ..Default::default()
        });
        let script = l.script("slurm0");
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        assert!(script.contains("exec '/shared/bin/worker' '--coordinator' 'http://node0:4000' '--name' 'slurm0'"), "{script}");
        let args = l.sbatch_args("slurm0", Path::new("/runs/x"));
        for want in ["--parsable", "--job-name=scoresweep-slurm0", "--export=ALL", "--output=/runs/x/slurm/%x-%j.out", "--partition=gpu", "--time=1:00:00", "--gpus=1", "--cpus-per-task=4", "--qos=short"] {
            assert!(args.iter().any(|a| a == want), "{want} missing from {args:?}");
        }
        // The user's arguments come last, so they override ours.
        assert_eq!(args.last().map(String::as_str), Some("--qos=short"));
        assert!(!script.contains("secret-token") && !args.iter().any(|a| a.contains("secret-token")));
    }

    #[test]
    fn final_states_become_exits() {
        let e = exited("slurm1", "7", "CANCELLED", Some("0:15"));
        assert_eq!((e.code, e.signal), (None, Some(15)));
        assert_eq!(e.to_string(), "slurm1 (slurm job 7: CANCELLED) was killed by signal 15");
        assert_eq!(exited("slurm0", "8", "COMPLETED", Some("0:0")).code, Some(0));
        assert_eq!(exited("slurm0", "9", "FAILED", Some("1:0")).code, Some(1));
        let e = exited("slurm0", "10", "TIMEOUT", Some("0:0"));
        assert_eq!((e.code, e.signal), (None, None), "not a clean exit: respawned");
    }
}
