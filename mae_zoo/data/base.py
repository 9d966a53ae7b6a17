"""``MAEDataModule``: the base of every DataModule of the project.

It declares, once, what code outside ``mae_zoo/data`` may ask of any datamodule (evaluators, the
online probe, ``train``), with the default for a datamodule that has nothing to say: the class
count, the train/val datasets, the frozen-feature loaders and the count of unreadable files skipped.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sized
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from mae_zoo.core.errors import ConfigError


def count_skipped(counter: Synchronized | None) -> None:
    """Add one unreadable file to a shared counter; called by datasets inside loader workers, which
    hold the counter (never the datamodule, which would be pickled to every worker)."""
    if counter is None:  # a dataset built outside a datamodule: nothing to report to
        return
    with counter.get_lock():  # workers of several loaders increment it at once
        counter.value += 1


def trainer_datamodule(trainer: pl.Trainer | None) -> pl.LightningDataModule | None:
    """The DataModule a trainer runs on; None without a trainer or with bare loaders."""
    if trainer is None:
        return None
    return trainer.datamodule  # type: ignore[attr-defined]  # Lightning sets it in its data connector, undeclared


class MAEDataModule(pl.LightningDataModule):
    """Loaders of batch size ``batch_size`` with ``num_workers`` workers, and the optional hooks below."""

    collate_fn: Callable[[list[Any]], Any] | None = None  # how loaders batch samples (None: torch's default)
    pin_memory: bool = False

    def __init__(self, batch_size: int, num_workers: int) -> None:
        super().__init__()
        self.batch_size: int = batch_size
        self.num_workers: int = num_workers
        self.train_set: Dataset | None = None
        """The training dataset; None until ``setup``."""
        self.val_set: Dataset | None = None
        """The validation dataset; None until ``setup``."""
        self.skipped: Synchronized | None = None
        """Shared count of unreadable files the datasets skipped; made by :meth:`skip_counter`, handed
        to the datasets, which add to it with :func:`count_skipped`."""

    @property
    def num_classes(self) -> int | None:
        """Number of label classes; None when unknown (evaluators then infer it from the labels)."""
        return None

    # ------------------------------------------------------------------------------- skipped files
    def skip_counter(self) -> Synchronized:
        """The shared counter of skipped files, made on first use. Call it in ``setup`` or later, never
        in ``__init__``: a ``multiprocessing.Value`` cannot be pickled into spawned (DDP) processes."""
        if self.skipped is None:
            self.skipped = multiprocessing.Value("i", 0)
        return self.skipped

    @property
    def num_skipped(self) -> int:
        """Unreadable files skipped so far, over all workers (0 before ``setup``)."""
        return int(self.skipped.value) if self.skipped is not None else 0

    # ------------------------------------------------------------------------------- loaders
    def loader(
        self, dataset: Dataset, train: bool, batch_size: int | None = None, persistent: bool = True
    ) -> DataLoader:
        """A loader of ``dataset`` with this datamodule's workers, pinning and ``collate_fn``: shuffled,
        dropping the last partial batch, when ``train`` (unless the dataset holds a single batch);
        in order otherwise. ``persistent``: keep the workers between epochs."""
        size = batch_size or self.batch_size
        return DataLoader(
            dataset,
            batch_size=size,
            shuffle=train,
            drop_last=train and isinstance(dataset, Sized) and len(dataset) > size,
            num_workers=self.num_workers,
            persistent_workers=persistent and self.num_workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=self.collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup() builds the datasets"
        return self.loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "setup() builds the datasets"
        return self.loader(self.val_set, False)

    # ------------------------------------------------------------------------------- evaluation
    def unaugmented_train_set(self) -> Dataset:
        """The training split as evaluation sees it (no augmentation), for frozen-feature probes.
        The default has none to give."""
        raise ConfigError(
            f"{type(self).__name__} gives no frozen-feature loaders (feature_dataloaders); "
            "this evaluation needs a datamodule that does (image or video data)"
        )

    def feature_dataloaders(self, batch_size: int | None = None) -> tuple[DataLoader, DataLoader]:
        """(train, val) loaders for frozen-feature probes: no augmentation, no shuffling, every sample
        once; ``batch_size`` None uses the datamodule's."""
        self.setup("fit")
        train = self.unaugmented_train_set()
        assert self.val_set is not None, "setup() builds the datasets"
        return (
            self.loader(train, False, batch_size, persistent=False),
            self.loader(self.val_set, False, batch_size, persistent=False),
        )
