"""The "framework tax": a training step through mae_zoo's Lightning path vs a bare PyTorch step.

Both sides train the same ``ImageMAE`` (same composed Hydra config, same init seed, same
precision, same fused AdamW and parameter groups, same LR schedule) on the same batches:

* ``lightning``: ``mae_zoo.train.build(cfg)`` gives module, datamodule and trainer, exactly as
  ``python -m mae_zoo.train`` builds them; ``trainer.fit`` then runs ``warmup + steps`` steps.
  A small callback timestamps every ``on_train_batch_end``; a step time is the gap between two
  consecutive calls, so it includes fetching the batch, Lightning's hooks, the precision plugin,
  ``training_step`` (mask RNG, finite check, four ``self.log`` calls), backward, the optimizer
  closure and ``step``, the LR scheduler and the progress bar.
* ``bare``: a plain loop over the same loader: ``autocast? -> model(batch, generator=g) ->
  backward -> AdamW.step -> zero_grad -> scheduler.step``, timestamped the same way.

Data (``--data``): ``memory`` (default) pre-collects a few real, augmented batches from the
datamodule's train loader once and serves them, cycled, from an in-memory ``DataLoader``
(``batch_size=None``, no workers) to both sides, so augmentation and collation are excluded from
both; ``loader`` makes both iterate the real train dataloader (``data.num_workers``, 0 by
default here), so they both pay for augmentation.

Blocks of the variants alternate (rotated order every round) so machine drift hits all alike;
each block builds a fresh model (and, for Lightning, a fresh trainer) and drops its first
``--warmup`` steps. The shared datamodule's ``setup`` runs once (the shapes set is generated
once, not per block).

    python bench/framework_overhead.py
    python bench/framework_overhead.py --precision 32-true
    python bench/framework_overhead.py --variants lightning lightning_nobar bare -o logger=csv
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

from _common import MatmulProbe, environment, summary, warn_if_busy, write_json

from mae_zoo.core.optim import WarmupCosine, build_optimizer, param_groups, scaled_lr
from mae_zoo.train import build
from mae_zoo.utils.instantiate import instantiate_checked

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"

BASE_OVERRIDES = [
    "model=vit_mini",
    "print_config=false",
    "logger=none",
    "callbacks=none",  # no checkpoint/picture callbacks; Lightning's default TQDM bar stays
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=0",  # no validation inside the timed window
    "trainer.enable_model_summary=false",
    "+trainer.enable_checkpointing=false",  # else Lightning adds a ModelCheckpoint (runs after the steps anyway)
]
# Extra overrides per Lightning variant.
VARIANTS: dict[str, list[str]] = {
    "lightning": [],
    "lightning_nobar": ["+trainer.enable_progress_bar=false"],
    "lightning_csv": ["logger=csv"],
}


def compose_cfg(overrides: list[str], run_dir: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.run_dir = str(run_dir)
    return cfg


class _Cycle(Dataset):
    """``length`` items cycling through a few pre-collated batches (no copies)."""

    def __init__(self, batches: list[Any], length: int) -> None:
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Any:
        return self.batches[i % len(self.batches)]


class StepTimer(pl.Callback):
    """Timestamps of every on_train_batch_start / on_train_batch_end, and of fit start."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.fit_start: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())


