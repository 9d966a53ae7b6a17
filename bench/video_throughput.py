"""Is decoding the bottleneck of VideoMAE pre-training on this CPU?

Measures, in one process (each part alone, never concurrently):

* **loader clips/s**: ``VideoDataModule`` training loader (2 workers by default, persistent, the
  official multi-scale crop) on the shared Blender mp4s at the CPU clip size (16 frames, stride 4,
  32 px; the 26 files listed 10 times), with and without decode-time downscaling (``short_side``), and
  with ``num_sample`` 1 and 2;
  also the embedded moving shapes loader;
* **model clips/s**: the VideoMAE training step (forward with a fresh tube mask, backward, AdamW) of the
  default CPU config (``videomae_mini``, 16x32x32 clips, batch 32) in bf16 autocast (what
  ``trainer=default`` picks on CPU) and fp32, V1 and V2 (running-cell decoder mask).

    nice -n 15 python bench/video_throughput.py [--batches 12] [--steps 8] [--out bench/results/video_throughput.json]

Loader and model share the same 2 cores during real training, so the honest comparison is loader
clips/s against model clips/s *each measured alone*: training runs at roughly their harmonic
combination when both need the CPU. See bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import MatmulProbe, environment, summary, warn_if_busy, write_json
from mae_zoo.data.video import VideoDataModule
from mae_zoo.modalities.video import VideoMAE

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ROOT.parent / "shared" / "data" / "video" / "blender_open_movies"
MINI = {
    "encoder": {"embed_dim": 128, "depth": 4, "num_heads": 4},
    "decoder": {"embed_dim": 64, "depth": 2, "num_heads": 4},
}


def loader_rate(dm: VideoDataModule, batches: int) -> dict:
    """Clips/s of the training loader over ``batches`` batches after the first (which pays the
    worker start-up); one epoch must hold them all, so prefetching cannot hide decoding."""
    dm.setup("fit")
    loader = dm.train_dataloader()
    if len(loader) < batches + 1:
        raise SystemExit(f"the loader has {len(loader)} batches per epoch, need {batches + 1}")
    times, clips = [], 0
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        t0 = time.perf_counter()
        clips += next(iterator)[0].shape[0]
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    del iterator
    return {"clips_per_s": clips / total, "wait_per_batch_s": summary(times), "clips": clips, "skipped": dm.num_skipped}


def repeated_list(folder: Path, repeats: int, out: Path) -> Path:
    """A 'path label' list holding every mp4 of ``folder`` ``repeats`` times (so an epoch is long)."""
    lines = [f"{p} 0" for p in sorted(folder.glob("*.mp4"))] * repeats
    out.write_text("\n".join(lines) + "\n")
    return out


def model_peers() -> dict:
    """The default CPU config's training step, V1 and V2, fp32 and bf16 autocast."""
    running_cell = {"_target_": "mae_zoo.masks.running_cell.RunningCellMask", "ratio": 0.5}
    peers = {}
    for name, dmask in (("v1", None), ("v2_running_cell", running_cell)):
        torch.manual_seed(0)
        model = VideoMAE(
            mask={"_target_": "mae_zoo.masks.TubeMask", "ratio": 0.9},
            optim={"blr": 1.5e-4, "weight_decay": 0.05},
            decoder_mask=dmask,
            num_frames=16,
            img_size=32,
            patch_size=4,
            tubelet_size=2,
            pixel_mean=[0.485, 0.456, 0.406],
            pixel_std=[0.229, 0.224, 0.225],
            **MINI,
        )
        opt = torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)
        for precision in ("fp32", "bf16"):  # the bf16 peer shares the model and optimizer of its fp32 peer
            peers[f"{name}_{precision}"] = (model, opt, precision == "bf16", torch.Generator().manual_seed(0))
    return peers


def step(model, opt, bf16: bool, gen: torch.Generator, clips: torch.Tensor) -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        loss = model(clips, generator=gen).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def model_rates(steps: int, batch: int = 32) -> dict:
    """Round-robin one step per peer (start rotated each round), so load drift hits all alike."""
    peers = model_peers()
    clips = torch.randn(batch, 3, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    names = list(peers)
    times: dict[str, list[float]] = {n: [] for n in names}
    probe = MatmulProbe()
    for round_ in range(steps + 2):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            dt = step(*peers[name], clips)
            if round_ >= 2:  # warm-up rounds
                times[name].append(dt)
        probe()
    out = {
        n: {"clips_per_s": batch / summary(t)["median"], "step_s": summary(t), "batch": batch} for n, t in times.items()
    }
    out["matmul_probe"] = probe.report()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "video_throughput.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    busy = warn_if_busy()
    if busy:
        print(busy, flush=True)
    results: dict = {
        "environment": environment(),
        "busy_warning": busy,
        "threads": args.threads,
        "workers": args.workers,
        "loader": {},
        "model": {},
    }
    listing = repeated_list(CLIPS, 10, Path("/tmp/mae_zoo_bench_clips.txt"))  # 26 files x 10
    base = dict(
        dataset="list",
        train_list=str(listing),
        val_list=str(listing),
        num_frames=16,
        sampling_rate=4,
        image_size=32,
        batch_size=8,
        num_workers=args.workers,
    )
    cases = {
        "mp4_short_side_40_num_sample_1": dict(short_side=40, num_sample=1),
        "mp4_short_side_40_num_sample_2": dict(short_side=40, num_sample=2),
        "mp4_full_res_num_sample_1": dict(short_side=None, num_sample=1),
    }
    for name, extra in cases.items():
        results["loader"][name] = loader_rate(VideoDataModule(**base, **extra), args.batches)
        print(name, f"{results['loader'][name]['clips_per_s']:.1f} clips/s", flush=True)
    shapes = VideoDataModule(
        dataset="moving_shapes", num_train=32 * (args.batches + 2), num_val=64, batch_size=32, num_workers=args.workers
    )
    results["loader"]["moving_shapes_batch_32"] = loader_rate(shapes, args.batches)
    print("moving_shapes", f"{results['loader']['moving_shapes_batch_32']['clips_per_s']:.1f} clips/s", flush=True)
    results["model"] = model_rates(args.steps)
    for name, value in results["model"].items():
        if "clips_per_s" in value:
            print(name, f"{value['clips_per_s']:.1f} clips/s", flush=True)
    write_json(args.out, results)
    print(Path(args.out).resolve())


if __name__ == "__main__":
    main()
