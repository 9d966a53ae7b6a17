"""Point-cloud data: the embedded procedural shapes and readers for the usual layouts.

``dataset`` (one ``PointDataModule`` for all, ``conf/data/<name>.yaml``):

* ``shapes``: :mod:`mae_zoo.data.point_shapes`, generated in memory (no download).
* ``mesh_folder``: meshes (OBJ/OFF/PLY/STL, read by ``trimesh``) under ``root/<class>/...`` (or, with
  ``label_by=file``, every mesh its own class); each mesh
  is sampled uniformly by area to ``sample_points`` points once and cached (``.npy`` under
  ``cache_dir``). With ``train/`` and ``test/`` folders in the paths (the ModelNet40 mesh layout),
  they are the splits; otherwise every mesh is in both splits and a split is a set of *views*
  (``train_views`` / ``val_views`` per mesh: different random rotations, partial cuts and samplings,
  drawn from different seeds), which makes an object-recognition task of a few meshes.
* ``point_folder``: point files under ``root/<class>/``: ``.npy`` (N, >=3) or ``.txt``/``.xyz``
  (comma or space separated, ``x y z`` with or without normals; the first three columns are kept).
  Splits: ``*_train.txt`` / ``*_test.txt`` id lists in ``root`` (the ModelNet40 resampled layout,
  ids such as ``airplane_0001``), else ``train/``/``test/`` folders, else a fixed ``val_fraction``.
* ``modelnet40_h5``: ``ply_data_train*.h5`` / ``ply_data_test*.h5`` (``data`` (N, 2048, 3),
  ``label`` (N, 1)) under ``root``.
* ``shapenet55``: ``root/ShapeNet-55/{train,test}.txt`` listing ``<synset>-<model>.npy`` files in
  ``root/shapenet_pc/``; the label is the synset (55 classes, sorted).
* ``scanobjectnn``: the h5 files of ``root/main_split`` (``variant=hardest``: PB_T50_RS,
  ``*_augmentedrot_scale75.h5``; ``obj_bg``) or ``root/main_split_nobg`` (``obj_only``).

Every sample is ``num_points`` points: a random subset in training (official ``random_sample``), a
fixed one per sample in evaluation; then centred and scaled into the unit sphere (``pc_norm``).
Training adds Point-MAE's ``PointcloudScaleAndTranslate`` (per-axis scale U[2/3, 3/2], shift
U[-0.2, 0.2]) per sample. Unreadable files are skipped (the sample is dropped from its batch) and
counted once (``num_skipped``); an unreadable h5 file is skipped whole at ``setup``.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from mae_zoo.core.errors import ConfigError
from mae_zoo.data.base import DataError, MAEDataModule, SkippedFiles, count_skipped
from mae_zoo.data.point_shapes import CLASSES as SHAPE_CLASSES
from mae_zoo.data.point_shapes import make_point_shapes, normalize_unit_sphere, partial_view, random_rotation

log = logging.getLogger(__name__)

DATASETS = ("shapes", "mesh_folder", "point_folder", "modelnet40_h5", "shapenet55", "scanobjectnn")
MESH_EXTENSIONS = (".obj", ".off", ".ply", ".stl")
POINT_EXTENSIONS = (".npy", ".txt", ".xyz")
SCANOBJECTNN = {
    "hardest": (
        "main_split",
        "training_objectdataset_augmentedrot_scale75.h5",
        "test_objectdataset_augmentedrot_scale75.h5",
    ),
    "obj_bg": ("main_split", "training_objectdataset.h5", "test_objectdataset.h5"),
    "obj_only": ("main_split_nobg", "training_objectdataset.h5", "test_objectdataset.h5"),
}


Split = tuple[Callable[[int], np.ndarray], list[int], list[str]]  # (load, labels, paths) of a split


class UnreadablePoints(Exception):
    """A point or mesh file that cannot be read."""


# ----------------------------------------------------------------------------------- reading files
def read_point_file(path: str) -> np.ndarray:
    """(N, 3) float32 of a ``.npy`` / ``.txt`` / ``.xyz`` file (extra columns such as normals dropped)."""
    try:
        if path.endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read().replace(",", " ")
            arr = np.array([line.split() for line in text.splitlines() if line.strip()], dtype=np.float32)
    except Exception as err:
        raise UnreadablePoints(f"{path}: {err}") from err
    if arr.ndim != 2 or arr.shape[1] < 3 or len(arr) == 0 or not np.isfinite(arr[:, :3]).all():
        raise UnreadablePoints(f"{path}: expected (N, >=3) finite coordinates, got shape {arr.shape}")
    return np.ascontiguousarray(arr[:, :3], dtype=np.float32)


def sample_mesh(path: str, num_points: int, seed: int = 0) -> np.ndarray:
    """(num_points, 3) float32 sampled uniformly by area from the mesh file at ``path``."""
    import trimesh

    try:
        mesh: Any = trimesh.load(path, force="mesh")
        if len(mesh.faces) == 0 or mesh.area <= 0:
            raise ValueError("no faces with area")
        points, _ = trimesh.sample.sample_surface(mesh, num_points, seed=seed)
    except Exception as err:
        raise UnreadablePoints(f"{path}: {err}") from err
    return np.asarray(points, dtype=np.float32)


def cached_mesh_points(path: str, num_points: int, cache_dir: str | None) -> np.ndarray:
    """:func:`sample_mesh` cached as ``.npy`` under ``cache_dir`` (key: path, size, mtime, count)."""
    if not cache_dir:
        return sample_mesh(path, num_points)
    stat = os.stat(path)
    key = hashlib.sha1(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{num_points}".encode()).hexdigest()
    cached = os.path.join(cache_dir, f"{key[:20]}.npy")
    if os.path.isfile(cached):
        return np.load(cached)
    points = sample_mesh(path, num_points)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{cached}.{os.getpid()}.tmp.npy"
    np.save(tmp, points)
    os.replace(tmp, cached)
    return points


def read_h5(path: str, data_key: str = "data", label_key: str = "label") -> tuple[np.ndarray, np.ndarray]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            data = np.asarray(f[data_key][:], dtype=np.float32)[..., :3]
            labels = np.asarray(f[label_key][:]).reshape(-1).astype(np.int64)
    except Exception as err:
        raise UnreadablePoints(f"{path}: {err}") from err
    if data.ndim != 3 or len(data) != len(labels):
        raise UnreadablePoints(f"{path}: data {data.shape} and labels {labels.shape} do not match")
    return data, labels


# ----------------------------------------------------------------------------------- per-sample steps
def choose_points(points: np.ndarray, num_points: int, train: bool, index: int) -> np.ndarray:
    """``num_points`` of a cloud: a random subset in training (torch RNG, resumable), a fixed subset
    per sample (seeded by its index) in evaluation; sampling with replacement if the cloud is smaller."""
    n = len(points)
    if train:
        order = torch.randperm(n).numpy() if n >= num_points else torch.randint(0, n, (num_points,)).numpy()
    else:
        rng = np.random.default_rng(index)
        order = rng.permutation(n) if n >= num_points else rng.integers(0, n, num_points)
    return points[order[:num_points]]


def scale_and_translate(points: torch.Tensor, scale: Sequence[float], shift: float) -> torch.Tensor:
    """Point-MAE's ``PointcloudScaleAndTranslate`` on one cloud: per-axis scale, then a shift."""
    lo, hi = float(scale[0]), float(scale[1])
    s = torch.empty(3).uniform_(lo, hi)
    t = torch.empty(3).uniform_(-shift, shift)
    return points * s + t


