"""Read each sweep job's offline W&B run file and print what it holds (run from the repository root):

    .venv/bin/python experiments/slurm_sweep/wandb_check.py runs/slurm_sweep/record

Uses the `.wandb` reader of tests/test_slurm_wandb.py, so the record and the test read the files the same way.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from test_slurm_wandb import _read_run

sweep = Path(sys.argv[1])
for job in sorted((d for d in sweep.iterdir() if d.name.isdigit()), key=lambda d: int(d.name)):
    rid = (job / "wandb_id.txt").read_text().strip()
    (offline,) = list((job / "wandb").glob(f"offline-run-*-{rid}"))
    run = _read_run(offline)
    losses = [h["train/loss"] for h in run["history"] if "train/loss" in h]
    vals = [h["val/loss"] for h in run["history"] if "val/loss" in h]
    pngs = list(offline.rglob("media/images/**/*.png"))
    tables = list(offline.rglob("media/table/final/metrics_*.table.json"))
    print(
        f"job {job.name}: run id {rid} group={run['run'].run_group!r} name={run['run'].display_name!r} "
        f"tags={list(run['run'].tags)} train/loss points={len(losses)} val/loss points={len(vals)} "
        f"last val/loss={vals[-1] if vals else float('nan'):.6g} pngs={len(pngs)} final table={len(tables)} "
        f"closed={run['exit']} config seed={run['config'].get('seed')}"
    )
