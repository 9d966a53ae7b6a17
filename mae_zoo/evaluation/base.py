"""What every evaluator shares: the call signature, frozen-feature extraction through ``embed``
(or raw pixels, the no-learning baseline), accuracy, precision and the debug batch limits.

Accuracies are in percent (0-100), as in the MAE paper and logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.utilities.apply_func import move_data_to_device
from torch.utils.data import DataLoader

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.data.base import MAEDataModule
from mae_zoo.utils.runtime import resolve_precision

RawFeatures = Mapping[str, Callable[[torch.Tensor], torch.Tensor]]


def flat_pixels(inputs: torch.Tensor) -> torch.Tensor:
    """(B, D) the model input as the datamodule gives it (normalised), flattened."""
    return inputs.flatten(1)


RAW_FEATURES: RawFeatures = {"pixels": flat_pixels}
"""No-learning baselines by name: a function of the batch's model input."""

FEATURES = ("embed", *RAW_FEATURES)


class Evaluator(ABC):
    """The protocol :func:`mae_zoo.eval.evaluate` and ``train``'s final evaluation run.

    Batch limits reach every evaluator through the datamodule it is given (:class:`LimitedDataModule`),
    so an evaluator needs no code of its own for them.
    """

    name: str = "eval"
    """Prefixes every metric: ``eval_<name>/top1`` etc."""

    epochs: int | None = None
    """Epochs the evaluator trains for; None when it trains nothing. ``debug=smoke`` caps it through
    ``trainer.max_epochs`` (:func:`mae_zoo.eval.apply_limits`)."""

    num_classes: int | None = None
    """The number of classes when set; None: the datamodule's, else one more than the largest label."""

    def class_count(self, datamodule: EvalData, labels: torch.Tensor | None = None) -> int:
        """``num_classes`` if set, else :func:`num_classes_of` the data (``labels``: those seen)."""
        return int(self.num_classes) if self.num_classes else num_classes_of(datamodule, labels)

    def check(self, model: MaskedAutoencoder, datamodule: EvalData) -> None:  # noqa: B027
        """Raise ConfigError when this protocol cannot run on this model and data. ``train`` calls it
        before pre-training and ``evaluate`` before evaluating, so a mismatch fails in seconds rather
        than after the run. Default: nothing to check."""

    @abstractmethod
    def __call__(self, model: MaskedAutoencoder, datamodule: EvalData, run_dir: Path) -> dict[str, Any]:
        """Evaluate ``model`` on ``datamodule``; return metrics keyed ``eval_<name>/<metric>``."""


# --------------------------------------------------------------------------------------- features
@torch.no_grad()
def extract_features(
    model: MaskedAutoencoder,
    loader: DataLoader,
    device: torch.device | str = "cpu",
    precision: str = "32-true",
    features: str = "embed",
    block: int | None = None,
    raw_features: RawFeatures = RAW_FEATURES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) float32 features and (N,) labels over a loader of (input, label) batches.

    ``features="embed"``: ``model.embed`` (the frozen encoder; ``block``: pooled from that encoder
    block's hidden state instead of the output); any name in ``raw_features``: that function of the
    model input, a baseline that needs no encoder at all (default: ``"pixels"``, the flattened input).
    """
    if features != "embed" and features not in raw_features:
        raise ConfigError(f"eval.features must be one of {['embed', *raw_features]}, got '{features}'")
    model = model.to(device).eval()
    feats, labels = [], []
    for batch in loader:
        if batch is None:  # every file of the batch was unreadable (counted by the datamodule)
            continue
        batch = to_device(batch, device)
        if features in raw_features:
            feats.append(raw_features[features](MaskedAutoencoder.batch_inputs(batch)).float().cpu())
        else:
            with autocast(precision, device):
                feats.append(model.embed(batch, block).float().cpu())
        batch_labels = MaskedAutoencoder.batch_labels(batch)
        if batch_labels is None:
            raise ConfigError("evaluation needs labelled batches ((input, label) tuples or dicts with 'label')")
        labels.append(torch.as_tensor(batch_labels).long().cpu())
    if not feats:
        raise ConfigError("the evaluation loader gave no batches")
    return torch.cat(feats), torch.cat(labels)


def split_features(
    model: MaskedAutoencoder,
    datamodule: EvalData,
    device: torch.device | str = "cpu",
    precision: str = "32-true",
    features: str = "embed",
    batch_size: int | None = None,
    cache_dir: str | None = None,
    block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train and val (features, labels) from ``datamodule.feature_dataloaders``.

    With ``cache_dir`` they are saved there under a key made of the model's weights, its pooling,
    the feature kind, the precision, the data settings and the number of batches, so that a linear
    probe and a kNN of the same encoder extract only once.
    """
    train_loader, val_loader = datamodule.feature_dataloaders(batch_size)
    path = None
    if cache_dir:
        digest = hashlib.sha1()
        if features == "embed":
            for name, tensor in sorted(model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            digest.update(f"{type(model).__qualname__}|{model.embed_pool}|{precision}|{block}".encode())
        hparams = dict(datamodule.hparams)
        hparams.pop("num_workers", None), hparams.pop("batch_size", None), hparams.pop("pin_memory", None)
        digest.update(
            f"{features}|{sorted(hparams.items())}|{len(train_loader)}|{len(val_loader)}|{batch_size}".encode()
        )
        path = Path(cache_dir) / f"features_{features}_{digest.hexdigest()[:16]}.pt"
        if path.is_file():
            cached = torch.load(path, weights_only=True)
            return cached["train_x"], cached["train_y"], cached["val_x"], cached["val_y"]
    train_x, train_y = extract_features(model, train_loader, device, precision, features, block)
    val_x, val_y = extract_features(model, val_loader, device, precision, features, block)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"train_x": train_x, "train_y": train_y, "val_x": val_x, "val_y": val_y}, tmp)
        os.replace(tmp, path)
    return train_x, train_y, val_x, val_y


