"""Video data: the embedded ``moving_shapes`` set, and real files (a folder or a ``path label`` list)
decoded with PyAV.

Clips are float (C, T, H, W), ImageNet-normalised by default (VideoMAE's layout). Training clips get
the official pre-training augmentation (multi-scale crop + resize, no flip); evaluation clips the
centred clip, resized and centre-cropped. ``num_sample`` > 1 is VideoMAE V2's repeated sampling:
one decoded video gives several independently cropped clips (the model draws a fresh mask for each),
so the decoder stays busy while the loader decodes fewer files. Unreadable or truncated files are
skipped, logged and counted once per distinct file (``num_skipped``, ``skipped_paths()``, and
``data/skipped_files`` in metrics.json); a split in which no file is readable fails the run.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate

from mae_zoo.core.errors import ConfigError
from mae_zoo.data.base import MAEDataModule, SkippedFiles, count_skipped
from mae_zoo.data.moving_shapes import DIRECTIONS, make_moving_shapes
from mae_zoo.data.video_io import UnreadableVideo, clip_indices, decode_frames, probe

log = logging.getLogger(__name__)

DATASETS = ("moving_shapes", "folder", "list")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------- transforms
def multi_scale_crop_box(
    height: int, width: int, size: int, scales: Sequence[float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, left, crop_h, crop_w) of VideoMAE's GroupMultiScaleCrop (the official pre-training aug).

    Crop sides are ``scale * min(H, W)`` for scales such as (1, .875, .75, .66), snapped to ``size``
    when within 3 px; height and width scales differ by at most one step (max_distort 1); the
    corner is one of 13 fixed positions on a 4x4 lattice (corners, centre, edge midpoints, quarters).
    """
    base = min(height, width)
    sides = [int(base * s) for s in scales]
    sides = [size if abs(s - size) < 3 else s for s in sides]
    pairs = [(h, w) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= 1]
    crop_h, crop_w = pairs[int(rng.integers(len(pairs)))]
    hs, ws = (height - crop_h) // 4, (width - crop_w) // 4
    lattice = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2), (1, 1), (1, 3), (3, 1), (3, 3)]
    row, col = lattice[int(rng.integers(len(lattice)))]
    return row * hs, col * ws, crop_h, crop_w


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of float (T, C, H, W) frames with antialiasing (as PIL's resize)."""
    if tuple(frames.shape[-2:]) == size:
        return frames
    return F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)


class ClipTransform:
    """uint8 (T, H, W, C) frames -> normalised float (C, T, size, size)."""

    def __init__(
        self, size: int, train: bool, scales: Sequence[float], mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.size, self.train, self.scales = size, train, tuple(scales)
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2)  # (T, C, H, W), still uint8
        height, width = x.shape[-2:]
        if self.train:
            top, left, ch, cw = multi_scale_crop_box(height, width, self.size, self.scales, rng)
            x = resize_frames(x[..., top : top + ch, left : left + cw].float(), (self.size, self.size))
        else:  # short side to size, then the centre square
            scale = self.size / min(height, width)
            x = resize_frames(x.float(), (max(self.size, round(height * scale)), max(self.size, round(width * scale))))
            top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
            x = x[..., top : top + self.size, left : left + self.size]
        x = (x / 255.0 - self.mean) / self.std
        return x.permute(1, 0, 2, 3).contiguous()  # (C, T, H, W)


def _worker_rng(seed: int, index: int) -> np.random.Generator:
    """A per-sample generator for crops and clip starts that differs per draw, so an item gets a new
    augmentation every epoch, and repeats with the run's seed.

    The draw comes from torch's RNG: in a worker it was seeded with the worker seed and advances with
    every sample (in training loaders it is the dataset's own, :class:`mae_zoo.data.base.ResumableDataset`,
    so that it also continues after a resume). The worker seed alone would not do: persistent workers
    keep it for their whole life, so every epoch would repeat the same crops.
    """
    base = int(torch.randint(0, 2**62, (1,)))
    return np.random.default_rng([base, int(seed), int(index)])


# ----------------------------------------------------------------------------------- datasets
class TensorClips(Dataset):
    """The embedded clips, uint8 (N, C, T, H, W), transformed on access."""

    def __init__(self, videos: torch.Tensor, labels: torch.Tensor, transform: ClipTransform, num_sample: int) -> None:
        self.videos, self.labels, self.transform, self.num_sample = videos, labels, transform, num_sample

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> list[tuple[torch.Tensor, int]]:
        rng = _worker_rng(0, i) if self.transform.train else np.random.default_rng(i)
        frames = self.videos[i].permute(1, 2, 3, 0)  # (T, H, W, C)
        return [(self.transform(frames, rng), int(self.labels[i])) for _ in range(self.num_sample)]


