"""kill -9 mid-epoch, then ``resume=auto`` in the same run folder: the final weights are those of the
uninterrupted run, bit for bit (CPU). The data loaders' position, their augmentation RNG and the global
RNG (dropout, drop-path, GAT feature dropout) all come back from the checkpoint.

The killed run is a real ``SIGKILL``, sent by the training process to itself at a fixed step (a few
steps after a checkpoint), so the test does not depend on timing. It runs through this file as a
script: the CLI plus that kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import pytest
import pytorch_lightning as pl
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader as GeometricLoader

import mae_zoo.train
from mae_zoo.callbacks import DataCheck, RNGState
from mae_zoo.data.graph import GraphDataModule
from mae_zoo.data.image import ImageDataModule
from tests.conftest import ROOT, compose_cfg, needs_shared

KILL_AT = "MAE_ZOO_TEST_KILL_AT_STEP"
THREADS = "MAE_ZOO_TEST_THREADS"
# The probe off: two runs compared bit for bit must not each measure precision=auto (and may disagree).
QUIET = ["print_config=false", "logger=csv", "callbacks.progress_bar=null", "precision_probe.enabled=false"]


class KillAt(pl.Callback):
    """SIGKILL this process at the end of training step ``step``: nothing is flushed or saved."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def with_callbacks(build: Callable, kill_at: int | None = None) -> Callable:
    """``mae_zoo.train.build`` with RNGState and DataCheck added when it does not add them itself."""

    def patched(cfg: Any, **kwargs: Any) -> Any:
        module, datamodule, trainer = build(cfg, **kwargs)
        present = {type(c) for c in trainer.callbacks}
        trainer.callbacks.extend(cls() for cls in (RNGState, DataCheck) if cls not in present)
        if kill_at is not None:
            trainer.callbacks.append(KillAt(kill_at))
        return module, datamodule, trainer

    return patched


