"""Copy the raw files of the audiomae_fsdd runs into this folder and tabulate them in results.json.

python experiments/audiomae_fsdd/collect.py [runs/audiomae_fsdd]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPLITS = ("standard", "speaker")
EVALS = ("linear", "linadamw", "knn", "prototype")  # linadamw: the linear probe trained with AdamW
TAGS = ("pretrained", "random_init", "logmel")


def main(source: Path) -> None:
    here = HERE if source.name == "audiomae_fsdd" else HERE / "long"  # run_long.sh's runs go to long/
    here.mkdir(exist_ok=True)
    results: dict = {"pretrain": {}, "probes": {}, "wall_s": {}}
    pre = source / "pretrain"
    metrics = json.loads((pre / "metrics.json").read_text())
    results["pretrain"] = metrics
    out = here / "pretrain"
    out.mkdir(exist_ok=True)
    for name in ("metrics.json", "config.yaml", "git_revision.txt"):
        shutil.copy(pre / name, out / name)
    shutil.copy(pre / "csv" / "metrics.csv", out / "metrics.csv")
    for picture in sorted((pre / "pictures").glob("recon_val_*.png")):
        shutil.copy(picture, out / picture.name)
    for split in SPLITS:
        for ev in EVALS:
            for tag in TAGS:
                folder = source / f"eval_{ev}_{split}_{tag}"
                if not (folder / "metrics.json").is_file():
                    continue
                m = json.loads((folder / "metrics.json").read_text())
                prefix = "linear" if ev == "linadamw" else ev
                dest = here / "eval" / folder.name
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy(folder / "metrics.json", dest / "metrics.json")
                shutil.copy(folder / "config.yaml", dest / "config.yaml")
                results["probes"].setdefault(split, {}).setdefault(ev, {})[tag] = {
                    "top1": m[f"eval_{prefix}/top1"],
                    "train_top1": m.get(f"eval_{prefix}/train_top1"),
                    "num_train": m.get(f"eval_{prefix}/num_train"),
                    "num_val": m.get(f"eval_{prefix}/num_val"),
                }
    walls = source / "wall_times.tsv"
    if walls.is_file():
        shutil.copy(walls, here / "wall_times.tsv")
        for line in walls.read_text().splitlines():
            tag, seconds = line.split("\t")
            results["wall_s"][tag] = int(seconds)
    (here / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for split, table in results["probes"].items():
        for ev, row in table.items():
            print(split, ev, {k: round(v["top1"], 1) for k, v in row.items()})


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/audiomae_fsdd"))