def gaps(ends: list[float], warmup: int) -> list[float]:
    """Step times from consecutive end stamps, dropping the first ``warmup`` steps."""
    return (
        [b - a for a, b in zip(ends[warmup - 1 :], ends[warmup:])]
        if warmup >= 1
        else [b - a for a, b in itertools.pairwise(ends)]
    )


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="mae_zoo_bench_"))
        self.total_steps = args.warmup + args.steps
        self.overrides = [
            *BASE_OVERRIDES,
            f"trainer.precision={args.precision}",
            f"seed={args.seed}",
            *list(args.override),
        ]
        cfg = self.cfg("lightning", 0)
        torch.set_float32_matmul_precision(cfg.get("matmul_precision", "high"))  # as mae_zoo.train.train does
        # One shared datamodule; its setup (dataset generation) runs once, here.
        self.datamodule = instantiate_checked(cfg.data, _convert_="all")
        self.datamodule.setup("fit")
        self.batch_size = int(self.datamodule.batch_size)
        if args.data == "memory":
            real = iter(self.datamodule.train_dataloader())
            batches = [next(real) for _ in range(args.distinct_batches)]
            loader = DataLoader(_Cycle(batches, self.total_steps), batch_size=None, shuffle=False, num_workers=0)
            self.loader_factory = lambda: loader
            self.datamodule.train_dataloader = self.loader_factory  # the Lightning side gets the same loader
        else:
            self.loader_factory = self.datamodule.train_dataloader
        _, _, trainer = build(cfg)
        self.precision = str(trainer.precision)
        self.cfg0 = cfg

    def cfg(self, variant: str, block: int) -> DictConfig:
        extra = VARIANTS.get(variant, [])
        return compose_cfg(
            self.overrides + extra + [f"trainer.max_steps={self.total_steps}"], self.tmp / f"{variant}_{block}"
        )

    def autocast(self):
        if "bf16" in self.precision:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        if "16" in self.precision:
            raise SystemExit(f"precision {self.precision} is not handled by the bare loop")
        return nullcontext()

    # ------------------------------------------------------------------------------ blocks
    def lightning_block(self, variant: str, block: int) -> dict[str, Any]:
        cfg = self.cfg(variant, block)
        pl.seed_everything(self.args.seed, workers=True, verbose=False)
        module, _, trainer = build(cfg)
        if str(trainer.precision) != self.precision:
            raise RuntimeError(f"precision changed: {trainer.precision} vs {self.precision}")
        timer = StepTimer()
        trainer.callbacks.append(timer)
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=self.datamodule)
        t1 = time.perf_counter()
        if len(timer.ends) != self.total_steps:
            raise RuntimeError(f"{variant}: expected {self.total_steps} steps, got {len(timer.ends)}")
        inner = [e - s for s, e in zip(timer.starts, timer.ends)][self.args.warmup :]
        return {
            "step_s": gaps(timer.ends, self.args.warmup),
            "inner_s": inner,  # on_train_batch_start -> on_train_batch_end
            "fit_wall_s": t1 - t0,
            "to_first_batch_s": timer.starts[0] - t0,
            "after_last_batch_s": t1 - timer.ends[-1],
            "final_loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
        }

    def bare_block(self, block: int) -> dict[str, Any]:
        cfg = self.cfg("bare", block)
        pl.seed_everything(self.args.seed, workers=True, verbose=False)
        model = instantiate_checked(cfg.module, _recursive_=False, _convert_="all").train()
        optim = cfg.optim
        lr = optim.get("lr") or scaled_lr(optim.blr, self.batch_size)
        # fused, as MaskedAutoencoder.configure_optimizers builds it on CPU and CUDA
        optimizer = build_optimizer(
            "adamw", param_groups(model, optim.weight_decay), lr, tuple(optim.betas), fused=True
        )
        per_epoch = len(self.loader_factory())
        warmup_steps = optim.get("warmup_steps")
        if warmup_steps is None:
            warmup_steps = round(optim.get("warmup_epochs", 0) * per_epoch)
        warmup_steps = min(int(warmup_steps), max(0, self.total_steps - 1))
        schedule = WarmupCosine(warmup_steps, self.total_steps, min_factor=optim.get("min_lr", 0.0) / lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        gen = torch.Generator().manual_seed(self.args.seed)
        ends: list[float] = []
        t0 = time.perf_counter()
        loss = None
        for i, batch in enumerate(self.loader_factory()):
            if i == self.total_steps:
                break
            with self.autocast():
                loss = model(batch, generator=gen).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            ends.append(time.perf_counter())
        t1 = time.perf_counter()
        return {
            "step_s": gaps(ends, self.args.warmup),
            "fit_wall_s": t1 - t0,
            "final_loss": float(loss.detach()) if loss is not None else float("nan"),
        }


def markdown(result: dict[str, Any]) -> str:
    v = result["variants"]
    bare = v.get("bare")
    lines = [
        f"### Framework overhead: {result['model']} ({result['params_M']:.2f} M params), batch {result['batch_size']}, "
        f"precision {result['precision']}, data {result['data']}; {result['rounds']} rounds x "
        f"{result['steps']} timed steps per block after {result['warmup']} warm-up",
        "",
        "| variant | median step s (p25-p75) | img/s | / bare (pooled medians) | / bare (median of per-round ratios) "
        "| per-round medians s | fit wall s (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in v.items():
        s = e["pooled"]
        r_pooled = f"**{e['ratio_to_bare_pooled']:.3f}**" if "ratio_to_bare_pooled" in e else "-"
        r_rounds = ""
        if "ratio_to_bare_rounds" in e:
            rr = e["ratio_to_bare_rounds"]
            r_rounds = f"{rr['median']:.3f} ({rr['min']:.3f}-{rr['max']:.3f})"
        per_round = ", ".join(f"{x:.4f}" for x in e["round_medians"])
        lines.append(
            f"| {name} | {s['median']:.4f} ({s['p25']:.4f}-{s['p75']:.4f}) | {result['batch_size'] / s['median']:.1f} | "
            f"{r_pooled if bare is not None and name != 'bare' else ('1.000' if name == 'bare' else '-')} | "
            f"{r_rounds or '-'} | {per_round} | {summary(e['fit_wall_s'])['median']:.2f} |"
        )
    probe = result["probe"]
    lines += [
        "",
        (
            "Per-step Lightning tax (median Lightning - median bare): "
            + ", ".join(
                f"{n}: {(e['pooled']['median'] - bare['pooled']['median']) * 1e3:+.1f} ms"
                for n, e in v.items()
                if n != "bare"
            )
            + "."
        )
        if bare is not None
        else "",
        f"fp32 matmul probe ({probe['size']}^3, once per block): median {probe['median_gflops']:.0f} GFLOP/s, "
        f"min {probe['min_gflops']:.0f} (min/median {probe['min_over_median']:.2f}"
        f"{'' if probe['stable'] else ' - UNSTABLE, rerun'}).",
    ]
    for name, e in v.items():
        if "to_first_batch_s" in e:
            lines.append(
                f"{name}: trainer.fit start-up to first batch {summary(e['to_first_batch_s'])['median']:.2f} s, "
                f"teardown after last batch {summary(e['after_last_batch_s'])['median']:.2f} s (median per block; "
                f"not in the step times)."
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--precision",
        default="auto",
        help="trainer.precision: 32-true, bf16-mixed, or auto (here the hardware rule: build() measures nothing)",
    )
    parser.add_argument("--variants", nargs="+", default=["lightning", "bare"], choices=[*VARIANTS, "bare"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per block")
    parser.add_argument("--warmup", type=int, default=3, help="steps dropped at the start of every block")
    parser.add_argument("--data", choices=["memory", "loader"], default="memory")
    parser.add_argument(
        "--distinct-batches", type=int, default=4, help="memory mode: real batches collected once and cycled"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--override", action="append", default=[], help="extra Hydra override (repeatable)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "framework_overhead.json"))
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*num_workers.*")
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    busy = warn_if_busy()
    if busy:
        print(busy, flush=True)
    env = environment()
    bench = Bench(args)
    model_probe = instantiate_checked(bench.cfg0.module, _recursive_=False, _convert_="all")
    params = sum(p.numel() for p in model_probe.parameters()) / 1e6
    del model_probe
    print(
        f"model {bench.cfg0.module._target_} {params:.2f} M params, batch {bench.batch_size}, "
        f"precision {bench.precision}, data {args.data}, overrides {bench.overrides}",
        flush=True,
    )

    probe = MatmulProbe()
    per: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    start = time.perf_counter()
    for r in range(args.rounds):
        k = r % len(args.variants)
        order = args.variants[k:] + args.variants[:k]
        msg = []
        for variant in order:
            out = bench.bare_block(r) if variant == "bare" else bench.lightning_block(variant, r)
            per[variant].append(out)
            msg.append(f"{variant} {summary(out['step_s'])['median']:.4f}")
            gf = probe()
        print(
            f"round {r + 1}/{args.rounds}: median step s " + ", ".join(msg) + f" | probe {gf:.0f} GFLOP/s", flush=True
        )
    wall = time.perf_counter() - start

    variants: dict[str, Any] = {}
    for name, blocks in per.items():
        pooled = [t for b in blocks for t in b["step_s"]]
        entry: dict[str, Any] = {
            "pooled": summary(pooled),
            "round_medians": [summary(b["step_s"])["median"] for b in blocks],
            "fit_wall_s": [b["fit_wall_s"] for b in blocks],
            "final_loss": [b["final_loss"] for b in blocks],
            "blocks": blocks,
        }
        if "to_first_batch_s" in blocks[0]:
            entry["to_first_batch_s"] = [b["to_first_batch_s"] for b in blocks]
            entry["after_last_batch_s"] = [b["after_last_batch_s"] for b in blocks]
            entry["inner"] = summary([t for b in blocks for t in b["inner_s"]])
        variants[name] = entry
    if "bare" in variants:
        bare = variants["bare"]
        for name, entry in variants.items():
            if name == "bare":
                continue
            entry["ratio_to_bare_pooled"] = entry["pooled"]["median"] / bare["pooled"]["median"]
            entry["ratio_to_bare_rounds"] = summary(
                [a / b for a, b in zip(entry["round_medians"], bare["round_medians"])]
            )
            entry["tax_ms_per_step"] = (entry["pooled"]["median"] - bare["pooled"]["median"]) * 1e3
    result = {
        "benchmark": "framework_overhead",
        "model": bench.cfg0.module._target_.rsplit(".", 1)[-1]
        + " "
        + str([o for o in bench.overrides if o.startswith("model=")]),
        "params_M": params,
        "batch_size": bench.batch_size,
        "precision": bench.precision,
        "matmul_precision": torch.get_float32_matmul_precision(),
        "data": args.data,
        "rounds": args.rounds,
        "steps": args.steps,
        "warmup": args.warmup,
        "overrides": bench.overrides,
        "variant_overrides": {v: VARIANTS.get(v, []) for v in args.variants},
        "wall_s": wall,
        "probe": probe.report(),
        "variants": variants,
    }
    print("\n" + markdown(result) + "\n", flush=True)
    shutil.rmtree(bench.tmp, ignore_errors=True)  # per-block run dirs (empty: no logger, no checkpoints)
    path = write_json(args.out, {"environment": env, "busy_warning": busy, "args": vars(args), **result})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
