#!/usr/bin/env bash
# experiments/distill_fashion_mnist: a vit_mini MAE teacher, then vit_micro students at an equal budget
# (same steps, data, mask seed, optimiser): plain MAE and each distillation objective; every encoder probed
# the same way (linear probe with the default recipe, kNN) beside a random-init encoder and raw pixels.
# Usage: bash experiments/distill_fashion_mnist/run.sh [SEED]   (from the repo root, after make install)
set -euo pipefail
PY=${PY:-.venv/bin/python}
SEED=${1:-0}
R=runs/distill_fmnist
OUT=experiments/distill_fashion_mnist/raw
mkdir -p "$OUT"
COMMON=(experiment=mae_fashion_mnist print_config=false logger=csv callbacks.online_probe.enabled=false)
T=$R/teacher/checkpoints/last.ckpt
stamp() { echo "$1 $(date +%s)" >> "$OUT/walls_seed$SEED.txt"; }

if [ ! -f "$T" ]; then  # the teacher: vit_mini, 4 epochs (one seed: it is the fixed starting point of every arm)
  stamp teacher_start
  $PY -m mae_zoo.train "${COMMON[@]}" trainer.max_epochs=4 optim.warmup_epochs=1 seed=0 hydra.run.dir=$R/teacher
  stamp teacher_end
fi

STUDENT=("${COMMON[@]}" model=vit_micro trainer.max_epochs=2 optim.warmup_epochs=1 seed=$SEED)
declare -A ARMS=(
  [plain]=""
  [dmae]="teacher=checkpoint teacher.path=$T distill=dmae distill.student_block=2 distill.teacher_block=4 objective.norm_pix_loss=false"
  [maskalign]="teacher=checkpoint teacher.path=$T distill=maskalign distill.fusion=sum distill.top_k=3 distill.mask=attention mask.ratio=0.7"
  [mrmae]="teacher=checkpoint teacher.path=$T distill=mrmae"
  [g2sd]="teacher=checkpoint teacher.path=$T teacher.decoder=true distill=g2sd distill.teacher_decoder_block=0"
  [ema]="teacher=ema distill=mrmae"
)
for arm in plain dmae maskalign mrmae g2sd ema; do
  dir=$R/seed$SEED/$arm
  if [ ! -f "$dir/checkpoints/last.ckpt" ]; then
    stamp "${arm}_start"
    # shellcheck disable=SC2086  # the arm's overrides are words
    $PY -m mae_zoo.train "${STUDENT[@]}" ${ARMS[$arm]} hydra.run.dir=$dir
    stamp "${arm}_end"
  fi
done

probe() {  # probe NAME CKPT EXTRA...
  local name=$1 ckpt=$2; shift 2
  for ev in linear knn; do
    [ -f "$OUT/${ev}_${name}.json" ] && continue
    $PY -m mae_zoo.eval ckpt="$ckpt" eval=$ev print_config=false seed=$SEED \
      eval.feature_cache=$R/feature_cache hydra.run.dir=$R/eval/${ev}_${name} "$@"
    cp $R/eval/${ev}_${name}/metrics.json "$OUT/${ev}_${name}.json"
  done
}
if [ "$SEED" = 0 ]; then
  probe teacher "$T"
  probe pixels "$R/seed0/plain/checkpoints/last.ckpt" eval.features=pixels
fi
probe random_seed$SEED "$R/seed$SEED/plain/checkpoints/last.ckpt" init=random
for arm in plain dmae maskalign mrmae g2sd ema; do
  probe ${arm}_seed$SEED "$R/seed$SEED/$arm/checkpoints/last.ckpt"
  cp "$R/seed$SEED/$arm/metrics.json" "$OUT/train_${arm}_seed$SEED.json"
done
