#!/usr/bin/env bash
# Probes of the MixedAE run's epoch-end checkpoint (global step 234 of 468: LR at its peak, half the budget),
# copied aside while run.sh trained on: mkdir -p runs/mixedae_fmnist/half/checkpoints &&
#   cp runs/mixedae_fmnist/mixedae_seed0/checkpoints/last.ckpt runs/mixedae_fmnist/half/checkpoints/
# Not the equal-budget arm: it was taken because the full run could not finish by the deadline under load.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD WANDB_MODE=disabled
PY=${PY:-.venv/bin/python} R=runs/mixedae_fmnist OUT=experiments/mixedae_fashion_mnist/raw
for spec in "knn knn" "linear linear" "linear linear_mean eval.pool=mean"; do
  set -- $spec; ev=$1 tag=$2; shift 2
  start=$SECONDS
  "$PY" -m mae_zoo.eval ckpt=$R/half/checkpoints/last.ckpt eval=$ev print_config=false seed=0 \
    eval.feature_cache=$R/feature_cache_half "$@" hydra.run.dir=$R/eval_${tag}_mixedae_half_seed0
  printf '%s\t%s\n' "eval_${tag}_mixedae_half_seed0" "$((SECONDS - start))" >> $OUT/wall_times.tsv
  cp $R/eval_${tag}_mixedae_half_seed0/metrics.json $OUT/eval_${tag}_mixedae_half_seed0.json
done