class VideoFiles(Dataset):
    """(path, label) pairs decoded with PyAV; an unreadable file gives None and is counted."""

    def __init__(
        self,
        samples: list[tuple[str, int]],
        transform: ClipTransform,
        num_frames: int,
        sampling_rate: int,
        short_side: int | None,
        num_sample: int,
        skipped: SkippedFiles | None,
    ) -> None:
        self.samples, self.transform = samples, transform
        self.num_frames, self.sampling_rate, self.short_side = num_frames, sampling_rate, short_side
        self.num_sample, self.skipped = num_sample, skipped

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __getitem__(self, i: int) -> list[tuple[torch.Tensor, int]] | None:
        path, label = self.samples[i]
        rng = _worker_rng(1, i) if self.transform.train else np.random.default_rng(i)
        try:
            info = probe(path)
            indices = clip_indices(
                info.num_frames, self.num_frames, self.sampling_rate, rng if self.transform.train else None
            )
            frames = decode_frames(path, indices, info.output_size(self.short_side))
        except UnreadableVideo as err:  # corrupt or truncated: skip it, never fail the run
            count_skipped(self.skipped, path)
            log.warning("skipping unreadable video: %s", err)
            return None
        # Repeated sampling: the frames are decoded once, each copy gets its own crop.
        return [(self.transform(frames, rng), label) for _ in range(self.num_sample)]


def collate_clips(items: Sequence[list[tuple[torch.Tensor, int]] | None]) -> Any:
    """Flatten the ``num_sample`` clips of every video into one batch; drop skipped files
    (None when the whole batch was unreadable)."""
    kept = [clip for item in items if item is not None for clip in item]
    if not kept:  # VideoMAE's steps skip a None batch (each file was already counted and logged)
        log.warning("every video of a batch was unreadable; the batch is skipped")
        return None
    return default_collate(kept)


