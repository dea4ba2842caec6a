//! Launchers: how `coordinator run` starts, watches and stops the workers of a sweep. Workers
//! are the separate `worker` executable joining over gRPC (`worker --coordinator URL --name
//! NAME --ignore-interrupt`), wherever a launcher puts them; the coordinator knows nothing of
//! the engine.
//!
//! Launchers: `local` (processes on this machine), `slurm` (one `sbatch` job per worker) and
//! `ssh` (workers on other hosts, stopped when their ssh session ends). Whatever the launcher,
//! the run's token reaches workers through their environment or standard input, never a
//! command line, and a worker's results and artifacts come back over the protocol (nothing
//! assumes a file system shared with the coordinator).
//!
//! To add a launcher (e.g. Kubernetes): write `launch/<kind>.rs` with a type implementing
//! [`Launcher`] (its `new` gets the [`LaunchConfig`]), and add one line `"<kind>" =>
//! <kind>::<Type>,` to the `registry!` invocation below; `--launcher <kind>` then selects it.
//!
//! A worker that dies before the sweep is over (killed, out of memory, a crash) is replaced
//! through [`Launcher::respawn`] as the [`Respawner`] decides: at most `--max-respawns` times
//! per run, and after a delay that doubles while replacements keep dying young.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

/// What every launcher is given.
#[derive(Debug, Clone, Default)]
pub struct LaunchConfig {
    /// The worker executable (see [`worker_executable`]).
    pub worker_bin: PathBuf,
    /// Workers to start (CPU workers for the local launcher; the `ssh` launcher starts its
    /// hosts' counts instead).
    pub workers: usize,
    /// The run's token, handed to workers through the environment (`auth::TOKEN_ENV`) or
    /// their standard input, never a command line.
    pub token: Option<String>,
    /// PEM of the CA certificate workers verify a TLS coordinator with (`TLS_CA_ENV`).
    pub tls_ca: Option<String>,
    /// The run's output directory (Slurm job logs).
    pub out: PathBuf,
    /// `slurm` launcher settings (`[launcher.slurm]` merged with the `--slurm-*` flags).
    pub slurm: slurm::SlurmOptions,
    /// `ssh` launcher settings (`[launcher.ssh]` merged with the `--ssh-*` flags).
    pub ssh: ssh::SshOptions,
    /// Local GPU workers: one per entry, started with `CUDA_VISIBLE_DEVICES` = the entry and
    /// `--device cuda` (see [`local::visible_gpus`]). Empty: none.
    pub gpus: Vec<String>,
    /// CPU threads (`RAYON_NUM_THREADS`) of each GPU worker.
    pub gpu_threads: usize,
}

impl LaunchConfig {
    /// `workers` local workers of `worker_bin`, no token, TLS or cluster settings.
    pub fn local(worker_bin: PathBuf, workers: usize) -> LaunchConfig {
        LaunchConfig { worker_bin, workers, ..Default::default() }
    }
}

/// `[launcher]` in a sweep file: settings of the launchers that need some.
#[derive(Debug, Clone, Default, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LauncherTables {
    pub slurm: Option<slurm::SlurmOptions>,
    pub ssh: Option<ssh::SshOptions>,
}

/// The environment variable that carries the CA certificate (PEM text, public) to workers of
/// a TLS coordinator.
pub const TLS_CA_ENV: &str = "SCORESWEEP_TLS_CA";

/// `s` single-quoted for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `tool` on `$PATH`, if it is there.
pub fn find_in_path(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(tool)).find(|f| f.is_file()))
}

/// A worker that has exited (or could not be watched any longer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    /// The name it was started with (`--name`).
    pub name: String,
    /// Its exit code; None when killed by a signal or unknown.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// What the launcher knows besides (e.g. "slurm job 12: TIMEOUT").
    pub detail: Option<String>,
}

impl std::fmt::Display for Exited {
    /// "local1 was killed by signal 9", "local0 exited with code 1", "slurm0 (slurm job 7:
    /// TIMEOUT) exited (status unknown)".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(d) = &self.detail {
            let bare = Exited { detail: None, name: format!("{} ({d})", self.name), ..*self };
            return bare.fmt(f);
        }
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "{} exited with code {c}", self.name),
            (None, Some(s)) => write!(f, "{} was killed by signal {s}", self.name),
            (None, None) => write!(f, "{} exited (status unknown)", self.name),
        }
    }
}

