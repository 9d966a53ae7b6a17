"""Weighted k-nearest-neighbour classification on frozen features (InstDisc / DINO protocol).

Features are L2-normalised; the k training samples of highest cosine similarity vote for their
class with weight ``exp(similarity / temperature)``; the class with the largest summed weight wins.

:class:`KNNAccuracy` is a torchmetrics ``Metric`` whose four states are lists reduced with
``dist_reduce_fx="cat"``: under DDP every rank gathers all ranks' train and query features before
``compute``, so the result is the one a single process would get on the whole data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.evaluation.base import EvalData, Evaluator, check_features, frozen_features, topk_correct


@torch.no_grad()
def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """(Q, num_classes) summed vote weights of each query's k nearest training samples (cosine)."""
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.long()
    k = min(k, train.shape[0])
    out = []
    for start in range(0, query_features.shape[0], chunk_size):
        query = F.normalize(query_features[start : start + chunk_size].float(), dim=1)
        sim, idx = (query @ train.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        scores = torch.zeros(query.shape[0], num_classes, device=query.device, dtype=weights.dtype)
        out.append(scores.scatter_add_(1, labels[idx], weights))
    if not out:
        return torch.zeros(0, num_classes)
    return torch.cat(out)


class KNNAccuracy(Metric):
    """Weighted kNN top-1 (and top-5 with at least 5 classes) accuracy in percent.

    ``update(train_features=..., train_labels=...)`` adds to the memory bank,
    ``update(query_features=..., query_labels=...)`` adds samples to classify (both may come in the
    same call). ``compute()`` returns ``{"top1": ..., "top5": ...}``.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False
    # States (add_state below): lists of per-update tensors in one process; one tensor each after a DDP sync.
    train_features: list[torch.Tensor] | torch.Tensor
    train_labels: list[torch.Tensor] | torch.Tensor
    query_features: list[torch.Tensor] | torch.Tensor
    query_labels: list[torch.Tensor] | torch.Tensor

    def __init__(
        self,
        k: int = 20,
        temperature: float = 0.07,
        num_classes: int | None = None,
        chunk_size: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        self.k, self.temperature, self.num_classes, self.chunk_size = k, temperature, num_classes, chunk_size
        for name in ("train_features", "train_labels", "query_features", "query_labels"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        train_features: torch.Tensor | None = None,
        train_labels: torch.Tensor | None = None,
        query_features: torch.Tensor | None = None,
        query_labels: torch.Tensor | None = None,
    ) -> None:
        if (train_features is None) != (train_labels is None) or (query_features is None) != (query_labels is None):
            raise ValueError("features and labels come in pairs")
        # update() runs on this process's own states: still lists (the DDP sync happens in compute()).
        assert isinstance(self.train_features, list) and isinstance(self.train_labels, list)
        assert isinstance(self.query_features, list) and isinstance(self.query_labels, list)
        if train_features is not None and train_labels is not None:
            self.train_features.append(train_features.detach().float())
            self.train_labels.append(train_labels.detach().long())
        if query_features is not None and query_labels is not None:
            self.query_features.append(query_features.detach().float())
            self.query_labels.append(query_labels.detach().long())

    def compute(self) -> dict[str, torch.Tensor]:
        # Lists of per-update tensors in one process; one tensor each after a DDP sync (cat of all ranks).
        if _empty(self.train_features) or _empty(self.query_features):
            raise ValueError("KNNAccuracy needs train and query samples before compute()")
        train_x, train_y = dim_zero_cat(self.train_features), dim_zero_cat(self.train_labels)
        query_x, query_y = dim_zero_cat(self.query_features), dim_zero_cat(self.query_labels)
        num_classes = self.num_classes or int(max(train_y.max(), query_y.max())) + 1
        scores = knn_scores(train_x, train_y, query_x, num_classes, self.k, self.temperature, self.chunk_size)
        ks = [1, 5] if num_classes >= 5 else [1]
        correct = topk_correct(scores, query_y, ks)
        n = max(1, query_y.shape[0])
        return {f"top{k}": torch.tensor(100.0 * c / n) for k, c in zip(ks, correct)}


def _empty(state: list[torch.Tensor] | torch.Tensor) -> bool:
    return len(state) == 0 if isinstance(state, list) else state.numel() == 0


class KNNEvaluator(Evaluator):
    """Weighted kNN on frozen features of the train split (memory bank) and the val split (queries)."""

    name = "knn"

    def __init__(
        self,
        k: int = 20,
        temperature: float = 0.07,
        features: str = "embed",
        pool: str | None = None,
        block: int | None = None,
        feature_batch_size: int | None = None,
        feature_cache: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        num_classes: int | None = None,
    ) -> None:
        check_features(features, pool, block)
        self.block = block
        self.k, self.temperature = k, temperature
        self.features, self.pool, self.feature_batch_size = features, pool, feature_batch_size
        self.feature_cache = feature_cache
        self.device, self.precision, self.num_classes = device, precision, num_classes
        KNNAccuracy(k=k, temperature=temperature)  # validates k and temperature at start-up

    def __call__(self, model: MaskedAutoencoder, datamodule: EvalData, run_dir: Path) -> dict[str, Any]:
        f = frozen_features(self, model, datamodule)
        device, precision, num_classes = f.device, f.precision, f.num_classes
        train_x, train_y, val_x, val_y = f.train_x, f.train_y, f.val_x, f.val_y
        metric = KNNAccuracy(k=self.k, temperature=self.temperature, num_classes=num_classes).to(device)
        metric.update(
            train_features=train_x.to(device),
            train_labels=train_y.to(device),
            query_features=val_x.to(device),
            query_labels=val_y.to(device),
        )
        result: dict[str, Any] = {f"eval_knn/{key}": round(float(value), 4) for key, value in metric.compute().items()}
        result.update(
            {
                "eval_knn/k": self.k,
                "eval_knn/temperature": self.temperature,
                "eval_knn/features": self.features,
                "eval_knn/pool": model.embed_pool if self.features == "embed" else None,
                "eval_knn/block": self.block,
                "eval_knn/feature_dim": int(train_x.shape[1]),
                "eval_knn/num_train": int(train_x.shape[0]),
                "eval_knn/num_val": int(val_x.shape[0]),
                "eval_knn/precision": precision,
            }
        )
        return result
