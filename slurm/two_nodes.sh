#!/usr/bin/env bash
# A real two-node Slurm cluster on one machine, for the multi-node tests: one slurmctld (+ slurmdbd, so sacct works)
# and two slurmd nodes, node1 and node2, each in its own network + UTS + mount namespace on a private bridge.
# The bridge's subnet (10.78.0.0/24 by default) is routed only on that bridge and inside the node namespaces; no
# systemd, nothing under /etc/slurm or /etc/munge is touched, so it runs beside slurm/cluster.sh's cluster.
# Needs root (namespaces, bridge, mounts) and, the first time, apt.
#
#   bash slurm/two_nodes.sh up            # install (if needed), configure, start; ~2-5 s when installed
#   bash slurm/two_nodes.sh down          # stop everything it started, remove namespaces and bridge
#   bash slurm/two_nodes.sh status
#   bash slurm/two_nodes.sh kill-node N   # node N loses power: SIGKILL to every process in its namespace
#   bash slurm/two_nodes.sh start-node N  # start node N's slurmd again (ReturnToService=2 brings it back)
#
# Clients: export SLURM_CONF=$FAT_TWO_NODES_DIR/slurm.conf (default /tmp/fat-two-nodes/slurm.conf).
# Env knobs: FAT_TWO_NODES_DIR (state, logs, config), FAT_TWO_NODES_NET (first three octets, default 10.78.0),
# FAT_TWO_NODES_PORT (slurmctld port; slurmd +1, slurmdbd +2; default 7817), SLURM_DB_PASS (as cluster.sh).
#
# Worked around: slurmd is started with nsenter, not `ip netns exec` (which
# remounts /sys and hides the cgroup mount); each namespace sees a private hosts file bind-mounted over /etc/hosts
# (the job's tasks inherit it: MASTER_ADDR=node1 resolves); `%n` spool directories are made here; cred_expire=10
# and short scheduler intervals let a requeued job start again in seconds rather than minutes.
set -euo pipefail

ACTION="${1:-up}"
DIR="${FAT_TWO_NODES_DIR:-/tmp/fat-two-nodes}"
NET="${FAT_TWO_NODES_NET:-10.78.0}"
PORT="${FAT_TWO_NODES_PORT:-7817}"
DB_PASS="${SLURM_DB_PASS:-slurmdbpass}"
BR=fat2nbr0
NODES="1 2"
DB=fat_two_nodes_acct
export SLURM_CONF="$DIR/slurm.conf" DEBIAN_FRONTEND=noninteractive

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, a bridge and bind mounts)" >&2; exit 1; }

t_start=$EPOCHREALTIME
say() { awk -v a="$EPOCHREALTIME" -v b="$t_start" -v m="$*" 'BEGIN{printf "[slurm/two_nodes.sh %5.1fs] %s\n", a-b, m}'; }

alive() {  # name: whether the daemon recorded in $DIR/pids/<name> runs
    local f="$DIR/pids/$1"
    [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

stop() {  # name: SIGTERM, wait up to 10 s, then SIGKILL
    local f="$DIR/pids/$1" p
    [ -s "$f" ] || return 0
    p=$(cat "$f")
    if kill "$p" 2>/dev/null; then
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    fi
    rm -f "$f"
}

kill_node() {  # N: every process in the node's network namespace (slurmd, slurmstepd, the job's tasks)
    local pids
    pids=$(ip netns pids "fat-node$1" 2>/dev/null || true)
    [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
    rm -f "$DIR/pids/slurmd-node$1"
}

start_node() {  # N: slurmd in the node's own network, UTS and mount namespaces
    alive "slurmd-node$1" && return 0
    nsenter --net="/run/netns/fat-node$1" unshare --uts --mount sh -c "hostname node$1; \
        mount --bind $DIR/hosts /etc/hosts; mount --bind $DIR/resolv.conf /etc/resolv.conf; \
        exec slurmd -D -f $SLURM_CONF -N node$1" > "$DIR/log/slurmd-node$1.out" 2>&1 &
    echo $! > "$DIR/pids/slurmd-node$1"
}

down() {
    if alive slurmctld; then
        scancel --full --quiet --user=root 2>/dev/null || true
        for _ in $(seq 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
    fi
    for i in $NODES; do kill_node "$i"; done
    stop slurmctld; stop slurmdbd; stop munged
    for i in $NODES; do
        ip link del "fat2nv${i}h" 2>/dev/null || true
        ip netns del "fat-node$i" 2>/dev/null || true
    done
    ip link del "$BR" 2>/dev/null || true
    say "stopped"
}

case "$ACTION" in
    down) down; exit 0 ;;
    kill-node) kill_node "${2:?node number}"; say "node$2 killed"; exit 0 ;;
    start-node) start_node "${2:?node number}"; say "node$2 slurmd started"; exit 0 ;;
    status)
        for d in munged slurmdbd slurmctld slurmd-node1 slurmd-node2; do
            alive "$d" && echo "$d: running" || echo "$d: not running"
        done
        sinfo 2>&1 || true; exit 0 ;;
    up) ;;
    *) echo "usage: $0 [up|down|status|kill-node N|start-node N]" >&2; exit 2 ;;
esac

# ---------------------------------------------------------------- 1. packages and a working kernel
# shellcheck source=slurm/install_packages.sh
source "$(dirname "$0")/install_packages.sh"
install_packages munge slurmctld slurmd slurm-client slurmdbd mariadb-server iproute2 util-linux
unshare --net --uts --mount true 2>/dev/null || { echo "cannot create network/UTS/mount namespaces here" >&2; exit 1; }

