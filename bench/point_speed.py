"""Point-MAE cost on this CPU: FPS, kNN grouping and a full training step for a batch of 32 x 1024 points,
and the loader rate of the embedded shapes and of a mesh folder.

    PYTHONPATH=. python bench/point_speed.py [--model pointmae_mini] [--rounds 5] [--threads 2]

One step = tokenize (FPS 64 + kNN 32) -> mask -> encode -> decode -> Chamfer -> backward -> AdamW step,
on a fixed random batch. The grouping is also timed alone (FPS, then kNN), interleaved with the steps,
so its share of the step is measured under the same machine load. Results go to
bench/results/point_speed_<model>.json (medians with p25-p75, the matmul probe, the environment).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MatmulProbe, environment, summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="pointmae_mini")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--meshes", default=os.environ.get("MAE_ZOO_DATA", "../shared/data") + "/pointcloud/odedstein_meshes"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from mae_zoo.data.point import PointDataModule
    from mae_zoo.nets.point_ops import farthest_point_sample, gather_points, knn_group

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=["modality=point", f"model={args.model}"])
    model = instantiate(cfg.module, _recursive_=False, _convert_="all").train()
    g, k = model.num_groups, model.group_size
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    points = torch.rand(args.batch, args.points, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    probe = MatmulProbe()
    fps_t, knn_t, step_t = [], [], []
    for r in range(args.rounds + 1):  # round 0 warms up
        t0 = time.perf_counter()
        idx = farthest_point_sample(points, g)
        t1 = time.perf_counter()
        knn_group(points, gather_points(points, idx), k)
        t2 = time.perf_counter()
        out = model((points, torch.zeros(args.batch)), generator=torch.Generator().manual_seed(r))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        probe()
        if r:
            fps_t.append(t1 - t0)
            knn_t.append(t2 - t1)
            step_t.append(t3 - t2)
    loaders = {}
    for name, kwargs in (
        ("shapes", {"dataset": "shapes", "num_train": 256, "num_val": 32}),
        ("mesh_folder", {"dataset": "mesh_folder", "root": args.meshes, "train_views": 12, "val_views": 1}),
    ):
        if name == "mesh_folder" and not Path(args.meshes).is_dir():
            continue
        dm = PointDataModule(num_points=args.points, batch_size=args.batch, num_workers=0, **kwargs)
        t = time.perf_counter()
        dm.setup("fit")
        setup_s = time.perf_counter() - t
        t = time.perf_counter()
        n = sum(len(b[1]) for b in dm.train_dataloader() if b is not None)
        loaders[name] = {"setup_s": setup_s, "clouds_per_s": n / (time.perf_counter() - t), "clouds": n}
    fps, knn, step = summary(fps_t), summary(knn_t), summary(step_t)
    result = {
        "model": args.model,
        "batch": args.batch,
        "points": args.points,
        "groups": [g, k],
        "threads": args.threads,
        "fps_s": fps,
        "knn_s": knn,
        "step_s": step,
        "grouping_share_of_step": (fps["median"] + knn["median"]) / step["median"],
        "loaders": loaders,
        "probe": probe.report(),
        "environment": environment(),
    }
    out_path = Path(__file__).resolve().parent / "results" / f"point_speed_{args.model}.json"
    out_path.parent.mkdir(exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1))
    print(
        json.dumps({k: result[k] for k in ("fps_s", "knn_s", "step_s", "grouping_share_of_step", "loaders")}, indent=1)
    )


if __name__ == "__main__":
    main()
