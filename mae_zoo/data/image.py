"""Image data: the embedded ``shapes`` set, torchvision MNIST / Fashion-MNIST / CIFAR, and ImageFolder."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Subset, default_collate
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


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """(N,) int64 labels of a dataset without loading its images: ``targets`` (torchvision sets,
    ImageFolder) or ``labels`` (:class:`TensorImages`)."""
    for attr in ("targets", "labels"):
        values = getattr(dataset, attr, None)
        if values is not None:
            return torch.as_tensor(values).long()
    raise ConfigError(f"{type(dataset).__name__} does not expose its labels; it cannot be split by class")


def check_split_options(val_from_train: int | float | None, train_subset: int | None) -> None:
    """The checks of ``val_from_train`` / ``train_subset`` that need no data (types, signs, the fraction's range)."""
    if val_from_train is not None:
        if isinstance(val_from_train, bool) or not isinstance(val_from_train, (int, float)):
            raise ConfigError(
                f"data.val_from_train must be null, a count (int >= 1) or a fraction in (0, 1), got {val_from_train!r}"
            )
        if isinstance(val_from_train, float) and not 0.0 < val_from_train < 1.0:
            raise ConfigError(
                f"data.val_from_train={val_from_train}: a fraction must lie in (0, 1) exclusive "
                "(or give a count, an int >= 1 below the training set's size)"
            )
        if isinstance(val_from_train, int) and val_from_train < 1:
            raise ConfigError(
                f"data.val_from_train={val_from_train}: a count must be an int >= 1 below the training set's size "
                "(or a fraction in (0, 1); null: no carved validation split)"
            )
    if train_subset is not None and (
        isinstance(train_subset, bool) or not isinstance(train_subset, int) or train_subset < 1
    ):
        raise ConfigError(
            f"data.train_subset must be null or a count (int >= 1, at least one image per class, below the "
            f"training images left after data.val_from_train), got {train_subset!r}"
        )


def split_indices(
    labels: torch.Tensor, val_from_train: int | float | None, train_subset: int | None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(train indices, held-out validation indices or None) into a training set of ``labels``.

    One permutation of ``0..N-1`` drawn from ``seed`` alone (never the run's seed: every arm and seed
    of an experiment gets the same split): its first ``val_from_train`` entries (a count, or a
    fraction of N rounded) are the validation split, the rest the training split. ``train_subset``
    then keeps, from that rest and in the permutation's order, ``train_subset // C`` images of each
    of the C classes (the first ``train_subset % C`` classes one more): class-balanced, and nested (a
    smaller subset is a part of a larger one). Both lists are sorted. ConfigError for values that do
    not fit the data, saying what does.
    """
    check_split_options(val_from_train, train_subset)
    n = int(labels.shape[0])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    val_idx: torch.Tensor | None = None
    if val_from_train is not None:
        count = round(val_from_train * n) if isinstance(val_from_train, float) else int(val_from_train)
        if not 1 <= count < n:
            raise ConfigError(
                f"data.val_from_train={val_from_train} holds out {count} of the {n} training images; valid: "
                f"a count in [1, {n - 1}] or a fraction in (0, 1) that leaves both splits non-empty"
            )
        val_idx, order = order[:count].sort().values, order[count:]
    if train_subset is not None:
        classes = labels.unique().tolist()
        left = int(order.shape[0])
        if not len(classes) <= train_subset < left:
            raise ConfigError(
                f"data.train_subset={train_subset}: valid is a count in [{len(classes)}, {left - 1}] (at least one "
                f"image for each of the {len(classes)} classes, fewer than the {left} training images left"
                + (" after data.val_from_train)" if val_from_train is not None else ")")
            )
        per_class, extra = divmod(train_subset, len(classes))
        ordered_labels = labels[order]
        kept = []
        for rank, cls in enumerate(classes):
            want = per_class + (1 if rank < extra else 0)
            members = order[ordered_labels == cls]
            if members.shape[0] < want:
                raise ConfigError(
                    f"data.train_subset={train_subset} needs {want} images of class {cls}, and the training split "
                    f"holds {members.shape[0]}; choose a smaller data.train_subset"
                )
            kept.append(members[:want])
        order = torch.cat(kept)
    return order.sort().values, val_idx


class ImageDataModule(MAEDataModule):
    """Train/val image loaders with MAE's pre-training augmentation (RandomResizedCrop + flip).

    ``val_from_train``: hold out that many training images (an int, or a fraction in (0, 1)) as the
    validation split, with the evaluation transform, and keep the dataset's own test split as
    ``test_set`` for final numbers only. ``train_subset``: train on a class-balanced subset of that
    many of the remaining training images (the low-label regime). Both are drawn from ``split_seed``
    alone (:func:`split_indices`), so every run given the same data settings sees the same split.
    Default (both null): train = the dataset's train split, val = its test split, as before.
    """

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
        val_from_train: int | float | None = None,
        train_subset: int | None = None,
        split_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        check_split_options(val_from_train, train_subset)
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
        self.val_from_train, self.train_subset, self.split_seed = val_from_train, train_subset, split_seed
        self.train_indices: torch.Tensor | None = None
        """Indices of the training split into the dataset's train split (None: all of it); set by ``setup``."""
        self.val_indices: torch.Tensor | None = None
        """Indices of the carved validation split into the dataset's train split (None: val = test split)."""

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
            train = self.train_set.dataset if isinstance(self.train_set, Subset) else self.train_set
            return len(train.classes) if isinstance(train, tvd.ImageFolder) else None
        return 10

    @property
    def splits_train(self) -> bool:
        return self.val_from_train is not None or self.train_subset is not None

    def setup(self, stage: str | None = None) -> None:
        self.skip_counter()
        if self.train_set is not None:
            return
        train = self.build(True, self.train_transform())
        if not self.splits_train:
            self.train_set = train
            self.val_set = self.build(False, self.eval_transform())
            return
        self.train_indices, self.val_indices = split_indices(
            dataset_labels(train), self.val_from_train, self.train_subset, self.split_seed
        )
        self.train_set = Subset(train, self.train_indices.tolist())
        if self.val_indices is None:  # a labelled subset only: validation stays on the test split
            self.val_set = self.build(False, self.eval_transform())
        else:
            self.val_set = Subset(self.build(True, self.eval_transform()), self.val_indices.tolist())
            self.test_set = self.build(False, self.eval_transform())

    def data_source(self) -> str:
        if self.dataset == "shapes":
            return "data.dataset=shapes"
        return f"data.dataset={self.dataset}, data.root={self.root}"

    def unaugmented_train_set(self) -> Dataset:
        """The training images (the training split only, when one is carved or subset) with the
        evaluation transform: every image seen once, as it is."""
        train = self.build(True, self.eval_transform())
        if self.splits_train:
            self.setup("fit")
            assert self.train_indices is not None
            return Subset(train, self.train_indices.tolist())
        return train
