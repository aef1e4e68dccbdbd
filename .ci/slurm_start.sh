#!/usr/bin/env bash
# Start a one-node SLURM (munged + slurmctld + slurmd) inside a Debian 12
# container, as root, without systemd, for the tests that submit real jobs
# (tests/benchmark/test_slurm.py); .ci/run calls it, .ci/slurm_stop.sh ends it. Idempotent: installs packages if
# missing, (re)writes /etc/slurm/slurm.conf, starts whatever is not running,
# waits until the node is idle.
#
# Env knobs:
#   SLURM_PARTITION   partition name            (default: debug)
#   SLURM_MEM_MB      RealMemory for the node   (default: half of MemTotal)
#   SLURM_WAIT_S      timeout waiting for idle  (default: 60)
#   SLURM_CLEAN=1     wipe saved controller state (old jobs) on (re)start
set -euo pipefail

PART=${SLURM_PARTITION:-debug}
WAIT_S=${SLURM_WAIT_S:-60}
CONF=/etc/slurm/slurm.conf
LOGDIR=/var/log/slurm
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd

now() { date +%s.%N; }
dt() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }
log() { echo "[start_slurm] $*"; }

T0=$(now)

# ---------------------------------------------------------------- install
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
  t=$(now)
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
  log "apt install took $(dt "$t")s"
fi
log "$(slurmctld -V)"

# ---------------------------------------------------------------- munge
t=$(now)
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile=/etc/munge/munge.key --force
  else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if ! munge -n >/dev/null 2>&1; then
  rm -f /run/munge/munged.pid /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 100); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || { log "munged failed"; tail /var/log/munge/munged.log; exit 1; }
fi
log "munged up after $(dt "$t")s"

# ---------------------------------------------------------------- config
H=$(hostname -s)
# make sure our own short hostname resolves (clients look up SlurmctldHost)
getent hosts "$H" >/dev/null || echo "127.0.0.1 $H" >> /etc/hosts
NCPU=$(nproc)
MEM_MB=${SLURM_MEM_MB:-$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 / 2 ))}
DEFMEM=$(( MEM_MB / NCPU ))
# Use the hardware layout slurmd sees, so it does not complain about
# socket/core boundaries; override only RealMemory.
HW=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ RealMemory=[0-9]*//')

install -d -o slurm -g slurm -m 0755 "$STATE" "$LOGDIR" /run/slurm
install -d -m 0755 "$SPOOL" /etc/slurm

NEWCONF=$(mktemp)
cat > "$NEWCONF" <<EOF
# one-node CI cluster, written by start_slurm.sh
ClusterName=ci
SlurmctldHost=$H
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
# cred_expire also is how long a requeued job waits before it may start
# again (default 120 s)
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
JobRequeue=1
MailProg=/bin/true
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SchedulerType=sched/backfill
# re-test pending jobs often (defaults 60 s / 30 s): requeued jobs and jobs
# whose begin time has passed are otherwise picked up late
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a default, each job is given the whole node's memory and jobs
# run one at a time
DefMemPerCPU=$DEFMEM
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# finished jobs stay visible to squeue/scontrol (the only job history
# without accounting) for this many seconds
MinJobAge=3600
# cancel jobs whose dependency can never be satisfied (default: they stay
# PENDING with Reason=DependencyNeverSatisfied forever)
DependencyParameters=kill_invalid_depend
KillWait=5
SlurmdTimeout=60
NodeName=$H $HW RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PART Nodes=$H Default=YES MaxTime=INFINITE State=UP
EOF

CHANGED=0
if ! cmp -s "$NEWCONF" "$CONF"; then
  install -m 0644 "$NEWCONF" "$CONF"
  CHANGED=1
  log "wrote $CONF"
fi
rm -f "$NEWCONF"

# alive = process exists and is not a zombie (kill -0 succeeds on zombies,
# and nothing may reap them quickly in a container)
alive() { [ -n "$1" ] && [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
running() { alive "$(cat "$1" 2>/dev/null)"; }
CTLD_PID=/run/slurm/slurmctld.pid
SLURMD_PID=/run/slurm/slurmd.pid

# ---------------------------------------------------------------- daemons
t=$(now)
if [ "$CHANGED" = 1 ] || [ "${SLURM_CLEAN:-0}" = 1 ]; then
  # config changed (or clean start asked): restart whatever runs
  if running "$CTLD_PID" || running "$SLURMD_PID"; then
    log "restarting daemons"
    # the daemons delete their pid files before they finish exiting: wait
    # on the pids, not the files
    pids=$(cat "$CTLD_PID" "$SLURMD_PID" 2>/dev/null || true)
    scontrol shutdown >/dev/null 2>&1 || kill $pids 2>/dev/null || true
    for p in $pids; do
      for _ in $(seq 150); do alive "$p" || break; sleep 0.1; done
      alive "$p" && kill -9 "$p" 2>/dev/null
    done
    rm -f "$CTLD_PID" "$SLURMD_PID"
    log "old daemons stopped after $(dt "$t")s"
  fi
fi
t=$(now)
if ! running "$CTLD_PID"; then
  if [ "${SLURM_CLEAN:-0}" = 1 ]; then
    slurmctld -c -i      # -c: clear saved job state, -i: ignore bad state
  else
    slurmctld -i
  fi
fi
if ! running "$SLURMD_PID"; then
  slurmd
fi

# ---------------------------------------------------------------- wait idle
RESUMED=0
deadline=$(( $(date +%s) + WAIT_S ))
fail() {
  log "$1"
  sinfo -R || true
  tail -n 20 "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" || true
  exit 1
}
while :; do
  st=$(sinfo -h -n "$H" -o %T 2>/dev/null || true)
  case "$st" in
    idle|mixed|allocated|completing) break ;;
    inval*)
      # registration rejected (e.g. "Low RealMemory"): config error, resume
      # is refused ("Invalid node state specified")
      fail "node $H is $st: $(sinfo -h -n "$H" -o %E) -- fix slurm.conf" ;;
    down*|drain*|fail*)
      # e.g. "Node unexpectedly rebooted", "Not responding", "Kill task failed"
      if [ "$RESUMED" = 0 ]; then
        log "node is $st: $(sinfo -h -n "$H" -o '%E') -> resuming"
        scontrol update nodename="$H" state=resume || true
        RESUMED=1
      fi ;;
  esac
  [ "$(date +%s)" -ge "$deadline" ] && fail "node not idle after ${WAIT_S}s (state='$st')"
  sleep 0.2
done
log "daemons up after $(dt "$t")s (node $H: $st)"
log "total $(dt "$T0")s"
sinfo
