#!/usr/bin/env bash
# experiments/finetune_fashion_mnist: does fine-tuning from an MAE checkpoint beat the same ViT trained from
# random init, at an equal fine-tuning budget and recipe, on a low-label subset of Fashion-MNIST?
# One MAE pre-training (the vit_micro command of the simmim/cae/mixedae records); then eval=finetune on a
# class-balanced labelled subset of the train split, validation carved from the rest of the train split (the
# test split is scored once per run, after training, and chooses nothing): a blr sweep per arm on seed 0,
# the blr with the best val top-1 per arm, then more seeds at that blr.
# Usage (repo root, after make install): bash experiments/finetune_fashion_mnist/run.sh
# Resumable: a finished step (its run folder holds metrics.json) is skipped.
set -euo pipefail
PY=${PY:-.venv/bin/python}
R=${R:-runs/finetune_fmnist}
OUT=experiments/finetune_fashion_mnist/raw
SUBSET=${SUBSET:-1000}       # labelled training images, 100 per class
VAL=${VAL:-5000}             # validation images carved from the train split (split_seed 0: the same for every run)
EPOCHS=${EPOCHS:-20}
WARMUP=${WARMUP:-2}
BATCH=${BATCH:-32}
VAL_EVERY=${VAL_EVERY:-5}
BLRS=${BLRS:-"1e-3 3e-3 1e-2"}
SEEDS=${SEEDS:-"1 2"}        # seeds beyond the sweep's seed 0
export WANDB_MODE=disabled
# One intra-op thread for the fine-tuning and probes: on the shared, loaded 2-core machine two threads made a
# batch-32 training step ~15x slower (90 vs 6 ms per image, measured before the runs); the pre-training ran
# with the default (2) before this was known.
FT_THREADS=${FT_THREADS:-1}
mkdir -p "$OUT"
source "$(dirname "$0")/../step.sh"  # step TAG COMMAND...: resumable, timed
git rev-parse HEAD > "$OUT/git_revision.txt"

# 1. MAE pre-training (precision=auto: the start-up probe picks; raw/pretrain_precision.json)
step mae_seed0 nice -n 5 "$PY" -m mae_zoo.train experiment=mae_fashion_mnist model=vit_micro trainer.max_epochs=2 \
  optim.warmup_epochs=1 seed=0 print_config=false logger=csv callbacks.online_probe.enabled=false \
  hydra.run.dir=$R/mae_seed0
CKPT=$R/mae_seed0/checkpoints/last.ckpt
cp $R/mae_seed0/csv/metrics.csv "$OUT/pretrain_metrics.csv"
cp $R/mae_seed0/precision.json "$OUT/pretrain_precision.json"
cp $R/mae_seed0/metrics.json "$OUT/mae_seed0.json"

# 2. fine-tuning: the same command for both arms but init=random; precision 32-true (bf16-mixed measured
#    slower on this CPU by the pre-training's start-up probe)
SPLIT=(+data_overrides.val_from_train=$VAL +data_overrides.train_subset=$SUBSET +data_overrides.batch_size=$BATCH
       +data_overrides.num_workers=0)
ft() {  # arm blr seed [epochs warmup]: tag ft_<arm>_blr<blr>_seed<seed>, plus _e<epochs> when not $EPOCHS
  local arm=$1 blr=$2 seed=$3 epochs=${4:-$EPOCHS} warmup=${5:-$WARMUP} init=pretrained
  [ "$arm" = random ] && init=random
  local tag=ft_${arm}_blr${blr}_seed${seed}
  [ "$epochs" != "$EPOCHS" ] && tag=${tag}_e$epochs
  OMP_NUM_THREADS=$FT_THREADS step "$tag" nice -n 5 "$PY" -m mae_zoo.eval ckpt=$CKPT init=$init eval=finetune eval.epochs=$epochs \
    eval.warmup_epochs=$warmup eval.blr=$blr eval.val_every=$VAL_EVERY eval.precision=32-true eval.log_every_n_steps=0 \
    seed=$seed print_config=false "${SPLIT[@]}" hydra.run.dir=$R/$tag
  cp $R/$tag/finetune_curve.csv "$OUT/$tag.curve.csv"
}
for blr in $BLRS; do for arm in mae random; do ft $arm $blr 0; done; done
# Where an arm's best blr sits on the grid's edge, the grid grows by one factor-3 step there, for both arms
# (at most EXTEND times), so that neither arm is held to an lr that may be too small or too large for it.
for _ in $(seq "${EXTEND:-2}"); do
  blr=$("$PY" experiments/finetune_fashion_mnist/summarize.py extend)
  [ -z "$blr" ] && break
  for arm in mae random; do ft $arm "$blr" 0; done
done
"$PY" experiments/finetune_fashion_mnist/summarize.py choose | tee "$OUT/chosen_blr.txt"
for seed in $SEEDS; do  # arm by arm within a seed: a run cut short leaves both arms with the same seeds
  while read -r arm blr; do ft "$arm" "$blr" "$seed"; done < "$OUT/chosen_blr.txt"
done
# 3. beside them (cheap): linear probes (eval defaults) trained on the same 1 000 images, scored on the carved
#    val split (the linear evaluator has no test split): MAE, random init, raw pixels
for arm in mae random pixels; do
  extra=(); [ $arm = random ] && extra=(init=random); [ $arm = pixels ] && extra=(eval.features=pixels)
  OMP_NUM_THREADS=$FT_THREADS step linear_$arm nice -n 5 "$PY" -m mae_zoo.eval ckpt=$CKPT eval=linear "${extra[@]}" seed=0 print_config=false \
    "${SPLIT[@]}" hydra.run.dir=$R/linear_$arm
done
# 4. budget check: seeds 0 and 1 of each arm at its chosen blr with twice the epochs (40, warmup 4): does the gap hold?
for seed in ${LONG_SEEDS:-0 1}; do
  while read -r arm blr; do ft "$arm" "$blr" "$seed" $((2 * EPOCHS)) $((2 * WARMUP)); done < "$OUT/chosen_blr.txt"
done
"$PY" experiments/finetune_fashion_mnist/summarize.py | tee "$OUT/summary.md"
