"""Nothing lost, nothing unsafe, every bad value in one line (issue 20): SIGTERM saves and exits 143,
last.ckpt at every epoch end, resume loads weights-only whatever the environment says, a fresh start
never mixes into an earlier run's folder, and bad values / checkpoints fail at start-up naming the key."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest
import pytorch_lightning as pl
import torch

from conftest import FAST, ROOT, compose_cfg, run_cli
from mae_zoo.api import load
from mae_zoo.core.errors import ConfigError
from mae_zoo.train import SIGTERM_EXIT, train

SHORT_EPOCHS = [
    "model=vit_micro",
    "print_config=false",
    "data.num_train=64",
    "data.num_val=32",
    "data.batch_size=16",
    "data.num_workers=0",
    "callbacks.online_probe.enabled=false",
    "callbacks.reconstructions=null",
    "precision_probe.enabled=false",  # the signal must come at step 8 within 120 s, probe or not
]


def _step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def test_sigterm_saves_the_step_reached_exits_143_and_the_restart_continues_there(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [sys.executable, "-m", "mae_zoo.train", *SHORT_EPOCHS, "trainer.max_epochs=1000", f"hydra.run.dir={run}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    try:  # an epoch is 4 steps; the step checkpoint comes every 200: last.ckpt early means epoch-end saves
        while time.time() < deadline and proc.poll() is None and not (last.is_file() and _step(last) >= 8):
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be signalled"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == SIGTERM_EXIT, err[-2000:]
    stopped = _step(last)
    assert f"stopped by SIGTERM at step {stopped}" in err
    assert stopped >= 8
    epochs = int(torch.load(last, map_location="cpu", weights_only=True)["epoch"])
    again = run_cli(*SHORT_EPOCHS, f"trainer.max_epochs={epochs + 2}", f"hydra.run.dir={run}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from {last}" in again.stdout
    assert not list(run.glob("checkpoints/last-v*.ckpt"))  # one last.ckpt, never a second version beside it


class _LastCkptAtEpochStart(pl.Callback):
    """Records the step stored in last.ckpt when each epoch after the first starts."""

    seen: ClassVar[list[int]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        if trainer.current_epoch > 0:
            type(self).seen.append(_step(last) if last.is_file() else -1)


def test_last_ckpt_is_written_at_every_epoch_end(tmp_path: Path) -> None:
    _LastCkptAtEpochStart.seen = []
    cfg = compose_cfg(
        [
            *FAST,
            "trainer.max_epochs=3",
            "callbacks.model_checkpoint.every_n_train_steps=200",
            f"+callbacks.probe._target_={__name__}._LastCkptAtEpochStart",
        ],
        tmp_path / "run",
    )
    train(cfg)
    assert _LastCkptAtEpochStart.seen == [4, 8]  # debug=smoke: 4 steps an epoch


class _Planted:
    """Unpickling this writes a file: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_resume_never_unpickles_code_even_when_the_environment_asks_to(tmp_path: Path) -> None:
    run, marker = tmp_path / "run", tmp_path / "pwned"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(
        {"mae_zoo": {"class": "x"}, "state_dict": {}, "payload": _Planted(marker)}, run / "checkpoints" / "last.ckpt"
    )
    env = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    for resume in ("resume=auto", f"resume={run / 'checkpoints' / 'last.ckpt'}"):
        res = run_cli(*FAST, resume, f"hydra.run.dir={run}", env=env)
        assert res.returncode == 2, res.stderr[-2000:]
        assert "cannot be loaded as a checkpoint" in res.stderr.strip().splitlines()[-1]
        assert not marker.exists()


def test_a_fresh_start_in_a_folder_with_checkpoints_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(compose_cfg([*FAST], run))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    with pytest.raises(ConfigError, match="already holds .*last.ckpt.* would mix two runs"):
        train(compose_cfg([*FAST, "resume=none"], run))
    assert not list(run.glob("checkpoints/last-v*.ckpt"))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.precision=fp33", "trainer.precision"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.batch_size=-1", "data.batch_size"),
        ("optim.blr=-1", "optim.blr"),
        ("seed=-1", "seed"),
        ("data.num_workers=-1", "data.num_workers"),
        ("mask.ratio=abc", "mask.ratio"),
        ("resume=README.md", "README.md cannot be loaded"),
    ],
)
def test_bad_values_fail_at_start_up_naming_the_key(tmp_path: Path, override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train(compose_cfg([*FAST, override], tmp_path / "run"))


def test_a_checkpoint_of_another_size_or_modality_is_refused_in_one_line(tmp_path: Path) -> None:
    first = tmp_path / "micro"
    train(compose_cfg([*FAST], first))
    ckpt = first / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match="does not fit this model .*shape"):
        train(compose_cfg(["model=vit_mini", *FAST[1:], f"resume={ckpt}"], tmp_path / "mini"))
    with pytest.raises(ConfigError, match="holds a mae_zoo.modalities.image.ImageMAE, but this run trains a"):
        train(compose_cfg(["modality=graph", "debug=smoke", "print_config=false", f"resume={ckpt}"], tmp_path / "g"))
    res = run_cli("model=vit_mini", *FAST[1:], f"resume={ckpt}", f"hydra.run.dir={tmp_path / 'cli'}")
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("mae_zoo: configuration error:")


def test_load_of_a_non_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be loaded as a checkpoint"):
        load(text)
