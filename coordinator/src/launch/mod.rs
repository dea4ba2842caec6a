//! Launchers: how `coordinator run` starts, watches and stops the workers of a sweep. Workers
//! are the separate `worker` executable joining over gRPC (`worker --coordinator URL --name
//! NAME --ignore-interrupt`), wherever a launcher puts them; the coordinator knows nothing of
//! the engine.
//!
//! Launchers: `local` (processes on this machine), `slurm` (one `sbatch` job per worker), `ssh`
//! (workers on other hosts, stopped when their ssh session ends) and `pbs` (one `qsub` job per
//! worker). Whatever the launcher, the run's token reaches workers through their environment or
//! standard input, never a command line, and a worker's results and artifacts come back over
//! the protocol (nothing assumes a file system shared with the coordinator).
//!
//! Each launcher owns its settings ([`Kind`]): one `Options` struct that is both its
//! `[launcher.<kind>]` table in a sweep file and its `--<kind>-*` flags, checked by the launcher
//! (a bad key is located in the sweep file, a bad flag named), and it resolves its own worker
//! count and worker path from the settings every launcher shares ([`Shared`]). Neither the
//! command line (`main.rs`) nor the sweep file (`sweep.rs`) knows one launcher from another.
//!
//! To add a launcher (e.g. LSF): write `launch/<kind>.rs` with a type implementing
//! [`Launcher`] and [`Kind`], and add one line `"<kind>" => <kind>::<Type>,` to the
//! `registry!` invocation below; `--launcher <kind>`, its flags and `[launcher.<kind>]` then
//! exist (`pbs.rs` is the smallest model).
//!
//! A worker that dies before the sweep is over (killed, out of memory, a crash) is replaced
//! through [`Launcher::respawn`] as the [`Respawner`] decides: at most `--max-respawns` times
//! per run, and after a delay that doubles while replacements keep dying young.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};

/// What a launcher starts, resolved by its [`Kind::build`] from the [`Shared`] settings and its
/// own.
#[derive(Debug, Clone, Default)]
pub struct LaunchConfig {
    /// The worker executable: on this machine (see [`worker_executable`]), or its path on the
    /// machines a remote launcher starts workers on ([`Shared::remote_worker_bin`]).
    pub worker_bin: PathBuf,
    /// Workers to start (CPU workers for the local launcher).
    pub workers: usize,
    /// The run's token, handed to workers through the environment (`auth::TOKEN_ENV`) or
    /// their standard input, never a command line.
    pub token: Option<String>,
    /// PEM of the CA certificate workers verify a TLS coordinator with (`TLS_CA_ENV`).
    pub tls_ca: Option<String>,
    /// The run's output directory (batch job logs).
    pub out: PathBuf,
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

/// The settings of `coordinator run` that every launcher shares (hyperqueue's
/// `SharedQueueOpts`); each launcher reads what applies to it in [`Kind::build`].
#[derive(Debug, Clone, Default)]
pub struct Shared {
    /// `--worker-bin`: the worker executable on this machine.
    pub worker_bin: Option<PathBuf>,
    /// `--remote-worker-bin`: its path on the machines of a remote launcher ([`Kind::REMOTE`]).
    pub remote_worker_bin: Option<PathBuf>,
    /// `--workers`.
    pub workers: Option<usize>,
    pub token: Option<String>,
    pub tls_ca: Option<String>,
    /// The run's output directory.
    pub out: PathBuf,
}

impl Shared {
    /// The worker executable on other machines: `--remote-worker-bin`, else the launcher's own
    /// `worker_bin` setting (`own`), else the local executable's path (which must exist here).
    /// Paths on other machines are not checked here.
    pub fn remote_worker_bin(&self, own: Option<&PathBuf>) -> Result<PathBuf, LaunchError> {
        match self.remote_worker_bin.as_ref().or(own) {
            Some(p) => Ok(p.clone()),
            None => worker_executable(self.worker_bin.as_deref()),
        }
    }

