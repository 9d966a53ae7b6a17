"""Print the results table of experiments/chamaevit_cells from the raw JSON files the runs wrote.

Usage (repo root): python experiments/chamaevit_cells/collect.py
"""

from __future__ import annotations

import json
from pathlib import Path

RAW = Path(__file__).parent / "raw"
ROWS = [
    ("ChA-MAEViT, pre-trained (cls)", "eval_linear_chamae_seed0"),
    ("ChA-MAEViT, pre-trained (mean of tokens)", "eval_linear_mean_chamae_seed0"),
    ("ChA-MAEViT, random init (cls)", "eval_linear_chamae_random_seed0"),
    ("plain MAE, pre-trained (cls)", "eval_linear_mae_seed0"),
    ("plain MAE, pre-trained (mean of tokens)", "eval_linear_mean_mae_seed0"),
    ("plain MAE, random init (cls)", "eval_linear_mae_random_seed0"),
    ("raw pixels (5 x 32 x 32)", "eval_linear_pixels_seed0"),
]


def main() -> None:
    print("| features | linear top-1 (val, %) | train top-1 (%) | feature dim |")
    print("|---|---|---|---|")
    for name, tag in ROWS:
        path = RAW / f"{tag}.json"
        if not path.exists():
            print(f"| {name} | (not run) | | |")
            continue
        m = json.loads(path.read_text())
        print(
            f"| {name} | {m['eval_linear/top1']:.2f} | {m['eval_linear/train_top1']:.2f} | "
            f"{m['eval_linear/feature_dim']} |"
        )
    for arm in ("chamae_seed0", "mae_seed0"):
        path = RAW / f"{arm}.json"
        if path.exists():
            m = json.loads(path.read_text())
            keys = ("trainer/global_step", "train/loss", "val/loss")
            print(f"{arm}: " + ", ".join(f"{k}={m[k]:.4g}" for k in keys if k in m))


if __name__ == "__main__":
    main()
