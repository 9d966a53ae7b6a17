#!/usr/bin/env bash
# experiments/mixedae_fashion_mnist: MixedAE (patch-wise mixing of 4 images, segment embeddings, top-k
# homologous attention, homologous contrastive) beside MAE at an equal budget on Fashion-MNIST: the same
# vit_micro encoder, data, steps, optimiser and seed as experiments/simmim_fashion_mnist, whose MAE and
# random-init numbers (raw files there) are the baselines; probed the same way (linear cls, linear mean, kNN).
# Usage (repo root, after make install): bash experiments/mixedae_fashion_mnist/run.sh [SEED]
set -euo pipefail
PY=${PY:-.venv/bin/python}
SEED=${1:-0}
R=${R:-runs/mixedae_fmnist}
OUT=experiments/mixedae_fashion_mnist/raw
export WANDB_MODE=disabled
mkdir -p "$OUT"
source "$(dirname "$0")/../step.sh"  # step TAG COMMAND...: resumable, timed
# modality=mixing turns the image MAE into MixedAE; mask=mixing must follow the preset (it sets mask=random).
COMMON=(experiment=mae_fashion_mnist model=vit_micro trainer.max_epochs=2 optim.warmup_epochs=1 seed=$SEED
        print_config=false logger=csv callbacks.online_probe.enabled=false)
git rev-parse HEAD > "$OUT/git_revision_mixedae.txt"
step mixedae_seed$SEED nice -n 10 "$PY" -m mae_zoo.train "${COMMON[@]}" modality=mixing mask=mixing \
  hydra.run.dir=$R/mixedae_seed$SEED
probe() {  # eval, tag, extra overrides...
  local ev=$1 tag=$2; shift 2
  step "eval_${tag}_mixedae_seed$SEED" nice -n 10 "$PY" -m mae_zoo.eval \
    ckpt="$R/mixedae_seed$SEED/checkpoints/last.ckpt" eval="$ev" print_config=false seed=$SEED \
    eval.feature_cache="$R/feature_cache" "$@" hydra.run.dir="$R/eval_${tag}_mixedae_seed$SEED"
}
probe linear linear
probe linear linear_mean eval.pool=mean
probe knn knn
