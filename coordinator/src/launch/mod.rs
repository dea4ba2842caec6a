//! Launchers: how `coordinator run` starts, watches and stops the workers of a sweep. Workers
//! are the separate `worker` executable joining over gRPC (`worker --coordinator URL --name
//! NAME --ignore-interrupt`), wherever a launcher puts them; the coordinator knows nothing of
//! the engine.
//!
//! To add a launcher (e.g. Slurm or SSH): write `launch/<kind>.rs` with a type implementing
//! [`Launcher`] (its `new` gets the [`LaunchConfig`]), and add one line `"<kind>" =>
//! <kind>::<Type>,` to the `registry!` invocation below; `--launcher <kind>` then selects it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

/// What every launcher is given.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// The worker executable (see [`worker_executable`]).
    pub worker_bin: PathBuf,
    /// Workers to start.
    pub workers: usize,
}

/// A worker that has exited (or could not be watched any longer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    /// The name it was started with (`--name`).
    pub name: String,
    /// Its exit code; None when killed by a signal or unknown.
    pub code: Option<i32>,
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
    /// Workers that exited since the last call.
    fn poll(&mut self) -> Vec<Exited>;
    /// Workers started and not yet seen exiting.
    fn alive(&self) -> usize;
    /// Lets the workers exit on their own for up to `grace` (they have been told "done"),
    /// then stops the rest.
    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, ()>;
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
    fn unknown_kinds_and_missing_workers_are_refused_clearly() {
        let config = LaunchConfig { worker_bin: PathBuf::from("/bin/true"), workers: 1 };
        let err = launcher("slurm", &config).err().expect("refused").to_string();
        assert!(err.contains("unknown launcher `slurm`") && err.contains("local"), "{err}");
        assert!(launcher("local", &config).is_ok());
        let err = worker_executable(Some(Path::new("/nonexistent/worker"))).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/worker") && err.contains("cargo build --release -p worker") && err.contains("--worker-bin"), "{err}");
    }
}
