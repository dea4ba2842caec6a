//! The `pbs` launcher (PBS Professional, OpenPBS): one batch job per worker, submitted with
//! `qsub` (queue, walltime and extra `qsub` arguments from `[launcher.pbs]` in the sweep file or
//! `--pbs-*` flags), watched with `qstat -x -f -F json` (state and `Exit_status`), deleted with
//! `qdel` when the run stops, fails or is dropped ([`super::batch`] does the watching).
//!
//! **The token is in neither the job script nor a command line.** The script, given to `qsub`
//! on its standard input, is only `exec WORKER --coordinator URL --name NAME …`; the token
//! travels in `qsub`'s environment and is passed to the job by name (`-v SCORESWEEP_TOKEN`). PBS
//! keeps it in the job's `Variable_List`, which `qstat -f` shows to the job's owner and the PBS
//! managers only (as Slurm keeps a job's environment). Job logs go to `<out>/pbs/NAME-N.out`
//! (`-j oe`), and the worker executable must be at `worker_bin` on the nodes; nothing else is
//! assumed of their file systems.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use super::batch::{BatchLauncher, JobState, Scheduler};
use super::{BadSetting, Exited, Kind, LaunchConfig, LaunchError, REMOTE_MAX_UNREACHABLE, Shared, shell_quote};

/// The pbs launcher's settings: `[launcher.pbs]` in a sweep file, and the `--pbs-*` flags (a
/// flag wins over its key; `--pbs-arg`s follow the table's `qsub_args`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct PbsOptions {
    /// PBS queue of the worker jobs (`queue`; qsub -q).
    #[arg(long = "pbs-queue", value_name = "NAME")]
    pub queue: Option<String>,
    /// PBS walltime per worker job, [[HH:]MM:]SS, e.g. 2:00:00 (`walltime`; qsub -l walltime=).
    #[arg(long = "pbs-walltime", value_name = "TIME")]
    pub walltime: Option<String>,
    /// Jobs (workers) to submit when `--workers` is not given (table only).
    #[arg(skip)]
    pub workers: Option<usize>,
    /// An extra qsub argument (repeat for more), e.g. --pbs-arg=-lselect=1:ncpus=4 (`qsub_args`).
    #[arg(long = "pbs-arg", value_name = "ARG", allow_hyphen_values = true)]
    #[serde(default)]
    pub qsub_args: Vec<String>,
    /// The worker executable on the compute nodes (default: the local one's path; the
    /// `--remote-worker-bin` flag wins; table only).
    #[arg(skip)]
    pub worker_bin: Option<PathBuf>,
}

/// Checks a PBS walltime: `[[hours:]minutes:]seconds[.fraction]`, digits only.
pub fn check_walltime(t: &str) -> Result<(), String> {
    let (whole, fraction) = t.split_once('.').unwrap_or((t, "0"));
    let digits = |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
    let parts: Vec<&str> = whole.split(':').collect();
    if parts.len() <= 3 && parts.iter().all(|p| digits(p)) && digits(fraction) {
        Ok(())
    } else {
        Err(format!("`{t}` is not a PBS walltime ([[HH:]MM:]SS, e.g. 2:00:00)"))
    }
}

/// PBS, with the run's settings.
pub struct Pbs {
    opts: PbsOptions,
    /// Jobs submitted so far (numbers the log files, so a respawned worker keeps its old log).
    submitted: std::sync::atomic::AtomicUsize,
}

/// The pbs launcher: one `qsub` job per worker.
pub type PbsLauncher = BatchLauncher<Pbs>;

impl Pbs {
    /// The job script: no secret in it.
    fn script(&self, config: &LaunchConfig, url: &str, name: &str) -> String {
        let bin = self.opts.worker_bin.as_ref().unwrap_or(&config.worker_bin);
        let args = ["--coordinator", url, "--name", name, "--max-unreachable", &REMOTE_MAX_UNREACHABLE.to_string()].map(shell_quote).join(" ");
        format!(
            "#!/bin/sh\n# scoresweep worker {name}: the run's token comes in the job's environment (SCORESWEEP_TOKEN)\n\
             RAYON_NUM_THREADS=${{NCPUS:-1}}\nexport RAYON_NUM_THREADS\nexec {} {args}\n",
            shell_quote(&bin.to_string_lossy())
        )
    }

    /// `qsub` arguments for worker `name`, its `n`-th job, with its log under `dir` (the script
    /// comes on stdin; `env` names the variables passed to the job).
    fn qsub_args(&self, name: &str, n: usize, dir: &Path, env: &[&str]) -> Vec<String> {
        let o = &self.opts;
        // A job name starts with a letter and holds no `:` (PBS's rules).
        let job = format!("scoresweep-{}", name.replace(':', "-"));
        let mut a = vec!["-N".to_string(), job, "-j".into(), "oe".into(), "-o".into(), dir.join(format!("{name}-{n}.out")).to_string_lossy().into_owned()];
        if !env.is_empty() {
            a.extend(["-v".to_string(), env.join(",")]);
        }
        if let Some(q) = &o.queue {
            a.extend(["-q".to_string(), q.clone()]);
        }
        if let Some(t) = &o.walltime {
            a.extend(["-l".to_string(), format!("walltime={t}")]);
        }
        a.extend(o.qsub_args.iter().cloned());
        a
    }
}