    /// The configuration of `workers` workers of `worker_bin`.
    pub fn config(&self, worker_bin: PathBuf, workers: usize) -> LaunchConfig {
        LaunchConfig { worker_bin, workers, token: self.token.clone(), tls_ca: self.tls_ca.clone(), out: self.out.clone(), ..Default::default() }
    }
}

/// The worker count of a batch launcher: `--workers`, else its table's `workers`, else one per
/// core of this machine.
pub fn batch_workers(shared: &Shared, own: Option<usize>) -> usize {
    shared.workers.or(own).unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// A setting a launcher refuses: the key of its `[launcher.<kind>]` table, the flag that sets
/// it (None: the table only), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSetting {
    pub key: &'static str,
    pub flag: Option<&'static str>,
    pub message: String,
}

/// A kind of launcher with its own settings: the registry builds it from them.
pub trait Kind: Launcher + Sized + 'static {
    /// Its workers run on other machines: `coordinator run` listens on a wildcard address by
    /// default, and `--remote-worker-bin` applies.
    const REMOTE: bool;
    /// Its settings: the keys of `[launcher.<kind>]` (serde, unknown keys refused) and its
    /// `--<kind>-*` flags (clap) in one struct.
    type Options: serde::de::DeserializeOwned + clap::Args + clap::FromArgMatches + Default + Clone + std::fmt::Debug + Send + Sync + 'static;
    /// The flags set in `flags`, by name (`--slurm-time`): refused under another launcher.
    fn given(flags: &Self::Options) -> Vec<&'static str>;
    /// `flags` over `table`: a flag wins over its key.
    fn merge(table: Self::Options, flags: Self::Options) -> Self::Options;
    /// Refuses settings that cannot work, naming the key (and its flag).
    fn check(options: &Self::Options) -> Result<(), BadSetting>;
    /// Resolves the run's workers (count, executable) and builds the launcher; None when no
    /// worker is to be started. Nothing is started yet.
    fn build(shared: &Shared, options: Self::Options) -> Result<Option<Self>, LaunchError>;
}

/// `[launcher.<kind>]` tables of a sweep file, by kind, as written (checked by
/// [`check_table`] when the sweep is loaded).
pub type LauncherTables = BTreeMap<String, toml::Value>;

/// A bad `[launcher.<kind>]` table: the dotted key under it (empty: the table itself) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableError {
    pub key: String,
    pub message: String,
}

/// The settings of kind `K` in `table`, checked.
fn options_of<K: Kind>(table: &toml::Value) -> Result<K::Options, TableError> {
    let options: K::Options = serde_path_to_error::deserialize(table.clone()).map_err(|e| {
        let key = e.path().to_string();
        TableError { key: if key == "." { String::new() } else { key }, message: e.inner().to_string().lines().next().unwrap_or_default().to_string() }
    })?;
    K::check(&options).map_err(|b| TableError { key: b.key.to_string(), message: b.message })?;
    Ok(options)
}

/// Builds the launcher of kind `K` (named `kind`) from its table and flags.
fn build_of<K: Kind>(kind: &str, shared: &Shared, table: Option<&toml::Value>, flags: &K::Options) -> Result<Option<Box<dyn Launcher>>, LaunchError> {
    if !K::REMOTE && shared.remote_worker_bin.is_some() {
        return Err(LaunchError::Setting(format!(
            "--remote-worker-bin is for launchers whose workers run on other machines ({}); {kind} workers use --worker-bin",
            remote_kinds().join(", ")
        )));
    }
    let table = match table {
        Some(t) => options_of::<K>(t).map_err(|e| LaunchError::Setting(format!("[launcher.{kind}] {}: {}", e.key, e.message)))?,
        None => K::Options::default(),
    };
    let options = K::merge(table, flags.clone());
    K::check(&options).map_err(|b| LaunchError::Setting(format!("{}: {}", b.flag.map_or_else(|| format!("launcher.{kind}.{}", b.key), str::to_string), b.message)))?;
    Ok(K::build(shared, options)?.map(|l| Box::new(l) as Box<dyn Launcher>))
}

/// The environment variable that carries the CA certificate (PEM text, public) to workers of
/// a TLS coordinator.
pub const TLS_CA_ENV: &str = "SCORESWEEP_TLS_CA";

