#!/usr/bin/env bash
# experiments/distill_video_moving: the distill group on a second modality. A VideoMAE teacher
# (experiment=videomae_moving: videomae_mini, tube 0.9, 160 steps), then a narrower student (64 wide, same
# tubelet/patch grid so DMAE's teacher can run the student's mask) at an equal budget with and without
# distill=dmae; both probed like the videomae_moving record, beside a random-init student.
# Usage (repo root, after make install): bash experiments/distill_video_moving/run.sh
set -euo pipefail
PY=${PY:-.venv/bin/python}
R=${R:-runs/distill_video_moving}
OUT=experiments/distill_video_moving/raw
export WANDB_MODE=disabled
mkdir -p "$OUT"
source "$(dirname "$0")/../step.sh"  # step TAG COMMAND...: resumable, timed
train() {  # name, overrides...
  local name=$1; shift
  step "$name" nice -n 10 "$PY" -m mae_zoo.train experiment=videomae_moving print_config=false logger=csv seed=0 "$@" \
    hydra.run.dir="$R/$name"
}
probe() {  # run, eval, tag, extra overrides...
  local run=$1 ev=$2 tag=$3; shift 3
  step "eval_${ev}_$tag" nice -n 10 "$PY" -m mae_zoo.eval ckpt="$R/$run/checkpoints/last.ckpt" eval="$ev" \
    print_config=false eval.device=cpu seed=0 eval.feature_cache="$R/feature_cache" "$@" hydra.run.dir="$R/eval_${ev}_${tag}"
}
STUDENT=(model.encoder.embed_dim=64 model.encoder.depth=4 model.encoder.num_heads=4)
T=$R/teacher/checkpoints/last.ckpt
train teacher                                     # videomae_mini: 128 wide, 4 blocks
train plain "${STUDENT[@]}"
train dmae "${STUDENT[@]}" teacher=checkpoint teacher.path=$T distill=dmae distill.student_block=2 distill.teacher_block=3
for run in teacher plain dmae; do
  probe $run linear $run
  probe $run knn $run
done
probe plain linear random_init init=random
probe plain knn random_init init=random
