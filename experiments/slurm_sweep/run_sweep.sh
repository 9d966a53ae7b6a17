#!/usr/bin/env bash
# The record sweep: 3 seeds x 2 masks of a small image MAE (vit_micro on the embedded shapes set) through
# hydra/launcher=slurm on the local one-node cluster (start it first: bash .ci/slurm_up.sh).
# Run from the repository root:  bash experiments/slurm_sweep/run_sweep.sh [SWEEP_DIR]
# Sized to finish in about 10-15 min on 2 shared CPU cores; the wall time is printed at the end.
set -euo pipefail
SWEEP=${1:-runs/slurm_sweep/$(date -u +%Y-%m-%d_%H-%M-%S)}
# offline: the W&B run files are written into each job folder (sync later with `wandb sync`); no network
export WANDB_MODE=offline WANDB_SILENT=true
t0=$(date +%s)
echo "sweep: $SWEEP  start: $(date -u +%FT%TZ)"
# nice: the cluster has PropagatePrioProcess=1, so the jobs' processes keep this nice value.
# timeout: the launcher waits for every job; a lost job must not keep it waiting for ever.
nice -n 15 timeout 3600 .venv/bin/python -m mae_zoo.train -m hydra/launcher=slurm \
  hydra.launcher.partition=debug hydra.launcher.cpus_per_task=1 hydra.launcher.array_parallelism=2 \
  hydra.launcher.timeout_min=60 \
  experiment=mae_shapes model=vit_micro data.num_train=1024 data.num_val=256 data.num_workers=0 \
  trainer.max_epochs=4 'logger=[csv,wandb]' callbacks.progress_bar=null print_config=false \
  mask=random,block seed=0,1,2 \
  hydra.sweep.dir="$SWEEP"
echo "end: $(date -u +%FT%TZ)  wall: $(( $(date +%s) - t0 )) s"
