"""Training-step time of mae_zoo's ImageMAE against transformers' ViTMAEForPreTraining.

One step = forward + backward + ``AdamW(lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05).step()``
(+ ``zero_grad(set_to_none=True)``) on a fixed random batch, no data loader, no Lightning.
Peers run in one process, round-robin, one step each in turn, with the starting peer rotated
every round so that machine drift hits all of them alike; a 2048^3 fp32 matmul probe runs once
per round. The first ``--warmup`` rounds are discarded.

Peers (per precision):
* ``ours``: ``mae_zoo.modalities.image.ImageMAE``, called as ``model(images, generator=g)``
  (the mask is drawn inside the forward, as in training);
* ``hf``:   ``transformers.ViTMAEForPreTraining`` built from ``hf_config_from_imagemae(ours)``
  (norm_pix_loss on, layer_norm_eps 1e-6, library-default attention = sdpa) and loaded with
  ours' weights, so both compute the same function (checked before timing); it draws its own
  noise with ``torch.rand`` inside the forward.

bf16 peers run the forward under ``torch.autocast("cpu", torch.bfloat16)`` (fp32 master weights,
backward and AdamW outside the autocast); they share the model and optimizer of the fp32 peer of
the same implementation.

    python bench/step_time.py --config tiny
    python bench/step_time.py --config vitb --steps 12
    python bench/step_time.py --config tiny vitb --precision fp32 bf16 --out bench/results/step_time.json
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MatmulProbe, environment, summary, warn_if_busy, write_json

ROOT = Path(__file__).resolve().parent.parent

CONFIGS: dict[str, dict[str, Any]] = {
    # CIFAR-size MAE: the overhead-sensitive config.
    "tiny": dict(img_size=32, patch_size=4, in_chans=3, enc=(192, 12, 3), dec=(128, 4, 4), batch=64, steps=30),
    # ViT-B/16 MAE with the official decoder: compute-bound.
    "vitb": dict(img_size=224, patch_size=16, in_chans=3, enc=(768, 12, 12), dec=(512, 8, 16), batch=8, steps=15),
    # ViT-S/16 MAE (decoder-dominated).
    "vits": dict(img_size=224, patch_size=16, in_chans=3, enc=(384, 12, 6), dec=(512, 8, 16), batch=8, steps=15),
}
MASK_RATIO = 0.75
LR, BETAS, WEIGHT_DECAY = 1.5e-4, (0.9, 0.95), 0.05


# ------------------------------------------------------------------------------------ models
def build_ours(cfg: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    from mae_zoo.modalities.image import ImageMAE

    torch.manual_seed(seed)
    (ed, edepth, eheads), (dd, ddepth, dheads) = cfg["enc"], cfg["dec"]
    return ImageMAE(
        encoder={"embed_dim": ed, "depth": edepth, "num_heads": eheads, "mlp_ratio": 4.0, "qkv_bias": True},
        decoder={"embed_dim": dd, "depth": ddepth, "num_heads": dheads, "mlp_ratio": 4.0},
        mask={"_target_": "mae_zoo.masks.RandomMask", "ratio": MASK_RATIO},
        optim={"blr": LR, "weight_decay": WEIGHT_DECAY},
        img_size=cfg["img_size"],
        in_chans=cfg["in_chans"],
        patch_size=cfg["patch_size"],
    )


def build_hf(ours: torch.nn.Module, attn_impl: str | None) -> torch.nn.Module:
    from transformers import ViTMAEForPreTraining

    from mae_zoo.weights.hf_vitmae import hf_config_from_imagemae, load_imagemae_into_hf

    config = hf_config_from_imagemae(ours)
    if attn_impl:
        config._attn_implementation = attn_impl
    assert config.norm_pix_loss and abs(config.layer_norm_eps - 1e-6) < 1e-12, config
    hf = ViTMAEForPreTraining(config)
    load_imagemae_into_hf(hf, ours.state_dict())  # same weights, position tables included
    return hf


@torch.no_grad()
def equivalence_check(ours: torch.nn.Module, hf: torch.nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Both models on the same images and noise: the losses must agree (same function, same work)."""
    gen = torch.Generator().manual_seed(99)
    noise = torch.rand(images.shape[0], ours.layout.num_tokens, generator=gen)
    mask = ours.mask_generator.from_noise(noise)
    ours.eval(), hf.eval()
    a = float(ours(images, mask=mask).loss)
    b = float(hf(pixel_values=images, noise=noise).loss)
    ours.train(), hf.train()
    return {"loss_ours": a, "loss_hf": b, "rel_diff": abs(a - b) / max(abs(b), 1e-12)}


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def analytic_gflop_per_step(cfg: dict[str, Any]) -> float:
    """Forward x3 (backward ~ 2x forward), HF/official layout: cls kept, patch embed on all patches.

    Per block with N tokens and width d: 24*N*d^2 (qkv, proj, 4x MLP) + 4*N^2*d (QK^T, AV).
    """
    p, c = cfg["patch_size"], cfg["in_chans"]
    tokens = (cfg["img_size"] // p) ** 2
    pdim = p * p * c
    (d, edepth, _), (dd, ddepth, _) = cfg["enc"], cfg["dec"]
    ne = int(tokens * (1 - MASK_RATIO)) + 1
    nd = tokens + 1
    fwd = (
        2 * tokens * pdim * d
        + edepth * (24 * ne * d * d + 4 * ne * ne * d)
        + 2 * ne * d * dd
        + ddepth * (24 * nd * dd * dd + 4 * nd * nd * dd)
        + 2 * nd * dd * pdim
    )
    return 3 * fwd * cfg["batch"] / 1e9


# ------------------------------------------------------------------------------------ peers
@dataclass
class Peer:
    name: str
    impl: str
    precision: str
    forward: Callable[[], torch.Tensor]
    optimizer: torch.optim.Optimizer
    times: list[float] = field(default_factory=list)
    fwd: list[float] = field(default_factory=list)
    bwd: list[float] = field(default_factory=list)
    opt: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def step(self, record: bool) -> float:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16" else nullcontext()
        t0 = time.perf_counter()
        with ctx:
            loss = self.forward()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"{self.name}: non-finite loss {value}")
        if record:
            self.times.append(t3 - t0)
            self.fwd.append(t1 - t0)
            self.bwd.append(t2 - t1)
            self.opt.append(t3 - t2)
            self.losses.append(value)
        return t3 - t0


