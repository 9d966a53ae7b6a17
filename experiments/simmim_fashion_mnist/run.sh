#!/usr/bin/env bash
# experiments/simmim_fashion_mnist: SimMIM (mask-token encoder, linear pixel head, L1, coarse random mask)
# beside MAE at an equal budget on Fashion-MNIST: the same vit_micro encoder, data, steps, optimiser and
# seed; both probed the same way (linear, kNN) beside a random-init encoder.
# Usage (repo root, after make install): bash experiments/simmim_fashion_mnist/run.sh [SEED]
set -euo pipefail
PY=${PY:-.venv/bin/python}
SEED=${1:-0}
R=${R:-runs/simmim_fmnist}
OUT=experiments/simmim_fashion_mnist/raw
export WANDB_MODE=disabled
mkdir -p "$OUT"
source "$(dirname "$0")/../step.sh"  # step TAG COMMAND... and probe RUN EVAL TAG...: resumable, timed
# 28 px, patch 4: a 7 x 7 token grid; SimMIM's 32 px cells do not fit, so cells are single tokens (mask.cell=1).
COMMON=(experiment=mae_fashion_mnist model=vit_micro trainer.max_epochs=2 optim.warmup_epochs=1 seed=$SEED
        print_config=false logger=csv callbacks.online_probe.enabled=false)
step mae_seed$SEED nice -n 10 "$PY" -m mae_zoo.train "${COMMON[@]}" hydra.run.dir=$R/mae_seed$SEED
step simmim_seed$SEED nice -n 10 "$PY" -m mae_zoo.train "${COMMON[@]}" mask=simmim mask.cell=1 mask.ratio=0.6 \
  objective=masked_l1 model.encoder.kind=masked model.decoder.kind=linear \
  hydra.run.dir=$R/simmim_seed$SEED
for ev in linear knn; do
  probe mae_seed$SEED $ev mae_seed$SEED
  probe simmim_seed$SEED $ev simmim_seed$SEED
  probe mae_seed$SEED $ev random_seed$SEED init=random
done
