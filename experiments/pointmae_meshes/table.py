"""Print the results table of experiments/pointmae_meshes from results/*.json (numbers copied from files)."""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent / "results"
ROWS = (
    ("pretrained", "Point-MAE pre-trained (frozen)"),
    ("random", "same encoder, random init"),
    ("d2", "D2 histogram (no learning)"),
)
SETTINGS = ("5w10s", "5w20s", "10w10s", "10w20s")


def cell(d: dict, key: str) -> str:
    return f"{d[key + 'top1_mean']:.1f} ± {d[key + 'top1_std']:.1f}"


for task, title in (
    ("meshes", "23 meshes (23 classes, 920 train / 230 test views)"),
    ("shapes", "embedded shapes (10 classes, 1000 / 300; transfer)"),
):
    print(f"\n**{title}**\n")
    print("| features | linear SVM top-1 | " + " | ".join(f"few-shot {s}" for s in SETTINGS) + " |")
    print("|---|---|" + "---|" * len(SETTINGS))
    for src, name in ROWS:
        svm = json.loads((HERE / f"{task}_svm_{src}.json").read_text())
        few = json.loads((HERE / f"{task}_fewshot_{src}.json").read_text())
        cells = [cell(few, f"eval_fewshot/{s}/") for s in SETTINGS]
        print(f"| {name} | {svm['eval_svm/top1']:.1f} (C={svm['eval_svm/C']:g}) | " + " | ".join(cells) + " |")