def start_killed_run(overrides: list[str], run: Path, kill_at: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", KILL_AT: str(kill_at), THREADS: str(torch.get_num_threads())}
    # Output to a file, not a pipe: the killed run's loader workers keep a pipe open until they notice.
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.test_resume_exact", *overrides, f"hydra.run.dir={run}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def train_here(overrides: list[str], run: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(mae_zoo.train, "build", with_callbacks(mae_zoo.train.build))
    try:
        return mae_zoo.train.train(compose_cfg(overrides, run))
    finally:
        monkeypatch.undo()


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert first["global_step"] == second["global_step"]
    assert first["state_dict"].keys() == second["state_dict"].keys()
    differ = [k for k, v in first["state_dict"].items() if not torch.equal(v, second["state_dict"][k])]
    assert not differ, f"{len(differ)} tensors differ after the resume, e.g. {differ[:3]}"
    for one, two in zip(first["optimizer_states"], second["optimizer_states"]):
        for key, state in one["state"].items():
            assert all(torch.equal(v, two["state"][key][n]) for n, v in state.items() if torch.is_tensor(v))


def kill_resume_and_compare(overrides: list[str], kill_at: int, tmp_path: Path, monkeypatch) -> dict:
    """Uninterrupted run and killed run side by side, then the resume; returns the resumed checkpoint."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    log = tmp_path / "killed.log"
    proc = start_killed_run(overrides, killed, kill_at, log)  # starts while the uninterrupted run trains here
    try:
        train_here(overrides, straight, monkeypatch)
        proc.wait(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"not killed (exit {proc.returncode}):\n{log.read_text()[-3000:]}"
    last = killed / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)  # RNG and loader states keep the checkpoint safe to load
    assert 0 < saved["global_step"] < kill_at
    assert "RNGState" in saved["callbacks"]
    assert not (killed / "metrics.json").exists()
    metrics = train_here([*overrides, "resume=auto"], killed, monkeypatch)
    assert metrics["trainer/start_step"] == saved["global_step"]
    assert_same_weights(straight / "checkpoints" / "last.ckpt", last)
    return saved


# ----------------------------------------------------------------------------------- loaders alone
def read(loader: Any, batches_per_epoch: list[int]) -> list[torch.Tensor]:
    """The inputs of ``batches_per_epoch[e]`` batches in each epoch e, taken as Lightning takes them:
    never up to the loader's StopIteration (it stops at the epoch's length)."""
    seen = []
    for count in batches_per_epoch:
        iterator = iter(loader)
        for _ in range(count):
            seen.append(next(iterator)[0])
            torch.rand(3)  # the global RNG moves on between batches, as dropout moves it
    return seen


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_position_and_augmentation_resume_exactly(workers: int) -> None:
    def loader(seed: int) -> Any:
        torch.manual_seed(seed)  # the run's seed: the loader's shuffling generator starts from it
        datamodule = ImageDataModule(num_train=48, num_val=8, batch_size=8, num_workers=workers)
        datamodule.setup("fit")
        return datamodule.train_dataloader()

    straight = read(loader(0), [6, 6, 6])
    for epoch, done in ((1, 2), (0, 6)):  # stopped mid-epoch, and at the end of an epoch
        first = loader(0)
        before = read(first, [6] * epoch + [done])
        resumed = loader(1)  # another seed: what the checkpoint holds must decide everything
        resumed.load_state_dict(first.state_dict())
        after = read(resumed, ([6 - done] if done < 6 else []) + [6] * (2 - epoch))
        assert len(before + after) == len(straight)
        assert all(torch.equal(a, b) for a, b in zip(before + after, straight)), (epoch, done)
    # A datamodule keeps the frames that built it (Lightning's save_hyperparameters) until a garbage
    # collection, and with them this one's loaders: stopped then, their workers take 5 s to time out.
    del first, resumed


def test_a_resume_with_another_worker_count_restarts_the_epoch_with_a_warning(caplog) -> None:
    def loader(workers: int) -> Any:
        datamodule = ImageDataModule(num_train=32, num_val=8, batch_size=8, num_workers=workers)
        datamodule.setup("fit")
        return datamodule.train_dataloader()

    first = loader(0)
    read(first, [2])
    resumed = loader(1)
    resumed.load_state_dict(first.state_dict())  # torchdata alone fails on an assert here
    assert len(read(resumed, [4])) == 4 and "had 0 workers, this run's has 1" in caplog.text
    del first, resumed  # see below


def test_graph_loader_gives_torch_geometric_batches() -> None:
    """The resumable graph loader batches as torch-geometric's DataLoader (its Collater) does."""

    class Graphs(GraphDataModule):
        task = "graph"

        def load(self) -> tuple[list[Data], int]:
            gen = torch.Generator().manual_seed(0)
            sizes = torch.randint(3, 9, (10,), generator=gen).tolist()
            return [
                Data(
                    x=torch.randn(n, 5, generator=gen),
                    edge_index=torch.randint(0, n, (2, 2 * n), generator=gen),
                    y=k % 2,
                )
                for k, n in enumerate(sizes)
            ], 2

    datamodule = Graphs(batch_size=4)
    ours, theirs = datamodule.val_dataloader(), GeometricLoader(datamodule.graphs(), batch_size=4)
    for a, b in zip(ours, theirs, strict=True):
        keys = a.keys()
        assert keys == b.keys() and all(torch.equal(a[key], b[key]) for key in keys)
    shuffled = torch.cat([batch.y for batch in datamodule.train_dataloader()])
    assert sorted(shuffled.tolist()) == sorted(g.y for g in datamodule.graphs())  # every graph once an epoch


# ----------------------------------------------------------------------------------- kill -9 and resume
IMAGE = [
    *QUIET,
    "model=vit_micro",
    "model.encoder.drop_path=0.1",  # the global RNG matters: drop-path draws from it
    "data.num_train=256",
    "data.num_val=64",
    "data.batch_size=16",
    "trainer.max_epochs=2",  # 16 steps an epoch; checkpoints at 7, 14, 16 (epoch end), 21; killed at 23
    "callbacks.model_checkpoint.every_n_train_steps=7",
    "callbacks.reconstructions=null",
    "callbacks.online_probe.enabled=false",
]


@pytest.mark.parametrize(
    ("workers", "kill_at", "resumed_at"),
    [
        (0, 23, 21),  # mid-epoch: the loader's position is in the checkpoint
        (2, 23, 21),  # and the position and augmentation RNG of each worker
        pytest.param(2, 17, 16, marks=pytest.mark.slow),  # the epoch-end checkpoint (after validation)
    ],
)
def test_image_resume_after_kill_is_bit_exact(
    workers: int, kill_at: int, resumed_at: int, tmp_path, monkeypatch
) -> None:
    saved = kill_resume_and_compare([*IMAGE, f"data.num_workers={workers}"], kill_at, tmp_path, monkeypatch)
    assert saved["global_step"] == resumed_at
    assert saved["ImageDataModule"]["train_loader"]


GRAPH = [
    *QUIET,
    "modality=graph",
    "model.encoder.hidden=64",
    "trainer.max_epochs=12",  # full batch: one step an epoch, last.ckpt at every epoch end
    "callbacks.model_checkpoint.every_n_train_steps=5",
    "~eval@final_eval",
]


def test_graph_node_resume_after_kill_is_bit_exact(tmp_path, monkeypatch) -> None:
    """GAT feature and attention dropout draw from the global RNG; the checkpoint is an epoch end's."""
    saved = kill_resume_and_compare(GRAPH, 8, tmp_path, monkeypatch)
    assert saved["global_step"] == 7


@pytest.mark.slow
def test_graph_tu_resume_after_kill_is_bit_exact(tmp_path, monkeypatch) -> None:
    """Shuffled mini-batches of graphs (MUTAG, 6 batches an epoch), killed in the second epoch."""
    root = needs_shared("tudataset", "MUTAG").parent
    overrides = [
        *QUIET,
        "experiment=graphmae_mutag",
        f"data.root={root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.batch_size=32",
        "trainer.max_epochs=3",
        "trainer.check_val_every_n_epoch=1",
        "callbacks.model_checkpoint.every_n_train_steps=4",
        "~eval@final_eval",
        "results_file=null",
    ]
    saved = kill_resume_and_compare(overrides, 10, tmp_path, monkeypatch)
    assert saved["global_step"] == 8


@pytest.mark.slow
def test_video_resume_after_kill_is_bit_exact(tmp_path, monkeypatch) -> None:
    """Moving shapes with two workers: random crops and clip starts continue after the resume."""
    overrides = [
        *QUIET,
        "modality=video",
        "model=videomae_micro",
        "model.encoder.drop_path=0.1",
        "data.num_train=64",
        "data.num_val=16",
        "data.num_frames=4",
        "data.batch_size=8",
        "data.num_workers=2",
        "trainer.max_epochs=2",
        "callbacks.model_checkpoint.every_n_train_steps=5",
        "callbacks.reconstructions=null",
        "callbacks.online_probe.enabled=false",
    ]
    saved = kill_resume_and_compare(overrides, 12, tmp_path, monkeypatch)
    assert saved["global_step"] == 10


def cli() -> None:
    """The CLI, with the callbacks above and a kill at step $MAE_ZOO_TEST_KILL_AT_STEP when set."""
    if THREADS in os.environ:  # the same thread count as the test process: the same float reductions
        torch.set_num_threads(int(os.environ[THREADS]))
    kill = os.environ.get(KILL_AT)
    mae_zoo.train.build = with_callbacks(mae_zoo.train.build, int(kill) if kill else None)
    # Hydra finds conf/ next to the file that calls it; run from here, it must be told where.
    main = hydra.main(version_base="1.3", config_path=str(ROOT / "conf"), config_name="train")
    main(mae_zoo.train.main.__wrapped__)()


if __name__ == "__main__":
    cli()
