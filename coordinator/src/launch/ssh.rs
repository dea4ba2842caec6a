//! The `ssh` launcher: workers on other hosts (`--ssh-hosts host1:2,host2` or `hosts` in
//! `[launcher.ssh]`: a host and how many workers it runs), each started by its own `ssh`
//! client in batch mode (no password prompts) running
//! `sh -c 'exec WORKER --coordinator URL --name NAME --token-stdin --exit-on-stdin-eof …'`.
//!
//! **The token never appears on a command line** (neither ssh's here nor the worker's there):
//! it is the first line the launcher writes to the ssh client's standard input, which the
//! worker reads with `--token-stdin`. The pipe then stays open: with `--exit-on-stdin-eof` the
//! remote worker exits as soon as its ssh session ends, so stopping a worker is killing its ssh
//! client, and a coordinator that dies (its pipes close) takes its remote workers with it.
//! ssh clients get a process group of their own, so a terminal's Ctrl-C does not kill them:
//! stopping stays the coordinator's call.
//!
//! Before any worker starts, every host is probed (`ssh HOST test -x WORKER`, in parallel); a
//! host that cannot be reached or lacks the worker executable is reported and skipped, and the
//! sweep goes on with the rest (only when no host works is the run refused). The worker path on
//! the hosts is `worker_bin` (default: the local executable's path); nothing else is assumed of
//! their file systems.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{BadSetting, BoxFuture, Exited, Kind, LaunchConfig, LaunchError, Launcher, Shared, shell_quote};

/// The ssh launcher's settings: `[launcher.ssh]` in a sweep file, and the `--ssh-*` flags
/// (`--ssh-hosts` replaces `hosts`; `--ssh-arg`s follow the table's `ssh_args`;
/// `--remote-worker-bin` wins over `worker_bin`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct SshOptions {
    /// Hosts of the ssh launcher with their worker counts: host1:2,host2 (`hosts`: `HOST` or
    /// `HOST:N`, N workers on it, default 1; HOST may be `user@host` or an alias of the ssh
    /// configuration).
    #[arg(long = "ssh-hosts", value_name = "HOST[:N],…", value_delimiter = ',')]
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Extra `ssh` arguments, e.g. `["-p", "2222", "-i", "~/.ssh/sweep"]`, from an allow-list
    /// (`crate::launch_checks::check_ssh_args`: nothing that runs a command or reads another
    /// configuration; host settings go in `~/.ssh/config`, or `--ssh-arg=-F FILE`).
    #[arg(long = "ssh-arg", value_name = "ARG", allow_hyphen_values = true)]
    #[serde(default)]
    pub ssh_args: Vec<String>,
    /// The worker executable on the hosts (default: the local one's path; table only).
    #[arg(skip)]
    pub worker_bin: Option<PathBuf>,
}

/// Parses `HOST[:N]` (also `[v6addr]:N`); N ≥ 1.
pub fn parse_host(s: &str) -> Result<(String, usize), String> {
    let s = s.trim();
    let (host, count) = match s.strip_prefix('[') {
        Some(rest) => {
            let (h, tail) = rest.split_once(']').ok_or_else(|| format!("`{s}`: unclosed `[`"))?;
            (h.to_string(), tail.strip_prefix(':'))
        }
        None => match s.rsplit_once(':') {
            Some((h, n)) => (h.to_string(), Some(n)),
            None => (s.to_string(), None),
        },
    };
    if host.is_empty() || host.starts_with('-') || host.chars().any(|c| c.is_whitespace() || c == '\'') {
        return Err(format!("`{s}`: not a host name"));
    }
    let count = match count {
        None => 1,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => return Err(format!("`{s}`: the worker count after `:` must be a whole number ≥ 1")),
        },
    };
    Ok((host, count))
}

