//! The `local` launcher: worker processes on this machine: one per GPU the worker executable
//! finds ([`visible_gpus`]; `gpu0`, `gpu1`, …, each with `CUDA_VISIBLE_DEVICES` = its GPU,
//! `--device cuda` and `--gpu-worker-threads` CPU threads), and `--workers` CPU workers
//! (`local0`, …) sharing the remaining cores as `RAYON_NUM_THREADS`. They stay in the coordinator's process group, so a
//! terminal's Ctrl-C (SIGINT to the whole group) reaches them too; they are started with
//! `--ignore-interrupt`, so stopping stays the coordinator's call (first Ctrl-C: no new
//! leases, running trials finish; second: cancel). They are also started with `--parent-pid`
//! (this process): a worker exits within 0.2 s of the coordinator's death, however it died
//! (`kill -9` of the coordinator alone included), since its results could never be delivered.
//! A dropped launcher kills its children; a dead worker is replaced by [`Launcher::respawn`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{BadSetting, BoxFuture, Exited, Kind, LaunchConfig, LaunchError, Launcher, Shared};

/// The local launcher's settings: flags only (`[launcher.local]` takes no key).
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct LocalOptions {
    /// Local GPU workers: `auto` (the default: one per GPU that `worker devices` finds, each
    /// alone in its CUDA_VISIBLE_DEVICES), or a number up to that many (0: none).
    #[arg(long, value_name = "auto|N")]
    #[serde(skip)]
    pub gpu_workers: Option<String>,
    /// CPU threads of each local GPU worker (data, host-side work) [default: 4].
    #[arg(long, value_name = "N")]
    #[serde(skip)]
    pub gpu_worker_threads: Option<usize>,
}

/// CPU threads of each local GPU worker when `--gpu-worker-threads` is not given.
pub const DEFAULT_GPU_THREADS: usize = 4;

/// One local worker to start (and to restart under the same name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSpec {
    pub name: String,
    /// `RAYON_NUM_THREADS`.
    pub threads: usize,
    /// `CUDA_VISIBLE_DEVICES` of a GPU worker (started with `--device cuda`); None: a CPU
    /// worker.
    pub gpu: Option<String>,
}

/// The workers of a run on a machine with `cores` cores: one GPU worker per entry of `gpus`
/// with `gpu_threads` threads each (at most `cores`), then `cpu_workers` CPU workers sharing
/// the cores the GPU workers leave (at least one thread each).
pub fn plan(cores: usize, cpu_workers: usize, gpus: &[String], gpu_threads: usize) -> Vec<WorkerSpec> {
    let cores = cores.max(1);
    let gpu_threads = gpu_threads.clamp(1, cores);
    let left = cores.saturating_sub(gpus.len() * gpu_threads).max(1);
    let cpu_threads = (left / cpu_workers.max(1)).max(1);
    let gpu = gpus.iter().enumerate().map(|(i, g)| WorkerSpec { name: format!("gpu{i}"), threads: gpu_threads, gpu: Some(g.clone()) });
    let cpu = (0..cpu_workers).map(|i| WorkerSpec { name: format!("local{i}"), threads: cpu_threads, gpu: None });
    gpu.chain(cpu).collect()
}

/// The default number of CPU workers beside `gpus` GPU workers: one per core they leave.
pub fn default_cpu_workers(cores: usize, gpus: usize, gpu_threads: usize) -> usize {
    cores.max(1).saturating_sub(gpus * gpu_threads.clamp(1, cores.max(1))).max(1)
}

/// Why the GPUs could not be counted.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    #[error("`{} devices` failed: {detail}", bin.display())]
    Run { bin: std::path::PathBuf, detail: String },
}

