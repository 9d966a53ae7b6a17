"""Copy the raw files of the videomae_moving runs into this folder and tabulate them in results.json.

python experiments/videomae_moving/collect.py [runs/videomae_moving]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = ("tube", "random", "tube_running_cell")
PROBES = [(run, run) for run in RUNS] + [("random_init", "tube, random init"), ("pixels", "raw pixels")]


def main(source: Path) -> None:
    results: dict = {"pretrain": {}, "probes": {}}
    for run in RUNS:
        folder = source / run
        metrics = json.loads((folder / "metrics.json").read_text())
        results["pretrain"][run] = {
            k: metrics[k]
            for k in ("train/loss", "val/loss", "trainer/global_step", "time/fit_wall_s", "train/mask_ratio")
            if k in metrics
        }
        out = HERE / run
        out.mkdir(exist_ok=True)
        for name in ("metrics.json", "config.yaml", "git_revision.txt"):
            shutil.copy(folder / name, out / name)
        shutil.copy(folder / "csv" / "metrics.csv", out / "metrics.csv")
        for picture in sorted((folder / "pictures").glob("recon_val_final_*.png")):
            shutil.copy(picture, out / "recon_val_final.png")
    for tag, label in PROBES:
        for evaluator in ("linear", "knn"):
            path = source / f"eval_{evaluator}_{tag}" / "metrics.json"
            if not path.is_file():
                continue
            metrics = json.loads(path.read_text())
            keep = {
                k.split("/", 1)[1]: v
                for k, v in metrics.items()
                if k.split("/", 1)[1] in ("top1", "top5", "train_top1", "wall_s", "k")
            }
            results["probes"].setdefault(label, {})[evaluator] = keep
            shutil.copy(path, HERE / f"eval_{evaluator}_{tag}.json")
    walls = source / "wall_times.tsv"
    if walls.is_file():  # wall seconds of every step run.sh ran (a resumed step counts its last run only)
        shutil.copy(walls, HERE / "wall_times.tsv")
        results["wall_s"] = {
            tag: int(sec) for tag, sec in (line.split("\t") for line in walls.read_text().split("\n") if line)
        }
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/videomae_moving"))