/// Parses a list of `HOST[:N]`; a host named twice adds up.
pub fn parse_hosts(list: &[String]) -> Result<Vec<(String, usize)>, String> {
    let mut hosts: Vec<(String, usize)> = Vec::new();
    for s in list {
        let (h, n) = parse_host(s)?;
        match hosts.iter_mut().find(|(x, _)| *x == h) {
            Some((_, m)) => *m += n,
            None => hosts.push((h, n)),
        }
    }
    Ok(hosts)
}

struct Remote {
    name: String,
    host: String,
    child: Child,
    /// Kept open: its end is the remote worker's signal to exit.
    stdin: Option<ChildStdin>,
}

pub struct SshLauncher {
    config: LaunchConfig,
    opts: SshOptions,
    hosts: Vec<(String, usize)>,
    url: String,
    remotes: Vec<Remote>,
    /// Worker name → host, for respawns.
    host_of: HashMap<String, String>,
}

impl SshLauncher {
    fn worker_bin(&self) -> String {
        self.config.worker_bin.to_string_lossy().into_owned()
    }

    /// `ssh [user's arguments] [ours] -- HOST REMOTE`. For `-o` options ssh keeps the first
    /// value it sees: the user's come first and win, ours are defaults — batch mode (no
    /// prompts), a connection timeout, and keep-alives so that a host that dies ends its
    /// workers' sessions within a minute.
    fn ssh(&self, host: &str, remote: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(&self.opts.ssh_args)
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-T", "--"])
            .arg(host)
            .arg(remote);
        cmd
    }

    /// The command run on `host` for worker `name`: [`Self::remote_script`] under `sh -c`
    /// (whatever the remote login shell is).
    fn remote_command(&self, name: &str, per_host: usize) -> String {
        format!("exec sh -c {}", shell_quote(&self.remote_script(name, per_host)))
    }

    /// The POSIX shell script that starts worker `name` (`per_host` workers share the cores).
    fn remote_script(&self, name: &str, per_host: usize) -> String {
        let mut args = vec!["--coordinator".to_string(), self.url.clone(), "--name".into(), name.into(), "--exit-on-stdin-eof".into()];
        args.extend(["--max-unreachable".to_string(), super::REMOTE_MAX_UNREACHABLE.to_string()]);
        if self.config.token.is_some() {
            args.push("--token-stdin".into());
        }
        let args = args.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ");
        let ca = match &self.config.tls_ca {
            // A certificate is public: it may be on a command line.
            Some(pem) => format!("{}={}; export {}; ", super::TLS_CA_ENV, shell_quote(pem), super::TLS_CA_ENV),
            None => String::new(),
        };
        format!(
            "t=$(( $(nproc 2>/dev/null || echo 1) / {per_host} )); [ \"$t\" -ge 1 ] || t=1; RAYON_NUM_THREADS=$t; export RAYON_NUM_THREADS; {ca}exec {} {args}",
            shell_quote(&self.worker_bin())
        )
    }

    /// Whether `host` answers and has the worker executable: None if so, else why not.
    fn probe(&self, host: &str) -> std::thread::JoinHandle<Option<String>> {
        let mut cmd = self.ssh(host, &format!("test -x {}", shell_quote(&self.worker_bin())));
        let bin = self.worker_bin();
        std::thread::spawn(move || {
            let o = match cmd.stdin(Stdio::null()).output() {
                Ok(o) => o,
                Err(e) => return Some(format!("ssh: {e}")),
            };
            match o.status.code() {
                Some(0) => None,
                Some(255) | None => Some(format!("ssh failed: {}", String::from_utf8_lossy(&o.stderr).trim().lines().last().unwrap_or("no message"))),
                Some(_) => Some(format!("worker executable not found at {bin} (set worker_bin in [launcher.ssh] or --remote-worker-bin)")),
            }
        })
    }

