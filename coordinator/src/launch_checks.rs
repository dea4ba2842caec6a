//! Checks of what a sweep file (or a command line) hands to the cluster launchers and to the
//! file system, so that a sweep file cannot run commands or write files outside the run: ssh
//! arguments from an allow-list (no `ProxyCommand`, `LocalCommand` or other `-o` option that
//! executes, no `-F` configuration file in a sweep file, no extra host), sbatch arguments without the options
//! that name files or run commands (`--output`, `--error`, `--input`, `--chdir`, `--wrap`, …),
//! and names that become part of a path as one plain path component.

/// `ssh` flags without a value that may be given.
const SSH_FLAGS: [&str; 12] = ["-4", "-6", "-A", "-a", "-C", "-k", "-q", "-T", "-v", "-vv", "-vvv", "-x"];

/// `ssh` options that take a value (`-p 2222` or `-p2222`).
const SSH_VALUE_OPTIONS: [char; 7] = ['c', 'i', 'J', 'l', 'm', 'o', 'p'];

/// `-o` options that may be given (case-insensitive): connection, authentication, host keys
/// and logging; none of them runs a command or reads another configuration.
const SSH_O_OPTIONS: [&str; 40] = [
    "AddressFamily",
    "BatchMode",
    "CheckHostIP",
    "Ciphers",
    "Compression",
    "ConnectionAttempts",
    "ConnectTimeout",
    "ControlMaster",
    "ControlPath",
    "ControlPersist",
    "ForwardAgent",
    "GlobalKnownHostsFile",
    "GSSAPIAuthentication",
    "HashKnownHosts",
    "HostKeyAlgorithms",
    "HostKeyAlias",
    "IdentitiesOnly",
    "IdentityFile",
    "IPQoS",
    "KbdInteractiveAuthentication",
    "KexAlgorithms",
    "LogLevel",
    "MACs",
    "NumberOfPasswordPrompts",
    "PasswordAuthentication",
    "Port",
    "PreferredAuthentications",
    "ProxyJump",
    "PubkeyAcceptedAlgorithms",
    "PubkeyAcceptedKeyTypes",
    "PubkeyAuthentication",
    "RekeyLimit",
    "ServerAliveCountMax",
    "ServerAliveInterval",
    "StrictHostKeyChecking",
    "TCPKeepAlive",
    "UpdateHostKeys",
    "User",
    "UserKnownHostsFile",
    "VerifyHostKeyDNS",
];