/// Why workers could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("worker executable not found at {}: build it with `cargo build --release -p worker`, or pass --worker-bin", .0.display())]
    WorkerNotFound(PathBuf),
    #[error("unknown launcher `{kind}` (known: {})", KINDS.join(", "))]
    UnknownKind { kind: String },
    #[error("failed to start worker {}: {source}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {message}")]
    Command { what: String, message: String },
    #[error("the {launcher} launcher needs `{tool}`, which is not on PATH")]
    ToolMissing { tool: String, launcher: &'static str },
    #[error("no ssh host could start workers: {0}")]
    NoHosts(String),
    #[error("the ssh launcher needs hosts: --ssh-hosts HOST[:N],… or `hosts` in [launcher.ssh]")]
    NoHostsGiven,
}

/// A boxed future, so that [`Launcher`] stays usable as `dyn Launcher`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Starts, watches and stops the workers of one run. Called from the run loop on the async
/// runtime; `start` and `poll` must not block.
pub trait Launcher: Send {
    /// Builds the launcher (checks what it needs before anything starts).
    fn new(config: &LaunchConfig) -> Result<Self, LaunchError>
    where
        Self: Sized;
    /// Starts the configured workers, which join the coordinator at `url`.
    fn start(&mut self, url: &str) -> Result<(), LaunchError>;
    /// Starts a replacement for the worker `name`, which has exited (same name, same
    /// coordinator).
    fn respawn(&mut self, name: &str) -> Result<(), LaunchError>;
    /// Workers that exited since the last call.
    fn poll(&mut self) -> Vec<Exited>;
    /// Workers started and not yet seen exiting.
    fn alive(&self) -> usize;
    /// Lets the workers exit on their own for up to `grace` (they have been told "done"),
    /// then stops the rest.
    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, ()>;
}

/// Default of `--max-respawns`: replacements of dead workers per run.
pub const DEFAULT_MAX_RESPAWNS: usize = 100;
/// A worker that dies sooner than this after its start died young.
pub const YOUNG: Duration = Duration::from_secs(2);
/// Delay before replacing a worker that died young (doubled for each such death in a row).
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest delay before a replacement.
pub const BACKOFF_MAX: Duration = Duration::from_secs(8);

/// The respawn policy of a run: which dead workers get a replacement, and when. A worker that
/// lived at least [`YOUNG`] is replaced at once; one that died younger waits [`BACKOFF_MIN`],
/// doubled for each young death of its slot in a row, up to [`BACKOFF_MAX`] (a worker that
/// cannot start does not spin). At most `max` replacements per run; after that a dead worker
/// stays dead.
#[derive(Debug)]
pub struct Respawner {
    max: usize,
    /// When the run's first workers started (slots not seen yet started then).
    start: Instant,
    /// Replacements started.
    count: usize,
    /// By worker name.
    slots: HashMap<String, Slot>,
}

#[derive(Debug, Clone)]
struct Slot {
    started: Instant,
    young_deaths: u32,
    /// When its replacement is due, if one is.
    due: Option<Instant>,
}

impl Respawner {
    /// A policy allowing `max` replacements, for workers first started at `start`.
    pub fn new(max: usize, start: Instant) -> Respawner {
        Respawner { max, start, count: 0, slots: HashMap::new() }
    }

    /// Worker `name` exited unexpectedly at `now`: schedules its replacement and returns the
    /// delay, or None when the run's replacements are used up.
    pub fn exited(&mut self, name: &str, now: Instant) -> Option<Duration> {
        let scheduled = self.slots.values().filter(|s| s.due.is_some()).count();
        if self.count + scheduled >= self.max {
            return None;
        }
        let start = self.start;
        let slot = self.slots.entry(name.to_string()).or_insert(Slot { started: start, young_deaths: 0, due: None });
        let delay = if now.saturating_duration_since(slot.started) < YOUNG {
            slot.young_deaths += 1;
            BACKOFF_MIN.saturating_mul(1 << (slot.young_deaths - 1).min(16)).min(BACKOFF_MAX)
        } else {
            slot.young_deaths = 0;
            Duration::ZERO
        };
        slot.due = Some(now + delay);
        Some(delay)
    }

