"""GraphMAE pre-training epoch time on Cora: mae_zoo through Lightning vs a plain torch-geometric loop.

An epoch is one full-batch optimizer step on the whole graph (GraphMAE's transductive setting).

* ``lightning``: ``mae_zoo.train.build(cfg)`` with ``experiment=graphmae_cora`` (exactly what
  ``python -m mae_zoo.train experiment=graphmae_cora`` builds: Trainer, progress bar, CSV logger,
  checkpoint callback, validation off for the timed epochs); a callback timestamps each
  ``on_train_batch_end``, an epoch time is the gap between two.
* ``plain``: a hand-written PyG loop a researcher would write: two ``GATConv`` layers (4 heads x 128,
  PReLU) + bias-free Linear + one-head ``GATConv`` decoder, GraphMAE's masking with [MASK] and
  random-node replacement, re-masking, SCE, ``torch.optim.Adam`` + cosine ``LambdaLR``; no mae_zoo code.

Both run fp32 (the graph modality's precision) on the same Cora graph with the same sizes. Blocks
alternate (order rotated each round); each block drops its first ``--warmup`` epochs.

    python bench/graph_epoch.py --root ../shared/data/planetoid
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict
from torch_geometric.nn import GATConv

sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

from _common import MatmulProbe, environment, summary, warn_if_busy, write_json

ROOT = Path(__file__).resolve().parents[1]


class PlainGraphMAE(nn.Module):
    def __init__(self, in_dim: int, hidden: int = 512, heads: int = 4) -> None:
        super().__init__()
        self.enc1 = GATConv(in_dim, hidden // heads, heads=heads, dropout=0.1)
        self.enc2 = GATConv(hidden, hidden // heads, heads=heads, dropout=0.1)
        self.act1, self.act2 = nn.PReLU(), nn.PReLU()
        self.to_dec = nn.Linear(hidden, hidden, bias=False)
        self.dec = GATConv(hidden, in_dim, heads=1, dropout=0.1)
        self.token = nn.Parameter(torch.zeros(1, in_dim))

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, mask_rate: float = 0.5, replace: float = 0.05
    ) -> torch.Tensor:
        n = x.shape[0]
        perm = torch.randperm(n)
        m = int(mask_rate * n)
        masked = perm[:m]
        order = torch.randperm(m)
        tokens, noise = masked[order[: int((1 - replace) * m)]], masked[order[-int(replace * m) :]]
        h = x.clone()
        h[tokens] = 0.0
        h[noise] = x[torch.randperm(n)[: int(replace * m)]]
        h[tokens] += self.token
        h = self.act1(self.enc1(F.dropout(h, 0.2, self.training), edge_index))
        h = self.act2(self.enc2(F.dropout(h, 0.2, self.training), edge_index))
        rep = self.to_dec(h)
        rep[masked] = 0
        rec = self.dec(F.dropout(rep, 0.2, self.training), edge_index)
        cos = (F.normalize(rec[masked], dim=-1) * F.normalize(x[masked], dim=-1)).sum(-1)
        return (1 - cos).pow(3).mean()


class EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.stamps.append(time.perf_counter())


def lightning_block(root: str, cache: str, epochs: int, warmup: int, extra: Sequence[str] = ()) -> list[float]:
    """Epoch times of ``python -m mae_zoo.train experiment=graphmae_cora`` (plus ``extra`` overrides)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "experiment=graphmae_cora",
                f"data.root={root}",
                f"data.cache_dir={cache}",
                f"trainer.max_epochs={epochs + warmup}",
                "trainer.check_val_every_n_epoch=100000",
                "final_eval=null",
                "results_file=null",
                "print_config=false",
                *extra,
            ],
        )
    run_dir = tempfile.mkdtemp(prefix="bench_graph_")
    with open_dict(cfg):
        cfg.paths.run_dir = run_dir
    from mae_zoo.train import build

    module, datamodule, trainer = build(cfg)
    timer = EpochTimer()
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=datamodule)
    shutil.rmtree(run_dir, ignore_errors=True)
    gaps = [b - a for a, b in zip(timer.stamps, timer.stamps[1:])]
    return gaps[warmup:]


def plain_block(data, epochs: int, warmup: int) -> list[float]:
    torch.manual_seed(0)
    model = PlainGraphMAE(data.x.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=2e-4)
    total = epochs + warmup
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda e: (1 + torch.cos(torch.tensor(e * torch.pi / total)).item()) * 0.5
    )
    stamps = [time.perf_counter()]
    model.train()
    for _ in range(total):
        loss = model(data.x, data.edge_index)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        stamps.append(time.perf_counter())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return gaps[warmup + 1 :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "planetoid"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "graph_epoch_cora.json"))
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    busy = warn_if_busy()
    if busy:
        print(busy)
    cache = tempfile.mkdtemp(prefix="bench_graph_cache_")
    from mae_zoo.data.graph import PlanetoidDataModule

    data = PlanetoidDataModule(args.root, "Cora", cache_dir=cache).graphs()[0]
    probe = MatmulProbe()
    times: dict[str, list[float]] = {"lightning": [], "plain": []}
    for r in range(args.rounds):
        order = ["lightning", "plain"] if r % 2 == 0 else ["plain", "lightning"]
        for name in order:
            probe()
            block = (
                lightning_block(args.root, cache, args.epochs, args.warmup)
                if name == "lightning"
                else plain_block(data, args.epochs, args.warmup)
            )
            times[name] += block
            print(f"round {r} {name}: median {summary(block)['median'] * 1000:.1f} ms/epoch")
    stats = {k: summary(v) for k, v in times.items()}
    ratio = stats["lightning"]["median"] / stats["plain"]["median"]
    print(
        f"Cora epoch, median: mae_zoo/Lightning {stats['lightning']['median'] * 1000:.1f} ms, "
        f"plain PyG {stats['plain']['median'] * 1000:.1f} ms, ratio {ratio:.3f}"
    )
    write_json(
        args.out,
        {
            "environment": environment(),
            "args": vars(args),
            "epoch_s": stats,
            "ratio_lightning_over_plain": ratio,
            "probe": probe.report(),
            "busy_warning": busy,
        },
    )
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
