"""W&B for sweeps, offline (no network): each job of a multirun gets its own run, closed at the end, grouped
by the sweep and tagged with its overrides; the run files hold the logged scalars, the resolved config,
reconstruction pictures and the final metrics table. Runs with the basic launcher, so no cluster needed."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def wandb_records(path: Path):
    """The records of a ``.wandb`` file (LevelDB-log framing: 7-byte header, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        payload = None
        if kind == 1:
            payload = chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            payload, pending = pending + chunk, b""
        if payload is not None:
            rec = pb.Record()
            rec.ParseFromString(payload)
            yield rec


def _read_run(run_dir: Path) -> dict:
    records = list(wandb_records(run_dir / f"run-{run_dir.name.rsplit('-', 1)[-1]}.wandb"))
    out: dict = {"history": [], "config": {}, "run": None, "exit": False}
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"].append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item}
            )
        elif kind == "config":
            for item in rec.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "run":
            out["run"] = rec.run
        elif kind == "exit":
            out["exit"] = True
    return out


@pytest.mark.slow
def test_wandb_offline_multirun_jobs_are_grouped_closed_and_complete(tmp_path):
    pytest.importorskip("wandb")
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    env.pop("WANDB_API_KEY", None)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mae_zoo.train",
            "-m",
            "debug=smoke",
            "model=vit_micro",
            "print_config=false",
            "logger=wandb",
            "callbacks.progress_bar=null",
            "seed=0,1",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ids = []
    for job, seed in (("0", 0), ("1", 1)):
        run_id = (sweep / job / "wandb_id.txt").read_text().strip()
        ids.append(run_id)
        offline = list((sweep / job / "wandb").glob(f"offline-run-*-{run_id}"))
        assert len(offline) == 1, list((sweep / job / "wandb").iterdir())  # one run per job, not one shared
        deadline = time.time() + 30  # W&B's service may still be flushing
        while time.time() < deadline and not _read_run(offline[0])["exit"]:
            time.sleep(0.5)
        run = _read_run(offline[0])
        assert run["exit"], "the job did not close its W&B run"
        assert run["run"].run_group == str(sweep)  # the sweep is one group in the dashboard
        assert f"seed={seed}" in list(run["run"].tags)
        losses = [h["train/loss"] for h in run["history"] if "train/loss" in h]
        assert len(losses) == 4 and all(isinstance(v, float) and v > 0 for v in losses)  # log_every_n_steps=1
        assert run["config"]["seed"] == seed and run["config"]["paths"]["run_dir"] == str(sweep / job)  # resolved
        assert run["config"]["trainer"]["max_epochs"] == 1
        assert list(offline[0].rglob("media/images/recon/*.png"))  # reconstruction pictures
        tables = list(offline[0].rglob("media/table/final/metrics_*.table.json"))
        assert tables, "no final metrics table"
        table = json.loads(tables[0].read_text())
        assert table["columns"] == ["metric", "value"]
        values = dict(map(tuple, table["data"]))
        assert values["trainer/global_step"] == 4
        assert values["val/loss"] == pytest.approx(json.loads((sweep / job / "metrics.json").read_text())["val/loss"])
    assert ids[0] != ids[1]
    sync = subprocess.run(
        [sys.executable, "-m", "wandb", "sync", "--dry-run", str(next((sweep / "0" / "wandb").glob("offline-run-*")))],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sync.returncode == 0, sync.stderr[-2000:]  # what `wandb sync` would upload, checked offline
