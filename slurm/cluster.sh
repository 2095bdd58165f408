#!/usr/bin/env bash
# The single-node Slurm test cluster on localhost (Debian 12 / Ubuntu packages; Slurm 22.05 on bookworm), the
# cluster that `slurm/local.yaml` describes and the sweep tests run on.
# Needs root and apt (no systemd needed: the daemons are started by hand).
#
#   bash slurm/cluster.sh          # = up: install (if needed), configure, start, smoke-test
#   bash slurm/cluster.sh down     # stop the daemons this script starts (by pid file)
#   bash slurm/cluster.sh status
#
# Env knobs:
#   SLURM_ACCOUNTING=1 (default)  also MariaDB + slurmdbd, so `sacct` works. submitit reads job
#                                 state with sacct: without it a job that dies without writing
#                                 its result (scancel, OOM, kill) leaves job.result() waiting forever.
#   SLURM_ACCOUNTING=0            no DB (sacct prints "Slurm accounting storage is disabled", rc 1).
#   SLURM_SMOKE=1 (default)       submit a batch job and an srun step at the end.
#   SLURM_CGROUP=0 (default)      proctrack/linuxproc + task/none (no cgroups).
#   SLURM_DB_PASS=...             MariaDB password of the local 'slurm' DB user (default slurmdbpass).
#   SLURM_CGROUP=1                proctrack/cgroup + task/cgroup (cgroup v1 here): per-job memory
#                                 limits enforced (OOM kill), cores constrained.
#
# Idempotent: packages are installed only if missing; daemons are started only if not running;
# daemons are restarted only when a config file changed.
# Cluster: ClusterName=local, node "localhost" (slurmd -N localhost, whatever the hostname),
# partitions: debug (default, PriorityTier=1, GraceTime=20) and high (PriorityTier=10) — a job in
# "high" preempts (REQUEUE) jobs in "debug"; preempted jobs get their --signal (submitit: USR2)
# at once (SlurmctldParameters=preempt_send_user_signal), so submitit checkpoints and requeues.
# AuthInfo=cred_expire=10: a requeued job may start again after ~10 s instead of the default 120 s.
set -euo pipefail

ACTION="${1:-up}"
SLURM_ACCOUNTING="${SLURM_ACCOUNTING:-1}"
SLURM_SMOKE="${SLURM_SMOKE:-1}"
SLURM_CGROUP="${SLURM_CGROUP:-0}"
DB_PASS="${SLURM_DB_PASS:-slurmdbpass}"
LOG=/var/log/slurm
export DEBIAN_FRONTEND=noninteractive

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }

t_start=$EPOCHREALTIME
say() { awk -v a="$EPOCHREALTIME" -v b="$t_start" -v m="$*" 'BEGIN{printf "[slurm/cluster.sh %5.1fs] %s\n", a-b, m}'; }

pid_alive() {  # pidfile expected-comm
    [ -s "$1" ] || return 1
    local p; p=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$2" ]
}

stop_pidfile() {  # pidfile expected-comm
    if pid_alive "$1" "$2"; then
        local p; p=$(cat "$1")
        kill "$p" 2>/dev/null || true
        for _ in $(seq 1 50); do [ -d "/proc/$p" ] || break; sleep 0.1; done
    fi
    rm -f "$1"
}