/// A job's final state from `qstat`'s `Exit_status`: a code below 256 is the script's exit
/// code, 256 + s a kill by signal s, a negative one PBS's own failure to run it.
fn exited(id: &str, exit_status: Option<i64>) -> Exited {
    let (code, signal) = match exit_status {
        Some(c @ 0..=255) => (Some(c as i32), None),
        Some(c) if c > 256 => (None, i32::try_from(c - 256).ok()),
        _ => (None, None),
    };
    let detail = match exit_status {
        Some(c) if c < 0 => format!("pbs job {id}: not run (Exit_status {c})"),
        _ => format!("pbs job {id}: finished"),
    };
    Exited { name: String::new(), code, signal, detail: Some(detail) }
}

/// The jobs of `qstat -x -f -F json` output: id → state.
fn parse_qstat(json: &str) -> Result<HashMap<String, JobState>, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("qstat: unreadable JSON: {e}"))?;
    let mut found = HashMap::new();
    for (id, job) in v.get("Jobs").and_then(|j| j.as_object()).into_iter().flatten() {
        let state = match job.get("job_state").and_then(|s| s.as_str()).unwrap_or_default() {
            // Finished (kept by -x), or a subjob that has.
            "F" | "X" => JobState::Finished(exited(id, job.get("Exit_status").and_then(|c| c.as_i64()))),
            // Queued, held, waiting, in transit to another server.
            "Q" | "H" | "W" | "T" => JobState::Pending,
            _ => JobState::Active,
        };
        found.insert(id.clone(), state);
    }
    Ok(found)
}

impl Scheduler for Pbs {
    const KIND: &'static str = "pbs";

