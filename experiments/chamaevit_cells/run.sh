#!/usr/bin/env bash
# experiments/chamaevit_cells: ChA-MAEViT beside plain MAE (the 5 channels stacked as image channels) at an
# equal budget on the embedded 5-channel cells set (4 classes decided by how channels co-localise): the same
# data, patch 8 grid, vit_micro widths, steps, batch, optimiser (the chamaevit preset's AdamW, clipping, fp32)
# and seed. Each probed (linear) beside a random-init encoder of its own shape, and raw pixels.
# Usage (repo root, after make install): bash experiments/chamaevit_cells/run.sh [SEED]
set -euo pipefail
PY=${PY:-.venv/bin/python}
SEED=${1:-0}
R=${R:-runs/chamaevit_cells}
OUT=experiments/chamaevit_cells/raw
export WANDB_MODE=disabled
mkdir -p "$OUT"
step() {  # tag, command...: skipped when $R/tag/metrics.json exists; appends "tag<TAB>seconds"
  local tag=$1; shift
  if [ -f "$R/$tag/metrics.json" ]; then echo "skip $tag (done)"; return; fi
  local start=$SECONDS
  "$@"
  printf '%s\t%s\n' "$tag" "$((SECONDS - start))" >> "$OUT/wall_times.tsv"
  cp "$R/$tag/metrics.json" "$OUT/$tag.json"
  if [ -f "$R/$tag/git_revision.txt" ]; then cp "$R/$tag/git_revision.txt" "$OUT/git_revision_$tag.txt"; fi
}
# 4000 / 1000 images, batch 64: 62 steps an epoch, 5 epochs = 310 steps per arm.
COMMON=(experiment=chamaevit model=vit_micro model.patch_size=8 data.num_train=4000 data.num_val=1000
        data.batch_size=64 trainer.max_epochs=5 optim.warmup_epochs=1 seed=$SEED print_config=false logger=csv)
step chamae_seed$SEED nice -n 10 "$PY" -m mae_zoo.train "${COMMON[@]}" hydra.run.dir=$R/chamae_seed$SEED
step mae_seed$SEED nice -n 10 "$PY" -m mae_zoo.train "${COMMON[@]}" modality=image mask=random objective=masked_mse \
  hydra.run.dir=$R/mae_seed$SEED
probe() {  # run, eval, tag, extra overrides...
  local run=$1 ev=$2 tag=$3; shift 3
  step "eval_${ev}_$tag" nice -n 10 "$PY" -m mae_zoo.eval ckpt="$R/$run/checkpoints/last.ckpt" eval="$ev" \
    print_config=false seed=$SEED eval.feature_cache="$R/feature_cache" "$@" hydra.run.dir="$R/eval_${ev}_${tag}"
}
probe chamae_seed$SEED linear chamae_seed$SEED
probe mae_seed$SEED linear mae_seed$SEED
probe chamae_seed$SEED linear chamae_random_seed$SEED init=random
probe mae_seed$SEED linear mae_random_seed$SEED init=random
probe mae_seed$SEED linear pixels_seed$SEED eval.features=pixels
probe chamae_seed$SEED linear mean_chamae_seed$SEED eval.pool=mean
probe mae_seed$SEED linear mean_mae_seed$SEED eval.pool=mean
