"""GPU check (run on a CUDA machine): ViT-B/16 MAE training-step time, mae_zoo vs HF ViTMAEForPreTraining.

Same weights, same masks, fp32 and bf16 autocast, one step of each peer in turn (round-robin),
CUDA-synchronised wall time, median of the timed steps. Also reports the loss agreement.

    python bench/gpu_check.py --batch 64 --steps 30 --out bench/results/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mae_zoo.masks import RandomMask
from mae_zoo.modalities.image import ImageMAE
from mae_zoo.weights.hf_vitmae import hf_config_from_imagemae, load_imagemae_into_hf


def build(batch: int, device: str):
    torch.manual_seed(0)
    ours = ImageMAE(
        {"embed_dim": 768, "depth": 12, "num_heads": 12},
        {"embed_dim": 512, "depth": 8, "num_heads": 16},
        mask={"_target_": "mae_zoo.masks.RandomMask", "ratio": 0.75},
        optim={"blr": 1.5e-4, "weight_decay": 0.05},
        img_size=224,
        patch_size=16,
    ).to(device)
    from transformers import ViTMAEForPreTraining

    hf = ViTMAEForPreTraining(hf_config_from_imagemae(ours))
    load_imagemae_into_hf(hf, ours.state_dict())
    hf = hf.to(device)
    return ours, hf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default="bench/results/gpu_check.json")
    args = ap.parse_args()
    device = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    ours, hf = build(args.batch, device)
    opts = {
        name: torch.optim.AdamW(m.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
        for name, m in (("mae_zoo", ours), ("hf", hf))
    }
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    L = 196
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": args.batch}
    for precision in ("fp32(tf32)", "bf16"):
        times: dict[str, list[float]] = {"mae_zoo": [], "hf": []}
        losses: dict[str, list[float]] = {"mae_zoo": [], "hf": []}
        for step in range(args.warmup + args.steps):
            noise = torch.rand(args.batch, L, generator=torch.Generator().manual_seed(step))
            mask = RandomMask(0.75).from_noise(noise)
            order = ("mae_zoo", "hf") if step % 2 == 0 else ("hf", "mae_zoo")
            for name in order:
                torch.cuda.synchronize()
                t = time.perf_counter()
                with torch.autocast("cuda", torch.bfloat16, enabled=precision == "bf16"):
                    loss = (
                        ours(x, mask=mask).loss
                        if name == "mae_zoo"
                        else hf(pixel_values=x, noise=noise.to(device)).loss
                    )
                loss.backward()
                opts[name].step()
                opts[name].zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                if step >= args.warmup:
                    times[name].append(time.perf_counter() - t)
                    losses[name].append(loss.item())
        med = {k: statistics.median(v) for k, v in times.items()}
        results[precision] = {
            "median_step_s": med,
            "img_per_s": {k: args.batch / v for k, v in med.items()},
            "ratio_mae_zoo_over_hf": med["mae_zoo"] / med["hf"],
            "first_loss": {k: v[0] for k, v in losses.items()},
            "last_loss": {k: v[-1] for k, v in losses.items()},
        }
        print(precision, json.dumps(results[precision], indent=1))
    results["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
