//! The `local` launcher: worker processes on this machine, one per `--workers`, each with
//! `RAYON_NUM_THREADS` = cores / workers. They stay in the coordinator's process group, so a
//! terminal's Ctrl-C (SIGINT to the whole group) reaches them too; they are started with
//! `--ignore-interrupt`, so stopping stays the coordinator's call (first Ctrl-C: no new
//! leases, running trials finish; second: cancel). They are also started with `--parent-pid`
//! (this process): a worker exits within 0.2 s of the coordinator's death, however it died
//! (`kill -9` of the coordinator alone included), since its results could never be delivered.
//! A dropped launcher kills its children; a dead worker is replaced by [`Launcher::respawn`].

use std::time::{Duration, Instant};

use super::{BoxFuture, Exited, LaunchConfig, LaunchError, Launcher};

pub struct LocalLauncher {
    config: LaunchConfig,
    /// The coordinator's URL (set by `start`).
    url: String,
    /// (name, process) of the workers not yet seen exiting.
    children: Vec<(String, tokio::process::Child)>,
}

impl LocalLauncher {
    fn spawn(&mut self, name: &str) -> Result<(), LaunchError> {
        let bin = &self.config.worker_bin;
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let threads = (cores / self.config.workers.max(1)).max(1);
        let mut cmd = tokio::process::Command::new(bin);
        if let Some(t) = &self.config.token {
            cmd.env(crate::auth::TOKEN_ENV, t);
        }
        if let Some(ca) = &self.config.tls_ca {
            cmd.env(super::TLS_CA_ENV, ca);
        }
        let child = cmd
            .args(["--coordinator", &self.url, "--name", name, "--ignore-interrupt", "--parent-pid", &std::process::id().to_string()])
            .env("RAYON_NUM_THREADS", threads.to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| LaunchError::Spawn { path: bin.clone(), source })?;
        self.children.push((name.to_string(), child));
        Ok(())
    }
}

impl Launcher for LocalLauncher {
    fn new(config: &LaunchConfig) -> Result<Self, LaunchError> {
        Ok(LocalLauncher { config: config.clone(), url: String::new(), children: Vec::new() })
    }

    fn start(&mut self, url: &str) -> Result<(), LaunchError> {
        self.url = url.to_string();
        for i in 0..self.config.workers {
            self.spawn(&format!("local{i}"))?;
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
