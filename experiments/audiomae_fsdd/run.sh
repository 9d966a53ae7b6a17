#!/usr/bin/env bash
# Reproduces experiments/audiomae_fsdd: Audio-MAE pre-trained on FSDD (split=disjoint: index >= 5 of the five
# speakers other than theo), then linear, kNN and prototype probes on the standard split (index 0-4 held out)
# and on the speaker-held-out split (theo held out), beside the same probes on a random-init encoder and on
# the raw log-mel maps. Run from the repository root: bash experiments/audiomae_fsdd/run.sh
# A step whose metrics.json exists is skipped, so an interrupted run continues. Wall times: $OUT/wall_times.tsv.
set -euo pipefail
OUT=${OUT:-runs/audiomae_fsdd}
PY=${PY:-.venv/bin/python}
export WANDB_MODE=disabled
mkdir -p "$OUT"
R=$OUT  # step(): the runs and wall_times.tsv share this folder
source "$(dirname "$0")/../step.sh"  # step TAG COMMAND...: resumable, timed
probe() {  # split, eval option, tag, extra overrides...
  # Features are extracted once per encoder and split (the cache key holds the weights and the data
  # settings) and shared by the linear and kNN probes.
  local split=$1 ev=$2 tag=$3; shift 3
  local cache=(eval.feature_cache="$OUT/feature_cache")
  [ "$ev" = prototype ] && cache=()  # the prototype probe caches its token maps in memory only
  step "eval_${ev}_${split}_${tag}" nice -n 10 "$PY" -m mae_zoo.eval ckpt="$OUT/pretrain/checkpoints/last.ckpt" \
    eval="$ev" print_config=false eval.device=cpu "${cache[@]}" \
    +data_overrides.split="$split" +data_overrides.num_workers=1 "$@" \
    hydra.run.dir="$OUT/eval_${ev}_${split}_${tag}"
}
# Pre-training: at most 15 minutes (trainer.max_time in the preset), 4 epochs of 70 steps otherwise.
step pretrain nice -n 10 "$PY" -m mae_zoo.train experiment=audiomae_fsdd print_config=false hydra.run.dir="$OUT/pretrain"
# Linear probes: head batch 256 (11 steps per epoch, 990 LARS steps; the default 1024 gives 2 steps per
# epoch on 2,700 clips and under-fitted: 26% train top-1 in a first run), the same for every encoder and
# for the raw log-mel baseline.
LINEAR=(eval.batch_size=256)
for split in standard speaker; do
  probe "$split" linear pretrained "${LINEAR[@]}"
  probe "$split" linear random_init init=random "${LINEAR[@]}"
  probe "$split" linear logmel eval.features=pixels "${LINEAR[@]}"   # raw log-mel: logistic regression
  probe "$split" knn pretrained
  probe "$split" knn random_init init=random
  probe "$split" knn logmel eval.features=pixels
done
# A second linear protocol, added after the first results: the LARS probe above (MAE's) under-fits these
# features (24% train top-1 for the pre-trained encoder, where a plain logistic regression fits 66%), so
# every encoder and the raw log-mel maps also get BN + Linear trained with AdamW (lr 1e-3, no weight
# decay, batch 256, 90 epochs), chosen once, not tuned on the validation clips.
ADAMW=(eval.batch_size=256 eval.optimizer=adamw eval.lr=1.0e-3 eval.weight_decay=0.0)
for split in standard speaker; do
  for tag in pretrained random_init logmel; do
    extra=()
    [ "$tag" = random_init ] && extra=(init=random)
    [ "$tag" = logmel ] && extra=(eval.features=pixels)
    step "eval_linadamw_${split}_${tag}" nice -n 10 "$PY" -m mae_zoo.eval ckpt="$OUT/pretrain/checkpoints/last.ckpt" \
      eval=linear print_config=false eval.device=cpu eval.feature_cache="$OUT/feature_cache" \
      +data_overrides.split="$split" +data_overrides.num_workers=1 "${ADAMW[@]}" "${extra[@]}" \
      hydra.run.dir="$OUT/eval_linadamw_${split}_${tag}"
  done
done
# Prototype probes (Bird-MAE) last: they extract the token maps again (no disk cache).
for split in standard speaker; do
  probe "$split" prototype pretrained
  probe "$split" prototype random_init init=random
done
