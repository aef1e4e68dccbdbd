#!/usr/bin/env bash
# Stop slurmctld, slurmd and munged started by start_slurm.sh. Idempotent.
# SLURM_CLEAN=1 also wipes the controller state and slurmd spool (old jobs).
set -uo pipefail
log() { echo "[stop_slurm] $*"; }
now() { date +%s.%N; }
CTLD_PID=/run/slurm/slurmctld.pid
SLURMD_PID=/run/slurm/slurmd.pid
MUNGED_PID=/run/munge/munged.pid
T0=$(now)

pidof_file() { cat "$1" 2>/dev/null || true; }
# alive = exists and is not a zombie (kill -0 succeeds on zombies, and
# nothing may reap them quickly in a container)
alive() { [ -n "$1" ] && [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
# remember the pids now: the daemons delete their pid files before they
# have finished exiting
P_CTLD=$(pidof_file "$CTLD_PID"); P_SLURMD=$(pidof_file "$SLURMD_PID")
P_MUNGED=$(pidof_file "$MUNGED_PID")

if command -v scontrol >/dev/null && scontrol ping >/dev/null 2>&1; then
  # cancel jobs first: slurmd would kill them on shutdown anyway, but this
  # also stops them from being recovered (and restarted) at the next start
  scancel --quiet --user=root 2>/dev/null || true
  # let the jobs finish dying (KillWait) before slurmd goes away, otherwise
  # slurmd hangs in shutdown and slurmstepd processes are left behind
  for _ in $(seq 100); do
    [ -z "$(squeue -h -t RUNNING,COMPLETING,SUSPENDED,CONFIGURING -o %i 2>/dev/null)" ] && break
    sleep 0.2
  done
  scontrol shutdown >/dev/null 2>&1 || true   # stops slurmctld and all slurmd
fi
for p in $P_SLURMD $P_CTLD; do
  for _ in $(seq 150); do alive "$p" || break; sleep 0.1; done
  if alive "$p"; then
    log "pid $p still running after 15s, sending SIGTERM/SIGKILL"
    kill "$p" 2>/dev/null; sleep 2; alive "$p" && kill -9 "$p" 2>/dev/null
  fi
done
rm -f "$CTLD_PID" "$SLURMD_PID"
if alive "$P_MUNGED"; then
  kill "$P_MUNGED" 2>/dev/null || true
  for _ in $(seq 50); do alive "$P_MUNGED" || break; sleep 0.1; done
fi
if [ "${SLURM_CLEAN:-0}" = 1 ]; then
  rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*
fi
log "stopped in $(awk -v a="$T0" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}')s"