/// Workers started by a launcher on other machines give up on an unreachable coordinator
/// after this many seconds (a coordinator killed with SIGKILL cannot cancel their jobs).
pub const REMOTE_MAX_UNREACHABLE: u32 = 300;

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
    /// A setting the launcher refuses, with the flag or key that holds it.
    #[error("{0}")]
    Setting(String),
    #[error("the ssh launcher needs hosts: --ssh-hosts HOST[:N],… or `hosts` in [launcher.ssh]")]
    NoHostsGiven,
}

/// A boxed future, so that [`Launcher`] stays usable as `dyn Launcher`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Starts, watches and stops the workers of one run. Called from the run loop on the async
/// runtime; `start` and `poll` must not block. Built by [`Kind::build`], which checks what it
/// needs before anything starts.
pub trait Launcher: Send {
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

/// The launcher registry: one line per kind, `"name" => module::Type` (`Type` implements
/// [`Kind`]). Each line also declares the module (`launch/<module>.rs`), its flags and its
/// `[launcher.<name>]` table.
macro_rules! registry {
    ($($kind:literal => $module:ident :: $ty:ident),* $(,)?) => {
        pub mod batch;
        $(pub mod $module;)*
        /// Launcher kinds, as given to `--launcher`.
        pub const KINDS: &[&str] = &[$($kind),*];

        /// Every launcher's own flags, flattened into `coordinator run`.
        #[derive(clap::Args, Debug, Default, Clone)]
        pub struct LauncherFlags {
            $(
                #[command(flatten)]
                pub $module: <$module::$ty as Kind>::Options,
            )*
        }

        /// The kinds whose workers run on other machines.
        pub fn remote_kinds() -> Vec<&'static str> {
            let mut v = Vec::new();
            $(if <$module::$ty as Kind>::REMOTE { v.push($kind); })*
            v
        }

        /// Checks `[launcher.<kind>]` of a sweep file (the keys the launcher knows, their
        /// values); an unknown kind is refused with the list of known ones.
        pub fn check_table(kind: &str, table: &toml::Value) -> Result<(), TableError> {
            match kind {
                $($kind => options_of::<$module::$ty>(table).map(drop),)*
                _ => Err(TableError { key: String::new(), message: format!("unknown launcher `{kind}` (known: {})", KINDS.join(", ")) }),
            }
        }

        /// The launcher of `kind` with its `[launcher.<kind>]` table from `tables` and its
        /// flags from `flags` (a flag of another launcher is refused); None when no worker
        /// is to be started.
        pub fn launcher(kind: &str, shared: &Shared, tables: &LauncherTables, flags: &LauncherFlags) -> Result<Option<Box<dyn Launcher>>, LaunchError> {
            if !KINDS.contains(&kind) {
                return Err(LaunchError::UnknownKind { kind: kind.to_string() });
            }
            let given: Vec<(&str, &str)> = [$(<$module::$ty as Kind>::given(&flags.$module).into_iter().map(|f| (f, $kind)).collect::<Vec<_>>()),*].concat();
            if let Some((flag, owner)) = given.iter().find(|(_, owner)| *owner != kind) {
                return Err(LaunchError::Setting(format!("{flag} is a setting of --launcher {owner}, not of --launcher {kind}")));
            }
            match kind {
                $($kind => build_of::<$module::$ty>(kind, shared, tables.get(kind), &flags.$module),)*
                _ => Err(LaunchError::UnknownKind { kind: kind.to_string() }),
            }
        }

        /// Whether the workers of `kind` run on other machines (false for an unknown kind).
        pub fn is_remote(kind: &str) -> bool {
            match kind {
                $($kind => <$module::$ty as Kind>::REMOTE,)*
                _ => false,
            }
        }
    };
}

