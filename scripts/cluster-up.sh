#!/usr/bin/env bash
# Brings up what the cluster tests (tests/cluster.rs) run against, on this machine:
#   - a one-node Slurm cluster (munged, slurmctld, slurmd; Debian's slurm 22.05 packages);
#   - an sshd on 127.0.0.1:$SCORESWEEP_SSHD_PORT (default 2222) from a generated configuration,
#     host key and client key under $SCORESWEEP_CLUSTER_DIR (default ~/.cache/scoresweep-cluster),
#     which also gets `ssh_config` (host `scoresweep-ssh`, BatchMode, that key) for the tests.
# Idempotent: packages are installed only when missing, daemons started only when not running;
# a second run takes about a second. Needs root (or sudo) for apt-get and the daemons.
set -euo pipefail

dir="${SCORESWEEP_CLUSTER_DIR:-$HOME/.cache/scoresweep-cluster}"
port="${SCORESWEEP_SSHD_PORT:-2222}"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "cluster-up: need root (or sudo) for: $*" >&2; exit 1
    fi
}
log() { echo "cluster-up: $*" >&2; }

# --- packages -------------------------------------------------------------------------------
need=()
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge sshd:openssh-server ssh:openssh-client; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null ||
        { as_root apt-get update >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null; }
fi

running() { pgrep -x "$1" >/dev/null 2>&1; }

# --- munge ----------------------------------------------------------------------------------
if ! running munged; then
    if [ ! -s /etc/munge/munge.key ]; then
        as_root mkdir -p /etc/munge
        as_root dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    as_root chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    as_root chmod 0400 /etc/munge/munge.key
    as_root mkdir -p /run/munge /var/log/munge /var/lib/munge
    as_root chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    log "starting munged"
    as_root runuser -u munge -- /usr/sbin/munged
fi

# --- slurm ----------------------------------------------------------------------------------
short=$(hostname -s)
node=$(slurmd -C 2>/dev/null | head -n1)
[ -n "$node" ] || { log "slurmd -C printed nothing"; exit 1; }
conf=$(cat <<EOF
ClusterName=ci
SlurmctldHost=$short
SlurmUser=slurm
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/lib/slurm/slurmd
StateSaveLocation=/var/lib/slurm/slurmctld
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
KillWait=5
DefMemPerCPU=100
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$conf" ]; then
    log "writing /etc/slurm/slurm.conf"
    as_root mkdir -p /etc/slurm
    printf '%s\n' "$conf" | as_root tee /etc/slurm/slurm.conf >/dev/null
    # A changed configuration needs fresh daemons: stop the ones this configuration started
    # (by the pid files it names).
    for d in slurmd slurmctld; do
        pid=$(cat "/run/$d.pid" 2>/dev/null || true)
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then as_root kill "$pid"; fi
    done
    for _ in $(seq 1 20); do running slurmd || running slurmctld || break; sleep 0.5; done
fi
as_root mkdir -p /var/lib/slurm/slurmd /var/lib/slurm/slurmctld /var/log/slurm
as_root chown slurm:slurm /var/lib/slurm/slurmctld /var/log/slurm 2>/dev/null || true
if ! running slurmctld; then log "starting slurmctld"; as_root slurmctld -i; fi
if ! running slurmd; then log "starting slurmd"; as_root slurmd; fi
for _ in $(seq 1 60); do
    state=$(sinfo -h -o %t 2>/dev/null | head -n1 || true)
    case "$state" in idle*|mix*|alloc*) break ;; esac
    case "$state" in down*|drain*|unk*) as_root scontrol update nodename="$short" state=resume >/dev/null 2>&1 || true ;; esac
    sleep 1
done
case "$state" in idle*|mix*|alloc*) log "slurm up (node $short: $state)" ;; *) log "slurm node not usable (state '$state')"; exit 1 ;; esac

# --- sshd on localhost ----------------------------------------------------------------------
[ -f "$dir/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh_host_ed25519_key"
[ -f "$dir/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$dir/id_ed25519"
cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
chmod 0600 "$dir/authorized_keys" "$dir/id_ed25519" "$dir/ssh_host_ed25519_key"
cat >"$dir/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $dir/ssh_host_ed25519_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
AllowUsers $(id -un)
EOF
{
    printf '[127.0.0.1]:%s ' "$port"
    cut -d' ' -f1,2 "$dir/ssh_host_ed25519_key.pub"
} >"$dir/known_hosts"
cat >"$dir/ssh_config" <<EOF
Host scoresweep-ssh
    HostName 127.0.0.1
    Port $port
    User $(id -un)
    IdentityFile $dir/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $dir/known_hosts
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 5
EOF
if ! { [ -f "$dir/sshd.pid" ] && kill -0 "$(cat "$dir/sshd.pid")" 2>/dev/null; }; then
    as_root mkdir -p /run/sshd
    log "starting sshd on 127.0.0.1:$port"
    as_root /usr/sbin/sshd -f "$dir/sshd_config" -E "$dir/sshd.log"
fi
for _ in $(seq 1 20); do
    ssh -F "$dir/ssh_config" scoresweep-ssh true 2>/dev/null && break
    sleep 0.5
done
ssh -F "$dir/ssh_config" scoresweep-ssh true || { log "ssh to localhost:$port fails (see $dir/sshd.log)"; exit 1; }
log "sshd up: ssh -F $dir/ssh_config scoresweep-ssh"
