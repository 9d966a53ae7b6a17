"""``MAEDataModule``: the base of every DataModule of the project.

It declares, once, what code outside ``mae_zoo/data`` may ask of any datamodule (evaluators, the
online probe, ``train``), with the default for a datamodule that has nothing to say: the class
count, the train/val datasets, the frozen-feature loaders and the unreadable files skipped.

Its loaders are resumable (:class:`ResumableLoader`): Lightning stores their position in the
checkpoint, so a run killed mid-epoch continues with the very batches, and augmentations, that the
uninterrupted run would have drawn.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
import warnings
import weakref
from collections.abc import Callable, Sized
from typing import Any, TypeVar

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from mae_zoo.core.errors import ConfigError

log = logging.getLogger(__name__)


class DataError(ConfigError):
    """The data yields nothing to train or validate on (every file of a split unreadable). A
    ConfigError, so that the command line reports it in one line: the fix is in the data or its path."""


# ----------------------------------------------------------------------------------- skipped files
class SkippedFiles:
    """The distinct unreadable files met by a datamodule's datasets, in whatever process reads them.

    Loader workers (forked or spawned) and their parent share nothing but a folder: each process
    appends the paths it skips to a file of its own there (no lock needed, nothing but a path to
    pickle), and :meth:`paths` reads the union, so a file met in several epochs, splits or workers
    counts once. The folder is made at the first skip (a run that skips nothing, or is killed, leaves
    none behind) and removed when the object that named it is collected, or at exit.
    """

    def __init__(self) -> None:
        self.folder = os.path.join(tempfile.gettempdir(), f"mae_zoo_skipped_{uuid.uuid4().hex}")
        self.seen: set[str] = set()  # per process: write each path once
        weakref.finalize(self, _remove_folder, self.folder, os.getpid())

    def add(self, path: str) -> None:
        if path in self.seen:
            return
        self.seen.add(path)
        os.makedirs(self.folder, exist_ok=True)
        with open(os.path.join(self.folder, f"{os.getpid()}.txt"), "a", encoding="utf-8") as handle:
            handle.write(path + "\n")

    def paths(self) -> list[str]:
        """Every distinct path skipped so far, sorted."""
        found: set[str] = set()
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:  # already cleaned up
            return []
        for name in names:
            with open(os.path.join(self.folder, name), encoding="utf-8") as handle:
                # A line a worker is writing right now may lack its newline: it is complete only then.
                found.update(line[:-1] for line in handle if line.endswith("\n"))
        return sorted(found)


def _remove_folder(folder: str, owner: int) -> None:
    # A forked worker inherits the finalizer with the object: only the process that made the folder removes it.
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)


def count_skipped(skipped: SkippedFiles | None, path: str) -> None:
    """Record one unreadable file; called by datasets inside loader workers, which hold the
    :class:`SkippedFiles` (never the datamodule, which would be pickled to every worker)."""
    if skipped is not None:  # None: a dataset built outside a datamodule, nothing to report to
        skipped.add(str(path))


# ----------------------------------------------------------------------------------- resumable loading
def _seed(*words: int) -> int:
    return int(np.random.SeedSequence([w & 0xFFFFFFFFFFFFFFFF for w in words]).generate_state(1, dtype=np.uint64)[0])


class ResumableDataset(Dataset):
    """A dataset whose random augmentation draws from a torch RNG of its own, kept in the loader's state.

    The torch RNG of a loader worker is reseeded when the worker starts, and the main process's is
    shared with dropout: neither continues where it was after a resume. This one does, because the
    loader saves it (``state_dict``) with the position of every worker. It starts from the process's
    seed (the worker seed inside a worker), so augmentations still differ per worker and per epoch.
    Only torch's RNG is swapped in: the transforms here draw from it alone.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.rng_state: torch.Tensor | None = None

    def __len__(self) -> int:
        assert isinstance(self.dataset, Sized), "map-style datasets only"
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        with torch.random.fork_rng(devices=[]):
            if self.rng_state is None:
                self.rng_state = torch.Generator().manual_seed(_seed(torch.initial_seed(), 0x5EED)).get_state()
            torch.set_rng_state(self.rng_state)
            try:
                return self.dataset[index]
            finally:
                self.rng_state = torch.get_rng_state()

    def state_dict(self) -> dict[str, Any]:
        return {} if self.rng_state is None else {"rng_state": self.rng_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng_state = state.get("rng_state")


class ResumableLoader(StatefulDataLoader):
    """torchdata's ``StatefulDataLoader`` (Lightning saves and restores its position mid-epoch) whose
    shuffling and worker seeds draw from its own ``generator``, saved with the rest of its state.

    Without a generator of its own a loader draws its shuffling seed and its workers' base seed from
    the global RNG when an epoch starts, and a resumed run starts its epochs at other points of that
    stream than the uninterrupted run did; the global RNG is left to the model (dropout), where
    :class:`mae_zoo.callbacks.RNGState` restores it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with warnings.catch_warnings():  # torchdata 0.11 calls torch.set_vital, deprecated since: not ours to fix
            warnings.filterwarnings("ignore", message=".*set_vital.*")
            super().__init__(*args, **kwargs)
        self._generator_state: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        iterator = self._iterator
        # Lightning stops asking for batches at the epoch's length, so the iterator never hits its
        # StopIteration and is not marked finished: saved at an epoch end, it would resume as an
        # exhausted epoch (zero batches) instead of starting the next one, as the saved run did.
        if iterator is not None and isinstance(self.dataset, Sized) and iterator._num_yielded >= len(self):
            state["_iterator_finished"] = True
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_workers = state_dict.get("_snapshot", {}).get("_main_snapshot", {}).get("_num_workers", 0)
        if saved_workers != self.num_workers:  # torchdata would fail on an assert
            log.warning(
                "the checkpoint's training loader had %d workers, this run's has %d: the epoch's data order "
                "restarts, so the run will not repeat the interrupted one exactly",
                saved_workers,
                self.num_workers,
            )
            return
        state = dict(state_dict)
        self._generator_state = state.pop("generator", None)
        super().load_state_dict(state)

    def _get_iterator(self) -> Any:
        iterator = super()._get_iterator()
        # After the iterator is rebuilt from the saved state (which draws from the generator), the
        # generator continues from where the saved run had it.
        if self._generator_state is not None and self.generator is not None:
            self.generator.set_state(self._generator_state)
            self._generator_state = None
        return iterator


def loader_generator(tag: int) -> torch.Generator:
    """A loader's own generator, seeded from the process's seed (the run's ``seed``) and ``tag``."""
    return torch.Generator().manual_seed(_seed(torch.initial_seed(), tag))


LoaderT = TypeVar("LoaderT", bound=DataLoader)


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
        self.test_set: Dataset | None = None
        """A test split kept apart from ``val_set``; None unless the datamodule carves its validation
        split out of the training data (``val_from_train`` of the image data), which leaves the
        dataset's own test split here, for final numbers only."""
        self.skipped: SkippedFiles | None = None
        """The unreadable files the datasets skipped; made by :meth:`skip_counter`, handed to the
        datasets, which add to it with :func:`count_skipped`."""
        self.train_loader: weakref.ref[ResumableLoader] | None = None
        """The training loader last handed out, whose position goes into checkpoints. Weak: Lightning's
        datamodules live in reference cycles, and a loader kept alive by one would shut its workers
        down only in a garbage collection, where they may no longer be told to."""
        self.train_loader_state: dict[str, Any] | None = None
        """A position loaded from a checkpoint, for the next training loader."""

    @property
    def num_classes(self) -> int | None:
        """Number of label classes; None when unknown (evaluators then infer it from the labels)."""
        return None

    # ------------------------------------------------------------------------------- skipped files
    def skip_counter(self) -> SkippedFiles:
        """The record of skipped files, made on first use (in ``setup``): a datamodule that reads no
        files makes no folder."""
        if self.skipped is None:
            self.skipped = SkippedFiles()
        return self.skipped

    @property
    def num_skipped(self) -> int:
        """Distinct unreadable files skipped so far, over all workers, splits and epochs (0 before ``setup``)."""
        return len(self.skipped_paths())

    def skipped_paths(self) -> list[str]:
        """The distinct unreadable files skipped so far, sorted (empty before ``setup``)."""
        return self.skipped.paths() if self.skipped is not None else []

    # ------------------------------------------------------------------------------- empty data
    def data_source(self) -> str:
        """Where the data is read from, for error messages (a datamodule reading files names its root)."""
        return type(self).__name__

    def check_epoch(self, split: str, batches: int) -> None:
        """Fail when a whole epoch of ``split`` ("train" or "val") gave no batch: every file of it was
        unreadable. Called at epoch ends by :class:`mae_zoo.callbacks.DataCheck`."""
        if batches > 0:
            return
        skipped = self.skipped_paths()
        listed = ", ".join(skipped[:3]) + (f" and {len(skipped) - 3} more" if len(skipped) > 3 else "")
        raise DataError(
            f"the {'training' if split == 'train' else 'validation'} split gave no readable sample in a whole epoch "
            f"({self.data_source()}); unreadable files skipped so far: {len(skipped)}"
            + (f" ({listed})" if skipped else "")
        )

    # ------------------------------------------------------------------------------- loaders
    def loader(
        self, dataset: Dataset, train: bool, batch_size: int | None = None, persistent: bool = True
    ) -> DataLoader:
        """A resumable loader of ``dataset`` with this datamodule's workers, pinning and ``collate_fn``:
        shuffled, dropping the last partial batch, when ``train`` (unless the dataset holds a single
        batch); in order otherwise. ``persistent``: keep the workers between epochs."""
        size = batch_size or self.batch_size
        return ResumableLoader(
            ResumableDataset(dataset) if train else dataset,
            batch_size=size,
            shuffle=train,
            drop_last=train and isinstance(dataset, Sized) and len(dataset) > size,
            num_workers=self.num_workers,
            persistent_workers=persistent and self.num_workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=self.collate_fn,
            generator=loader_generator(int(train)),
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup() builds the datasets"
        return self.resume_train_loader(self.loader(self.train_set, True))

    # ------------------------------------------------------------------------------- resuming
    # Lightning keeps a stateful training loader's position in its fit loop too, but restores it only
    # into a loader built after the checkpoint was loaded; a module whose configure_optimizers asks for
    # trainer.estimated_stepping_batches (the LR schedules here) has the loader built before, and the
    # epoch would restart. The datamodule's own state is loaded first, so the position travels here.
    def resume_train_loader(self, loader: LoaderT) -> LoaderT:
        """Make ``loader`` the training loader whose position checkpoints keep, and move it to the
        position loaded from a checkpoint, if any (once)."""
        if isinstance(loader, ResumableLoader):
            self.train_loader = weakref.ref(loader)
            if self.train_loader_state is not None:
                loader.load_state_dict(self.train_loader_state)
                self.train_loader_state = None
        return loader

    def state_dict(self) -> dict[str, Any]:
        """The training loader's position, saved by Lightning in every checkpoint."""
        loader = self.train_loader() if self.train_loader is not None else None
        return {"train_loader": loader.state_dict()} if loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_loader_state = state_dict.get("train_loader")

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "setup() builds the datasets"
        return self.loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        """The ``test_set`` in order; a ConfigError when the datamodule keeps none apart from ``val_set``."""
        if self.test_set is None:
            raise ConfigError(
                f"{type(self).__name__} has no test split apart from its validation split "
                "(image data: set data.val_from_train to carve the validation split out of the training set)"
            )
        return self.loader(self.test_set, False)

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