class PointSamples(Dataset):
    """Clouds from ``load(i)`` (N, 3) with labels: subset, unit sphere, training augmentation.
    ``paths[i]`` names what ``load`` reads, so an unreadable one is counted and its sample dropped."""

    def __init__(
        self,
        load: Callable[[int], np.ndarray],
        labels: Sequence[int],
        paths: Sequence[str],
        num_points: int,
        train: bool,
        augment: dict | None,
        skipped: SkippedFiles | None,
    ) -> None:
        self.load, self.labels, self.paths = load, list(labels), list(paths)
        self.num_points, self.train, self.augment, self.skipped = num_points, train, augment, skipped

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        try:
            points = self.load(i)
        except UnreadablePoints as err:  # corrupt or truncated file: skip it, never fail the run
            count_skipped(self.skipped, self.paths[i])
            log.warning("skipping unreadable point cloud: %s", err)
            return None
        points = normalize_unit_sphere(choose_points(points, self.num_points, self.train, i).astype(np.float64))
        cloud = torch.from_numpy(points.astype(np.float32))
        if self.augment is not None:
            cloud = scale_and_translate(cloud, self.augment["scale"], self.augment["translate"])
        return cloud, int(self.labels[i])


def collate_points(items: Sequence[Any]) -> Any:
    """Batch the readable samples; None when none was (the steps skip a None batch)."""
    kept = [x for x in items if x is not None]
    if not kept:
        log.warning("every point cloud of a batch was unreadable; the batch is skipped")
        return None
    return default_collate(kept)


