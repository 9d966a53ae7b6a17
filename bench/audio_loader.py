"""Is the audio loader (soundfile decode + resample + kaldi fbank) the bottleneck of Audio-MAE pre-training
on this CPU?

Measures, in one process, each part alone:

* **loader clips/s**: ``AudioDataModule`` training loader on the shared FSDD wavs (8 kHz -> 16 kHz,
  random 1.28 s crop, 128 x 128 log-mel), ``--workers`` workers (default 2), persistent; also the
  embedded tones loader (no decoding, no resampling);
* **model clips/s**: the training step (forward with a fresh random 0.8 mask, backward, AdamW) of the
  ``experiment=audiomae_fsdd`` model (``audiomae_micro``, local decoder, batch 32, fp32) and of
  ``audiomae_mini``.

    nice -n 15 python bench/audio_loader.py [--batches 12] [--steps 8] [--out bench/results/audio_loader.json]

The issue's bar: loader clips/s >= 2x model clips/s at the preset's batch. Both share the CPU in real
training, so the comparison is of each measured alone (see bench/README.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import MatmulProbe, environment, summary, warn_if_busy, write_json
from mae_zoo.data.audio import AudioDataModule
from mae_zoo.modalities.audio import AudioMAE

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "data" / "fsdd"
MODELS = {
    "audiomae_micro": ({"embed_dim": 128, "depth": 4, "num_heads": 4}, {"embed_dim": 64, "depth": 2, "num_heads": 4}),
    "audiomae_mini": ({"embed_dim": 192, "depth": 6, "num_heads": 3}, {"embed_dim": 128, "depth": 4, "num_heads": 4}),
}


def loader_rate(dm: AudioDataModule, batches: int) -> dict:
    """Clips/s of the training loader over ``batches`` batches after the first (worker start-up)."""
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


def model_rates(steps: int, batch: int) -> dict:
    """Round-robin one step per model (start rotated each round), so load drift hits all alike."""
    peers = {}
    for name, (enc, dec) in MODELS.items():
        torch.manual_seed(0)
        model = AudioMAE(
            enc,
            dec,
            target_length=128,
            num_mel_bins=128,
            decoder_mode="local",
            mask={"_target_": "mae_zoo.masks.RandomMask", "ratio": 0.8},
            optim={"blr": 8e-3},
        )
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=1e-4, fused=True)
        peers[name] = (model, opt, torch.Generator().manual_seed(0))
    spec = torch.randn(batch, 1, 128, 128, generator=torch.Generator().manual_seed(0))
    names = list(peers)
    times: dict[str, list[float]] = {n: [] for n in names}
    probe = MatmulProbe()
    for round_ in range(steps + 2):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            model, opt, gen = peers[name]
            t0 = time.perf_counter()
            model(spec, generator=gen).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if round_ >= 2:
                times[name].append(time.perf_counter() - t0)
        probe()
    out: dict = {
        n: {"clips_per_s": batch / summary(t)["median"], "step_s": summary(t), "batch": batch} for n, t in times.items()
    }
    out["matmul_probe"] = probe.report()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "audio_loader.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    busy = warn_if_busy()
    if busy:
        print(busy, flush=True)
    results: dict = {"environment": environment(), "busy_warning": busy, "threads": args.threads, "loader": {}}
    common = {"batch_size": args.batch, "num_workers": args.workers, "target_length": 128, "clip_seconds": 1.28}
    if FSDD.is_dir():
        results["loader"]["fsdd_8k_to_16k"] = loader_rate(
            AudioDataModule(dataset="fsdd", root=str(FSDD), split="disjoint", **common), args.batches
        )
    results["loader"]["tones_16k"] = loader_rate(
        AudioDataModule(num_train=args.batch * (args.batches + 2), num_val=8, **common), args.batches
    )
    results["model"] = model_rates(args.steps, args.batch)
    step_rate = results["model"]["audiomae_micro"]["clips_per_s"]
    for name, rate in results["loader"].items():
        rate["ratio_to_audiomae_micro_step"] = rate["clips_per_s"] / step_rate
        print(f"{name}: {rate['clips_per_s']:.0f} clips/s = {rate['ratio_to_audiomae_micro_step']:.1f}x the step rate")
    for name in MODELS:
        print(f"{name} step: {results['model'][name]['clips_per_s']:.0f} clips/s")
    print(write_json(args.out, results))


if __name__ == "__main__":
    main()
