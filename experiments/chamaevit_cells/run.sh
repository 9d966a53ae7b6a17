#!/usr/bin/env bash
# experiments/chamaevit_cells: ChA-MAEViT beside plain MAE (the 5 channels stacked as image channels) at an
# equal budget on the embedded 5-channel cells set (4 classes decided by how channels co-localise): the same
# data, patch 8 grid, vit_micro widths, steps, batch, optimiser (the chamaevit preset's AdamW, clipping, fp32),
# LR schedule and seed. Each probed (linear) beside a random-init encoder of its own shape, and raw pixels.
# Usage (repo root, after make install): bash experiments/chamaevit_cells/run.sh [SEED]; then
# python experiments/chamaevit_cells/collect.py prints the table.
#
# Budget: a 5-epoch schedule (62 steps an epoch, 310 steps, warmup 62) stopped for both arms right after the
# end of epoch STOP_EPOCHS (2: step 124, LR still at 0.86 of its peak), so that the record fit a shared,
# heavily loaded 2-core machine;
# stop_after_epochs.sh copies last.ckpt at every epoch end and stops the trainer after that one. The probes
# read the copy, $R/snap/<arm>_v$STOP_EPOCHS.ckpt. (In the recorded session the two arms trained at the same
# time, each started by hand with the command below; this script runs them one after the other.)
set -euo pipefail
PY=${PY:-.venv/bin/python}
SEED=${1:-0}
R=${R:-runs/chamaevit_cells}
STOP_EPOCHS=${STOP_EPOCHS:-2}
OUT=experiments/chamaevit_cells/raw
export WANDB_MODE=disabled
mkdir -p "$OUT"
ONLY=${ONLY:-}  # a regex: run only the steps whose tag matches (e.g. ONLY=mae_ to probe one arm while the other trains)
skip() {  # tag, done-file: true (and says why) when the step is done or not selected
  if [ -f "$2" ]; then echo "skip $1 (done)"; return 0; fi
  if [ -n "$ONLY" ] && ! [[ $1 =~ $ONLY ]]; then echo "skip $1 (ONLY=$ONLY)"; return 0; fi
  return 1
}
COMMON=(experiment=chamaevit model=vit_micro model.patch_size=8 data.num_train=4000 data.num_val=1000
        data.batch_size=64 trainer.max_epochs=5 optim.warmup_epochs=1 seed=$SEED print_config=false logger=csv)
train_arm() {  # tag, overrides...: trains until stop_after_epochs.sh stops it
  local tag=$1; shift
  skip "$tag" "$R/snap/${tag}_v$STOP_EPOCHS.ckpt" && return
  local start=$SECONDS
  nice -n 10 "$PY" -m mae_zoo.train "${COMMON[@]}" "$@" hydra.run.dir="$R/$tag" &
  local trainer=$!
  bash experiments/chamaevit_cells/stop_after_epochs.sh "$R/$tag" "$STOP_EPOCHS" "$trainer" "$R/snap/$tag"
  wait "$trainer" || true  # stopped by SIGTERM: a non-zero exit
  printf '%s\t%s\n' "$tag" "$((SECONDS - start))" >> "$OUT/wall_times.tsv"
  cp "$R/$tag/csv/metrics.csv" "$OUT/${tag}_train_metrics.csv"
  cp "$R/$tag/git_revision.txt" "$OUT/git_revision_$tag.txt"
}
train_arm chamae_seed$SEED
train_arm mae_seed$SEED modality=image mask=random objective=masked_mse
probe() {  # arm, tag, extra overrides...: linear probe of the arm's stopped checkpoint
  local arm=$1 tag=eval_linear_$2; shift 2
  skip "$tag" "$R/$tag/metrics.json" && return
  local start=$SECONDS
  nice -n 10 "$PY" -m mae_zoo.eval ckpt="$R/snap/${arm}_v$STOP_EPOCHS.ckpt" eval=linear print_config=false \
    seed=$SEED eval.feature_cache="$R/feature_cache" "$@" hydra.run.dir="$R/$tag"
  printf '%s\t%s\n' "$tag" "$((SECONDS - start))" >> "$OUT/wall_times.tsv"
  cp "$R/$tag/metrics.json" "$OUT/$tag.json"
}
probe chamae_seed$SEED chamae_seed$SEED
probe mae_seed$SEED mae_seed$SEED
probe chamae_seed$SEED chamae_random_seed$SEED init=random
probe mae_seed$SEED mae_random_seed$SEED init=random
probe mae_seed$SEED pixels_seed$SEED eval.features=pixels
probe chamae_seed$SEED mean_chamae_seed$SEED eval.pool=mean
probe mae_seed$SEED mean_mae_seed$SEED eval.pool=mean
