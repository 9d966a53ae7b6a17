#!/usr/bin/env bash
# Reproduces experiments/videomae_moving: three pre-training runs at the same budget, then probes.
# Run from the repository root with the venv active: bash experiments/videomae_moving/run.sh
# (35-55 min on 2 CPU cores, depending on what else runs). A step whose metrics.json exists is
# skipped, so an interrupted run continues. Wall times go to $OUT/wall_times.tsv.
set -euo pipefail
OUT=${OUT:-runs/videomae_moving}
PY=${PY:-python}
export WANDB_MODE=disabled
mkdir -p "$OUT"
R=$OUT  # step(): the runs and wall_times.tsv share this folder
source "$(dirname "$0")/../step.sh"  # step TAG COMMAND...: resumable, timed
train() {  # name, overrides...
  local name=$1; shift
  step "$name" nice -n 10 "$PY" -m mae_zoo.train experiment=videomae_moving print_config=false "$@" \
    hydra.run.dir="$OUT/$name"
}
probe() {  # run name, eval option, output tag, extra overrides...
  # Features are extracted once per encoder (the cache key is the weights) and shared by linear and kNN.
  local run=$1 ev=$2 tag=$3; shift 3
  step "eval_${ev}_$tag" nice -n 10 "$PY" -m mae_zoo.eval ckpt="$OUT/$run/checkpoints/last.ckpt" eval="$ev" \
    print_config=false eval.device=cpu eval.feature_cache="$OUT/feature_cache" "$@" hydra.run.dir="$OUT/eval_${ev}_${tag}"
}
# Same budget for every mask: 160 steps of 32 clips, 56 visible tubes of 512 per clip.
train tube mask=tube
train random mask=random mask.ratio=0.89
for run in tube random; do
  probe "$run" linear "$run"
  probe "$run" knn "$run"
done
probe tube linear random_init init=random
probe tube knn random_init init=random
probe tube linear pixels eval.features=pixels
probe tube knn pixels eval.features=pixels
# VideoMAE V2 dual masking at the same encoder budget (the decoder reconstructs half the positions).
train tube_running_cell mask=tube decoder_mask=running_cell
probe tube_running_cell linear tube_running_cell
probe tube_running_cell knn tube_running_cell
