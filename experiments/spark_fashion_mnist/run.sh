#!/usr/bin/env bash
# experiments/spark_fashion_mnist: SparK (sparse-conv masked modelling of a CNN) beside MAE at an equal budget
# on Fashion-MNIST: same data, batch, steps, schedule and seed. The MAE arm is the simmim_fashion_mnist
# record's (same command), read from its raw files. Both probed the same way (linear, kNN) beside the same
# CNN at random init.
# Usage (repo root, after make install): bash experiments/spark_fashion_mnist/run.sh [SEED]
set -euo pipefail
PY=${PY:-.venv/bin/python}
SEED=${1:-0}
R=${R:-runs/spark_fmnist}
OUT=experiments/spark_fashion_mnist/raw
export WANDB_MODE=disabled
mkdir -p "$OUT"
source "$(dirname "$0")/../step.sh"  # step TAG COMMAND... and probe RUN EVAL TAG...: resumable, timed
[ -f "$OUT/git_revision_seed$SEED.txt" ] || git rev-parse HEAD > "$OUT/git_revision_seed$SEED.txt"  # the first run's revision
# spark_micro's output stride is 8, so 28 px images are resized to 32 (a 4 x 4 grid of 8 px mask cells).
COMMON=(experiment=mae_fashion_mnist modality=spark model=spark_micro data.image_size=32 mask.ratio=0.6
        trainer.max_epochs=2 optim.warmup_epochs=1 seed=$SEED
        print_config=false logger=csv callbacks.online_probe.enabled=false)
# SparK's own optimiser (LAMB, blr 2e-4, wd 0.04, experiment=spark) ...
step spark_lamb_seed$SEED nice -n 10 "$PY" -m mae_zoo.train "${COMMON[@]}" optim.name=lamb optim.blr=2.0e-4 \
  optim.weight_decay=0.04 hydra.run.dir=$R/spark_lamb_seed$SEED
# ... and MAE's (AdamW, blr 1.5e-4, wd 0.05), so that the two methods differ only in the method.
step spark_adamw_seed$SEED nice -n 10 "$PY" -m mae_zoo.train "${COMMON[@]}" hydra.run.dir=$R/spark_adamw_seed$SEED
for ev in linear knn; do
  probe spark_lamb_seed$SEED $ev spark_lamb_seed$SEED
  probe spark_adamw_seed$SEED $ev spark_adamw_seed$SEED
  probe spark_lamb_seed$SEED $ev random_seed$SEED init=random
done
