"""Sweep results: one table per Hydra multirun, ``<sweep>/results.csv`` and ``<sweep>/results.md``.

A Hydra callback (``hydra.callbacks.sweep_results`` in ``conf/hydra/default.yaml``) writes it when a
multirun ends, for the basic and the Slurm launcher alike; ``python -m mae_zoo.utils.sweep <sweep dir>``
writes it again by hand (e.g. after jobs were requeued or a launcher was interrupted).
Each row is one job folder that holds ``.hydra/overrides.yaml``: its overrides and the final numbers
of its ``metrics.json`` (``status`` is ``missing`` for a job that wrote none: failed or still running).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


def _override_pair(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key.lstrip("+~"), value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def collect(sweep_dir: str | Path) -> tuple[list[str], list[dict[str, Any]], dict[str, str]]:
    """(columns, rows, overrides shared by every job) for the jobs under ``sweep_dir``."""
    sweep = Path(sweep_dir)
    jobs = []
    for overrides_file in sweep.glob("*/.hydra/overrides.yaml"):
        job_dir = overrides_file.parent.parent
        listed = OmegaConf.to_container(OmegaConf.load(overrides_file))
        if not isinstance(listed, list):
            raise ValueError(f"{overrides_file} is not a list of overrides")
        overrides = [str(o) for o in listed]
        metrics_file = job_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
        jobs.append((job_dir, dict(_override_pair(o) for o in overrides), metrics))
    jobs.sort(key=lambda j: (0, int(j[0].name)) if j[0].name.isdigit() else (1, j[0].name))
    keys: list[str] = []
    for _, ov, _ in jobs:
        keys += [k for k in ov if k not in keys]
    swept = [k for k in keys if len({ov.get(k) for _, ov, _ in jobs}) > 1 or any(k not in ov for _, ov, _ in jobs)]
    common = {k: jobs[0][1][k] for k in keys if k not in swept} if jobs else {}
    metric_keys = sorted({k for _, _, m in jobs if m for k, v in m.items() if isinstance(v, (int, float, str))})
    columns = ["job", *swept, "status", *metric_keys]
    rows = []
    for job_dir, ov, metrics in jobs:
        row: dict[str, Any] = {"job": job_dir.name, **{k: ov.get(k, "") for k in swept}}
        row["status"] = "ok" if metrics is not None else "missing"
        row.update({k: (metrics or {}).get(k) for k in metric_keys})
        rows.append(row)
    return columns, rows, common


def write_results(sweep_dir: str | Path) -> Path | None:
    """Write ``results.csv`` and ``results.md`` in ``sweep_dir``; returns the CSV path (None: no jobs)."""
    sweep = Path(sweep_dir)
    columns, rows, common = collect(sweep)
    if not rows:
        return None
    with open(sweep / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: _fmt(v) for k, v in row.items()} for row in rows)
    lines = [f"# Sweep results: {sweep}", ""]
    if common:
        lines += ["Overrides shared by every job: " + " ".join(f"`{k}={v}`" for k, v in common.items()), ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    (sweep / "results.md").write_text("\n".join(lines) + "\n")
    return sweep / "results.csv"


class SweepResults(Callback):
    """Hydra callback: write the results table when a multirun ends (in the launching process)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = write_results(config.hydra.sweep.dir)
        if path is not None:
            print(f"sweep results: {path} (and results.md)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m mae_zoo.utils.sweep <sweep dir>")
    out = write_results(sys.argv[1])
    if out is None:
        sys.exit(f"no job folders with .hydra/overrides.yaml under {sys.argv[1]}")
    print(out)
