#!/usr/bin/env bash
# Usage: stop_after_epochs.sh RUN_DIR N PID SNAP: RUN_DIR/checkpoints/last.ckpt is rewritten at every epoch end;
# copy each version to SNAP_v<k>.ckpt (v1 = end of epoch 1, ...) and, after the N-th, send SIGTERM to PID (the
# run's trainer). Lets both arms of the record stop at the same step of the same (longer) LR schedule.
set -uo pipefail
RUN=$1 N=$2 PID=$3 SNAP=$4
f=$RUN/checkpoints/last.ckpt seen="" n=0
mkdir -p "$(dirname "$SNAP")"
while [ "$n" -lt "$N" ] && kill -0 "$PID" 2>/dev/null; do
  if [ -f "$f" ] && [ "$(stat -c %Y "$f")" != "$seen" ]; then
    sleep 5  # let the atomic rename settle
    n=$((n + 1)) seen=$(stat -c %Y "$f")
    cp "$f" "${SNAP}_v$n.ckpt"
    echo "$(date +%T) ${SNAP}_v$n.ckpt copied"
  fi
  sleep 5
done
if [ "$n" -ge "$N" ]; then kill "$PID" && echo "$(date +%T) stopped $PID after epoch $N"; fi
