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
//! Watching, respawning and cancelling are the batch launchers' ([`super::batch`]); this file
//! says how Slurm submits, reports and cancels jobs. Every job submitted is listed in
//! `<out>/slurm/jobs.tsv`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use super::batch::{BatchLauncher, JobState, Scheduler};
use super::{BadSetting, Exited, Kind, LaunchConfig, LaunchError, REMOTE_MAX_UNREACHABLE, Shared, shell_quote};

/// The slurm launcher's settings: `[launcher.slurm]` in a sweep file, and the `--slurm-*`
/// flags (a flag wins over its key; `--slurm-arg`s follow the table's `sbatch_args`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct SlurmOptions {
    /// Slurm partition of the worker jobs (`partition`).
    #[arg(long = "slurm-partition", value_name = "NAME")]
    pub partition: Option<String>,
    /// Slurm time limit per worker job, e.g. 2:00:00 (`time`; Slurm's formats: `MM`, `MM:SS`,
    /// `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS`).
    #[arg(long = "slurm-time", value_name = "TIME")]
    pub time: Option<String>,
    /// GPUs per worker job (`gpus`).
    #[arg(long = "slurm-gpus", value_name = "N")]
    pub gpus: Option<u32>,
    /// CPUs per worker job (`cpus`; also the worker's thread count).
    #[arg(long = "slurm-cpus", value_name = "N")]
    pub cpus: Option<u32>,
    /// Jobs (workers) to submit when `--workers` is not given (table only).
    #[arg(skip)]
    pub workers: Option<usize>,
    /// Extra `sbatch` arguments, e.g. `["--account=ml", "--qos=short"]`; none that names a file
    /// or runs a command (`crate::launch_checks::check_sbatch_args`). Flag: --slurm-arg=ARG.
    #[arg(long = "slurm-arg", value_name = "ARG", allow_hyphen_values = true)]
    #[serde(default)]
    pub sbatch_args: Vec<String>,
    /// Job log file name (`--output`) under `<out>/slurm/`, one path component with Slurm's
    /// patterns (e.g. `%x-%j.log`); default `%x-%j.out` (table only).
    #[arg(skip)]
    pub output: Option<String>,
    /// The worker executable on the compute nodes (default: the local one's path; the
    /// `--remote-worker-bin` flag wins).
    #[arg(skip)]
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

/// Terminal job states (`squeue --states=all`).
fn finished(state: &str) -> bool {
    matches!(
        state,
        "COMPLETED" | "CANCELLED" | "FAILED" | "TIMEOUT" | "NODE_FAIL" | "PREEMPTED" | "OUT_OF_MEMORY" | "BOOT_FAIL" | "DEADLINE" | "SPECIAL_EXIT" | "REVOKED"
    )
}

/// Slurm, with the run's settings.
pub struct Slurm {
    opts: SlurmOptions,
}

/// The slurm launcher: one `sbatch` job per worker.
pub type SlurmLauncher = BatchLauncher<Slurm>;

impl Slurm {
    /// The batch script: no secret in it (it is stored with the job and shown to its owner).
    fn script(&self, config: &LaunchConfig, url: &str, name: &str) -> String {
        let bin = self.opts.worker_bin.as_ref().unwrap_or(&config.worker_bin);
        let args = ["--coordinator", url, "--name", name, "--max-unreachable", &REMOTE_MAX_UNREACHABLE.to_string()].map(shell_quote).join(" ");
        format!(
            "#!/bin/sh\n# scoresweep worker {name}: the run's token comes in the job's environment (SCORESWEEP_TOKEN)\n\
             RAYON_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-${{SLURM_CPUS_ON_NODE:-1}}}}\nexport RAYON_NUM_THREADS\nexec {} {args}\n",
            shell_quote(&bin.to_string_lossy())
        )
    }

    /// `sbatch` arguments for worker `name` with its log under `dir` (the script comes on
    /// stdin).
    fn sbatch_args(&self, name: &str, dir: &Path) -> Vec<String> {
        let o = &self.opts;
        let mut a = vec!["--parsable".to_string(), format!("--job-name=scoresweep-{name}"), "--export=ALL".to_string()];
        a.push(format!("--output={}", dir.join(o.output.as_deref().unwrap_or("%x-%j.out")).display()));
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
}

impl Scheduler for Slurm {
    const KIND: &'static str = "slurm";