@dataclass
class FrozenFeatures:
    """What the frozen-feature probes (linear, kNN) work on."""

    device: torch.device
    precision: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int


def frozen_features(evaluator: Any, model: MaskedAutoencoder, datamodule: EvalData) -> FrozenFeatures:
    """Device, precision, pooling, (cached) train/val features and class count from an evaluator's
    ``device, precision, pool, features, block, feature_batch_size, feature_cache, num_classes`` settings."""
    device, precision = resolve_runtime(evaluator.device, evaluator.precision)
    set_pool(model, evaluator.pool)
    train_x, train_y, val_x, val_y = split_features(
        model,
        datamodule,
        device,
        precision,
        evaluator.features,
        evaluator.feature_batch_size,
        evaluator.feature_cache,
        evaluator.block,
    )
    num_classes = evaluator.class_count(datamodule, torch.cat([train_y, val_y]))
    return FrozenFeatures(torch.device(device), precision, train_x, train_y, val_x, val_y, num_classes)


def check_features(features: str, pool: str | None, block: int | None = None) -> None:
    if block is not None and features != "embed":
        raise ConfigError(
            f"eval.block={block} picks an encoder block, so it needs eval.features=embed, got '{features}'"
        )
    if features not in FEATURES:
        raise ConfigError(f"eval.features must be one of {list(FEATURES)}, got '{features}'")
    if pool not in (None, "cls", "mean"):
        raise ConfigError(f"eval.pool must be 'cls', 'mean' or null (the model's own), got '{pool}'")


def set_pool(model: MaskedAutoencoder, pool: str | None) -> None:
    """Override the model's ``embed_pool`` (cls | mean) where the modality has one; None keeps it."""
    if pool is None:
        return
    if model.embed_pool is None:
        raise ConfigError(f"pool={pool} was asked for, but {type(model).__name__} has no embed_pool setting")
    if pool not in ("cls", "mean"):
        raise ConfigError(f"pool must be 'cls', 'mean' or null (the model's own), got '{pool}'")
    model.embed_pool = pool


# --------------------------------------------------------------------------------------- metrics
def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> list[int]:
    """Number of samples whose label is among the top-k scores, for each k."""
    top = logits.topk(max(ks), dim=1).indices
    hits = top == labels[:, None]
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