    /// The replacements due at `now`, in name order; each is counted and its slot marked as
    /// started at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<String> {
        let mut names: Vec<String> = self.slots.iter().filter(|(_, s)| s.due.is_some_and(|d| d <= now)).map(|(n, _)| n.clone()).collect();
        names.sort();
        for n in &names {
            if let Some(s) = self.slots.get_mut(n) {
                s.due = None;
                s.started = now;
            }
        }
        self.count += names.len();
        names
    }

    /// Replacements scheduled and not started yet.
    pub fn pending(&self) -> usize {
        self.slots.values().filter(|s| s.due.is_some()).count()
    }

    /// Replacements started so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The most replacements this run allows.
    pub fn max(&self) -> usize {
        self.max
    }
}

/// The launcher registry: one line per kind, `"name" => module::Type`. Each line also
/// declares the module (`launch/<module>.rs`).
macro_rules! registry {
    ($($kind:literal => $module:ident :: $ty:ident),* $(,)?) => {
        $(pub mod $module;)*
        /// Launcher kinds, as given to `--launcher`.
        pub const KINDS: &[&str] = &[$($kind),*];
        /// The launcher of `kind`, built from `config`.
        pub fn launcher(kind: &str, config: &LaunchConfig) -> Result<Box<dyn Launcher>, LaunchError> {
            match kind {
                $($kind => Ok(Box::new(<$module::$ty as Launcher>::new(config)?)),)*
                _ => Err(LaunchError::UnknownKind { kind: kind.to_string() }),
            }
        }
    };
}

registry! {
    "local" => local::LocalLauncher,
    "slurm" => slurm::SlurmLauncher,
    "ssh" => ssh::SshLauncher,
}

/// The worker executable: `given` (`--worker-bin`), else `$SCORESWEEP_WORKER`, else `worker`
/// next to this executable; refused when it does not exist.
pub fn worker_executable(given: Option<&Path>) -> Result<PathBuf, LaunchError> {
    let path = match (given, std::env::var_os("SCORESWEEP_WORKER")) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(p)) if !p.is_empty() => PathBuf::from(p),
        _ => std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("worker"))).unwrap_or_else(|| PathBuf::from("worker")),
    };
    if !path.is_file() {
        return Err(LaunchError::WorkerNotFound(path));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_workers_are_replaced_with_backoff_while_young_and_within_the_budget() {
        let t0 = Instant::now();
        let s = |secs: f64| t0 + Duration::from_secs_f64(secs);
        let mut r = Respawner::new(4, t0);
        // (worker, dies at, expected delay: None = not replaced, then due at, replaced names)
        let steps: [(&str, f64, Option<f64>); 5] = [
            ("local0", 10.0, Some(0.0)), // lived 10 s: at once
            ("local0", 10.5, Some(0.5)), // the replacement died young: backoff
            ("local0", 11.5, Some(1.0)), // again young: doubled
            ("local1", 1.0, Some(0.5)),  // young from the run's start
            ("local1", 30.0, None),      // budget of 4 spent
        ];
        for (name, at, want) in steps {
            let got = r.exited(name, s(at));
            assert_eq!(got.map(|d| d.as_secs_f64()), want, "{name} at {at}");
            if let Some(d) = want {
                let due_at = at + d;
                if d > 0.0 {
                    assert!(r.due(s(due_at - 0.01)).is_empty(), "{name}: not before its backoff");
                }
                assert_eq!(r.due(s(due_at)), vec![name.to_string()]);
            }
        }
        assert_eq!((r.count(), r.pending(), r.max()), (4, 0, 4));
        // Backoff is bounded.
        let mut r = Respawner::new(100, t0);
        let mut at = 0.0;
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            at += 0.1;
            last = r.exited("w", s(at)).unwrap();
            at += last.as_secs_f64();
            assert_eq!(r.due(s(at)).len(), 1);
        }
        assert_eq!(last, BACKOFF_MAX);
    }

    #[test]
    fn unknown_kinds_and_missing_workers_are_refused_clearly() {
        let config = LaunchConfig::local(PathBuf::from("/bin/true"), 1);
        let err = launcher("pbs", &config).err().expect("refused").to_string();
        assert!(err.contains("unknown launcher `pbs`") && err.contains("local, slurm, ssh"), "{err}");
        assert!(launcher("local", &config).is_ok());
        let err = worker_executable(Some(Path::new("/nonexistent/worker"))).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/worker") && err.contains("cargo build --release -p worker") && err.contains("--worker-bin"), "{err}");
        let err = launcher("ssh", &config).err().expect("no hosts").to_string();
        assert!(err.contains("--ssh-hosts"), "{err}");
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        let out = std::process::Command::new("sh").arg("-c").arg(format!("printf %s {}", shell_quote("x'; echo pwned '"))).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "x'; echo pwned '");
    }
}