# ---------------------------------------------------------------- 2. config (a changed one restarts everything)
mkdir -p "$DIR"
new_conf=$(cat <<EOF
# generated by fat-harness slurm/two_nodes.sh
ClusterName=fat2n
SlurmctldHost=fatctl($NET.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
CredType=cred/munge
# a private munged; cred_expire=10: a requeued job may start again after ~10 s, not 120 s
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
# accounting: its own slurmdbd, so sacct (and submitit's job states) work
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((PORT + 2))
# (for slurmdbd, MUNGE's socket is this one, not AuthInfo's: without it slurmctld and sacct use the host's munged)
AccountingStoragePass=$DIR/munge/munge.socket
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# as many sites do: srun ends the whole step when one task exits with an error
KillOnBadExit=1
ReturnToService=2
SlurmctldTimeout=30
# a node that stops answering is declared DOWN (and its jobs requeued) after 10 s
SlurmdTimeout=10
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=node1 NodeAddr=$NET.11 NodeHostname=node1 CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=4000 State=UNKNOWN
NodeName=node2 NodeAddr=$NET.12 NodeHostname=node2 CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=4000 State=UNKNOWN
# limits for fat sweep plan to check against (the tests ask for more)
PartitionName=debug Nodes=node[1-2] Default=YES MaxTime=1-00:00:00 MaxNodes=2 State=UP
EOF
)

if alive slurmctld && [ "$(cat "$SLURM_CONF" 2>/dev/null)" = "$new_conf" ]; then
    for i in $NODES; do start_node "$i"; done  # a node killed by a test comes back
else
    down >/dev/null
    mkdir -p "$DIR"/{state,log,munge,pids} "$DIR"/spool/node{1,2}
    chmod 755 "$DIR"; chmod 711 "$DIR/munge"

    printf '%s\n' "$new_conf" > "$SLURM_CONF"
    cat > "$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdHost=localhost
DbdPort=$((PORT + 2))
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=$DB
EOF
    chmod 600 "$DIR/slurmdbd.conf"
    # private name resolution inside the namespaces only
    { echo "127.0.0.1 localhost"; echo "$NET.1 fatctl"; for i in $NODES; do echo "$NET.1$i node$i"; done; } > "$DIR/hosts"
    echo 'nameserver 127.0.0.1' > "$DIR/resolv.conf"

    # ------------------------------------------------------------ 3. network: bridge (host side: slurmctld), a netns per node
    ip link add "$BR" type bridge
    ip addr add "$NET.1/24" dev "$BR"
    ip link set "$BR" up
    for i in $NODES; do
        ip netns add "fat-node$i"
        ip link add "fat2nv${i}h" type veth peer name "fat2nv${i}n"
        ip link set "fat2nv${i}h" master "$BR" up
        ip link set "fat2nv${i}n" netns "fat-node$i"
        ip -n "fat-node$i" addr add "$NET.1$i/24" dev "fat2nv${i}n"
        ip -n "fat-node$i" link set "fat2nv${i}n" up
        ip -n "fat-node$i" link set lo up
    done
    say "namespaces and bridge ok"

    # ------------------------------------------------------------ 4. munged (own key and socket)
    [ -f "$DIR/munge/munge.key" ] || { head -c 1024 /dev/urandom > "$DIR/munge/munge.key"; chmod 400 "$DIR/munge/munge.key"; }
    munged -F --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" \
        > "$DIR/log/munged.out" 2>&1 &
    echo $! > "$DIR/pids/munged"
    for _ in $(seq 50); do [ -S "$DIR/munge/munge.socket" ] && break; sleep 0.1; done

    # ------------------------------------------------------------ 5. slurmdbd on the host's MariaDB (own database)
    mariadb-admin ping >/dev/null 2>&1 || /etc/init.d/mariadb start >/dev/null
    mariadb -e "CREATE DATABASE IF NOT EXISTS $DB; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON $DB.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    slurmdbd -D > "$DIR/log/slurmdbd.out" 2>&1 &  # reads slurmdbd.conf beside $SLURM_CONF
    echo $! > "$DIR/pids/slurmdbd"
    for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$((PORT + 2))") 2>/dev/null && break; sleep 0.1; done
    (exec 3<>"/dev/tcp/127.0.0.1/$((PORT + 2))") 2>/dev/null || { tail -5 "$DIR/log/slurmdbd.out" >&2; exit 1; }
    say "munged + slurmdbd ok"

    # ------------------------------------------------------------ 6. slurmctld on the host side of the bridge
    # own UTS namespace (its hostname is SlurmctldHost's) and mount namespace (the private hosts file)
    unshare --uts --mount sh -c "hostname fatctl; mount --bind $DIR/hosts /etc/hosts; \
        mount --bind $DIR/resolv.conf /etc/resolv.conf; exec slurmctld -D -f $SLURM_CONF" > "$DIR/log/slurmctld.out" 2>&1 &
    echo $! > "$DIR/pids/slurmctld"
    for i in $NODES; do start_node "$i"; done
fi

nodes_up() { timeout 5 sinfo -h -N -t idle,mixed,allocated -o %N 2>/dev/null | sort -u | wc -l; }
deadline=$((SECONDS + 30))
while [ $SECONDS -lt $deadline ]; do
    [ "$(nodes_up)" = 2 ] && break
    for n in $(sinfo -h -N -t down,drain -o %N 2>/dev/null); do scontrol update nodename="$n" state=resume 2>/dev/null || true; done
    sleep 0.1
done
sinfo -N
[ "$(nodes_up)" = 2 ] \
    || { echo "the two nodes did not come up: see $DIR/log" >&2; exit 1; }
say "up (SLURM_CONF=$SLURM_CONF)"