registry! {
    "local" => local::LocalLauncher,
    "slurm" => slurm::SlurmLauncher,
    "ssh" => ssh::SshLauncher,
    "pbs" => pbs::PbsLauncher,
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

    fn shared() -> Shared {
        Shared { worker_bin: Some(PathBuf::from("/bin/true")), workers: Some(1), ..Default::default() }
    }

    fn table(src: &str) -> toml::Value {
        toml::from_str(src).unwrap()
    }

    #[test]
    fn unknown_kinds_and_missing_workers_are_refused_clearly() {
        let tables = LauncherTables::new();
        let mut flags = LauncherFlags::default();
        // No GPU probe: /bin/true is no worker.
        flags.local.gpu_workers = Some("0".into());
        let err = launcher("lsf", &shared(), &tables, &flags).err().expect("refused").to_string();
        assert!(err.contains("unknown launcher `lsf`") && err.contains("local, slurm, ssh, pbs"), "{err}");
        assert!(launcher("local", &shared(), &tables, &flags).unwrap().is_some());
        let err = worker_executable(Some(Path::new("/nonexistent/worker"))).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/worker") && err.contains("cargo build --release -p worker") && err.contains("--worker-bin"), "{err}");
        let err = launcher("ssh", &Shared { workers: None, ..shared() }, &tables, &LauncherFlags::default()).err().expect("no hosts").to_string();
        assert!(err.contains("--ssh-hosts"), "{err}");
    }

    /// Each launcher's settings reach only it: a flag under another launcher, a bad value in a
    /// flag or a table, `--remote-worker-bin` for local workers are refused with the flag or key.
    #[test]
    fn settings_belong_to_their_launcher_and_are_checked() {
        let tables = LauncherTables::new();
        let mut flags = LauncherFlags::default();
        flags.slurm.time = Some("1h".into());
        let err = launcher("slurm", &shared(), &tables, &flags).err().expect("bad time").to_string();
        assert!(err.starts_with("--slurm-time: `1h` is not a Slurm time limit"), "{err}");
        let err = launcher("pbs", &shared(), &tables, &flags).err().expect("foreign flag").to_string();
        assert_eq!(err, "--slurm-time is a setting of --launcher slurm, not of --launcher pbs");
        let mut flags = LauncherFlags::default();
        flags.pbs.walltime = Some("1h".into());
        let err = launcher("pbs", &shared(), &tables, &flags).err().expect("bad walltime").to_string();
        assert!(err.starts_with("--pbs-walltime: `1h` is not a PBS walltime"), "{err}");
        let remote = Shared { remote_worker_bin: Some(PathBuf::from("/opt/worker")), ..shared() };
        let err = launcher("local", &remote, &tables, &LauncherFlags::default()).err().expect("local").to_string();
        assert!(err.contains("--remote-worker-bin is for launchers whose workers run on other machines (slurm, ssh, pbs)"), "{err}");
        assert_eq!(remote_kinds(), ["slurm", "ssh", "pbs"]);
        assert!(is_remote("pbs") && !is_remote("local") && !is_remote("lsf"));
    }

    #[test]
    fn tables_are_checked_by_their_launcher() {
        #[allow(clippy::type_complexity)]
        let cases: [(&str, &str, Option<(&str, &str)>); 7] = [
            ("slurm", "partition = \"gpu\"\ntime = \"2:00:00\"", None),
            ("slurm", "time = \"1h\"", Some(("time", "not a Slurm time limit"))),
            ("slurm", "queue = \"x\"", Some(("queue", "unknown field `queue`"))),
            ("ssh", "hosts = [\"a:2\", \"b:0\"]", Some(("hosts", "`b:0`"))),
            ("pbs", "queue = \"workq\"\nwalltime = \"2:00:00\"", None),
            ("pbs", "workers = 0", Some(("workers", "at least 1"))),
            ("lsf", "queue = \"x\"", Some(("", "unknown launcher `lsf`"))),
        ];
        for (kind, src, want) in cases {
            let got = check_table(kind, &table(src));
            match want {
                None => assert_eq!(got, Ok(()), "{kind}: {src}"),
                Some((key, msg)) => {
                    let e = got.expect_err(src);
                    assert_eq!(e.key, key, "{kind}: {src}: {e:?}");
                    assert!(e.message.contains(msg), "{kind}: {src}: {e:?}");
                }
            }
        }
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        let out = std::process::Command::new("sh").arg("-c").arg(format!("printf %s {}", shell_quote("x'; echo pwned '"))).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "x'; echo pwned '");
    }
}