/// The GPUs that `worker devices` (run as `bin`) finds, as the `CUDA_VISIBLE_DEVICES` value
/// that gives a child process each one alone: the entries of this process's own
/// `CUDA_VISIBLE_DEVICES` where it is set (the worker numbers the visible ones from 0), else
/// the ordinals. A worker built without CUDA finds none.
pub fn visible_gpus(bin: &Path) -> Result<Vec<String>, DevicesError> {
    let fail = |detail: String| DevicesError::Run { bin: bin.to_path_buf(), detail };
    let mut child = std::process::Command::new(bin)
        .arg("devices")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    // Detection asks the driver for names and memory only; a hung driver must not hang the run.
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().map_err(|e| fail(e.to_string()))?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(fail("no answer within 30 s".into()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    let count = parse_gpu_count(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| fail("no `gpus: N` line in its output".into()))?;
    let inherited = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    Ok(gpu_ids(count, inherited.as_deref()))
}

/// The `gpus: N` line of `worker devices`.
fn parse_gpu_count(out: &str) -> Option<usize> {
    out.lines().find_map(|l| l.strip_prefix("gpus:")).and_then(|n| n.trim().parse().ok())
}

/// `count` GPUs as `CUDA_VISIBLE_DEVICES` values, given this process's own (`inherited`).
fn gpu_ids(count: usize, inherited: Option<&str>) -> Vec<String> {
    match inherited.map(str::trim).filter(|v| !v.is_empty()) {
        Some(list) => list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).take(count).collect(),
        None => (0..count).map(|i| i.to_string()).collect(),
    }
}

pub struct LocalLauncher {
    config: LaunchConfig,
    /// The coordinator's URL (set by `start`).
    url: String,
    /// By name: what each worker is started as.
    specs: BTreeMap<String, WorkerSpec>,
    /// (name, process) of the workers not yet seen exiting.
    children: Vec<(String, tokio::process::Child)>,
}

impl LocalLauncher {
    /// The workers this launcher starts, GPU workers first.
    pub fn workers(&self) -> Vec<WorkerSpec> {
        let mut v: Vec<WorkerSpec> = self.specs.values().cloned().collect();
        v.sort_by_key(|w| (w.gpu.is_none(), w.name.len(), w.name.clone()));
        v
    }

    fn spawn(&mut self, name: &str) -> Result<(), LaunchError> {
        let bin = &self.config.worker_bin;
        let spec = self.specs.get(name).cloned().unwrap_or(WorkerSpec { name: name.to_string(), threads: 1, gpu: None });
        let mut cmd = tokio::process::Command::new(bin);
        if let Some(t) = &self.config.token {
            cmd.env(crate::auth::TOKEN_ENV, t);
        }
        if let Some(ca) = &self.config.tls_ca {
            cmd.env(super::TLS_CA_ENV, ca);
        }
        match &spec.gpu {
            Some(visible) => {
                cmd.env("CUDA_VISIBLE_DEVICES", visible).args(["--device", "cuda"]);
            }
            None => {
                cmd.args(["--device", "cpu"]);
                if !self.config.gpus.is_empty() {
                    // The GPUs belong to the GPU workers.
                    cmd.env("CUDA_VISIBLE_DEVICES", "");
                }
            }
        }
        let child = cmd
            .args(["--coordinator", &self.url, "--name", name, "--ignore-interrupt", "--parent-pid", &std::process::id().to_string()])
            .env("RAYON_NUM_THREADS", spec.threads.to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| LaunchError::Spawn { path: bin.clone(), source })?;
        self.children.push((name.to_string(), child));
        Ok(())
    }
}

impl LocalLauncher {
    /// The launcher of `config`'s workers: `config.workers` CPU workers and one GPU worker per
    /// entry of `config.gpus`.
    pub fn new(config: &LaunchConfig) -> Result<Self, LaunchError> {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let specs = plan(cores, config.workers, &config.gpus, config.gpu_threads).into_iter().map(|w| (w.name.clone(), w)).collect();
        Ok(LocalLauncher { config: config.clone(), url: String::new(), specs, children: Vec::new() })
    }
}

impl Kind for LocalLauncher {
    const REMOTE: bool = false;
    type Options = LocalOptions;

    fn given(flags: &LocalOptions) -> Vec<&'static str> {
        [("--gpu-workers", flags.gpu_workers.is_some()), ("--gpu-worker-threads", flags.gpu_worker_threads.is_some())].into_iter().filter(|(_, g)| *g).map(|(f, _)| f).collect()
    }

    fn merge(_table: LocalOptions, flags: LocalOptions) -> LocalOptions {
        flags
    }

    fn check(o: &LocalOptions) -> Result<(), BadSetting> {
        if let Some(n) = o.gpu_workers.as_deref().filter(|n| *n != "auto" && n.parse::<usize>().is_err()) {
            return Err(BadSetting { key: "gpu_workers", flag: Some("--gpu-workers"), message: format!("`{n}` is neither `auto` nor a number of GPU workers") });
        }
        if o.gpu_worker_threads == Some(0) {
            return Err(BadSetting { key: "gpu_worker_threads", flag: Some("--gpu-worker-threads"), message: "must be at least 1".into() });
        }
        Ok(())
    }

    /// `--workers` CPU workers (default: the cores GPU workers leave) and one GPU worker per
    /// visible GPU (`--gpu-workers`: how many; `auto`: all).
    fn build(shared: &Shared, o: LocalOptions) -> Result<Option<Self>, LaunchError> {
        let asked = o.gpu_workers.as_deref().and_then(|n| n.parse::<usize>().ok());
        let gpu_threads = o.gpu_worker_threads.unwrap_or(DEFAULT_GPU_THREADS);
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        if shared.workers == Some(0) && asked == Some(0) {
            return Ok(None);
        }
        let worker_bin = super::worker_executable(shared.worker_bin.as_deref())?;
        let gpus = if asked != Some(0) {
            let found = visible_gpus(&worker_bin).map_err(|e| LaunchError::Setting(e.to_string()))?;
            match asked {
                Some(n) if n > found.len() => {
                    return Err(LaunchError::Setting(format!("--gpu-workers {n}: `{} devices` finds {} GPU(s)", worker_bin.display(), found.len())));
                }
                Some(n) => found[..n].to_vec(),
                None => found,
            }
        } else {
            Vec::new()
        };
        let workers = shared.workers.unwrap_or_else(|| default_cpu_workers(cores, gpus.len(), gpu_threads));
        if workers == 0 && gpus.is_empty() {
            return Ok(None);
        }
        if !gpus.is_empty() {
            eprintln!("starting {} GPU worker(s) (CUDA_VISIBLE_DEVICES {}) and {workers} CPU worker(s)", gpus.len(), gpus.join(", "));
        }
        let config = LaunchConfig { gpus, gpu_threads, ..shared.config(worker_bin, workers) };
        Self::new(&config).map(Some)
    }
}

