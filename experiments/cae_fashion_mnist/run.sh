#!/usr/bin/env bash
# experiments/cae_fashion_mnist: CAE (token-dropping encoder, latent contextual regressor, alignment to the
# encoder's own no-grad latents of the hidden patches, decoder from the predicted latents) beside MAE at the
# equal budget of experiments/simmim_fashion_mnist (same vit_micro encoder, data, steps, optimiser, seed),
# probed the same way. The MAE and random-init baselines are that record's raw files; they are not rerun.
# Usage (repo root, after make install): bash experiments/cae_fashion_mnist/run.sh [SEED]
set -euo pipefail
PY=${PY:-.venv/bin/python}
SEED=${1:-0}
R=${R:-runs/cae_fmnist}
OUT=experiments/cae_fashion_mnist/raw
export WANDB_MODE=disabled
mkdir -p "$OUT"
source "$(dirname "$0")/../step.sh"  # step TAG COMMAND...: resumable, timed
git rev-parse HEAD > "$OUT/git_revision_cae.txt"
git status --short >> "$OUT/git_revision_cae.txt"
COMMON=(experiment=mae_fashion_mnist model=vit_micro trainer.max_epochs=2 optim.warmup_epochs=1 seed=$SEED
        print_config=false logger=csv callbacks.online_probe.enabled=false)
# CAE's own choices on top: its regressor/decoder (regressor 4 blocks, alignment weight 2, layer scale 0.1:
# the official defaults; width, heads and decoder depth are vit_micro's decoder: 64, 4, 2) and its mask
# (BEiT blocks, exactly half the tokens: 98/196 officially, 24/49 here). Target: norm-pix MSE (no DALL-E).
step cae_seed$SEED nice -n 10 "$PY" -m mae_zoo.train "${COMMON[@]}" model.decoder.kind=cae \
  mask=block mask.ratio=0.5 mask.exact=true hydra.run.dir=$R/cae_seed$SEED
probe() {  # eval, tag, extra overrides...
  local ev=$1 tag=$2; shift 2
  step "eval_${tag}" nice -n 10 "$PY" -m mae_zoo.eval ckpt="$R/cae_seed$SEED/checkpoints/last.ckpt" eval="$ev" \
    print_config=false seed=$SEED eval.feature_cache="$R/feature_cache" "$@" hydra.run.dir="$R/eval_${tag}"
}
probe linear linear_cae_seed$SEED
probe linear linear_mean_cae_seed$SEED eval.pool=mean
probe knn knn_cae_seed$SEED
