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