def make_adamw(params: list[torch.nn.Parameter], impl: str) -> torch.optim.AdamW:
    """``default``: torch's choice (the single-tensor for-loop on CPU); ``foreach`` / ``fused``: forced."""
    kwargs: dict[str, Any] = {}
    if impl == "foreach":
        kwargs["foreach"] = True
    elif impl == "fused":
        kwargs["fused"] = True
    return torch.optim.AdamW(params, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, **kwargs)


def make_peers(
    cfg: dict[str, Any],
    impls: list[str],
    precisions: list[str],
    attn_impl: str | None,
    seed: int,
    adamw_impl: str = "default",
) -> tuple[list[Peer], dict[str, Any]]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(cfg["batch"], cfg["in_chans"], cfg["img_size"], cfg["img_size"], generator=gen)
    ours = build_ours(cfg, seed)
    info: dict[str, Any] = {}
    models: dict[str, torch.nn.Module] = {"ours": ours}
    if "hf" in impls:
        hf = build_hf(ours, attn_impl)
        models["hf"] = hf
        info["hf_attn_implementation"] = getattr(hf.config, "_attn_implementation", None)
        info["equivalence"] = equivalence_check(ours, hf, images)
    peers: list[Peer] = []
    for impl in impls:
        model = models[impl].train()
        info[f"params_{impl}_M"] = sum(p.numel() for p in model.parameters()) / 1e6
        info[f"trainable_{impl}_M"] = sum(p.numel() for p in trainable(model)) / 1e6
        # One optimizer per implementation, shared by its fp32 and bf16 peers.
        optimizer = make_adamw(trainable(model), adamw_impl)
        if impl == "ours":
            mask_gen = torch.Generator().manual_seed(seed + 1)

            def forward(m=model, g=mask_gen):
                return m(images, generator=g).loss
        else:

            def forward(m=model):
                return m(pixel_values=images).loss

        for precision in precisions:
            name = impl if precision == "fp32" else f"{impl}+bf16"
            peers.append(Peer(name, impl, precision, forward, optimizer))
    return peers, info


