#!/usr/bin/env bash
# Stop the daemons started by .ci/slurm_up.sh, by the PIDs it recorded (never by name). Idempotent.
D=${SLURM_CI_DIR:-/tmp/slurm-ci}
if [ -e "$D/slurmctld.pid" ] && kill -0 "$(cat "$D/slurmctld.pid")" 2>/dev/null && command -v squeue >/dev/null; then
  # cancel the jobs first: a running slurmstepd would outlive slurmd
  # (timeouts: a controller that no longer answers must not keep the CI script from stopping the daemons)
  timeout 20 squeue -h -o %A 2>/dev/null | xargs -r timeout 20 scancel 2>/dev/null
  for _ in $(seq 1 60); do [ -z "$(timeout 10 squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
fi
for n in slurmd slurmctld slurmdbd mariadbd munged; do
  f="$D/$n.pid"; [ -e "$f" ] || continue
  p=$(cat "$f")
  if kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p" 2>/dev/null
    for _ in $(seq 1 120); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
  fi
  rm -f "$f"
done
echo "slurm_down: stopped" >&2
exit 0
