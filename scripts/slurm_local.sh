#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the `slurm`-marked tests and for trying the
# slurm_a100 launcher without a real cluster.
#
#   scripts/slurm_local.sh start    # install slurm-wlm + munge if missing, start, wait for idle
#   scripts/slurm_local.sh stop     # stop the daemons this script started
#   scripts/slurm_local.sh status
#
# Needs root (daemons run as root; apt-get installs the packages). Everything lives under
# $SLURM_LOCAL_DIR; /etc/slurm is left alone, so clients need `export SLURM_CONF=...` (printed by
# `start`; the pytest fixture and `make test-slurm` set it).
set -euo pipefail

SLURM_LOCAL_DIR=${SLURM_LOCAL_DIR:-/tmp/distillery-slurm}
PARTITION=${SLURM_LOCAL_PARTITION:-local}
CONF=$SLURM_LOCAL_DIR/slurm.conf
START_TIMEOUT_S=60            # slurmd registers within a few seconds; fail loudly well before CI does
# A requeued job waits cred_expire seconds before it may start again (slurm.conf(5), AuthInfo);
# the default 120 s would make the requeue test slow, 10 s is plenty on one node.
CRED_EXPIRE_S=10
# Seconds between SIGTERM and SIGKILL at the time limit (default 30): short, so a job that
# ignores the signal dies quickly in tests.
KILL_WAIT_S=5
MEM_RESERVED_MB=1024          # left to the OS; the rest is schedulable memory

log() { echo "[slurm_local] $*" >&2; }

need_root() {
  if [[ $(id -u) -ne 0 ]]; then log "must run as root"; exit 1; fi
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    return
  fi
  log "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_conf() {
  local host cpus mem_mb
  host=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) - MEM_RESERVED_MB ))
  mkdir -p "$SLURM_LOCAL_DIR"/{state,spool,log}
  cat >"$CONF" <<EOF
# Written by scripts/slurm_local.sh: one node, root daemons, no cgroups, no accounting.
ClusterName=distillery
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=$CRED_EXPIRE_S
# linuxproc + task/none: no cgroup setup needed (containers often lack a writable cgroup fs)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
KillWait=$KILL_WAIT_S
MinJobAge=300
StateSaveLocation=$SLURM_LOCAL_DIR/state
SlurmdSpoolDir=$SLURM_LOCAL_DIR/spool
SlurmctldPidFile=$SLURM_LOCAL_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_LOCAL_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_LOCAL_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_LOCAL_DIR/log/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  if munge -n </dev/null >/dev/null 2>&1; then return; fi   # already running (ours or the system's)
  [[ -f /etc/munge/munge.key ]] || { mkdir -p /etc/munge; dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; }
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  # munged drops to the munge user itself when started by root via runuser; fall back to --force
  if id munge >/dev/null 2>&1; then
    runuser -u munge -- munged
  else
    munged --force
  fi
  echo started >"$SLURM_LOCAL_DIR/munged.ours"
}

wait_idle() {
  local t0=$SECONDS
  until sinfo -h -o '%t' 2>/dev/null | grep -qx 'idle'; do
    if (( SECONDS - t0 > START_TIMEOUT_S )); then
      log "node not idle after ${START_TIMEOUT_S}s; sinfo says: $(sinfo -h 2>&1 || true)"
      log "logs: $SLURM_LOCAL_DIR/log/"
      exit 1
    fi
    sleep 0.5
  done
}

cmd_start() {
  need_root
  local t0=$SECONDS
  install_packages
  export SLURM_CONF=$CONF
  if [[ -f $SLURM_LOCAL_DIR/slurmctld.pid ]] && kill -0 "$(cat "$SLURM_LOCAL_DIR/slurmctld.pid")" 2>/dev/null; then
    log "already running"
  else
    write_conf
    start_munge
    slurmctld -c -f "$CONF"     # -c: clean start, no jobs left from an earlier test run
    slurmd -f "$CONF"
  fi
  wait_idle
  log "up in $(( SECONDS - t0 ))s: partition '$PARTITION'"
  echo "export SLURM_CONF=$CONF"
}

stop_pidfile() {
  local f=$1
  [[ -f $f ]] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$f"
}

cmd_stop() {
  need_root
  export SLURM_CONF=$CONF
  scancel --quiet --full --user=root 2>/dev/null || true   # no job outlives the cluster
  stop_pidfile "$SLURM_LOCAL_DIR/slurmd.pid"
  stop_pidfile "$SLURM_LOCAL_DIR/slurmctld.pid"
  if [[ -f $SLURM_LOCAL_DIR/munged.ours ]]; then
    stop_pidfile /run/munge/munged.pid
    rm -f "$SLURM_LOCAL_DIR/munged.ours"
  fi
  log "stopped"
}

cmd_status() {   # exit status 0 only while our slurmctld runs
  export SLURM_CONF=$CONF
  [[ -f $SLURM_LOCAL_DIR/slurmctld.pid ]] && kill -0 "$(cat "$SLURM_LOCAL_DIR/slurmctld.pid")" 2>/dev/null \
    && sinfo && squeue
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
