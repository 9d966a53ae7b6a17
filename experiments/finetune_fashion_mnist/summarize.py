"""Tables of experiments/finetune_fashion_mnist from its raw files (never typed by hand).

    python experiments/finetune_fashion_mnist/summarize.py choose   # "<arm> <blr>" per arm: best val top-1, seed 0
    python experiments/finetune_fashion_mnist/summarize.py extend   # a blr 3x past the grid's edge if a best is on it
    python experiments/finetune_fashion_mnist/summarize.py          # raw/sweep.tsv, raw/seeds.tsv, tables on stdout

Fine-tuning runs are raw/ft_<arm>_blr<blr>_seed<seed>.json (eval_finetune metrics). The blr of an arm is
the one whose final-epoch val top-1 (the split carved from train) is highest at seed 0, ties to the
smaller blr; the test split plays no part in it.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

RAW = Path(__file__).resolve().parent / "raw"
NAME = re.compile(r"ft_(?P<arm>[a-z]+)_blr(?P<blr>[0-9.e+-]+)_seed(?P<seed>\d+)\.json$")
ARMS = ("mae", "random")


def runs() -> list[dict]:
    rows = []
    walls = {}
    if (RAW / "wall_times.tsv").is_file():
        for line in (RAW / "wall_times.tsv").read_text().splitlines():
            tag, seconds = line.split("\t")
            walls[tag] = int(seconds)
    for path in sorted(RAW.glob("ft_*.json")):
        match = NAME.match(path.name)
        if not match:
            continue
        m = json.loads(path.read_text())
        curve = m["eval_finetune/val_top1_per_epoch"]
        rows.append(
            {
                "arm": match["arm"],
                "blr": float(match["blr"]),
                "blr_tag": match["blr"],
                "seed": int(match["seed"]),
                "val_top1": round(m["eval_finetune/val_top1"], 2),
                "test_top1": round(m["eval_finetune/test_top1"], 2),
                "train_loss": m["eval_finetune/train_loss"],
                "epochs": m["eval_finetune/epochs"],
                "steps": m["eval_finetune/steps"],
                "lr": m["eval_finetune/lr"],
                "num_train": m["eval_finetune/num_train"],
                "num_val": m["eval_finetune/num_val"],
                "num_test": m["eval_finetune/num_test"],
                "precision": m["eval_finetune/precision"],
                "val_curve": " ".join(f"{e}:{v}" for e, v in curve),
                "train_wall_s": m["eval_finetune/train_wall_s"],
                "wall_s": walls.get(path.stem, ""),
            }
        )
    return rows


def chosen(rows: list[dict]) -> dict[str, str]:
    best: dict[str, str] = {}
    for arm in ARMS:
        sweep = [r for r in rows if r["arm"] == arm and r["seed"] == 0]
        if sweep:
            best[arm] = max(sweep, key=lambda r: (r["val_top1"], -r["blr"]))["blr_tag"]
    return best


def write_tsv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(rows[0])
    lines = ["\t".join(keys)] + ["\t".join(str(r[k]) for k in keys) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    rows = runs()
    best = chosen(rows)
    if sys.argv[1:] == ["extend"]:  # a blr one factor 3 beyond the grid where an arm's best sits on its edge
        grid = sorted({r["blr"] for r in rows if r["seed"] == 0})
        for tag in best.values():
            if float(tag) == grid[-1] and len(grid) > 1:
                mantissa, exponent = f"{3 * grid[-1]:.0e}".split("e")
                print(f"{mantissa}e{int(exponent)}")
                return
            if float(tag) == grid[0] and len(grid) > 1:
                mantissa, exponent = f"{grid[0] / 3:.0e}".split("e")
                print(f"{mantissa}e{int(exponent)}")
                return
        return
    if sys.argv[1:] == ["choose"]:
        for arm, blr in best.items():
            print(arm, blr)
        return
    sweep = sorted((r for r in rows if r["seed"] == 0), key=lambda r: (r["arm"], r["blr"]))
    seeds = sorted((r for r in rows if best.get(r["arm"]) == r["blr_tag"]), key=lambda r: (r["arm"], r["seed"]))
    write_tsv(RAW / "sweep.tsv", sweep)
    write_tsv(RAW / "seeds.tsv", seeds)
    print("blr sweep (seed 0; chosen by val top-1):")
    print("| arm | blr | lr | val top-1 | test top-1 | final train loss | wall (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in sweep:
        mark = " (chosen)" if best.get(r["arm"]) == r["blr_tag"] else ""
        print(
            f"| {r['arm']} | {r['blr']:g}{mark} | {r['lr']:.3g} | {r['val_top1']:.2f} | {r['test_top1']:.2f} | "
            f"{r['train_loss']:.3f} | {r['wall_s']} |"
        )
    print("\nseeds at the chosen blr:")
    print("| arm | blr | seeds | test top-1 per seed | test mean ± std | val mean ± std |")
    print("|---|---:|---:|---|---:|---:|")
    means = {}
    for arm in ARMS:
        rs = [r for r in seeds if r["arm"] == arm]
        if not rs:
            continue
        test = [r["test_top1"] for r in rs]
        val = [r["val_top1"] for r in rs]
        sd = statistics.stdev(test) if len(test) > 1 else float("nan")
        vsd = statistics.stdev(val) if len(val) > 1 else float("nan")
        means[arm] = (statistics.mean(test), sd, len(test))
        per_seed = ", ".join(f"{r['seed']}: {r['test_top1']:.2f}" for r in rs)
        print(
            f"| {arm} | {best[arm]} | {len(rs)} | {per_seed} | {statistics.mean(test):.2f} ± {sd:.2f} | "
            f"{statistics.mean(val):.2f} ± {vsd:.2f} |"
        )
    longer = sorted(RAW.glob("ft_*_e[0-9]*.json"))
    if longer:
        print("\nbudget check (chosen blr, more epochs):")
        print("| run | epochs | val top-1 | test top-1 | final train loss | val curve (epoch:top-1) |")
        print("|---|---:|---:|---:|---:|---|")
        for path in longer:
            m = json.loads(path.read_text())
            curve = " ".join(f"{e}:{v}" for e, v in m["eval_finetune/val_top1_per_epoch"])
            print(
                f"| {path.stem} | {m['eval_finetune/epochs']} | {m['eval_finetune/val_top1']:.2f} | "
                f"{m['eval_finetune/test_top1']:.2f} | {m['eval_finetune/train_loss']:.3f} | {curve} |"
            )
    if len(means) == 2:
        gap = means["mae"][0] - means["random"][0]
        print(f"\ngap mae - random (test mean): {gap:+.2f} points")


if __name__ == "__main__":
    main()
