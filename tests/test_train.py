"""End to end: the CLI, multirun, kill-and-resume, DDP on CPU, every preset, and start-up errors."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from mae_zoo.core.errors import ConfigError
from mae_zoo.train import build, train
from tests.conftest import CONF, FAST, ROOT, compose_cfg, run_cli


def test_cli_smoke_run_folder(tmp_path):
    run = tmp_path / "smoke"
    res = run_cli("debug=smoke", "model=vit_micro", f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == str(run.resolve())  # the last line is the run folder
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["trainer/global_step"] == 4
    assert metrics["train/loss"] > 0 and metrics["val/loss"] > 0
    for name in ("config.yaml", "git_revision.txt", "checkpoints/last.ckpt", "csv/metrics.csv"):
        assert (run / name).is_file(), name
    assert list((run / "pictures").glob("recon_val_final_*.png"))  # held-out samples, not training crops
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["mae_zoo"]["class"].endswith("ImageMAE")


def test_cli_help_and_cfg_job():
    res = run_cli("--help")
    assert res.returncode == 0 and "mask: " + ", ".join(_options("mask")) in res.stdout
    res = run_cli("--cfg", "job", "mask=block", "model=vit_small")
    assert res.returncode == 0
    assert "_target_: mae_zoo.masks.BlockMask" in res.stdout and "embed_dim: 384" in res.stdout


def test_multirun_two_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    res = run_cli("-m", "mask=random,colored_noise", *FAST, f"hydra.sweep.dir={sweep}")
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    masks = [json.loads((p / "metrics.json").read_text()) and (p / "config.yaml").read_text() for p in jobs]
    assert "RandomMask" in masks[0] and "ColoredNoiseMask" in masks[1]


def _ckpt_step(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")["global_step"]
    except Exception:  # being replaced right now
        return -1


@pytest.mark.slow
def test_kill_and_resume_continues_at_the_step_it_reached(tmp_path):
    run = tmp_path / "resumable"
    args = [
        sys.executable,
        "-m",
        "mae_zoo.train",
        "model=vit_micro",
        "print_config=false",
        "data.num_train=640",
        "data.num_val=64",
        "data.batch_size=32",
        "data.num_workers=0",
        "trainer.max_epochs=-1",
        "trainer.max_steps=60",
        "callbacks.model_checkpoint.every_n_train_steps=5",
        "precision_probe.enabled=false",  # the resume is under test, not the start-up measurement (tested apart)
        f"hydra.run.dir={run}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if last.is_file() and _ckpt_step(last) >= 10:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    reached = _ckpt_step(last)
    assert 10 <= reached < 60, f"the run was not killed mid-way (checkpoint at step {reached})"
    assert not (run / "metrics.json").exists()
    res = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming from {last}" in res.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["trainer/global_step"] == 60  # continued, did not restart from 0 or overshoot
    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [int(row["step"]) for row in rows]
    assert min(steps) < reached and max(steps) >= 50  # history from before the kill is kept
    train_steps = [int(row["step"]) for row in rows if row.get("train/loss")]
    assert len(train_steps) == len(set(train_steps))  # steps run again after the resume are not listed twice


@pytest.mark.slow
@pytest.mark.parametrize(
    "teacher",
    [(), ("teacher=ema", "distill=dmae", "distill.student_block=0", "distill.teacher_block=-1")],
    ids=["plain", "ema_teacher_dmae"],
)
def test_ddp_spawn_two_cpu_processes(make_cfg, teacher):
    cfg = make_cfg(
        "trainer.accelerator=cpu", "trainer.devices=2", "strategy=ddp_spawn", "logger=none", "callbacks=none", *teacher
    )
    metrics = train(cfg)
    assert metrics["trainer/global_step"] == 4
    assert metrics["optim/effective_batch"] == 2 * cfg.data.batch_size  # LR scaled by the world size
    assert metrics["train/loss"] > 0
    if teacher:  # the teacher stays outside DDP's module: no unused-parameter or sync error, its term is logged
        assert metrics["train/loss_distill"] > 0


def test_multirun_with_local_ddp_is_refused(tmp_path):
    res = run_cli(
        "-m",
        "seed=0,1",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "strategy=ddp",
        *FAST,
        f"hydra.sweep.dir={tmp_path}",
    )
    assert res.returncode != 0
    assert "multirun" in res.stderr and "ddp_spawn" in res.stderr


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group",
    [
        "data",
        "model",
        "mask",
        "strategy",
        "trainer",
        "callbacks",
        "logger",
        "debug",
        "teacher",
        "distill",
        "modality",
        "experiment",
    ],
)
def test_every_preset_composes(group, tmp_path):
    for option in _options(group):
        cfg = compose_cfg([f"{group}={option}"], tmp_path)
        assert cfg.module._target_ and cfg.data._target_


@pytest.mark.parametrize("mask", ["random", "block", "colored_noise"])
def test_every_image_mask_trains(mask, make_cfg):
    metrics = train(make_cfg(f"mask={mask}", "callbacks=none", "logger=none"))
    assert metrics["trainer/global_step"] == 4 and metrics["train/loss"] > 0


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_experiment_presets_build(experiment, tmp_path):
    cfg = compose_cfg([f"experiment={experiment}", "print_config=false"], tmp_path)
    root = cfg.data.get("root")
    folder = Path(root) / cfg.data.get("name", "") if root else None  # graph sets: <root>/<name>/raw
    if folder and not folder.exists():
        pytest.skip(f"{folder} not available")
    module, _datamodule, _trainer = build(cfg)
    assert module.layout.num_tokens > 0


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["mask=tube"], "Masks that fit this modality: ['block', 'colored_noise', 'mixing', 'random', 'simmim']"),
        (["mask.ratio=1.0"], "(valid: a number in the open interval (0, 1))"),
        (["mask=colored_noise", "mask.ratio=0"], "(valid: a number in the open interval (0, 1))"),
        (["model.patch_size=5"], "model.patch_size=5 does not divide the image size 32"),
        (["data=mnist", "data.root=null"], "data.root is required for data.dataset=mnist"),
        (["data=image_folder", "data.root=/does/not/exist"], "does not exist"),
        (["strategy.name=horovod"], "strategy.name='horovod' is unknown"),
        (["resume=/no/such.ckpt"], "resume=/no/such.ckpt is not a file"),
    ],
)
def test_invalid_config_fails_at_start_up(overrides, message, make_cfg):
    cfg = make_cfg(*overrides)
    with pytest.raises(ConfigError) as info:
        train(cfg)
    assert message in str(info.value)
    assert not (Path(cfg.paths.run_dir) / "checkpoints").exists()  # nothing trained


def test_cli_reports_config_errors_in_one_line():
    res = run_cli("mask=tube", "print_config=false")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("mae_zoo: configuration error: mask TubeMask")
    res = run_cli("no_such_key=1")
    assert res.returncode != 0 and "Could not override 'no_such_key'" in res.stderr


def test_logger_wandb_offline_keeps_scalars_and_pictures(make_cfg, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg("logger=wandb")
    train(cfg)
    run = Path(cfg.paths.run_dir)
    run_id = (run / "wandb_id.txt").read_text().strip()
    offline = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert offline, list((run / "wandb").iterdir())
    records = list(offline[0].glob("*.wandb"))
    assert records
    deadline = time.time() + 30  # W&B's service process may still be flushing the record file
    while b"train/loss" not in records[0].read_bytes() and time.time() < deadline:
        time.sleep(0.5)
    assert b"train/loss" in records[0].read_bytes()  # scalars are in the run's record file
    assert list(offline[0].rglob("media/images/recon/*.png"))


def test_logger_tensorboard(make_cfg):
    cfg = make_cfg("logger=tensorboard")
    train(cfg)
    assert list((Path(cfg.paths.run_dir) / "tensorboard").glob("events.out.tfevents.*"))


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()
