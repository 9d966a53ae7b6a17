"""Fail a run whose data yields nothing, instead of training zero steps or dropping ``val/loss``.

Whether a file is readable is only known once it is decoded, in the loader workers; what reaches the
main process is the batch, ``None`` when every file of it was unreadable (Lightning then skips the
step). So the check counts the batches that are not ``None`` over each epoch, and at the epoch's end
asks the datamodule (``MAEDataModule.check_epoch``) to fail when there were none.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from mae_zoo.data.base import MAEDataModule, trainer_datamodule


class DataCheck(pl.Callback):
    """Raises :class:`mae_zoo.data.base.DataError` at the end of a training or validation epoch that
    gave no readable batch (summed over ranks: one rank's empty shard is not an empty split)."""

    def __init__(self) -> None:
        self.batches: dict[str, int | None] = {"train": None, "val": None}

    def _check(self, trainer: pl.Trainer, split: str) -> None:
        count, self.batches[split] = self.batches[split], None
        datamodule = trainer_datamodule(trainer)
        if count is None or not isinstance(datamodule, MAEDataModule):
            return
        total = trainer.strategy.reduce(torch.tensor(float(count)), reduce_op="sum")
        datamodule.check_epoch(split, int(total.item()) if isinstance(total, torch.Tensor) else int(total))

    # Counting starts at the epoch's start: an epoch resumed near its end has seen few batches here.
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.batches["train"] = 0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        count = self.batches["train"]
        if count is not None and batch is not None:  # Lightning calls it for batches that are not None only
            self.batches["train"] = count + 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, "train")

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.batches["val"] = None if trainer.sanity_checking else 0

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        count = self.batches["val"]
        if count is not None and batch is not None:
            self.batches["val"] = count + 1

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, "val")