    fn submit(&self, config: &LaunchConfig, url: &str, name: &str, dir: &Path) -> Result<String, LaunchError> {
        use std::io::Write;
        let mut cmd = Command::new("sbatch");
        cmd.args(self.sbatch_args(name, dir)).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(t) = &config.token {
            cmd.env(crate::auth::TOKEN_ENV, t);
        }
        if let Some(ca) = &config.tls_ca {
            cmd.env(super::TLS_CA_ENV, ca);
        }
        let mut child = cmd.spawn().map_err(|source| LaunchError::Spawn { path: PathBuf::from("sbatch"), source })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(self.script(config, url, name).as_bytes()).map_err(|source| LaunchError::Spawn { path: PathBuf::from("sbatch"), source })?;
        }
        let o = child.wait_with_output().map_err(|source| LaunchError::Spawn { path: PathBuf::from("sbatch"), source })?;
        let stdout = String::from_utf8_lossy(&o.stdout);
        let id = stdout.trim().split(';').next().unwrap_or_default().to_string();
        if !o.status.success() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(LaunchError::Command { what: format!("sbatch for worker {name}"), message: String::from_utf8_lossy(&o.stderr).trim().to_string() });
        }
        Ok(id)
    }

    /// `squeue` for the states of `ids`, and `scontrol show job` for the exit code of those
    /// that ended.
    fn query(ids: &[String]) -> Result<HashMap<String, JobState>, String> {
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
                let state = state.split_whitespace().next().unwrap_or_default();
                let job = match state {
                    s if finished(s) => JobState::Finished(exited("", id, s, exit_code(id).as_deref())),
                    "PENDING" => JobState::Pending,
                    _ => JobState::Active,
                };
                found.insert(id.to_string(), job);
            }
        }
        Ok(found)
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

impl Kind for SlurmLauncher {
    const REMOTE: bool = true;
    type Options = SlurmOptions;

    fn given(f: &SlurmOptions) -> Vec<&'static str> {
        let given = [
            ("--slurm-partition", f.partition.is_some()),
            ("--slurm-time", f.time.is_some()),
            ("--slurm-gpus", f.gpus.is_some()),
            ("--slurm-cpus", f.cpus.is_some()),
            ("--slurm-arg", !f.sbatch_args.is_empty()),
        ];
        given.into_iter().filter(|(_, g)| *g).map(|(f, _)| f).collect()
    }

    fn merge(table: SlurmOptions, flags: SlurmOptions) -> SlurmOptions {
        let mut o = table;
        o.partition = flags.partition.or(o.partition);
        o.time = flags.time.or(o.time);
        o.gpus = flags.gpus.or(o.gpus);
        o.cpus = flags.cpus.or(o.cpus);
        o.sbatch_args.extend(flags.sbatch_args);
        o
    }

    fn check(o: &SlurmOptions) -> Result<(), BadSetting> {
        if let Some(t) = &o.time {
            check_time(t).map_err(|message| BadSetting { key: "time", flag: Some("--slurm-time"), message })?;
        }
        if o.workers == Some(0) {
            return Err(BadSetting { key: "workers", flag: None, message: "must be at least 1".into() });
        }
        crate::launch_checks::check_sbatch_args(&o.sbatch_args).map_err(|message| BadSetting { key: "sbatch_args", flag: Some("--slurm-arg"), message })?;
        if let Some(out) = &o.output {
            crate::launch_checks::check_path_component("output", out).map_err(|message| BadSetting { key: "output", flag: None, message })?;
        }
        Ok(())
    }

    /// `--workers` jobs (else `workers`, else one per core here) of the worker at
    /// `--remote-worker-bin` (else `worker_bin`, else the local executable's path).
    fn build(shared: &Shared, mut opts: SlurmOptions) -> Result<Option<Self>, LaunchError> {
        let workers = super::batch_workers(shared, opts.workers);
        if workers == 0 {
            return Ok(None);
        }
        let worker_bin = shared.remote_worker_bin(opts.worker_bin.as_ref())?;
        opts.worker_bin = Some(worker_bin.clone());
        for tool in ["sbatch", "squeue", "scancel", "scontrol"] {
            if super::find_in_path(tool).is_none() {
                return Err(LaunchError::ToolMissing { tool: tool.to_string(), launcher: "slurm" });
            }
        }
        Ok(Some(BatchLauncher::new(shared.config(worker_bin, workers), Slurm { opts })))
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

    fn config() -> LaunchConfig {
        LaunchConfig { token: Some("secret-token".into()), ..LaunchConfig::local(PathBuf::from("/opt/sw/worker"), 2) }
    }

    #[test]
    fn the_script_and_arguments_carry_the_options_and_never_the_token() {
        let l = Slurm { opts: SlurmOptions {
            partition: Some("gpu".into()),
            time: Some("1:00:00".into()),
            gpus: Some(1),
            cpus: Some(4),
            sbatch_args: vec!["--qos=short".into()],
            worker_bin: Some(PathBuf::from("/shared/bin/worker")),
            ..Default::default()
        } };
        let script = l.script(&config(), "http://node0:4000", "slurm0");
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        assert!(script.contains("exec '/shared/bin/worker' '--coordinator' 'http://node0:4000' '--name' 'slurm0'"), "{script}");
        let args = l.sbatch_args("slurm0", Path::new("/runs/x/slurm"));
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
