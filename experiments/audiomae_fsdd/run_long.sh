#!/usr/bin/env bash
# The longer pre-training of experiments/audiomae_fsdd, run at the end of the session once the machine was
# quiet: the same preset for 40 epochs (2,800 steps) with a 6-minute cap, then the probes of the
# pre-trained encoder only (the random-init and raw log-mel baselines do not depend on the checkpoint:
# see run.sh). Run from the repository root: bash experiments/audiomae_fsdd/run_long.sh
set -euo pipefail
OUT=${OUT:-runs/audiomae_fsdd_long}
PY=${PY:-.venv/bin/python}
export WANDB_MODE=disabled
mkdir -p "$OUT"
R=$OUT  # step(): the runs and wall_times.tsv share this folder
source "$(dirname "$0")/../step.sh"  # step TAG COMMAND...: resumable, timed
step pretrain nice -n 5 "$PY" -m mae_zoo.train experiment=audiomae_fsdd trainer.max_epochs=40 \
  'trainer.max_time="00:00:06:00"' data.num_workers=2 print_config=false hydra.run.dir="$OUT/pretrain"
for split in standard speaker; do
  base=(ckpt="$OUT/pretrain/checkpoints/last.ckpt" print_config=false eval.device=cpu
    +data_overrides.split="$split" +data_overrides.num_workers=2)
  cache=(eval.feature_cache="$OUT/feature_cache")
  step "eval_linear_${split}_pretrained" "$PY" -m mae_zoo.eval "${base[@]}" "${cache[@]}" eval=linear \
    eval.batch_size=256 hydra.run.dir="$OUT/eval_linear_${split}_pretrained"
  step "eval_linadamw_${split}_pretrained" "$PY" -m mae_zoo.eval "${base[@]}" "${cache[@]}" eval=linear \
    eval.batch_size=256 eval.optimizer=adamw eval.lr=1.0e-3 eval.weight_decay=0.0 \
    hydra.run.dir="$OUT/eval_linadamw_${split}_pretrained"
  step "eval_knn_${split}_pretrained" "$PY" -m mae_zoo.eval "${base[@]}" "${cache[@]}" eval=knn \
    hydra.run.dir="$OUT/eval_knn_${split}_pretrained"
  step "eval_prototype_${split}_pretrained" "$PY" -m mae_zoo.eval "${base[@]}" eval=prototype \
    hydra.run.dir="$OUT/eval_prototype_${split}_pretrained"
done