    fn spawn(&mut self, name: &str, host: &str) -> Result<(), LaunchError> {
        let per_host = self.hosts.iter().find(|(h, _)| h == host).map_or(1, |(_, n)| *n);
        let mut child = self
            .ssh(host, &self.remote_command(name, per_host))
            .stdin(Stdio::piped())
            // Its own process group: a terminal's Ctrl-C must not end the session.
            .process_group(0)
            .spawn()
            .map_err(|source| LaunchError::Spawn { path: PathBuf::from("ssh"), source })?;
        let mut stdin = child.stdin.take();
        if let (Some(s), Some(t)) = (stdin.as_mut(), &self.config.token) {
            // A few bytes into an empty pipe: does not block.
            if let Err(source) = s.write_all(format!("{t}\n").as_bytes()).and_then(|_| s.flush()) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LaunchError::Spawn { path: PathBuf::from("ssh"), source });
            }
        }
        self.host_of.insert(name.to_string(), host.to_string());
        self.remotes.push(Remote { name: name.to_string(), host: host.to_string(), child, stdin });
        Ok(())
    }

    fn kill_all(&mut self) {
        for r in &mut self.remotes {
            r.stdin = None;
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
        self.remotes.clear();
    }
}

impl SshLauncher {
    /// The launcher of `opts.hosts` (each host's count of workers) running `config.worker_bin`
    /// there.
    fn new(config: LaunchConfig, opts: SshOptions) -> Result<Self, LaunchError> {
        let hosts = parse_hosts(&opts.hosts).map_err(|m| LaunchError::Setting(format!("--ssh-hosts: {m}")))?;
        if hosts.is_empty() {
            return Err(LaunchError::NoHostsGiven);
        }
        if super::find_in_path("ssh").is_none() {
            return Err(LaunchError::ToolMissing { tool: "ssh".into(), launcher: "ssh" });
        }
        Ok(SshLauncher { config, opts, hosts, url: String::new(), remotes: Vec::new(), host_of: HashMap::new() })
    }
}

impl Kind for SshLauncher {
    const REMOTE: bool = true;
    type Options = SshOptions;

    fn given(f: &SshOptions) -> Vec<&'static str> {
        [("--ssh-hosts", !f.hosts.is_empty()), ("--ssh-arg", !f.ssh_args.is_empty())].into_iter().filter(|(_, g)| *g).map(|(f, _)| f).collect()
    }

    fn merge(table: SshOptions, flags: SshOptions) -> SshOptions {
        let mut o = table;
        if !flags.hosts.is_empty() {
            o.hosts = flags.hosts;
        }
        o.ssh_args.extend(flags.ssh_args);
        o
    }

    fn check(o: &SshOptions) -> Result<(), BadSetting> {
        parse_hosts(&o.hosts).map_err(|message| BadSetting { key: "hosts", flag: Some("--ssh-hosts"), message })?;
        // Nothing that runs a command; `-F FILE` stays allowed (host settings may live there).
        crate::launch_checks::check_ssh_args(&o.ssh_args, false).map_err(|message| BadSetting { key: "ssh_args", flag: Some("--ssh-arg"), message })
    }

    /// Each host's count of workers (`--workers` does not apply) of the worker at
    /// `--remote-worker-bin` (else `worker_bin`, else the local executable's path).
    fn build(shared: &Shared, mut opts: SshOptions) -> Result<Option<Self>, LaunchError> {
        if shared.workers.is_some() {
            return Err(LaunchError::Setting("--workers does not apply to --launcher ssh: give each host's count in --ssh-hosts host:N".into()));
        }
        let hosts = parse_hosts(&opts.hosts).map_err(|m| LaunchError::Setting(format!("--ssh-hosts: {m}")))?;
        if hosts.is_empty() {
            return Err(LaunchError::NoHostsGiven);
        }
        let workers = hosts.iter().map(|(_, n)| n).sum();
        let worker_bin = shared.remote_worker_bin(opts.worker_bin.as_ref())?;
        opts.worker_bin = Some(worker_bin.clone());
        Self::new(shared.config(worker_bin, workers), opts).map(Some)
    }
}