impl Launcher for LocalLauncher {

    fn start(&mut self, url: &str) -> Result<(), LaunchError> {
        self.url = url.to_string();
        for w in self.workers() {
            self.spawn(&w.name)?;
        }
        Ok(())
    }

    fn respawn(&mut self, name: &str) -> Result<(), LaunchError> {
        self.spawn(name)
    }

    fn poll(&mut self) -> Vec<Exited> {
        use std::os::unix::process::ExitStatusExt;
        let mut exited = Vec::new();
        self.children.retain_mut(|(name, child)| match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                exited.push(Exited { name: name.clone(), code: status.code(), signal: status.signal(), detail: None });
                false
            }
            Err(_) => {
                exited.push(Exited { name: name.clone(), code: None, signal: None, detail: None });
                false
            }
        });
        exited
    }

    fn alive(&self) -> usize {
        self.children.len()
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let deadline = Instant::now() + grace;
            for (_, child) in &mut self.children {
                let left = deadline.saturating_duration_since(Instant::now());
                if tokio::time::timeout(left, child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
            }
            self.children.clear();
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_workers_get_their_gpu_and_threads_and_cpu_workers_the_rest() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let w = |name: &str, threads: usize, gpu: Option<&str>| WorkerSpec { name: name.into(), threads, gpu: gpu.map(String::from) };
        // (cores, CPU workers, GPUs, threads per GPU worker, the plan)
        type Case = (usize, usize, Vec<String>, usize, Vec<WorkerSpec>);
        let cases: Vec<Case> = vec![
            (2, 2, vec![], 4, vec![w("local0", 1, None), w("local1", 1, None)]),
            (16, 8, ids(&["0", "1"]), 4, [w("gpu0", 4, Some("0")), w("gpu1", 4, Some("1"))].into_iter().chain((0..8).map(|i| w(&format!("local{i}"), 1, None))).collect()),
            (16, 2, ids(&["5", "7"]), 2, vec![w("gpu0", 2, Some("5")), w("gpu1", 2, Some("7")), w("local0", 6, None), w("local1", 6, None)]),
            // More GPU threads than cores: each GPU worker gets the cores there are, CPU workers one.
            (2, 1, ids(&["0"]), 8, vec![w("gpu0", 2, Some("0")), w("local0", 1, None)]),
            (4, 0, ids(&["0"]), 4, vec![w("gpu0", 4, Some("0"))]),
        ];
        for (i, (cores, cpu, gpus, threads, want)) in cases.into_iter().enumerate() {
            assert_eq!(plan(cores, cpu, &gpus, threads), want, "case {i}");
        }
        assert_eq!(default_cpu_workers(16, 2, 4), 8);
        assert_eq!(default_cpu_workers(2, 0, 4), 2);
        assert_eq!(default_cpu_workers(2, 1, 4), 1);
    }

    #[test]
    fn gpu_ids_follow_the_inherited_cuda_visible_devices() {
        let cases: [(usize, Option<&str>, &[&str]); 5] =
            [(2, None, &["0", "1"]), (0, None, &[]), (2, Some("3,5"), &["3", "5"]), (1, Some(" GPU-abc , GPU-def"), &["GPU-abc"]), (2, Some(""), &["0", "1"])];
        for (count, inherited, want) in cases {
            assert_eq!(gpu_ids(count, inherited), want, "{count} {inherited:?}");
        }
        assert_eq!(parse_gpu_count("cuda: compiled in\ngpus: 2\ngpu 0: NVIDIA H100, 79.2 GiB\n"), Some(2));
        assert_eq!(parse_gpu_count("cuda: not compiled in\ngpus: 0\nnote: built without the `cuda` feature\n"), Some(0));
        assert_eq!(parse_gpu_count("garbage"), None);
    }
}
