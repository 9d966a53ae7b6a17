"""Per-seed results that accumulate across invocations: ``python -m mae_zoo.results FILE.jsonl``.

A run with ``results_file=PATH`` appends one JSON line (its seed, run folder and final ``eval_*``
metrics) to ``PATH`` under a file lock, then rewrites ``PATH`` with ``.md`` for the table of every
seed so far and mean ± std per metric. Seeds can therefore run in several invocations or as parallel
processes (``-m seed=0,1,2`` now, ``seed=3,4`` tomorrow) and the table always covers all of them; a
seed run again replaces its earlier row.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a results file, the last one per seed, sorted by seed."""
    rows: dict[Any, dict[str, Any]] = {}
    path = Path(path)
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["seed"]] = row
    return [rows[k] for k in sorted(rows)]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std (numpy's default, as the GraphMAE scripts print)."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def summary_table(rows: list[dict[str, Any]], title: str = "") -> str:
    """Markdown: one row per seed, then mean ± std over seeds for every metric."""
    if not rows:
        return f"# {title}\n\nno results yet\n"
    keys = sorted({k for r in rows for k, v in r["metrics"].items() if isinstance(v, (int, float))})
    lines = [
        f"# {title}",
        "",
        f"{len(rows)} seed(s): {', '.join(str(r['seed']) for r in rows)}",
        "",
        "| seed | " + " | ".join(keys) + " | run |",
        "|---:|" + "---:|" * len(keys) + "---|",
    ]
    for r in rows:
        cells = [f"{r['metrics'][k]:.2f}" if k in r["metrics"] else "" for k in keys]
        lines.append(f"| {r['seed']} | " + " | ".join(cells) + f" | {r.get('run_dir', '')} |")
    stats = []
    for k in keys:
        values = [float(r["metrics"][k]) for r in rows if k in r["metrics"]]
        m, s = mean_std(values)
        stats.append(f"**{m:.2f} ± {s:.2f}**")
    lines.append("| mean ± std | " + " | ".join(stats) + " | |")
    return "\n".join(lines) + "\n"


def record_result(
    path: str | Path, seed: int, metrics: dict[str, Any], run_dir: str = "", prefix: str = "eval_"
) -> Path:
    """Append this seed's ``prefix*`` metrics to ``path`` and rewrite the Markdown table; returns its path."""
    path = Path(path)
    row = {
        "seed": int(seed),
        "run_dir": str(run_dir),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "metrics": {k: v for k, v in metrics.items() if k.startswith(prefix) and isinstance(v, (int, float))},
    }
    table = path.with_suffix(".md")
    with _locked(path):
        with open(path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        table.write_text(summary_table(read_results(path), path.stem))
    return table


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m mae_zoo.results RESULTS.jsonl   (prints the per-seed table with mean ± std)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    print(summary_table(read_results(argv[0]), Path(argv[0]).stem), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
