"""Image data: the embedded ``shapes`` set, torchvision MNIST / Fashion-MNIST / CIFAR, and ImageFolder."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate
from torchvision import datasets as tvd
from torchvision.transforms import InterpolationMode, v2

from mae_zoo.core.errors import ConfigError
from mae_zoo.data.base import MAEDataModule, SkippedFiles, count_skipped
from mae_zoo.data.shapes import make_shapes

log = logging.getLogger(__name__)

# name -> (torchvision class, folder it expects under data.root)
TORCHVISION = {
    "mnist": (tvd.MNIST, "MNIST"),
    "fashion_mnist": (tvd.FashionMNIST, "FashionMNIST"),
    "cifar10": (tvd.CIFAR10, "cifar-10-batches-py"),
    "cifar100": (tvd.CIFAR100, "cifar-100-python"),
}
DATASETS = ("shapes", *TORCHVISION, "image_folder")


class TensorImages(Dataset):
    """uint8 (N, C, H, W) images with labels, transformed on access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), int(self.labels[i])


class SkippingImageFolder(tvd.ImageFolder):
    """ImageFolder that returns None for an unreadable file (dropped by the collate) and records it."""

    def __init__(self, root: str, transform: Callable, skipped: SkippedFiles | None) -> None:
        super().__init__(root, transform=transform)
        self.skipped = skipped

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        try:
            return super().__getitem__(i)
        except Exception as err:  # corrupt or truncated file: skip it, never fail the run
            count_skipped(self.skipped, self.samples[i][0])
            log.warning("skipping unreadable image %s: %s", self.samples[i][0], err)
            return None


def collate_skipping_none(items: Sequence[Any]) -> Any:
    """Batch the readable samples; None when none was (the steps skip a None batch, and an epoch that
    gives nothing else fails in :meth:`MAEDataModule.check_epoch`)."""
    kept = [x for x in items if x is not None]
    if not kept:
        log.warning("every image of a batch was unreadable; the batch is skipped")
        return None
    return default_collate(kept)


class ImageDataModule(MAEDataModule):
    """Train/val image loaders with MAE's pre-training augmentation (RandomResizedCrop + flip)."""

    collate_fn = staticmethod(collate_skipping_none)

    def __init__(
        self,
        dataset: str = "shapes",
        root: str | None = None,
        download: bool = False,
        image_size: int = 32,
        num_channels: int = 3,
        mean: Sequence[float] = (0.316, 0.312, 0.313),
        std: Sequence[float] = (0.236, 0.235, 0.234),
        batch_size: int = 128,
        num_workers: int = 2,
        crop_scale: Sequence[float] = (0.2, 1.0),
        hflip: bool = True,
        num_train: int = 10000,
        num_val: int = 2000,
        shapes_seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if dataset not in DATASETS:
            raise ConfigError(f"data.dataset='{dataset}' is unknown; valid: {list(DATASETS)}")
        if dataset != "shapes":
            if not root:
                raise ConfigError(
                    f"data.root is required for data.dataset={dataset}: the folder that holds "
                    f"{TORCHVISION[dataset][1] + '/' if dataset in TORCHVISION else 'train/ and val/'} "
                    "(e.g. ../shared/data/vision), or set data.download=true"
                )
            if not download and not os.path.isdir(root):
                raise ConfigError(f"data.root={root} does not exist (and data.download=false)")
        if len(mean) != num_channels or len(std) != num_channels:
            raise ConfigError(
                f"data.mean/std need {num_channels} values (data.num_channels), got {len(mean)}/{len(std)}"
            )
        if num_channels not in (1, 3):
            raise ConfigError(f"data.num_channels must be 1 or 3, got {num_channels}")
        self.save_hyperparameters()
        self.dataset, self.root, self.download = dataset, root, download
        self.image_size, self.num_channels = image_size, num_channels
        self.mean, self.std, self.crop_scale, self.hflip = mean, std, crop_scale, hflip
        self.num_train, self.num_val, self.shapes_seed = num_train, num_val, shapes_seed
        self.pin_memory = pin_memory

    # ------------------------------------------------------------------------------- transforms
    def _channels(self) -> v2.Transform:
        return v2.RGB() if self.num_channels == 3 else v2.Grayscale(num_output_channels=1)

    def train_transform(self) -> v2.Compose:
        steps: list[v2.Transform] = [v2.ToImage(), self._channels()]
        steps.append(
            v2.RandomResizedCrop(
                self.image_size, scale=tuple(self.crop_scale), interpolation=InterpolationMode.BICUBIC, antialias=True
            )
        )
        if self.hflip:
            steps.append(v2.RandomHorizontalFlip())
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))]
        return v2.Compose(steps)

    def eval_transform(self) -> v2.Compose:
        return v2.Compose(
            [
                v2.ToImage(),
                self._channels(),
                v2.Resize(self.image_size, interpolation=InterpolationMode.BICUBIC, antialias=True),
                v2.CenterCrop(self.image_size),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(list(self.mean), list(self.std)),
            ]
        )

    # ------------------------------------------------------------------------------- datasets
    def build(self, train: bool, transform: Callable) -> Dataset:
        if self.dataset == "shapes":
            num, seed = (self.num_train, self.shapes_seed) if train else (self.num_val, self.shapes_seed + 1)
            images, labels = make_shapes(num, size=self.image_size, seed=seed)
            return TensorImages(images, labels, transform)
        if self.dataset in TORCHVISION:
            cls, folder = TORCHVISION[self.dataset]
            try:
                return cls(self.root, train=train, transform=transform, download=self.download)
            except RuntimeError as err:
                raise ConfigError(
                    f"{self.dataset} not found under data.root={self.root} (expected {folder}/ there): {err}"
                ) from err
        assert self.root is not None  # __init__ requires data.root for every dataset but shapes
        split = os.path.join(self.root, "train" if train else "val")
        if not os.path.isdir(split):
            raise ConfigError(f"image_folder needs {split}/<class>/<image> (data.root={self.root})")
        return SkippingImageFolder(split, transform, self.skip_counter())

    @property
    def num_classes(self) -> int | None:
        """Number of label classes (None for an ImageFolder before setup)."""
        if self.dataset == "cifar100":
            return 100
        if self.dataset == "image_folder":
            return len(self.train_set.classes) if isinstance(self.train_set, tvd.ImageFolder) else None
        return 10

    def setup(self, stage: str | None = None) -> None:
        self.skip_counter()
        if self.train_set is None:
            self.train_set = self.build(True, self.train_transform())
            self.val_set = self.build(False, self.eval_transform())

    def data_source(self) -> str:
        if self.dataset == "shapes":
            return "data.dataset=shapes"
        return f"data.dataset={self.dataset}, data.root={self.root}"

    def unaugmented_train_set(self) -> Dataset:
        """The training images with the evaluation transform: every image seen once, as it is."""
        return self.build(True, self.eval_transform())