def accuracy_metrics(prefix: str, logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """``<prefix>/top1`` and, with at least 5 classes, ``<prefix>/top5`` in percent; multi-label data
    ((N, C) multi-hot labels): ``<prefix>/mAP`` instead (torchmetrics, macro over classes, percent)."""
    if labels.dim() == 2:
        from torchmetrics.functional.classification import multilabel_average_precision

        ap = multilabel_average_precision(logits.float(), labels.long(), num_labels=labels.shape[1], average="macro")
        return {f"{prefix}/mAP": 100.0 * float(ap)}
    ks = [1, 5] if num_classes >= 5 else [1]
    correct = topk_correct(logits, labels, ks)
    n = max(1, len(labels))
    return {f"{prefix}/top{k}": 100.0 * c / n for k, c in zip(ks, correct)}


def num_classes_of(datamodule: EvalData, labels: torch.Tensor | None = None) -> int:
    """The datamodule's ``num_classes`` if it knows it, else its train set's targets/labels, else the labels seen."""
    if datamodule.num_classes:
        return int(datamodule.num_classes)
    if labels is not None and labels.dim() == 2:  # multi-hot labels
        return int(labels.shape[1])
    dataset = datamodule.train_set
    # Datasets are torchvision's and ours, with no common base: ``targets`` (ImageFolder, MNIST,
    # VideoFiles) or ``labels`` (TensorImages) where the dataset keeps them, else nothing.
    for attr in ("targets", "labels"):
        values = getattr(dataset, attr, None)
        if values is not None and len(values):
            return int(torch.as_tensor(values).max()) + 1
    if labels is None:
        raise ConfigError("cannot tell the number of classes; set eval.num_classes")
    return int(labels.max()) + 1


# --------------------------------------------------------------------------------------- runtime
def resolve_eval_precision(precision: str | int, device: torch.device | str) -> str:
    return str(resolve_precision(precision, "gpu" if torch.device(device).type == "cuda" else "cpu"))


def resolve_runtime(device: str, precision: str | int) -> tuple[torch.device, str]:
    """The device (``auto``: CUDA when there is one) and the precision an evaluator runs at there."""
    resolved = resolve_device(device)
    return resolved, resolve_eval_precision(precision, resolved)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``bf16*`` precisions (``16*`` gives fp16 on CUDA); nothing otherwise."""
    kind = torch.device(device).type
    if str(precision).startswith("bf16"):
        return torch.autocast(kind, dtype=torch.bfloat16)
    if str(precision).startswith("16") and kind == "cuda":
        return torch.autocast(kind, dtype=torch.float16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def cpu_threads(num: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run CPU work with ``num`` intra-op threads, then restore. Probe heads on cached features are
    tiny matmuls: a second thread gains nothing and, on a busy machine, stalls them 20-100x."""
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(num)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def to_device(batch: Any, device: torch.device | str) -> Any:
    """``batch`` (tensors in tuples, lists, dicts, dataclasses, ...) on ``device``, as Lightning moves it."""
    return move_data_to_device(batch, device)


# --------------------------------------------------------------------------------------- limits
class LimitedLoader:
    """At most ``limit`` batches of a loader (``None``: all; a float in (0, 1]: that fraction)."""

    def __init__(self, loader: Any, limit: int | float | None) -> None:
        self.loader = loader
        total = len(loader)
        if limit is None:
            self.limit = total
        elif isinstance(limit, float) and limit <= 1.0:
            self.limit = max(1, int(total * limit))
        else:
            self.limit = min(total, int(limit))

    def __len__(self) -> int:
        return self.limit

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.loader), self.limit)

    def __getattr__(self, name: str) -> Any:  # batch_size, dataset, ... of the wrapped loader
        if name == "loader":  # not set yet (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.loader, name)


class LimitedDataModule:
    """A datamodule whose loaders stop after ``limit_train_batches`` / ``limit_val_batches``
    (``debug=smoke``), for every evaluator alike; everything else is the wrapped datamodule's."""

    def __init__(
        self,
        datamodule: MAEDataModule,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
    ) -> None:
        self.datamodule = datamodule
        self.limit_train_batches = limit_train_batches
        self.limit_val_batches = limit_val_batches

    def feature_dataloaders(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        train, val = self.datamodule.feature_dataloaders(*args, **kwargs)
        return LimitedLoader(train, self.limit_train_batches), LimitedLoader(val, self.limit_val_batches)

    def train_dataloader(self) -> Any:
        return LimitedLoader(self.datamodule.train_dataloader(), self.limit_train_batches)

    def val_dataloader(self) -> Any:
        return LimitedLoader(self.datamodule.val_dataloader(), self.limit_val_batches)

    def test_dataloader(self) -> Any:
        return LimitedLoader(self.datamodule.test_dataloader(), self.limit_val_batches)

    def __getattr__(self, name: str) -> Any:
        if name == "datamodule":
            raise AttributeError(name)
        return getattr(self.datamodule, name)


EvalData = MAEDataModule | LimitedDataModule  # what an evaluator is given: a datamodule, maybe batch-limited
