"""GraphMAE's 20-seed Cora protocol: one batched ``seeds=20`` job vs 20 one-seed runs, epoch time.

Both sides are what ``python -m mae_zoo.train experiment=graphmae_cora`` builds (Trainer, logger,
checkpoint callback; validation off for the timed epochs), through ``graph_epoch.lightning_block``:
``seeds=1`` (today's path: one seed per process) and ``seeds=S`` (one batched model,
``mae_zoo/modalities/graph_seeds.py``). Blocks alternate (order rotated each round) in one process;
each block drops its first ``--warmup`` epochs. The projection is epochs x median epoch time (the
probe at the end, ~seconds per seed, is left out on both sides).

    python bench/graph_seeds.py --root ../shared/data/planetoid
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MatmulProbe, environment, summary, warn_if_busy, write_json
from graph_epoch import lightning_block

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "planetoid"))
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--epochs-one", type=int, default=10, help="timed epochs per one-seed block")
    parser.add_argument("--epochs-many", type=int, default=3, help="timed epochs per batched block")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--protocol-epochs", type=int, default=1500)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "graph_seeds_cora.json"))
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    busy = warn_if_busy()
    if busy:
        print(busy)
    cache = tempfile.mkdtemp(prefix="bench_graph_cache_")
    probe = MatmulProbe()
    times: dict[str, list[float]] = {"one_seed": [], "batched": []}
    for r in range(args.rounds):
        order = ["one_seed", "batched"] if r % 2 == 0 else ["batched", "one_seed"]
        for name in order:
            probe()
            if name == "one_seed":
                block = lightning_block(args.root, cache, args.epochs_one, args.warmup)
            else:
                block = lightning_block(args.root, cache, args.epochs_many, args.warmup, [f"seeds={args.seeds}"])
            times[name] += block
            print(f"round {r} {name}: median {summary(block)['median']:.3f} s/epoch", flush=True)
    stats = {k: summary(v) for k, v in times.items()}
    one, many = stats["one_seed"]["median"], stats["batched"]["median"]
    speedup = args.seeds * one / many
    wall_one = args.seeds * args.protocol_epochs * one / 60
    wall_many = args.protocol_epochs * many / 60
    print(
        f"Cora epoch, median: one seed {one:.3f} s ({args.seeds} seeds: {args.seeds * one:.2f} s), "
        f"batched seeds={args.seeds} {many:.3f} s; speed-up {speedup:.2f}x; "
        f"{args.protocol_epochs}-epoch protocol: {wall_one:.0f} min one seed at a time vs {wall_many:.0f} min batched"
    )
    write_json(
        args.out,
        {
            "environment": environment(),
            "args": vars(args),
            "epoch_s": stats,
            "speedup_seeds_x_one_over_batched": speedup,
            "projected_protocol_min": {"one_seed_at_a_time": wall_one, "batched": wall_many},
            "max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "probe": probe.report(),
            "busy_warning": busy,
        },
    )
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