# ----------------------------------------------------------------------------------- the datamodule
class PointDataModule(MAEDataModule):
    """Batches of ``(points (B, num_points, 3), label)``; see the module docstring for ``dataset``."""

    collate_fn = staticmethod(collate_points)

    def __init__(
        self,
        dataset: str = "shapes",
        root: str | None = None,
        num_points: int = 1024,
        batch_size: int = 32,
        num_workers: int = 2,
        augment: bool = True,
        scale: Sequence[float] = (2.0 / 3.0, 3.0 / 2.0),
        translate: float = 0.2,
        num_train: int = 2000,
        num_val: int = 500,
        shapes_seed: int = 0,
        sample_points: int = 8192,
        cache_dir: str | None = None,
        train_views: int = 1,
        val_views: int = 1,
        view_rotate: bool = True,
        view_partial: Sequence[float] | None = (0.6, 1.0),
        view_seed: int = 0,
        val_fraction: float = 0.2,
        variant: str = "hardest",
        label_by: str = "folder",
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if dataset not in DATASETS:
            raise ConfigError(f"data.dataset must be one of {list(DATASETS)}, got '{dataset}'")
        if dataset != "shapes" and not root:
            raise ConfigError(f"data.dataset={dataset} reads files: set data.root")
        if label_by not in ("folder", "file"):
            raise ConfigError(f"data.label_by must be 'folder' or 'file', got '{label_by}'")
        if dataset == "scanobjectnn" and variant not in SCANOBJECTNN:
            raise ConfigError(f"data.variant must be one of {list(SCANOBJECTNN)}, got '{variant}'")
        self.save_hyperparameters(logger=False)
        self.dataset, self.root, self.num_points = dataset, root, int(num_points)
        self.aug = {"scale": tuple(scale), "translate": float(translate)} if augment else None
        self.pin_memory = pin_memory
        self.classes: list[str] = []
        self._train_args: Split | None = None
        self._val_args: Split | None = None

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) or None

    def data_source(self) -> str:
        return f"{self.dataset} at {self.root}" if self.root else self.dataset

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        skipped = self.skip_counter()
        train: Split
        val: Split
        train, val = getattr(self, f"_build_{self.dataset}")(skipped)
        self._train_args, self._val_args = train, val
        self.train_set = PointSamples(*train, self.num_points, True, self.aug, skipped)
        self.val_set = PointSamples(*val, self.num_points, False, None, skipped)
        for split, ds in (("training", self.train_set), ("validation", self.val_set)):
            if len(ds) == 0:
                raise DataError(f"the {split} split of {self.data_source()} is empty")

    def unaugmented_train_set(self) -> Dataset:
        assert self._train_args is not None, "setup() builds the datasets"
        return PointSamples(*self._train_args, self.num_points, False, None, self.skipped)

    # ------------------------------------------------------------------------------- builders
    # Each returns (load, labels, paths) for the training and the validation split.
    def _build_shapes(self, skipped: SkippedFiles) -> tuple[Split, Split]:
        hp: Any = self.hparams
        self.classes = list(SHAPE_CLASSES)
        # A few spare points per cloud so the training subset differs between epochs.
        n = self.num_points + self.num_points // 4
        xt, yt = make_point_shapes(int(hp.num_train), n, seed=int(hp.shapes_seed))
        xv, yv = make_point_shapes(int(hp.num_val), n, seed=int(hp.shapes_seed) + 1_000_003)
        return (
            (lambda i: xt[i].numpy(), yt.tolist(), [f"shapes/train/{i}" for i in range(len(yt))]),
            (lambda i: xv[i].numpy(), yv.tolist(), [f"shapes/val/{i}" for i in range(len(yv))]),
        )

    def _class_files(self, extensions: Sequence[str]) -> list[tuple[str, str]]:
        """(path, class) of every file with one of ``extensions`` under ``root/<class>/``, sorted."""
        root = Path(str(self.root))
        if not root.is_dir():
            raise ConfigError(f"data.root={root} is not a folder")
        found = []
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() in extensions and path.is_file() and len(path.relative_to(root).parts) >= 2:
                found.append((str(path), path.relative_to(root).parts[0]))
        if not found:
            raise DataError(f"no {'/'.join(extensions)} files under {root}/<class>/")
        self.classes = sorted({c for _, c in found})
        return found

    @staticmethod
    def _split_of(path: str) -> str | None:
        parts = Path(path).parts
        return "train" if "train" in parts else "val" if "test" in parts or "val" in parts else None

    def _build_mesh_folder(self, skipped: SkippedFiles) -> tuple[Split, Split]:
        hp: Any = self.hparams
        files = self._class_files(MESH_EXTENSIONS)
        if hp.label_by == "file":  # every mesh its own class (a few-object recognition task)
            files = [(p, os.path.relpath(p, str(self.root))) for p, _ in files]
            self.classes = sorted(c for _, c in files)
        index = {c: i for i, c in enumerate(self.classes)}
        cache = hp.cache_dir or os.path.join(tempfile.gettempdir(), "mae_zoo_mesh_cache")
        sample_points = int(hp.sample_points)
        memo: dict[str, np.ndarray] = {}

        def mesh_points(path: str) -> np.ndarray:
            if path not in memo:
                memo[path] = cached_mesh_points(path, sample_points, cache)
            return memo[path]

        mesh_id = {p: i for i, (p, _) in enumerate(files)}

        def views(selected: list[tuple[str, str]], count: int, split: int) -> Split:
            items = [(p, c, v) for p, c in selected for v in range(count)]
            partial = tuple(hp.view_partial) if hp.view_partial else None

            def load(i: int) -> np.ndarray:
                path, _, v = items[i]
                points = mesh_points(path)
                if count == 1 and not partial and not hp.view_rotate:
                    return points
                rng = np.random.default_rng((int(hp.view_seed), split, mesh_id[path], v))
                if partial:
                    points = partial_view(points, max(self.num_points, int(len(points) * rng.uniform(*partial))), rng)
                if hp.view_rotate:
                    points = points @ random_rotation(rng).T.astype(np.float32)
                return points

            return load, [index[c] for _, c, _ in items], [p for p, _, _ in items]

        splits = [self._split_of(p) for p, _ in files]
        if any(s is not None for s in splits):  # train/ and test/ folders: the ModelNet40 mesh layout
            train = [f for f, s in zip(files, splits) if s == "train"]
            val = [f for f, s in zip(files, splits) if s == "val"]
            return views(train, int(hp.train_views), 0), views(val, int(hp.val_views), 1)
        return views(files, int(hp.train_views), 0), views(files, int(hp.val_views), 1)

    def _build_point_folder(self, skipped: SkippedFiles) -> tuple[Split, Split]:
        hp: Any = self.hparams
        root = Path(str(self.root))
        lists = {s: sorted(root.glob(f"*_{s}.txt")) for s in ("train", "test")}
        if lists["train"] and lists["test"]:  # ModelNet40 resampled: ids such as airplane_0001
            names = sorted(root.glob("*_shape_names.txt"))
            if names:
                self.classes = [x.strip() for x in names[0].read_text().splitlines() if x.strip()]
            split_items: dict[str, list[tuple[str, str]]] = {}
            for s, listing in lists.items():
                ids = [x.strip() for x in listing[0].read_text().splitlines() if x.strip()]
                split_items[s] = []
                for i in ids:
                    cls = i.rsplit("_", 1)[0]
                    hits = [str(root / cls / f"{i}{e}") for e in POINT_EXTENSIONS if (root / cls / f"{i}{e}").is_file()]
                    split_items[s].append((hits[0] if hits else str(root / cls / f"{i}.txt"), cls))
            if not self.classes:
                self.classes = sorted({c for items in split_items.values() for _, c in items})
            train, val = split_items["train"], split_items["test"]
        else:
            files = self._class_files(POINT_EXTENSIONS)
            splits = [self._split_of(p) for p, _ in files]
            if any(s is not None for s in splits):
                train = [f for f, s in zip(files, splits) if s == "train"]
                val = [f for f, s in zip(files, splits) if s == "val"]
            else:  # a fixed split by a hash of the path

                def in_val(path: str) -> bool:
                    return int(hashlib.sha1(path.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < float(hp.val_fraction)

                train = [f for f in files if not in_val(os.path.relpath(f[0], root))]
                val = [f for f in files if in_val(os.path.relpath(f[0], root))]
        index = {c: i for i, c in enumerate(self.classes)}
        return self._files(train, index), self._files(val, index)

    @staticmethod
    def _files(items: list[tuple[str, str]], index: dict[str, int]) -> Split:
        paths = [p for p, _ in items]
        return (lambda i: read_point_file(paths[i])), [index[c] for _, c in items], paths

    def _arrays(self, paths: list[str], skipped: SkippedFiles) -> Split:
        """Clouds of every readable h5 file of ``paths`` (an unreadable file is skipped and counted)."""
        data: list[np.ndarray] = []
        labels: list[int] = []
        names: list[str] = []
        for path in paths:
            try:
                x, y = read_h5(path)
            except UnreadablePoints as err:
                count_skipped(skipped, path)
                log.warning("skipping unreadable h5 file: %s", err)
                continue
            data.append(x)
            labels.extend(y.tolist())
            names.extend(f"{path}[{i}]" for i in range(len(y)))
        arr = np.concatenate(data) if data else np.zeros((0, 1, 3), np.float32)
        return (lambda i: arr[i]), labels, names

    def _build_modelnet40_h5(self, skipped: SkippedFiles) -> tuple[Split, Split]:
        root = str(self.root)
        train = sorted(glob.glob(os.path.join(root, "ply_data_train*.h5")))
        test = sorted(glob.glob(os.path.join(root, "ply_data_test*.h5")))
        if not train or not test:
            raise DataError(f"no ply_data_train*.h5 / ply_data_test*.h5 under {root}")
        names = os.path.join(root, "shape_names.txt")
        a, b = self._arrays(train, skipped), self._arrays(test, skipped)
        if os.path.isfile(names):
            self.classes = [x.strip() for x in Path(names).read_text(encoding="utf-8").splitlines() if x.strip()]
        else:
            self.classes = [str(i) for i in range(max(a[1] + b[1], default=-1) + 1)]
        return a, b

    def _build_scanobjectnn(self, skipped: SkippedFiles) -> tuple[Split, Split]:
        folder, train, test = SCANOBJECTNN[str(self.hparams["variant"])]
        base = os.path.join(str(self.root), folder)
        a, b = self._arrays([os.path.join(base, train)], skipped), self._arrays([os.path.join(base, test)], skipped)
        self.classes = [str(i) for i in range(15)]  # ScanObjectNN's 15 categories
        return a, b

    def _build_shapenet55(self, skipped: SkippedFiles) -> tuple[Split, Split]:
        root = Path(str(self.root))
        split_dir, pc_dir = root / "ShapeNet-55", root / "shapenet_pc"
        if not (split_dir / "train.txt").is_file() or not (split_dir / "test.txt").is_file():
            raise DataError(f"no ShapeNet-55/train.txt and test.txt under {root}")
        items = {}
        for s in ("train", "test"):
            names = [x.strip() for x in (split_dir / f"{s}.txt").read_text().splitlines() if x.strip()]
            items[s] = [(str(pc_dir / n), n.split("-", 1)[0]) for n in names]
        self.classes = sorted({c for v in items.values() for _, c in v})
        index = {c: i for i, c in enumerate(self.classes)}
        return self._files(items["train"], index), self._files(items["test"], index)