/// Checks extra `ssh` arguments against the allow-list: the flags of [`SSH_FLAGS`], the
/// options `-c -i -J -l -m -p` with a value, and `-o Key=Value` for the keys of
/// [`SSH_O_OPTIONS`]. Anything else is refused, naming it: options that run commands
/// (`ProxyCommand`, `LocalCommand`, `PermitLocalCommand`, `KnownHostsCommand`, `Match exec`),
/// a configuration file (`-F`, `Include`) in a sweep file, forwardings, and a word that is no
/// option (ssh would take it as the host). `-F FILE` is allowed on the command line
/// (`sweep_file` false: the user names their own configuration), never in a sweep file.
pub fn check_ssh_args(args: &[String], sweep_file: bool) -> Result<(), String> {
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        i += 1;
        if SSH_FLAGS.contains(&a) {
            continue;
        }
        let mut chars = a.chars();
        let (Some('-'), Some(opt)) = (chars.next(), chars.next()) else {
            return Err(format!("ssh argument `{a}` is not an option (ssh would take it for the host)"));
        };
        let config_file = opt == 'F' && !sweep_file;
        if !SSH_VALUE_OPTIONS.contains(&opt) && !config_file {
            return Err(format!(
                "ssh option `{a}` is not allowed (allowed: {} {}, and -o with one of {})",
                SSH_FLAGS.join(" "),
                SSH_VALUE_OPTIONS.iter().map(|c| format!("-{c} VALUE")).collect::<Vec<_>>().join(" "),
                SSH_O_OPTIONS.join(", ")
            ));
        }
        let value = match chars.as_str() {
            "" => {
                let v = args.get(i).ok_or_else(|| format!("ssh option `{a}` needs a value"))?;
                i += 1;
                v.as_str()
            }
            attached => attached,
        };
        if value.starts_with('-') {
            return Err(format!("ssh option `-{opt}` has the value `{value}`, which starts with `-`"));
        }
        if opt == 'o' {
            let key = value.split(['=', ' ', '\t']).next().unwrap_or_default();
            if !SSH_O_OPTIONS.iter().any(|k| k.eq_ignore_ascii_case(key)) {
                return Err(format!(
                    "ssh option `-o {value}` is not allowed: `{key}` is not one of {} (options that run commands, such as ProxyCommand and LocalCommand, never are)",
                    SSH_O_OPTIONS.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// `sbatch` long options that name a file or run a command.
const SBATCH_REFUSED: [&str; 12] = ["output", "error", "input", "chdir", "wrap", "export-file", "bb", "bbf", "container", "get-user-env", "uid", "gid"];

/// Their short forms.
const SBATCH_REFUSED_SHORT: [char; 4] = ['o', 'e', 'i', 'D'];

/// `sbatch` short options that take a value (the rest of a cluster like `-pgpu` is that value).
const SBATCH_SHORT_WITH_VALUE: &str = "AabcCdDeFGiJLmMnNopqStwx";

/// Checks extra `sbatch` arguments: refused when one names a file or runs a command
/// ([`SBATCH_REFUSED`]: `--output`, `--error`, `--input`, `--chdir`, `--wrap`, … and `-o`, `-e`,
/// `-i`, `-D`, also inside a cluster of short flags). The job's log goes where
/// `[launcher.slurm] output` says, under the run's directory.
pub fn check_sbatch_args(args: &[String]) -> Result<(), String> {
    let refused =
        |a: &str, name: &str| Err(format!("sbatch argument `{a}` is not allowed: --{name} names a file or runs a command (the job log goes to `output` under <out>/slurm/)"));
    for a in args {
        if let Some(long) = a.strip_prefix("--") {
            let name = long.split('=').next().unwrap_or_default();
            // getopt takes an unambiguous prefix for the option (`--out=` is `--output=`).
            if let Some(r) = SBATCH_REFUSED.iter().find(|r| r.starts_with(name) && name.len() >= 2 && name != "export") {
                return refused(a, r);
            }
        } else if let Some(short) = a.strip_prefix('-') {
            for c in short.chars() {
                if SBATCH_REFUSED_SHORT.contains(&c) {
                    let long = ["output", "error", "input", "chdir"][SBATCH_REFUSED_SHORT.iter().position(|x| *x == c).unwrap_or(0)];
                    return refused(a, long);
                }
                if SBATCH_SHORT_WITH_VALUE.contains(c) {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Checks that `name` (of `what`, e.g. the sweep's `name`) is one plain path component: not
/// empty, at most 128 bytes, not `.` or `..`, no `/` or `\`, no control or invisible
/// characters.
pub fn check_path_component(what: &str, name: &str) -> Result<(), String> {
    let why = if name.is_empty() {
        "is empty"
    } else if name.len() > 128 {
        "is longer than 128 bytes"
    } else if name == "." || name == ".." {
        "is `.` or `..`"
    } else if name.contains(['/', '\\']) {
        "contains a path separator"
    } else if name.chars().any(|c| c.is_control() || results::escape::is_invisible(c)) {
        "contains a control or invisible character"
    } else {
        return Ok(());
    };
    Err(format!("{what} `{}` {why}: it becomes part of a path, so it must be one plain file name", results::escape::terminal(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ssh_arguments_come_from_an_allow_list() {
        for ok in [
            &["-p", "2222", "-i", "~/.ssh/sweep"][..],
            &["-p2222", "-oBatchMode=yes", "-o", "StrictHostKeyChecking=accept-new", "-J", "bastion", "-4", "-q"],
            &["-o", "UserKnownHostsFile /tmp/known", "-l", "me", "-o", "proxyjump=gw"],
        ] {
            assert_eq!(check_ssh_args(&v(ok), true), Ok(()), "{ok:?}");
        }
        for (bad, says) in [
            (&["-oProxyCommand=sh -c 'touch /tmp/pwned'"][..], "ProxyCommand"),
            (&["-o", "ProxyCommand nc %h %p"], "ProxyCommand"),
            (&["-o", "LocalCommand=touch /tmp/x", "-o", "PermitLocalCommand=yes"], "LocalCommand"),
            (&["-o", "KnownHostsCommand=/bin/x"], "KnownHostsCommand"),
            (&["-o", "Match exec true"], "Match"),
            (&["-F", "evil_config"], "-F"),
            (&["-Fevil_config"], "-Fevil_config"),
            (&["-L", "8080:localhost:80"], "-L"),
            (&["otherhost"], "not an option"),
            (&["-J", "-oProxyCommand=x"], "starts with `-`"),
            (&["-p"], "needs a value"),
        ] {
            let err = check_ssh_args(&v(bad), true).expect_err(&format!("{bad:?} refused"));
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        // On the command line the user may name their own ssh configuration; nothing else opens.
        assert_eq!(check_ssh_args(&v(&["-F", "/home/me/.ssh/cluster", "-p", "22"]), false), Ok(()));
        assert!(check_ssh_args(&v(&["-F", "c", "-oProxyCommand=x"]), false).is_err());
    }

    #[test]
    fn sbatch_arguments_that_name_files_or_run_commands_are_refused() {
        assert_eq!(check_sbatch_args(&v(&["--qos=short", "--account=ml", "-pgpu", "-q", "short", "--exclusive", "-vpgpu", "--export=ALL,SCORESWEEP_TOKEN"])), Ok(()));
        for (bad, option) in [
            ("--output=/any/file", "--output"),
            ("--out=/any/file", "--output"),
            ("--error=/x", "--error"),
            ("--chdir=/", "--chdir"),
            ("--wrap=touch /tmp/x", "--wrap"),
            ("-o/any/file", "--output"),
            ("-vo/any/file", "--output"),
            ("-D/", "--chdir"),
            ("--input", "--input"),
        ] {
            let err = check_sbatch_args(&v(&["--qos=short", bad])).expect_err(bad);
            assert!(err.contains(bad) && err.contains(option), "{bad}: {err}");
        }
    }

    #[test]
    fn names_are_one_path_component() {
        for ok in ["sigma", "sigma-v2", "σ sweep"] {
            assert_eq!(check_path_component("name", ok), Ok(()));
        }
        for bad in ["", ".", "..", "a/b", "../../etc", "a\\b", "a\nb", "a\u{202E}b", &"x".repeat(129)] {
            let err = check_path_component("name", bad).expect_err(bad);
            assert!(err.starts_with("name `") && err.contains("one plain file name"), "{err}");
        }
    }
}