impl Launcher for SshLauncher {

    fn start(&mut self, url: &str) -> Result<(), LaunchError> {
        self.url = url.to_string();
        let probes: Vec<_> = self.hosts.iter().map(|(h, _)| (h.clone(), self.probe(h))).collect();
        let mut usable = Vec::new();
        let mut failures = Vec::new();
        for ((host, n), (_, probe)) in self.hosts.clone().into_iter().zip(probes) {
            match probe.join().unwrap_or_else(|_| Some("probe thread panicked".into())) {
                None => usable.push((host, n)),
                Some(why) => {
                    eprintln!("ssh launcher: host {host}: {why}; its {n} worker(s) are not started");
                    failures.push(format!("{host}: {why}"));
                }
            }
        }
        if usable.is_empty() {
            return Err(LaunchError::NoHosts(failures.join("; ")));
        }
        for (host, n) in usable {
            for i in 0..n {
                self.spawn(&format!("{host}:{i}"), &host)?;
            }
        }
        Ok(())
    }

    fn respawn(&mut self, name: &str) -> Result<(), LaunchError> {
        let host = self.host_of.get(name).cloned().ok_or_else(|| LaunchError::Command { what: format!("respawning {name}"), message: "no such ssh worker".into() })?;
        self.spawn(name, &host)
    }

    fn poll(&mut self) -> Vec<Exited> {
        use std::os::unix::process::ExitStatusExt;
        let mut exited = Vec::new();
        self.remotes.retain_mut(|r| match r.child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                let detail = if status.code() == Some(255) { format!("ssh to {} failed", r.host) } else { format!("on {}", r.host) };
                exited.push(Exited { name: r.name.clone(), code: status.code(), signal: status.signal(), detail: Some(detail) });
                false
            }
            Err(_) => {
                exited.push(Exited { name: r.name.clone(), code: None, signal: None, detail: Some(format!("on {}", r.host)) });
                false
            }
        });
        exited
    }

    fn alive(&self) -> usize {
        self.remotes.len()
    }

    fn stop(&mut self, grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                self.remotes.retain_mut(|r| !matches!(r.child.try_wait(), Ok(Some(_)) | Err(_)));
                if self.remotes.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Closing stdin and killing the client ends the session: the remote worker sees
            // end-of-file and exits.
            self.kill_all();
        })
    }
}

impl Drop for SshLauncher {
    fn drop(&mut self) {
        self.kill_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse_with_counts_and_bad_ones_are_refused() {
        let list: Vec<String> = ["node1:2", "user@node2", "[::1]:3", "node1"].map(String::from).to_vec();
        assert_eq!(parse_hosts(&list).unwrap(), vec![("node1".into(), 3), ("user@node2".into(), 1), ("::1".into(), 3)]);
        for bad in ["", "node:0", "node:x", "-oProxyCommand=x", "a b", "[::1"] {
            assert!(parse_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_remote_command_holds_no_token_and_runs_in_sh() {
        let mut config = LaunchConfig::local(PathBuf::from("/opt/it's/worker"), 1);
        config.token = Some("secret-token".into());
        let mut l = SshLauncher::new(config, SshOptions { hosts: vec!["h:2".into()], ..Default::default() }).unwrap();
        l.url = "http://coord:5000".into();
        let cmd = l.remote_command("h:0", 2);
        assert!(!cmd.contains("secret-token"), "{cmd}");
        // The login shell runs the command, which runs the script under sh: check by running it
        // with `echo` in place of `exec`.
        let script = l.remote_script("h:0", 2).replacen("exec '", "echo '", 1);
        let out = Command::new("sh").arg("-c").arg(format!("exec sh -c {}", shell_quote(&script))).output().unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.trim(), "/opt/it's/worker --coordinator http://coord:5000 --name h:0 --exit-on-stdin-eof --max-unreachable 300 --token-stdin");
    }
}
