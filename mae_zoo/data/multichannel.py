"""Multi-channel image data (microscopy, satellite): the embedded ``cells`` set and folders of
``.npy`` and ``.tif``/``.tiff`` stacks.

Stacks are (C, H, W) arrays: uint8 (scaled by 1/255), uint16 (by 1/65535) or float (taken as
is), resized to ``image_size`` and normalised per channel with ``mean``/``std``. Augmentation is
flips only (horizontal and vertical): a random crop could cut cells at the border and rescale them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mae_zoo.core.errors import ConfigError
from mae_zoo.data.base import MAEDataModule, SkippedFiles, count_skipped
from mae_zoo.data.cells import CLASSES as CELL_CLASSES
from mae_zoo.data.cells import make_cells
from mae_zoo.data.image import TensorImages, collate_skipping_none

log = logging.getLogger(__name__)

DATASETS = ("cells", "stack_folder")
NPY = (".npy",)
TIFF = (".tif", ".tiff")


def to_unit_float(array: np.ndarray) -> torch.Tensor:
    """An integer or float array as float32 in [0, 1] units (integers scaled by their type's maximum)."""
    if np.issubdtype(array.dtype, np.integer):
        return torch.from_numpy(array.astype(np.float32) / float(np.iinfo(array.dtype).max))
    if np.issubdtype(array.dtype, np.floating):
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    raise ValueError(f"unsupported array type {array.dtype}")


def read_stack(path: str) -> np.ndarray:
    """A (C, H, W) array from a ``.npy`` file or a TIFF stack (pages = channels)."""
    if path.lower().endswith(TIFF):
        array = tifffile.imread(path)
    else:
        array = np.load(path, allow_pickle=False)
    if array.ndim != 3:
        raise ValueError(f"expected a (C, H, W) stack, got shape {array.shape}")
    return array


class ChannelTransform:
    """(C, H, W) float in [0, 1] units -> resized to ``size``, random flips (``train``), normalised."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], train: bool) -> None:
        self.size, self.train = size, train
        self.mean = torch.tensor(list(mean), dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(list(std), dtype=torch.float32)[:, None, None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", antialias=True)[0]
        if self.train:  # draws from torch's RNG, which ResumableDataset keeps in the loader state
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            if torch.rand(()) < 0.5:
                x = x.flip(-2)
        return (x - self.mean) / self.std


class StackFolder(Dataset):
    """``split/<class>/<stack>.npy``: one sample per file, labelled by its folder. A file that cannot
    be read or has the wrong number of channels is skipped (None, dropped by the collate) and counted."""

    def __init__(self, root: str, channels: int, transform: Callable, skipped: SkippedFiles | None) -> None:
        self.classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        if not self.classes:
            raise ConfigError(f"stack_folder needs {root}/<class>/<stack>.npy; found no class folder")
        suffixes = NPY + TIFF
        self.samples = [
            (os.path.join(root, c, f), k)
            for k, c in enumerate(self.classes)
            for f in sorted(os.listdir(os.path.join(root, c)))
            if f.lower().endswith(suffixes)
        ]
        if not self.samples:
            raise ConfigError(f"stack_folder found no {'/'.join(suffixes)} file under {root}/<class>/")
        self.channels, self.transform, self.skipped = channels, transform, skipped

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        path, label = self.samples[i]
        try:
            stack = read_stack(path)
            if stack.shape[0] != self.channels:
                raise ValueError(f"{stack.shape[0]} channels, data.num_channels={self.channels}")
            return self.transform(to_unit_float(stack)), label
        except Exception as err:  # corrupt, truncated or mis-shaped file: skip it, never fail the run
            count_skipped(self.skipped, path)
            log.warning("skipping unreadable stack %s: %s", path, err)
            return None


class MultiChannelDataModule(MAEDataModule):
    """Train/val loaders of (C, H, W) multi-channel images: ``dataset`` is ``cells`` (embedded,
    generated in memory from ``cells_seed``) or ``stack_folder`` (``root/train`` and ``root/val``)."""

    collate_fn = staticmethod(collate_skipping_none)

    def __init__(
        self,
        dataset: str = "cells",
        root: str | None = None,
        image_size: int = 32,
        num_channels: int = 5,
        mean: Sequence[float] = (0.082, 0.142, 0.054, 0.054, 0.147),
        std: Sequence[float] = (0.204, 0.199, 0.123, 0.123, 0.157),
        batch_size: int = 128,
        num_workers: int = 2,
        flips: bool = True,
        num_train: int = 8000,
        num_val: int = 2000,
        cells_seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if dataset not in DATASETS:
            raise ConfigError(f"data.dataset='{dataset}' is unknown for multi-channel data; valid: {list(DATASETS)}")
        if dataset == "stack_folder" and not (root and os.path.isdir(root)):
            raise ConfigError(f"data.root={root} must be a folder holding train/<class>/*.npy and val/<class>/*.npy")
        if dataset == "cells" and num_channels != 5:
            raise ConfigError(f"data.dataset=cells has 5 channels; data.num_channels={num_channels}")
        if len(mean) != num_channels or len(std) != num_channels:
            raise ConfigError(
                f"data.mean/std need {num_channels} values (data.num_channels), got {len(mean)}/{len(std)}"
            )
        self.save_hyperparameters()
        self.dataset, self.root, self.image_size, self.num_channels = dataset, root, image_size, num_channels
        self.mean, self.std, self.flips = list(mean), list(std), flips
        self.num_train, self.num_val, self.cells_seed = num_train, num_val, cells_seed
        self.pin_memory = pin_memory
        self._classes: list[str] | None = None

    def transform(self, train: bool) -> ChannelTransform:
        return ChannelTransform(self.image_size, self.mean, self.std, train and self.flips)

    def build(self, train: bool, transform: Callable) -> Dataset:
        if self.dataset == "cells":
            num, seed = (self.num_train, self.cells_seed) if train else (self.num_val, self.cells_seed + 1)
            images, labels = make_cells(num, size=self.image_size, seed=seed)
            self._classes = list(CELL_CLASSES)
            return TensorImages(images, labels, transform)
        assert self.root is not None
        split = os.path.join(self.root, "train" if train else "val")
        if not os.path.isdir(split):
            raise ConfigError(f"stack_folder needs {split}/<class>/<stack>.npy (data.root={self.root})")
        folder = StackFolder(split, self.num_channels, transform, self.skip_counter())
        self._classes = folder.classes
        return folder

    @property
    def num_classes(self) -> int | None:
        if self.dataset == "cells":
            return len(CELL_CLASSES)
        return len(self._classes) if self._classes is not None else None

    def setup(self, stage: str | None = None) -> None:
        self.skip_counter()
        if self.train_set is None:
            self.train_set = self.build(True, self.transform(True))
            self.val_set = self.build(False, self.transform(False))

    def data_source(self) -> str:
        return "data.dataset=cells" if self.dataset == "cells" else f"data.dataset=stack_folder, data.root={self.root}"

    def unaugmented_train_set(self) -> Dataset:
        """The training stacks without flips: every sample once, as it is."""
        return self.build(True, self.transform(False))
