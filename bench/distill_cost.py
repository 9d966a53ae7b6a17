"""Step time of each distillation objective against plain MAE, at the same student.

One step = forward + backward + AdamW step + zero_grad on a fixed random batch (no loader, no
Lightning), as ``step_time.py``. The student is a ViT-S-like MAE on 32x32 images (patch 4, 64 tokens,
mask 0.75); the pre-trained teacher a wider, deeper MAE with its decoder, saved as an mae_zoo checkpoint
and read back through ``teacher=checkpoint`` (so its weights are random: cost does not depend on them).
Peers run round-robin, one step each per round, starting peer rotated; a matmul probe runs per round.

What the peers show: DMAE runs the teacher on the visible tokens only (25 % of them), MR-MAE and
MaskAlign on the whole input, G2SD the teacher's encoder on visible tokens plus its decoder on all;
``ema`` is MR-MAE against an EMA copy of the student (a student-sized teacher plus the EMA update).

    python bench/distill_cost.py --rounds 12 --out bench/results/distill_cost.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MatmulProbe, environment, summary, warn_if_busy, write_json

SIZES = {"img_size": 32, "patch_size": 4, "in_chans": 3, "optim": {"blr": 1.5e-4, "weight_decay": 0.05}}
STUDENT = {
    "encoder": {"embed_dim": 192, "depth": 6, "num_heads": 3},
    "decoder": {"embed_dim": 128, "depth": 2, "num_heads": 4},
}
TEACHER = {
    "encoder": {"embed_dim": 384, "depth": 8, "num_heads": 6},
    "decoder": {"embed_dim": 256, "depth": 4, "num_heads": 8},
}
MASK = {"_target_": "mae_zoo.masks.RandomMask", "ratio": 0.75}


def build(teacher: dict | None, distill: dict | None) -> Any:
    from mae_zoo.modalities.image import ImageMAE

    torch.manual_seed(0)
    model = ImageMAE(**STUDENT, **SIZES, mask=MASK, teacher=teacher, distill=distill)
    model.configure_model()
    return model.train()


def peers(ckpt: str) -> dict[str, tuple[dict | None, dict | None]]:
    checkpoint = {"_target_": "mae_zoo.teachers.CheckpointTeacher", "path": ckpt}
    with_decoder = {**checkpoint, "decoder": True}
    return {
        "plain": (None, None),
        "dmae": (checkpoint, {"_target_": "mae_zoo.distill.DMAE", "student_block": 3, "teacher_block": 5}),
        "mrmae": (checkpoint, {"_target_": "mae_zoo.distill.MRMAE"}),
        "maskalign": (checkpoint, {"_target_": "mae_zoo.distill.MaskAlign", "fusion": "sum"}),
        "g2sd": (with_decoder, {"_target_": "mae_zoo.distill.G2SD", "teacher_decoder_block": 1}),
        "ema": ({"_target_": "mae_zoo.teachers.EMATeacher"}, {"_target_": "mae_zoo.distill.MRMAE"}),
        "hybrid": (checkpoint, {"_target_": "mae_zoo.distill.HybridDistill", "relation_teacher": checkpoint}),
        "dmjd": (None, {"_target_": "mae_zoo.distill.DMJD"}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warn_if_busy()
    from mae_zoo.modalities.image import ImageMAE
    from mae_zoo.teachers import EMATeacher

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(1)
        teacher = ImageMAE(**TEACHER, **SIZES, mask=MASK)
        ckpt = str(Path(tmp) / "teacher.ckpt")
        meta = {"class": "mae_zoo.modalities.image.ImageMAE", "layout": teacher.layout.name}
        torch.save(
            {"mae_zoo": meta, "hyper_parameters": dict(teacher.hparams), "state_dict": teacher.state_dict()}, ckpt
        )
        models = {name: build(*spec) for name, spec in peers(ckpt).items()}
    optims = {
        n: torch.optim.AdamW(m.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05) for n, m in models.items()
    }
    images = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {n: [] for n in models}
    probe, names = MatmulProbe(), list(models)
    for r in range(args.rounds + args.warmup):
        probe()
        for name in names[r % len(names) :] + names[: r % len(names)]:
            model, optim = models[name], optims[name]
            g = torch.Generator().manual_seed(r)
            t0 = time.perf_counter()
            model(images, generator=g).loss.backward()
            optim.step()
            optim.zero_grad(set_to_none=True)
            if isinstance(model.teacher, EMATeacher):
                model.teacher.update(model)
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    plain = summary(times["plain"])["median"]
    result = {
        "environment": environment(),
        "args": vars(args) | {"out": str(args.out)},
        "student": STUDENT,
        "teacher": TEACHER,
        "probe": probe.report(),
        "peers": {n: summary(t) | {"vs_plain": summary(t)["median"] / plain} for n, t in times.items()},
    }
    for name, row in result["peers"].items():
        print(f"{name:10s} median {row['median'] * 1e3:7.1f} ms  x{row['vs_plain']:.2f} of plain MAE")
    print(f"probe min/median {result['probe']['min_over_median']:.2f}")
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