# ----------------------------------------------------------------------------------- file layouts
def list_folder(root: Path, extensions: Sequence[str]) -> tuple[list[tuple[str, int]], list[str]]:
    """Videos under ``root``. With class subfolders (``root/<class>/*.mp4``) the label is the class
    index in sorted order; a flat folder gives label 0 for every file."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if subdirs:
        classes = [d.name for d in subdirs]
        samples = [
            (str(f), k) for k, d in enumerate(subdirs) for f in sorted(d.rglob("*")) if f.suffix.lower() in extensions
        ]
    else:
        classes = [root.name]
        samples = [(str(f), 0) for f in sorted(root.iterdir()) if f.suffix.lower() in extensions]
    return samples, classes


def read_list(list_file: Path, root: Path | None) -> list[tuple[str, int]]:
    """Kinetics/SSv2-style list: one video per line, ``path label`` (spaces) or ``path,label`` (CSV).

    The label is the last field (0 when absent; the official pre-training lists hold dummy labels);
    relative paths are taken under ``root`` (else next to the list file). A CSV header is skipped.
    """
    base = root if root is not None else list_file.parent
    samples = []
    with list_file.open(newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle, delimiter="," if list_file.suffix == ".csv" else " "), 1):
            fields = [f for f in row if f.strip()]
            if not fields:
                continue
            label = 0
            if len(fields) > 1:
                try:
                    label = int(fields[-1])
                except ValueError:
                    if line_no == 1:
                        continue  # header
                    raise ConfigError(f"{list_file}:{line_no}: label '{fields[-1]}' is not an integer") from None
            path = Path(fields[0])
            samples.append((str(path if path.is_absolute() else base / path), label))
    return samples


# ----------------------------------------------------------------------------------- datamodule
class VideoDataModule(MAEDataModule):
    """Train/val clip loaders for VideoMAE pre-training and probing."""

    collate_fn = staticmethod(collate_clips)

    def __init__(
        self,
        dataset: str = "moving_shapes",
        root: str | None = None,
        train_list: str | None = None,
        val_list: str | None = None,
        val_fraction: float = 0.2,
        num_frames: int = 16,
        sampling_rate: int = 4,
        image_size: int = 32,
        short_side: int | None = None,
        scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66),
        num_sample: int = 1,
        num_channels: int = 3,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_size: int = 16,
        num_workers: int = 2,
        num_train: int = 2000,
        num_val: int = 500,
        shapes_seed: int = 0,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if dataset not in DATASETS:
            raise ConfigError(f"data.dataset='{dataset}' is unknown; valid: {list(DATASETS)}")
        if dataset == "folder" and not (root and os.path.isdir(root)):
            raise ConfigError(f"data.dataset=folder needs data.root, an existing folder of videos; got {root}")
        if dataset == "list":
            for name, value in (("train_list", train_list), ("val_list", val_list)):
                if not value or not os.path.isfile(value):
                    raise ConfigError(f"data.dataset=list needs data.{name}, a 'path label' list file; got {value}")
        if num_channels != 3 or len(mean) != 3 or len(std) != 3:
            raise ConfigError("video clips are RGB: data.num_channels must be 3 with 3 mean/std values")
        if min(num_frames, sampling_rate, image_size, num_sample, batch_size) < 1:
            raise ConfigError("data.num_frames, sampling_rate, image_size, num_sample and batch_size must be >= 1")
        if not scales or max(scales) > 1 or min(scales) <= 0:
            raise ConfigError(f"data.scales must be crop fractions in (0, 1], got {list(scales)}")
        self.save_hyperparameters()
        self.dataset, self.root = dataset, root
        self.num_frames, self.image_size, self.num_channels = num_frames, image_size, num_channels
        self.train_list, self.val_list = train_list, val_list
        self.val_fraction, self.extensions = val_fraction, extensions
        self.sampling_rate, self.short_side, self.num_sample = sampling_rate, short_side, num_sample
        self.scales, self.mean, self.std = scales, mean, std
        self.num_train, self.num_val, self.shapes_seed = num_train, num_val, shapes_seed
        self.pin_memory = pin_memory
        self._samples: tuple[list[tuple[str, int]], list[tuple[str, int]]] = ([], [])
        self.classes: list[str] = list(DIRECTIONS) if dataset == "moving_shapes" else []

    def transform(self, train: bool) -> ClipTransform:
        return ClipTransform(self.image_size, train, self.scales, self.mean, self.std)

    def file_samples(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        if self.dataset == "list":
            assert self.train_list and self.val_list  # __init__ checked both list files
            root = Path(self.root) if self.root else None
            return read_list(Path(self.train_list), root), read_list(Path(self.val_list), root)
        assert self.root is not None  # __init__ requires data.root for dataset=folder
        root = Path(self.root)
        exts = tuple(e.lower() for e in self.extensions)
        if (root / "train").is_dir() and (root / "val").is_dir():
            (train, self.classes), (val, _) = list_folder(root / "train", exts), list_folder(root / "val", exts)
            return train, val
        samples, self.classes = list_folder(root, exts)
        # No split on disk: every k-th file (sorted order) is held out, deterministic and spread out.
        step = max(2, round(1 / self.val_fraction)) if self.val_fraction > 0 else 0
        if not step:  # val_fraction 0: validate on the training files (centred clips)
            return samples, samples
        val = samples[step - 1 :: step]
        return [s for s in samples if s not in val], val

    def build(self, train_split: bool, augment: bool, num_sample: int = 1) -> Dataset:
        """The train or val split, with the training augmentation or the centred evaluation clip."""
        if self.dataset == "moving_shapes":
            num, seed = (self.num_train, self.shapes_seed) if train_split else (self.num_val, self.shapes_seed + 1)
            videos, labels = make_moving_shapes(num, frames=self.num_frames, size=self.image_size, seed=seed)
            return TensorClips(videos, labels, self.transform(augment), num_sample)
        samples = self._samples[0 if train_split else 1]
        if not samples:
            raise ConfigError(f"no {'training' if train_split else 'validation'} videos found (data.root={self.root})")
        return VideoFiles(
            samples,
            self.transform(augment),
            self.num_frames,
            self.sampling_rate,
            self.short_side,
            num_sample,
            self.skip_counter(),
        )

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.classes else None

    def setup(self, stage: str | None = None) -> None:
        self.skip_counter()
        if self.train_set is None:
            if self.dataset != "moving_shapes":
                self._samples = self.file_samples()
            self.train_set = self.build(True, augment=True, num_sample=self.num_sample)
            self.val_set = self.build(False, augment=False)

    def data_source(self) -> str:
        if self.dataset == "list":
            return f"data.train_list={self.train_list}, data.val_list={self.val_list}, data.root={self.root}"
        if self.dataset == "folder":
            return f"data.dataset=folder, data.root={self.root}"
        return "data.dataset=moving_shapes"

    def unaugmented_train_set(self) -> Dataset:
        """The training videos as centred, unaugmented clips."""
        return self.build(True, augment=False)