# ------------------------------------------------------------------------------------ running
def run_config(key: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = dict(CONFIGS[key])
    steps = args.steps or cfg["steps"]
    peers, info = make_peers(cfg, args.peers, args.precision, args.attn_impl, args.seed, args.adamw)
    if "equivalence" in info:
        eq = info["equivalence"]
        print(
            f"[{key}] equivalence: loss ours {eq['loss_ours']:.6f} vs hf {eq['loss_hf']:.6f} "
            f"(rel diff {eq['rel_diff']:.1e})",
            flush=True,
        )
    probe = MatmulProbe()
    rounds = args.warmup + steps
    start = time.perf_counter()
    for r in range(rounds):
        record = r >= args.warmup
        k = r % len(peers)
        order = peers[k:] + peers[:k]  # rotate the starting peer every round
        line = []
        for peer in order:
            dt = peer.step(record)
            line.append(f"{peer.name} {dt:.3f}")
        gc.collect()
        gf = probe()
        if args.verbose or r == 0 or (r + 1) % max(1, rounds // 5) == 0:
            tag = "warm-up" if not record else f"step {r - args.warmup + 1}/{steps}"
            print(
                f"[{key}] round {r + 1}/{rounds} ({tag}): " + ", ".join(line) + f" | probe {gf:.0f} GFLOP/s", flush=True
            )
    wall = time.perf_counter() - start

    gflop = analytic_gflop_per_step(cfg)
    probe_report = probe.report()
    results: dict[str, Any] = {}
    by_name = {p.name: p for p in peers}
    for peer in peers:
        s = summary(peer.times)
        entry: dict[str, Any] = {
            "impl": peer.impl,
            "precision": peer.precision,
            "step_s": s,
            "forward_s": summary(peer.fwd),
            "backward_s": summary(peer.bwd),
            "optimizer_s": summary(peer.opt),
            "img_per_s": cfg["batch"] / s["median"],
            "achieved_gflops": gflop / s["median"],
            "achieved_over_probe_median": gflop / s["median"] / probe_report["median_gflops"],
            "loss_first": peer.losses[0],
            "loss_last": peer.losses[-1],
            "times_s": peer.times,
        }
        hf_peer = by_name.get("hf" if peer.precision == "fp32" else "hf+bf16")
        if hf_peer is not None:
            entry["ratio_to_hf_median"] = s["median"] / statistics_median(hf_peer.times)
            # Same-round pairs: robust to slow drift between rounds.
            pairs = [a / b for a, b in zip(peer.times, hf_peer.times)]
            entry["ratio_to_hf_paired"] = summary(pairs)
        own_fp32 = by_name.get(peer.impl)
        if own_fp32 is not None and peer.precision != "fp32":
            entry["ratio_to_own_fp32"] = s["median"] / statistics_median(own_fp32.times)
        results[peer.name] = entry
    return {
        "config": key,
        "shape": cfg,
        "steps": steps,
        "warmup": args.warmup,
        "adamw": args.adamw,
        "analytic_gflop_per_step": gflop,
        "wall_s": wall,
        "info": info,
        "probe": probe_report,
        "peers": results,
    }


def statistics_median(xs: list[float]) -> float:
    return summary(xs)["median"]


def markdown(run: dict[str, Any]) -> str:
    cfg = run["shape"]
    probe = run["probe"]
    lines = [
        f"### {run['config']}: {cfg['img_size']}px patch {cfg['patch_size']}, encoder {cfg['enc'][0]}x{cfg['enc'][1]} "
        f"({cfg['enc'][2]} heads), decoder {cfg['dec'][0]}x{cfg['dec'][1]} ({cfg['dec'][2]} heads), batch {cfg['batch']}, "
        f"mask {MASK_RATIO}; {run['steps']} timed steps per peer after {run['warmup']} warm-up; AdamW {run['adamw']}",
        "",
        "| peer | median step s (p25-p75) | img/s | ours/HF (median; paired p25-p75) | bf16/own fp32 "
        "| fwd / bwd / opt s | GFLOP/s (analytic) | / probe |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in run["peers"].items():
        s = e["step_s"]
        ratio = "-"
        if e["impl"] == "ours" and "ratio_to_hf_median" in e:
            pr = e["ratio_to_hf_paired"]
            ratio = f"**{e['ratio_to_hf_median']:.3f}** ({pr['p25']:.3f}-{pr['p75']:.3f})"
        elif e["impl"] == "hf":
            ratio = "1.000"
        own = f"{e['ratio_to_own_fp32']:.3f}" if "ratio_to_own_fp32" in e else "-"
        lines.append(
            f"| {name} | {s['median']:.4f} ({s['p25']:.4f}-{s['p75']:.4f}) | {e['img_per_s']:.1f} | {ratio} | {own} | "
            f"{e['forward_s']['median']:.4f} / {e['backward_s']['median']:.4f} / {e['optimizer_s']['median']:.4f} | "
            f"{e['achieved_gflops']:.0f} | {e['achieved_over_probe_median']:.2f} |"
        )
    lines += [
        "",
        f"Analytic cost {run['analytic_gflop_per_step']:.1f} GFLOP/step. fp32 matmul probe ({probe['size']}^3, once per "
        f"round): median {probe['median_gflops']:.0f} GFLOP/s, min {probe['min_gflops']:.0f} "
        f"(min/median {probe['min_over_median']:.2f}{'' if probe['stable'] else ' - UNSTABLE, rerun'}), "
        f"max {probe['max_gflops']:.0f}.",
    ]
    eq = run["info"].get("equivalence")
    if eq:
        lines.append(
            f"Same weights and noise: loss ours {eq['loss_ours']:.6f}, HF {eq['loss_hf']:.6f} "
            f"(rel diff {eq['rel_diff']:.1e}); HF attention: {run['info'].get('hf_attn_implementation')}."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", default=["tiny"], choices=sorted(CONFIGS))
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--peers", nargs="+", default=["ours", "hf"], choices=["ours", "hf"])
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per peer (default: per config, tiny 30, vitb 15)"
    )
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--attn-impl", default=None, help="HF attention implementation (default: library default, sdpa)"
    )
    parser.add_argument(
        "--adamw",
        choices=["default", "foreach", "fused"],
        default="default",
        help="AdamW implementation for every peer (default: torch's choice, a for-loop on CPU)",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "step_time.json"))
    parser.add_argument("--verbose", action="store_true", help="print every round")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    busy = warn_if_busy()
    if busy:
        print(busy, flush=True)
    env = environment()
    runs = []
    for key in args.config:
        runs.append(run_config(key, args))
        print("\n" + markdown(runs[-1]) + "\n", flush=True)
    payload = {
        "benchmark": "step_time",
        "step": "forward + backward + AdamW(lr 1.5e-4, betas (0.9, 0.95), wd 0.05).step() + zero_grad",
        "environment": env,
        "busy_warning": busy,
        "args": vars(args),
        "runs": runs,
    }
    path = write_json(args.out, payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
