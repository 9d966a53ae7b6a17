"""A third linear protocol on the cached probe features: full-batch L-BFGS logistic regression on
standardised features (L2 1e-4, 500 iterations), for every encoder and the raw log-mel maps of both
splits. Added after the two mini-batch probes (LARS, AdamW) under-fitted the encoder features.

Which cache file holds which (encoder, split) is not written in the cache; each file is identified by
recomputing the weighted kNN top-1 (k 20, T 0.07, the evaluator's function) from it and matching the
recorded ``eval_knn_<split>_<tag>/metrics.json`` (raw log-mel files are the ``features_pixels_*`` ones,
told apart by their train size), and the match must be unique.

python experiments/audiomae_fsdd/logreg.py [runs/audiomae_fsdd]  -> logreg.json here
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from mae_zoo.evaluation.knn import knn_scores

HERE = Path(__file__).resolve().parent
SIZES = {2700: "standard", 2500: "speaker"}


def logreg(x: torch.Tensor, y: torch.Tensor, vx: torch.Tensor, vy: torch.Tensor) -> dict[str, float]:
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, vx = (x - mean) / std, (vx - mean) / std
    w = torch.zeros(x.shape[1], 10, requires_grad=True)
    b = torch.zeros(10, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 1e-4 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return {
            "train_top1": 100.0 * float(((x @ w + b).argmax(1) == y).float().mean()),
            "top1": 100.0 * float(((vx @ w + b).argmax(1) == vy).float().mean()),
        }


def main(source: Path) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    recorded = {}
    for path in source.glob("eval_knn_*/metrics.json"):
        _, _, split, tag = path.parent.name.split("_", 3)
        recorded[(split, tag)] = json.loads(path.read_text())["eval_knn/top1"]
    out: dict = {}
    target = HERE / ("logreg.json" if source.name == "audiomae_fsdd" else f"logreg_{source.name}.json")
    previous = json.loads(target.read_text()) if target.is_file() else {}
    for cache in sorted((source / "feature_cache").glob("features_*.pt")):
        d = torch.load(cache, weights_only=True)
        x, y, vx, vy = d["train_x"].float(), d["train_y"].long(), d["val_x"].float(), d["val_y"].long()
        split = SIZES[x.shape[0]]
        if cache.name.startswith("features_pixels_"):
            name = (split, "logmel")
        else:
            knn = 100.0 * float((knn_scores(x, y, vx, 10).argmax(1) == vy).float().mean())
            names = [k for k, v in recorded.items() if k[0] == split and k[1] != "logmel" and abs(v - knn) < 0.01]
            if len(names) == 2:  # equal kNN scores: run.sh extracts the pre-trained encoder's features first
                first = min(
                    (p for p in (source / "feature_cache").glob("features_embed_*.pt") if p != cache),
                    key=lambda p: abs(p.stat().st_mtime - cache.stat().st_mtime),
                )
                earlier = cache.stat().st_mtime < first.stat().st_mtime
                names = [(split, "pretrained" if earlier else "random_init")]
                print(f"{cache.name}: kNN tie, told apart by extraction order: {names[0]}")
            if len(names) != 1:
                print(f"{cache.name}: kNN {knn:.4f} matches {names}: skipped")
                continue
            name = names[0]
        key = f"{name[0]}/{name[1]}"
        if previous.get(key, {}).get("cache") == cache.name:  # the same features: reuse (pixels take minutes)
            out[key] = previous[key]
        else:
            out[key] = {"cache": cache.name, **logreg(x, y, vx, vy)}
        print(name, out[key])
    target.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/audiomae_fsdd"))