    fn submit(&self, config: &LaunchConfig, url: &str, name: &str, dir: &Path) -> Result<String, LaunchError> {
        use std::io::Write;
        let n = self.submitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut env = Vec::new();
        let mut cmd = Command::new("qsub");
        if let Some(t) = &config.token {
            cmd.env(crate::auth::TOKEN_ENV, t);
            env.push(crate::auth::TOKEN_ENV);
        }
        if let Some(ca) = &config.tls_ca {
            cmd.env(super::TLS_CA_ENV, ca);
            env.push(super::TLS_CA_ENV);
        }
        cmd.args(self.qsub_args(name, n, dir, &env)).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let spawn_err = |source| LaunchError::Spawn { path: PathBuf::from("qsub"), source };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(self.script(config, url, name).as_bytes()).map_err(spawn_err)?;
        }
        let o = child.wait_with_output().map_err(spawn_err)?;
        // qsub prints the job's id, `123.server`.
        let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if !o.status.success() || id.is_empty() || id.contains(char::is_whitespace) {
            return Err(LaunchError::Command { what: format!("qsub for worker {name}"), message: String::from_utf8_lossy(&o.stderr).trim().to_string() });
        }
        Ok(id)
    }

    fn query(ids: &[String]) -> Result<HashMap<String, JobState>, String> {
        let o = Command::new("qstat").args(["-x", "-f", "-F", "json"]).args(ids).stdin(Stdio::null()).output().map_err(|e| format!("qstat: {e}"))?;
        let stdout = String::from_utf8_lossy(&o.stdout);
        // Jobs PBS no longer knows make qstat fail but still print the others (if any).
        if !o.status.success() && stdout.trim().is_empty() {
            let err = String::from_utf8_lossy(&o.stderr);
            if err.contains("Unknown Job Id") {
                return Ok(HashMap::new());
            }
            return Err(format!("qstat: {}", err.trim()));
        }
        parse_qstat(&stdout)
    }

    fn cancel(ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let _ = Command::new("qdel").args(ids).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

impl Kind for PbsLauncher {
    const REMOTE: bool = true;
    type Options = PbsOptions;

    fn given(f: &PbsOptions) -> Vec<&'static str> {
        let given = [("--pbs-queue", f.queue.is_some()), ("--pbs-walltime", f.walltime.is_some()), ("--pbs-arg", !f.qsub_args.is_empty())];
        given.into_iter().filter(|(_, g)| *g).map(|(f, _)| f).collect()
    }

    fn merge(table: PbsOptions, flags: PbsOptions) -> PbsOptions {
        let mut o = table;
        o.queue = flags.queue.or(o.queue);
        o.walltime = flags.walltime.or(o.walltime);
        o.qsub_args.extend(flags.qsub_args);
        o
    }

    fn check(o: &PbsOptions) -> Result<(), BadSetting> {
        if let Some(t) = &o.walltime {
            check_walltime(t).map_err(|message| BadSetting { key: "walltime", flag: Some("--pbs-walltime"), message })?;
        }
        if o.workers == Some(0) {
            return Err(BadSetting { key: "workers", flag: None, message: "must be at least 1".into() });
        }
        Ok(())
    }

    /// `--workers` jobs (else `workers`, else one per core here) of the worker at
    /// `--remote-worker-bin` (else `worker_bin`, else the local executable's path).
    fn build(shared: &Shared, mut opts: PbsOptions) -> Result<Option<Self>, LaunchError> {
        let workers = super::batch_workers(shared, opts.workers);
        if workers == 0 {
            return Ok(None);
        }
        let worker_bin = shared.remote_worker_bin(opts.worker_bin.as_ref())?;
        opts.worker_bin = Some(worker_bin.clone());
        for tool in ["qsub", "qstat", "qdel"] {
            if super::find_in_path(tool).is_none() {
                return Err(LaunchError::ToolMissing { tool: tool.to_string(), launcher: "pbs" });
            }
        }
        Ok(Some(BatchLauncher::new(shared.config(worker_bin, workers), Pbs { opts, submitted: Default::default() })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walltimes_in_pbs_format_are_accepted_and_others_refused() {
        for ok in ["90", "30:00", "2:00:00", "120:00:00", "10.5"] {
            assert!(check_walltime(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1h", "1:2:3:4", "-1", "1-00:00", "10:", ":10", "1.", "1.5.2"] {
            assert!(check_walltime(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_script_and_arguments_carry_the_options_and_never_the_token() {
        let pbs = Pbs {
            opts: PbsOptions {
                queue: Some("workq".into()),
                walltime: Some("2:00:00".into()),
                qsub_args: vec!["-lselect=1:ncpus=4".into(), "-A".into(), "ml".into()],
                worker_bin: Some(PathBuf::from("/shared/bin/worker")),
                ..Default::default()
            },
            submitted: Default::default(),
        };
        let config = LaunchConfig { token: Some("secret-token".into()), ..LaunchConfig::local(PathBuf::from("/opt/sw/worker"), 2) };
        let script = pbs.script(&config, "http://node0:4000", "pbs0");
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        assert!(script.contains("RAYON_NUM_THREADS=${NCPUS:-1}"), "{script}");
        assert!(script.contains("exec '/shared/bin/worker' '--coordinator' 'http://node0:4000' '--name' 'pbs0' '--max-unreachable' '300'"), "{script}");
        let args = pbs.qsub_args("pbs0", 3, Path::new("/runs/x/pbs"), &["SCORESWEEP_TOKEN"]);
        let want: Vec<String> = ["-N", "scoresweep-pbs0", "-j", "oe", "-o", "/runs/x/pbs/pbs0-3.out", "-v", "SCORESWEEP_TOKEN", "-q", "workq", "-l", "walltime=2:00:00", "-lselect=1:ncpus=4", "-A", "ml"]
            .map(String::from)
            .to_vec();
        // The user's arguments come last, so they override ours.
        assert_eq!(args, want);
        assert!(!script.contains("secret-token") && !args.iter().any(|a| a.contains("secret-token")));
        // The script runs under sh as written (`echo` in place of `exec`).
        let out = Command::new("sh").arg("-c").arg(script.replacen("exec '", "echo '", 1)).env("NCPUS", "4").output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "/shared/bin/worker --coordinator http://node0:4000 --name pbs0 --max-unreachable 300");
    }

    /// `qstat -x -f -F json` as OpenPBS prints it (trimmed): a running, a queued, a finished
    /// and a killed job.
    #[test]
    fn job_states_and_exit_statuses_are_read_from_qstat() {
        let json = r#"{"timestamp": 1700000000, "pbs_version": "23.06.06", "pbs_server": "head",
            "Jobs": {
                "10.head": {"Job_Name": "scoresweep-pbs0", "job_state": "R", "Variable_List": {"SCORESWEEP_TOKEN": "x"}},
                "11.head": {"job_state": "Q"},
                "12.head": {"job_state": "F", "Exit_status": 0},
                "13.head": {"job_state": "F", "Exit_status": 265},
                "14.head": {"job_state": "F", "Exit_status": -3}
            }}"#;
        let found = parse_qstat(json).unwrap();
        assert_eq!(found["10.head"], JobState::Active);
        assert_eq!(found["11.head"], JobState::Pending);
        let exit = |id: &str| match &found[id] {
            JobState::Finished(e) => e.clone(),
            other => panic!("{id}: {other:?}"),
        };
        assert_eq!((exit("12.head").code, exit("12.head").signal), (Some(0), None));
        let killed = Exited { name: "pbs1".into(), ..exit("13.head") };
        assert_eq!(killed.to_string(), "pbs1 (pbs job 13.head: finished) was killed by signal 9");
        assert_eq!(exit("14.head").detail.as_deref(), Some("pbs job 14.head: not run (Exit_status -3)"));
        assert!(parse_qstat("not json").is_err());
        assert!(parse_qstat("{}").unwrap().is_empty());
    }
}
