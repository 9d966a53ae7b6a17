"""Does ``trainer.precision=auto`` pick the faster precision? Its choice against measured fp32 / bf16 steps.

For each config the script builds the module and datamodule as ``python -m mae_zoo.train`` composes
them, then

1. runs the start-up probe (:func:`mae_zoo.utils.precision.choose_precision`, cache off) ``--probes``
   times, exactly as training runs it (``precision_probe`` of conf/train.yaml: 2 warm-up + 5 timed
   forward/backward steps per candidate, interleaved), and records each choice;
2. measures the full training step independently: forward (under autocast for bf16) + backward +
   fused AdamW step + zero_grad, each precision with its own copy of the model and optimizer, on a few
   real training batches cycled; blocks of ``--steps`` timed steps (after one warm-up step) alternate
   between the precisions with the order rotated every round, and a 2048^3 fp32 matmul probe runs
   once per round (a minimum far below its median means the machine's speed changed: rerun);
3. says whether the probe's choice was the faster precision. A gain under ``min_gain`` counts fp32 as
   right (auto keeps fp32 unless the reduced precision wins by that much).

Configs: ``default`` = the ``make train`` job (``experiment=mae_shapes``: vit_mini, patch 4, 32 px,
batch 128); ``tiny`` = ``bench/step_time.py --config tiny`` (ViT-Ti encoder 192x12, decoder 128x4,
32 px patch 4, batch 64); ``vitb`` = ViT-B/16 MAE at 224 px, batch 8 (the step_time vitb shape).

    python bench/precision_auto.py                       # make bench-precision
    python bench/precision_auto.py --configs default --probes 5 --rounds 6
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MatmulProbe, environment, summary, warn_if_busy, write_json

from mae_zoo.core.optim import build_optimizer, param_groups
from mae_zoo.utils import precision as P
from mae_zoo.utils.instantiate import instantiate_checked

ROOT = Path(__file__).resolve().parent.parent
COMMON = ["print_config=false", "logger=none", "callbacks=none", "data.num_workers=0"]
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {"overrides": ["experiment=mae_shapes", "data.num_train=1024"], "steps": 5, "rounds": 4},
    "tiny": {
        "overrides": [
            "model=vit_tiny",
            "model.patch_size=4",
            "model.decoder.embed_dim=128",
            "model.decoder.depth=4",
            "model.decoder.num_heads=4",
            "data.batch_size=64",
            "data.num_train=1024",
        ],
        "steps": 5,
        "rounds": 4,
    },
    "vitb": {
        "overrides": ["model=vit_base", "data.image_size=224", "data.batch_size=8", "data.num_train=64"],
        "steps": 3,
        "rounds": 3,
        "probes": 2,  # a probe is 14 ViT-B steps
    },
}


def compose_cfg(overrides: list[str]) -> Any:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*COMMON, *overrides])


def autocast(name: str) -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16) if name.startswith("bf16") else nullcontext()


def run_config(name: str, args: argparse.Namespace, probe: MatmulProbe) -> dict[str, Any]:
    spec = CONFIGS[name]
    cfg = compose_cfg(spec["overrides"] + list(args.override))
    pl.seed_everything(0, verbose=False)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "high"))  # as mae_zoo.train.train does
    module = instantiate_checked(cfg.module, _recursive_=False, _convert_="all")
    module.configure_model()
    datamodule = instantiate_checked(cfg.data, _convert_="all")
    settings = P.ProbeSettings.from_config({**dict(cfg.precision_probe), "cache": False})
    params = sum(p.numel() for p in module.parameters()) / 1e6
    print(f"== {name}: {params:.2f} M params, batch {datamodule.batch_size}, {spec['overrides']}", flush=True)

    probes = []
    n_probes = args.probes or spec.get("probes", 3)
    for i in range(n_probes):
        t0 = time.perf_counter()
        choice = P.choose_precision(module, datamodule, "cpu", settings)
        probes.append(
            {"precision": choice.precision, "how": choice.how, "step_s": choice.step_s, "reason": choice.reason}
        )
        print(f"  probe {i + 1}/{n_probes}: {choice.message()} [{time.perf_counter() - t0:.1f} s]", flush=True)
    names = ["bf16-mixed", "32-true"]  # measured on every CPU, also where auto's only candidate is fp32

    # Independent measurement: full training steps, each precision on its own copy.
    loader = iter(datamodule.train_dataloader())
    batches = [next(loader) for _ in range(2)]
    del loader
    peers = {}
    for n in names:
        model = copy.deepcopy(module).train()
        opt = build_optimizer("adamw", param_groups(model, 0.05), 1e-4, (0.9, 0.95), fused=True)
        peers[n] = (model, opt)
    generator = torch.Generator().manual_seed(0)
    step_i = 0

    def step(n: str) -> float:
        nonlocal step_i
        model, opt = peers[n]
        batch = batches[step_i % len(batches)]
        step_i += 1
        t0 = time.perf_counter()
        with autocast(n):
            loss = model(batch, generator=generator).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    steps, rounds = args.steps or spec["steps"], args.rounds or spec["rounds"]
    times: dict[str, list[float]] = {n: [] for n in names}
    round_medians: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            step(n)  # warm-up: the other precision's kernels ran last
            block = [step(n) for _ in range(steps)]
            times[n].extend(block)
            round_medians[n].append(statistics.median(block))
        gf = probe()
        print(
            f"  round {r + 1}/{rounds}: "
            + ", ".join(f"{n} {round_medians[n][-1]:.3f} s" for n in names)
            + f" | probe {gf:.0f} GFLOP/s",
            flush=True,
        )
    med = {n: statistics.median(v) for n, v in times.items()}
    result: dict[str, Any] = {
        "config": name,
        "overrides": spec["overrides"] + list(args.override),
        "params_M": params,
        "batch_size": datamodule.batch_size,
        "probe_settings": {k: getattr(settings, k) for k in ("warmup", "steps", "min_gain")},
        "probes": probes,
        "auto_choices": [p["precision"] for p in probes],
        "measured": {n: summary(v) for n, v in times.items()},
        "round_medians": round_medians,
        "rounds": rounds,
        "steps_per_block": steps,
    }
    if "bf16-mixed" in med and "32-true" in med:
        ratio = med["bf16-mixed"] / med["32-true"]
        per_round = [b / f for b, f in zip(round_medians["bf16-mixed"], round_medians["32-true"])]
        right = "bf16-mixed" if 1 - ratio >= settings.min_gain else "32-true"
        result.update(
            bf16_over_fp32=ratio,
            bf16_over_fp32_rounds=summary(per_round),
            right_choice=right,
            auto_right=sum(c == right for c in result["auto_choices"]),
        )
    return result


def markdown(results: list[dict[str, Any]], probe: dict[str, Any]) -> str:
    lines = [
        "| config | params M | batch | fp32 step s (p25-p75) | bf16 step s (p25-p75) | bf16 / fp32 (per-round range) "
        "| faster (gain >= min_gain) | auto chose | probe's bf16/fp32 (each probe) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["measured"]
        f, b = m.get("32-true"), m.get("bf16-mixed")
        cell = lambda s: f"{s['median']:.3f} ({s['p25']:.3f}-{s['p75']:.3f})" if s else "-"  # noqa: E731
        rr = r.get("bf16_over_fp32_rounds", {})
        probe_ratios = ", ".join(
            f"{p['step_s']['bf16-mixed'] / p['step_s']['32-true']:.2f}"
            for p in r["probes"]
            if {"bf16-mixed", "32-true"} <= set(p["step_s"])
        )
        choices = ", ".join(r["auto_choices"])
        lines.append(
            f"| {r['config']} | {r['params_M']:.1f} | {r['batch_size']} | {cell(f)} | {cell(b)} | "
            f"{r.get('bf16_over_fp32', float('nan')):.3f} ({rr.get('min', float('nan')):.2f}-{rr.get('max', float('nan')):.2f}) | "
            f"{r.get('right_choice', '-')} | {choices} ({r.get('auto_right', 0)}/{len(r['auto_choices'])} right) | "
            f"{probe_ratios} |"
        )
    lines.append(
        f"\nfp32 matmul probe ({probe['size']}^3, once per round): median {probe['median_gflops']:.0f} GFLOP/s, "
        f"min/median {probe['min_over_median']:.2f}{'' if probe['stable'] else ' - UNSTABLE: the machine speed changed'}."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument(
        "--probes", type=int, default=None, help="start-up probes per config, each afresh (default 3; vitb 2)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="measurement rounds (default per config)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per block (default per config)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-o", "--override", action="append", default=[], help="extra Hydra override (repeatable)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "precision_auto.json"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    busy = warn_if_busy()
    if busy:
        print(busy, flush=True)
    env = environment()
    probe = MatmulProbe()
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    for name in args.configs:
        results.append(run_config(name, args, probe))
        report = probe.report()
        # after every config: a run stopped later still leaves the configs it finished
        path = write_json(
            args.out,
            {
                "environment": env,
                "load_average_end": os.getloadavg(),
                "busy_warning": busy,
                "args": vars(args),
                "wall_s": time.perf_counter() - start,
                "matmul_probe": report,
                "results": results,
            },
        )
        print("\n" + markdown(results, report) + "\n", flush=True)
        print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
