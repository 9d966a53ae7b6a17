"""Point-cloud protocols on frozen features: linear SVM and N-way K-shot, and a raw-geometry baseline.

- ``LinearSVM`` (``eval=linear_svm``): the Point-M2AE / I2P-MAE protocol, a linear SVM on the frozen
  encoder's max- and mean-pooled tokens (``embed_pool=max_mean``) of the train split, accuracy on the
  test (val) split. Features are standardised with the train split's statistics; ``C`` is chosen by
  5-fold cross-validation on the train split only (``c_grid``).
- ``FewShot`` (``eval=fewshot``): N-way K-shot in the usual 10 trials (Point-BERT / Point-MAE
  splits: per trial N random classes, K random train samples per class as support, ``queries``
  random test samples per class as queries); a linear SVM on the frozen support features (the
  official protocol fine-tunes the whole model instead). Mean and std of the trial accuracies.
- ``PointFineTune`` (``eval=point_finetune``): the official fine-tuning model and head
  (:class:`PointClassifier`) in the shared fine-tuning loop.

``features``: ``embed`` (the encoder) or ``d2`` (the D2 shape distribution of Osada et al.: a
normalised histogram of distances between point pairs, the no-learning baseline).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.evaluation.base import EvalData, Evaluator, RawFeatures, extract_features, resolve_runtime
from mae_zoo.evaluation.finetune import FineTune, layer_decay_param_groups, set_drop_path


def d2_histogram(points: torch.Tensor, bins: int = 64, max_points: int = 512, max_dist: float = 2.0) -> torch.Tensor:
    """(B, bins) D2 shape distributions: histograms of all pairwise distances among the first
    ``max_points`` points of each cloud, over [0, max_dist], each summing to 1."""
    pts = points[:, :max_points].float()
    d = torch.cdist(pts, pts)
    iu = torch.triu_indices(pts.shape[1], pts.shape[1], offset=1)
    pairs = d[:, iu[0], iu[1]].clamp(0, max_dist * (1 - 1e-6))
    index = (pairs / max_dist * bins).long()
    hist = torch.zeros(pts.shape[0], bins).scatter_add_(1, index, torch.ones_like(pairs))
    return hist / hist.sum(dim=1, keepdim=True)


POINT_RAW_FEATURES: RawFeatures = {"d2": d2_histogram}
POINT_FEATURES = ("embed", *POINT_RAW_FEATURES)


def fit_svm(x: np.ndarray, y: np.ndarray, c_grid: tuple[float, ...], seed: int = 0) -> Any:
    """A standardised linear SVM, ``C`` chosen by (up to) 5-fold CV on ``x`` alone."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    pipe = make_pipeline(StandardScaler(), LinearSVC(random_state=seed, max_iter=20000))
    counts = np.bincount(y)
    folds = int(min(5, counts[counts > 0].min()))
    if len(c_grid) == 1 or folds < 2:
        return pipe.set_params(linearsvc__C=c_grid[0]).fit(x, y)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return GridSearchCV(pipe, {"linearsvc__C": list(c_grid)}, cv=cv).fit(x, y).best_estimator_


