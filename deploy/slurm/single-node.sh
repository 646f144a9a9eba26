#!/usr/bin/env bash
# A real single-node SLURM on loopback, for the tests and for trying deploy/slurm/ out:
# munged, slurmctld and slurmd on this machine, as root, without systemd.
#
#   sudo deploy/slurm/single-node.sh up       # write the config, start the daemons
#   export SLURM_CONF=/run/reattn-slurm/slurm.conf
#   sinfo; sbatch ...; python deploy/slurm/launch.py --gres none ...
#   sudo deploy/slurm/single-node.sh down     # cancel the jobs, stop what `up` started
#
# Needs Debian's (or any) `slurm-wlm munge` packages: slurmctld, slurmd, sinfo, munged.
# Everything lives in $REATTN_SLURM_DIR (default /run/reattn-slurm): slurm.conf, gres.conf,
# state, spool, logs and pid files; no file under /etc is written, so a site's own
# /etc/slurm is left alone (commands find this cluster through SLURM_CONF only).
# The node line is the machine's real layout (`slurmd -C`), the partition `debug` lets
# jobs share cores (OverSubscribe=FORCE:8, so a 2-core machine runs several one-CPU
# worker jobs), memory is a consumable resource, and $REATTN_SLURM_GPUS (default 2) fake
# GPUs are character devices /dev/fakegpuN (like /dev/null) named in gres.conf, so that
# `--gres gpu:1` jobs run (regular files, or Count= alone, leave the node drained).
# Ports: $REATTN_SLURM_CTLD_PORT (6817) and $REATTN_SLURM_D_PORT (6818).
# `up` is idempotent: a controller that answers is kept.
set -euo pipefail

dir="${REATTN_SLURM_DIR:-/run/reattn-slurm}"
conf="$dir/slurm.conf"
gpus="${REATTN_SLURM_GPUS:-2}"
me="single-node.sh"

die() { echo "$me: error: $*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 $1): the SLURM daemons run as root"
}

munge_answers() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
# (with no config file, scontrol looks for a controller through DNS for about a minute)
ctld_answers() { [ -f "$conf" ] && SLURM_CONF="$conf" scontrol ping 2>/dev/null | grep -q "is UP"; }
node_state() { SLURM_CONF="$conf" sinfo -h -N -n localhost -o %T 2>/dev/null | head -n1; }

write_config() {
    local layout
    # e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1
    # RealMemory=24105": the real layout, so that slurmd does not drain the node
    layout=$(slurmd -C | head -n1 | sed -e 's/^NodeName=[^ ]* //')
    [ -n "$layout" ] || die "slurmd -C printed no node layout"
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    local gres_line="" gres_types=""
    if [ "$gpus" -gt 0 ]; then
        local i
        for ((i = 0; i < gpus; i++)); do
            [ -c "/dev/fakegpu$i" ] || mknod "/dev/fakegpu$i" c 1 3
        done
        gres_types="GresTypes=gpu"
        gres_line="Gres=gpu:$gpus"
        echo "NodeName=localhost Name=gpu File=/dev/fakegpu[0-$((gpus - 1))]" > "$dir/gres.conf"
    else
        : > "$dir/gres.conf"
    fi
    cat > "$conf" <<EOF
# written by deploy/slurm/single-node.sh: a single-node SLURM on loopback
ClusterName=reattn-single
SlurmctldHost=localhost
SlurmctldPort=${REATTN_SLURM_CTLD_PORT:-6817}
SlurmdPort=${REATTN_SLURM_D_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$gres_types
NodeName=localhost NodeAddr=127.0.0.1 $layout $gres_line State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
EOF
}

start_munge() {
    munge_answers && return 0
    [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
    local d
    for d in /run/munge /var/lib/munge /var/log/munge; do
        mkdir -p "$d"
        chown munge:munge "$d"
    done
    chmod 0755 /run/munge
    runuser -u munge -- munged
    touch "$dir/munged.ours"  # `down` stops only a munged that `up` started
    local _
    for _ in $(seq 50); do munge_answers && return 0; sleep 0.1; done
    die "munged did not answer (see /var/log/munge/munged.log)"
}

up() {
    need_root up
    for cmd in slurmctld slurmd sinfo scontrol munged munge; do
        command -v "$cmd" >/dev/null || die "$cmd not found: apt-get install slurm-wlm munge"
    done
    mkdir -p "$dir"
    if ctld_answers && [ "$(node_state)" = idle ]; then
        echo "$me: SLURM already up (SLURM_CONF=$conf)"
        return 0
    fi
    write_config
    start_munge
    ctld_answers || SLURM_CONF="$conf" slurmctld
    [ -s "$dir/slurmd.pid" ] && kill -0 "$(cat "$dir/slurmd.pid")" 2>/dev/null \
        || SLURM_CONF="$conf" slurmd -N localhost
    local state="" _
    for _ in $(seq 100); do
        state=$(node_state)
        case "$state" in idle | mixed | allocated) break ;; esac
        sleep 0.2
    done
    case "$state" in
        idle | mixed | allocated) ;;
        *)
            reason=$(SLURM_CONF="$conf" sinfo -h -N -n localhost -o %E 2>/dev/null || true)
            die "node localhost is '${state:-absent}' (${reason:-no reason}); logs in $dir/log"
            ;;
    esac
    echo "$me: SLURM up: node localhost $state; export SLURM_CONF=$conf"
}

stop_pid_file() {  # stop the daemon whose pid is in $1, wait for it
    local pid _
    [ -s "$1" ] || return 0
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || { rm -f "$1"; return 0; }
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$1"
}

down() {
    need_root down
    [ -f "$conf" ] || { echo "$me: nothing to stop ($conf absent)"; return 0; }
    if ctld_answers; then
        SLURM_CONF="$conf" scancel --full --user="$(id -un)" 2>/dev/null || true
        local _
        for _ in $(seq 60); do
            [ -z "$(SLURM_CONF="$conf" squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    stop_pid_file "$dir/slurmd.pid"
    stop_pid_file "$dir/slurmctld.pid"
    if [ -f "$dir/munged.ours" ]; then
        stop_pid_file /run/munge/munged.pid
        rm -f "$dir/munged.ours"
    fi
    echo "$me: SLURM down"
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    env) echo "export SLURM_CONF=$conf" ;;
    *) die "usage: $0 [up|down|env]" ;;
esac
