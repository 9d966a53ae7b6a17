"""Unreadable data: each unreadable file is counted once and listed, and a split that yields nothing
fails the run with a one-line message instead of training zero steps or dropping ``val/loss``."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mae_zoo.train
from mae_zoo.data.base import DataError, SkippedFiles, count_skipped
from tests.conftest import FAST, ROOT, compose_cfg
from tests.test_resume_exact import with_callbacks


def image_folder(root: Path, broken_train: int = 0, broken_val: int = 0) -> list[Path]:
    """An ImageFolder tree (train/ and val/, classes a and b, 4 images each) in which the first
    ``broken_train`` / ``broken_val`` images of the split are corrupt files; returns those."""
    rng, corrupt = np.random.default_rng(0), []
    for split, broken in (("train", broken_train), ("val", broken_val)):
        for k, path in enumerate(root / split / cls / f"{i}.png" for cls in "ab" for i in range(4)):
            path.parent.mkdir(parents=True, exist_ok=True)
            if k < broken:
                path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
                corrupt.append(path)
            else:
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    return corrupt


IMAGE_FOLDER = [*FAST, "data=image_folder", "data.image_size=32", "data.batch_size=4", "data.pin_memory=false"]
IMAGE_RUN = ["trainer.max_epochs=2", "trainer.limit_train_batches=null", "callbacks.reconstructions=null"]


def test_a_corrupt_image_is_counted_once_over_epochs_and_workers_and_listed(tmp_path) -> None:
    (broken,) = image_folder(tmp_path / "data", broken_train=1)
    cfg = compose_cfg(
        [*IMAGE_FOLDER, *IMAGE_RUN, f"data.root={tmp_path / 'data'}", "data.num_workers=2"], tmp_path / "run"
    )
    module, datamodule, trainer = with_callbacks(mae_zoo.train.build)(cfg)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 4  # 7 readable images in batches of 4, last partial batch dropped: 1 step x 2
    assert datamodule.num_skipped == 1  # read in both epochs, maybe by different workers: one file
    assert datamodule.skipped_paths() == [str(broken)]


def test_train_lists_the_skipped_files_in_the_run_folder(tmp_path) -> None:
    (broken,) = image_folder(tmp_path / "data", broken_train=1)
    cfg = compose_cfg(
        [*IMAGE_FOLDER, *IMAGE_RUN, f"data.root={tmp_path / 'data'}", "data.num_workers=0"], tmp_path / "run"
    )
    metrics = mae_zoo.train.train(cfg)
    assert metrics["data/skipped_files"] == 1
    assert (tmp_path / "run" / "skipped_files.txt").read_text() == f"{broken}\n"


def test_skipped_files_are_shared_with_spawned_processes(tmp_path) -> None:
    skipped = SkippedFiles()
    spawn = multiprocessing.get_context("spawn")
    worker = spawn.Process(target=count_skipped, args=(skipped, "/x/b.mp4"))
    worker.start()
    count_skipped(skipped, "/x/a.mp4")
    count_skipped(skipped, "/x/a.mp4")
    worker.join(60)
    assert worker.exitcode == 0 and skipped.paths() == ["/x/a.mp4", "/x/b.mp4"]
    folder = skipped.folder
    del skipped
    assert not os.path.exists(folder)  # removed with the object that made it


def test_a_validation_split_without_a_readable_file_fails(tmp_path) -> None:
    image_folder(tmp_path / "data", broken_val=8)
    cfg = compose_cfg([*IMAGE_FOLDER, f"data.root={tmp_path / 'data'}", "data.num_workers=0"], tmp_path / "run")
    module, datamodule, trainer = with_callbacks(mae_zoo.train.build)(cfg)
    with pytest.raises(DataError, match=r"validation split gave no readable sample.*skipped so far: 8 "):
        trainer.fit(module, datamodule=datamodule)


def test_a_video_folder_of_unreadable_files_fails_in_one_line(tmp_path) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    for i in range(6):
        (folder / f"clip{i}.mp4").write_bytes(np.random.default_rng(i).bytes(5000))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mae_zoo.train",
            "modality=video",
            "model=videomae_micro",
            "debug=smoke",
            "print_config=false",
            "logger=csv",
            "data=video_folder",
            f"data.root={folder}",
            "data.image_size=32",
            "data.num_frames=4",
            "data.batch_size=2",
            "data.num_workers=0",
            "data.pin_memory=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert res.returncode != 0, res.stdout[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("mae_zoo:")]
    assert "split gave no readable sample" in line and f"data.root={folder}" in line and "clip1.mp4" in line