class _PointEvaluator(Evaluator):
    def __init__(
        self,
        features: str = "embed",
        c_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0),
        batch_size: int | None = None,
        device: str = "auto",
        precision: str | int = "32-true",
        seed: int = 0,
    ) -> None:
        if features not in POINT_FEATURES:
            raise ConfigError(f"eval.features must be one of {list(POINT_FEATURES)}, got '{features}'")
        self.features, self.c_grid = features, tuple(float(c) for c in c_grid)
        self.batch_size, self.device, self.precision, self.seed = batch_size, device, precision, int(seed)

    def check(self, model: MaskedAutoencoder, datamodule: EvalData) -> None:
        from mae_zoo.modalities.point import PointMAE

        if not isinstance(model, PointMAE):
            raise ConfigError(f"eval={self.name} is a point-cloud protocol; the model is {type(model).__name__}")

    def split_features(
        self, model: MaskedAutoencoder, datamodule: EvalData
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        device, precision = resolve_runtime(self.device, self.precision)
        train_loader, val_loader = datamodule.feature_dataloaders(self.batch_size)
        splits = [
            extract_features(model, loader, device, precision, self.features, raw_features=POINT_RAW_FEATURES)
            for loader in (train_loader, val_loader)
        ]
        (xt, yt), (xv, yv) = [(x.numpy(), y.numpy()) for x, y in splits]
        return xt, yt, xv, yv


class LinearSVM(_PointEvaluator):
    name = "svm"

    def __call__(self, model: MaskedAutoencoder, datamodule: EvalData, run_dir: Path) -> dict[str, Any]:
        start = time.perf_counter()
        xt, yt, xv, yv = self.split_features(model, datamodule)
        clf = fit_svm(xt, yt, self.c_grid, self.seed)
        p = f"eval_{self.name}"
        return {
            f"{p}/top1": float((clf.predict(xv) == yv).mean() * 100.0),
            f"{p}/train_top1": float((clf.predict(xt) == yt).mean() * 100.0),
            f"{p}/C": float(clf.get_params()["linearsvc__C"]),
            f"{p}/features": self.features,
            f"{p}/feature_dim": int(xt.shape[1]),
            f"{p}/num_train": len(yt),
            f"{p}/num_val": len(yv),
            f"{p}/wall_s": round(time.perf_counter() - start, 2),
        }


def fewshot_trials(
    xt: np.ndarray,
    yt: np.ndarray,
    xv: np.ndarray,
    yv: np.ndarray,
    way: int,
    shot: int,
    queries: int,
    trials: int,
    c: float,
    seed: int = 0,
) -> list[float]:
    """Accuracy (percent) of each N-way K-shot trial; classes need ``shot`` train and >= 1 test samples."""
    rng = np.random.default_rng(seed)
    usable = [k for k in np.unique(yt) if (yt == k).sum() >= shot and (yv == k).sum() >= 1]
    if len(usable) < way:
        raise ConfigError(f"{way}-way {shot}-shot needs {way} classes with >= {shot} train samples; {len(usable)} have")
    accs = []
    for _ in range(trials):
        classes = rng.choice(usable, way, replace=False)
        s_idx = np.concatenate([rng.choice(np.flatnonzero(yt == k), shot, replace=False) for k in classes])
        q_idx = np.concatenate(
            [rng.permutation(np.flatnonzero(yv == k))[:queries] for k in classes]  # up to `queries` per class
        )
        clf = fit_svm(xt[s_idx], yt[s_idx], (c,), seed)
        accs.append(float((clf.predict(xv[q_idx]) == yv[q_idx]).mean() * 100.0))
    return accs


class FewShot(_PointEvaluator):
    """``settings``: [[way, shot], ...] run on one feature extraction (null: just ``way``-way ``shot``-shot)."""

    name = "fewshot"

    def __init__(
        self,
        way: int = 5,
        shot: int = 10,
        queries: int = 20,
        trials: int = 10,
        c: float = 0.01,
        settings: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = [(int(w), int(k)) for w, k in (settings or [[way, shot]])]
        self.queries, self.trials, self.c = int(queries), int(trials), float(c)

    def __call__(self, model: MaskedAutoencoder, datamodule: EvalData, run_dir: Path) -> dict[str, Any]:
        start = time.perf_counter()
        xt, yt, xv, yv = self.split_features(model, datamodule)
        p = f"eval_{self.name}"
        out: dict[str, Any] = {f"{p}/features": self.features, f"{p}/queries": self.queries, f"{p}/trials": self.trials}
        for way, shot in self.settings:
            accs = fewshot_trials(xt, yt, xv, yv, way, shot, self.queries, self.trials, self.c, self.seed)
            tag = "" if len(self.settings) == 1 else f"{way}w{shot}s/"
            out[f"{p}/{tag}top1_mean"] = float(np.mean(accs))
            out[f"{p}/{tag}top1_std"] = float(np.std(accs))
            out[f"{p}/{tag}per_trial"] = accs
        out[f"{p}/wall_s"] = round(time.perf_counter() - start, 2)
        return out


# --------------------------------------------------------------------------------------- fine-tuning
class PointClassifier(torch.nn.Module):
    """Point-MAE's fine-tuning model (official ``PointTransformer``): a copy of the pre-trained
    tokenizer and encoder, a learnable cls token and cls position prepended (the centre MLP gives
    the groups' positions, re-added before every block), final norm, then the official head on
    ``concat(cls, max-pool of the group tokens)``: Linear 2D->256, BN, ReLU, dropout 0.5, Linear
    256->256, BN, ReLU, dropout 0.5, Linear 256->classes. Every group is seen (no mask)."""

    def __init__(self, model: MaskedAutoencoder, num_classes: int, drop_path: float = 0.1) -> None:
        from mae_zoo.modalities.point import PointMAE

        super().__init__()
        if not isinstance(model, PointMAE):
            raise ConfigError(f"eval=point_finetune needs a point model, got {type(model).__name__}")
        self.tokenize, self.groups = model.tokenize, model.groups  # bound methods: no parameters
        self.encoder = copy.deepcopy(model.encoder)
        set_drop_path(self.encoder.blocks, drop_path)
        dim = self.encoder.dim
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = torch.nn.Parameter(torch.zeros(1, 1, dim))
        torch.nn.init.trunc_normal_(self.cls_token, std=0.02)
        torch.nn.init.trunc_normal_(self.cls_pos, std=0.02)
        nn = torch.nn
        self.cls_head_finetune = nn.Sequential(
            nn.Linear(2 * dim, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(256, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(256, num_classes),
        )
        self.depth = len(self.encoder.blocks)

    def forward(self, batch: Any) -> torch.Tensor:
        tokens = self.tokenize(batch)
        x = self.encoder.encoder(self.groups(tokens))
        pos = self.encoder.pos_embed(tokens.layout.extra["centers"].to(x.dtype))
        b = x.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), pos], dim=1)
        x, _ = self.encoder.forward_pos(x, pos)
        return self.cls_head_finetune(torch.cat([x[:, 0], x[:, 1:].max(dim=1).values], dim=-1))


class PointFineTune(FineTune):
    """``eval=point_finetune``: the generic fine-tuning loop (AdamW, warmup + cosine, gradient clipping)
    with :class:`PointClassifier`; the official recipe is the YAML's default (no layer decay, no label
    smoothing, lr 5e-4 unscaled, wd 0.05, clip 10, drop path 0.1)."""

    def check(self, model: MaskedAutoencoder, datamodule: EvalData) -> None:
        from mae_zoo.modalities.point import PointMAE

        if not isinstance(model, PointMAE):
            raise ConfigError(f"eval=point_finetune is a point-cloud protocol; the model is {type(model).__name__}")

    def build(self, model: MaskedAutoencoder, num_classes: int, sample: Any) -> tuple[Any, list[dict], str]:
        net = PointClassifier(model, num_classes, self.drop_path)
        return net, layer_decay_param_groups(net, self.weight_decay, self.layer_decay, net.depth), "point"