wait_port() {  # port seconds
    for _ in $(seq 1 $(( $2 * 10 ))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 did not open" >&2; return 1
}

if [ "$ACTION" = down ]; then
    stop_pidfile /run/slurmd.pid slurmd
    stop_pidfile /run/slurmctld.pid slurmctld
    stop_pidfile /run/slurmdbd.pid slurmdbd
    [ -x /etc/init.d/mariadb ] && /etc/init.d/mariadb stop >/dev/null 2>&1 || true
    stop_pidfile /run/munge/munged.pid munged
    echo "stopped"; exit 0
fi
if [ "$ACTION" = status ]; then
    for d in munge/munged slurmdbd slurmctld slurmd; do
        n=${d#*/}; pid_alive "/run/$d.pid" "$n" && echo "$n: running" || echo "$n: not running"
    done
    sinfo 2>&1 || true; exit 0
fi
[ "$ACTION" = up ] || { echo "usage: $0 [up|down|status]" >&2; exit 2; }

# ---------------------------------------------------------------- 1. packages
# rsync: `fat sweep launch --snapshot` (submitit's RsyncSnapshot)
PKGS=(munge slurmctld slurmd slurm-client rsync)
[ "$SLURM_ACCOUNTING" = 1 ] && PKGS+=(slurmdbd mariadb-server)
# shellcheck source=slurm/install_packages.sh
source "$(dirname "$0")/install_packages.sh"
install_packages "${PKGS[@]}"
say "packages ok ($(slurmctld -V))"

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOG" /run/munge
chown munge:munge /run/munge /etc/munge; chmod 0755 /run/munge

# ---------------------------------------------------------------- 2. munge
if [ ! -s /etc/munge/munge.key ]; then   # Debian's postinst normally creates it
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n | unmunge >/dev/null
say "munged ok"

# ---------------------------------------------------------------- 3. config
# Node layout from the hardware (slurmd -C), minus 5% memory headroom.
eval "$(slurmd -C | head -1 | tr ' ' '\n' | grep -E '^(CPUs|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=')"
MEM=$(( RealMemory * 95 / 100 ))
if [ "$SLURM_ACCOUNTING" = 1 ]; then
    ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
else
    ACCT="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
if [ "$SLURM_CGROUP" = 1 ]; then
    PROC="ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup"
    new_cg="CgroupPlugin=autodetect
ConstrainCores=yes
ConstrainRAMSpace=yes"
else
    PROC="ProctrackType=proctrack/linuxproc
TaskPlugin=task/none"
    new_cg=""
fi
if [ -n "$new_cg" ]; then
    [ "$(cat /etc/slurm/cgroup.conf 2>/dev/null)" = "$new_cg" ] || printf '%s\n' "$new_cg" > /etc/slurm/cgroup.conf
else
    rm -f /etc/slurm/cgroup.conf
fi
new_conf=$(cat <<EOF
# generated by fat-harness slurm/cluster.sh
ClusterName=local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
MpiDefault=none
MailProg=/bin/true
# no systemd here; cgroup v1 controllers are mounted (SLURM_CGROUP=1 uses them)
$PROC
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerType=sched/backfill
# scheduler + backfill passes every 5 s (defaults 60, 30): a requeued job restarts sooner
SchedulerParameters=bf_interval=5,sched_interval=5
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
$ACCT
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.log
MinJobAge=300
KillWait=5
InactiveLimit=0
Waittime=0
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUs Sockets=$SocketsPerBoard CoresPerSocket=$CoresPerSocket ThreadsPerCore=$ThreadsPerCore RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=20
PartitionName=high Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
)
changed=0
if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$new_conf" ]; then
    printf '%s\n' "$new_conf" > /etc/slurm/slurm.conf; changed=1
fi

# ---------------------------------------------------------------- 4. accounting (MariaDB + slurmdbd)
if [ "$SLURM_ACCOUNTING" = 1 ]; then
    if ! mariadb-admin ping >/dev/null 2>&1; then
        /etc/init.d/mariadb start >/dev/null
    fi
    mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    say "mariadb ok"
    new_dbd=$(cat <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
)
    dbd_changed=0
    if [ "$(cat /etc/slurm/slurmdbd.conf 2>/dev/null)" != "$new_dbd" ]; then
        printf '%s\n' "$new_dbd" > /etc/slurm/slurmdbd.conf; dbd_changed=1
    fi
    chmod 600 /etc/slurm/slurmdbd.conf
    if [ $dbd_changed = 1 ] || ! pid_alive /run/slurmdbd.pid slurmdbd; then
        stop_pidfile /run/slurmdbd.pid slurmdbd
        slurmdbd
    fi
    wait_port 6819 30
    say "slurmdbd ok"
fi

# ---------------------------------------------------------------- 5. slurmctld + slurmd
if [ $changed = 1 ]; then
    stop_pidfile /run/slurmd.pid slurmd
    stop_pidfile /run/slurmctld.pid slurmctld
fi
pid_alive /run/slurmctld.pid slurmctld || slurmctld
wait_port 6817 30
pid_alive /run/slurmd.pid slurmd || slurmd -N localhost
wait_port 6818 30

state=""
for _ in $(seq 1 100); do
    state=$(sinfo -h -n localhost -o '%T' 2>/dev/null | head -1)
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|fail*) scontrol update nodename=localhost state=resume 2>/dev/null || true ;;
    esac
    sleep 0.2
done
say "slurmctld + slurmd ok (node localhost: $state)"

if [ "$SLURM_SMOKE" = 1 ]; then
    # (sbatch --wait polls with a growing interval: ~10 s for a 1 s job; poll squeue instead)
    out=$(mktemp)
    jid=$(sbatch --parsable -o "$out" --wrap 'echo ok-$SLURM_JOB_ID')
    for _ in $(seq 1 300); do squeue -h -j "$jid" 2>/dev/null | grep -q . || break; sleep 0.2; done
    say "smoke batch job: $(cat "$out"); srun: $(srun -N1 -n1 hostname)"; rm -f "$out"
    if [ "$SLURM_ACCOUNTING" = 1 ]; then
        for _ in $(seq 1 50); do
            st=$(sacct -X -n -j "$jid" -o State --parsable2 2>/dev/null | head -1)
            [ "$st" = COMPLETED ] && break; sleep 0.1
        done
        say "sacct: job $jid $st"
    fi
fi
sinfo
say "done"
