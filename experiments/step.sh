# Sourced by the records' run scripts: one resumable step of a record.
# step TAG COMMAND...: skipped when $R/TAG/metrics.json exists (that run finished); otherwise runs COMMAND,
# appends "TAG<TAB>seconds" to $OUT/wall_times.tsv and, where the runs live outside $OUT (the raw folder),
# copies the run's metrics.json there as TAG.json.
step() {
  local tag=$1; shift
  if [ -f "$R/$tag/metrics.json" ]; then echo "skip $tag (done)"; return; fi
  local start=$SECONDS
  "$@"
  printf '%s\t%s\n' "$tag" "$((SECONDS - start))" >> "$OUT/wall_times.tsv"
  if [ "$R" != "$OUT" ]; then cp "$R/$tag/metrics.json" "$OUT/$tag.json"; fi
}

# probe RUN EVAL TAG [OVERRIDES...]: `mae_zoo.eval` of $R/RUN's last checkpoint as a resumable step
# named eval_EVAL_TAG (features cached in $R/feature_cache, shared by the probes of one encoder).
probe() {
  local run=$1 ev=$2 tag=$3; shift 3
  step "eval_${ev}_$tag" nice -n 10 "$PY" -m mae_zoo.eval ckpt="$R/$run/checkpoints/last.ckpt" eval="$ev" \
    print_config=false seed="$SEED" eval.feature_cache="$R/feature_cache" "$@" hydra.run.dir="$R/eval_${ev}_${tag}"
}
