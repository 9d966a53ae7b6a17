"""Helpers shared by the benchmarks in bench/: statistics, the matmul probe, environment info."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

PROBE_SIZE = 2048


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), q in [0, 1]."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values: list[float]) -> dict[str, float]:
    """Median, p25, p75, min, max, mean and count of a list of seconds."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p25": quantile(values, 0.25),
        "p75": quantile(values, 0.75),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


class MatmulProbe:
    """A square fp32 ``torch.mm`` into a preallocated output; returns GFLOP/s.

    Run once per round next to the timed steps: a probe minimum far below its median (< ~0.8x)
    means the machine slowed down during the run (another job, a throttling episode), and the
    run should be repeated.
    """

    def __init__(self, n: int = PROBE_SIZE) -> None:
        gen = torch.Generator().manual_seed(1234)
        self.n = n
        self.a = torch.randn(n, n, generator=gen)
        self.b = torch.randn(n, n, generator=gen)
        self.out = torch.empty(n, n)
        torch.mm(self.a, self.b, out=self.out)  # warm-up
        self.samples: list[float] = []

    def __call__(self) -> float:
        t0 = time.perf_counter()
        torch.mm(self.a, self.b, out=self.out)
        dt = time.perf_counter() - t0
        gflops = 2.0 * self.n**3 / dt / 1e9
        self.samples.append(gflops)
        return gflops

    def report(self) -> dict[str, Any]:
        s = self.samples
        if not s:
            return {"n": 0}
        med = statistics.median(s)
        return {
            "size": self.n,
            "n": len(s),
            "median_gflops": med,
            "min_gflops": min(s),
            "max_gflops": max(s),
            "min_over_median": min(s) / med,
            "stable": min(s) >= 0.8 * med,
            "samples_gflops": s,
        }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx512_vnni")))
    except OSError:
        pass
    return []


def environment() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "transformers", "timm", "pytorch-lightning", "hydra-core", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "packages": versions,
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "os_cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "mkldnn_bf16_supported": bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)()),
        "loadavg_at_start": os.getloadavg(),
    }


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def warn_if_busy(threshold: float = 1.0) -> str | None:
    """A warning when the 1-minute load average says something else is using the CPU."""
    load1 = os.getloadavg()[0]
    if load1 > threshold:
        return (
            f"WARNING: 1-min load average is {load1:.2f} before the benchmark started; "
            "another process (or a benchmark that just ended) may be using the CPU; check the probe"
        )
    return None
