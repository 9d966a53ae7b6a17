"""GraphMAE's evaluation protocols, on frozen embeddings of the clean graph.

- ``NodeLinearProbe`` (``eval=node_linear``): logistic regression (one Linear layer) trained full-batch
  with Adam on the labelled training nodes; after every epoch val and test accuracy are measured and
  a copy is kept whenever val accuracy >= the best so far (ties go to the later epoch). Reports the
  last epoch's test accuracy and the best-val copy's ("early stopping") test accuracy.
- ``GraphSVM`` (``eval=graph_svm``): pooled graph embeddings, ``StratifiedKFold(10, shuffle,
  random_state=0)``, inside each fold ``GridSearchCV(SVC(random_state=42), C in {1e-3 ... 10})``
  (5-fold inner CV, RBF), micro-F1 (= accuracy) averaged over the folds.

Accuracies are in percent.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch_geometric.data import Data

from mae_zoo.core.errors import ConfigError
from mae_zoo.data.graph import GraphDataModule
from mae_zoo.evaluation.base import EvalData, Evaluator, LimitedDataModule
from mae_zoo.modalities.graph import POOLINGS, GraphMAE

GRAPH_FEATURES = ("embed", "input")


def require_task(datamodule: EvalData, task: str) -> GraphDataModule:
    """The (unwrapped) datamodule if it serves ``task`` graphs, else a ConfigError naming the right protocol."""
    # The wrapper is no GraphDataModule; its batch limits do not apply here anyway (these protocols
    # read graphs() and eval_dataloader(), not the limited train/val loaders).
    dm = datamodule.datamodule if isinstance(datamodule, LimitedDataModule) else datamodule
    if not isinstance(dm, GraphDataModule) or dm.task != task:
        hint = {
            "node": "eval=node_linear needs node-level graph data (data=sbm|planetoid); for graph "
            "classification use eval=graph_svm (eval@final_eval=graph_svm when training)",
            "graph": "eval=graph_svm needs graph-level data (data=tu); for node tasks use eval=node_linear",
        }
        raise ConfigError(hint[task])
    return dm


@torch.no_grad()
def node_embeddings(model: Any, datamodule: EvalData, features: str = "embed") -> tuple[Data, torch.Tensor]:
    """The full graph and its (N, D) node features: the encoder on the clean graph in eval mode
    (official ``model.embed``), or the input features themselves (``input``: the no-learning baseline)."""
    if features not in GRAPH_FEATURES:
        raise ConfigError(f"eval.features must be one of {list(GRAPH_FEATURES)}, got '{features}'")
    data = require_task(datamodule, "node").graphs()[0]
    if "train_mask" not in data:
        raise ConfigError("the graph has no train/val/test masks for the node probe")
    if features == "input":
        return data, data.x.float()
    model.eval()
    return data, model.embed_nodes(data.to(model.device)).float().cpu()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean() * 100.0)


class NodeLinearProbe(Evaluator):
    """GraphMAE's transductive linear probe (``linear_probing_for_transductive_node_classiifcation``)."""

    name = "linear"
    epochs: int

    def __init__(
        self, lr: float = 0.01, weight_decay: float = 1e-4, epochs: int = 300, features: str = "embed", seed: int = 0
    ) -> None:
        self.lr, self.weight_decay, self.epochs = float(lr), float(weight_decay), int(epochs)
        self.features, self.seed = features, int(seed)

    def check(self, model: Any, datamodule: EvalData) -> None:
        require_task(datamodule, "node")

    def __call__(self, model: Any, datamodule: EvalData, run_dir: Path) -> dict[str, float]:
        data, x = node_embeddings(model, datamodule, self.features)
        return self.probe(x, data.y, data.train_mask, data.val_mask, data.test_mask)

    def probe(
        self, x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, val: torch.Tensor, test: torch.Tensor
    ) -> dict[str, float]:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)
        head = nn.Linear(x.shape[1], int(y.max()) + 1)
        torch.random.set_rng_state(generator_state)
        optimizer = torch.optim.Adam(head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        best_val, best_epoch, best_head = -1.0, -1, copy.deepcopy(head)
        val_acc = test_acc = 0.0
        self.history: list[float] = []  # val accuracy per epoch, for inspection
        for epoch in range(self.epochs):
            head.train()
            loss = nn.functional.cross_entropy(head(x[train]), y[train])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                head.eval()
                logits = head(x)
                val_acc, test_acc = accuracy(logits[val], y[val]), accuracy(logits[test], y[test])
            self.history.append(val_acc)
            if val_acc >= best_val:
                best_val, best_epoch, best_head = val_acc, epoch, copy.deepcopy(head)
        with torch.no_grad():
            best_test = accuracy(best_head(x)[test], y[test])
        p = f"eval_{self.name}"
        return {
            f"{p}/test_acc": test_acc,
            f"{p}/val_acc": val_acc,
            f"{p}/test_acc_best_val": best_test,
            f"{p}/best_val_acc": best_val,
            f"{p}/best_epoch": float(best_epoch),
        }


@torch.no_grad()
def graph_embeddings(
    model: Any, datamodule: EvalData, batch_size: int | None = None, features: str = "embed"
) -> tuple[np.ndarray, np.ndarray]:
    """(G, D) pooled embeddings and (G,) labels of every graph, in dataset order; ``features="input"``
    pools the input node features instead (the no-learning baseline)."""
    if features not in GRAPH_FEATURES:
        raise ConfigError(f"eval.features must be one of {list(GRAPH_FEATURES)}, got '{features}'")
    dm = require_task(datamodule, "graph")
    model.eval()
    feats, labels = [], []
    for batch in dm.eval_dataloader(batch_size):
        batch = batch.to(model.device)
        if features == "input":
            feats.append(POOLINGS[model.pooling](batch.x.float(), batch.batch).cpu())
        else:
            feats.append(model.embed(batch).float().cpu())
        labels.append(batch.y.view(-1).cpu())
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def svm_cross_validation(
    x: np.ndarray,
    y: np.ndarray,
    folds: int = 10,
    c_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0),
    fold_seed: int = 0,
    svc_seed: int = 42,
) -> tuple[float, float]:
    """Mean and std (over folds) of micro-F1 in percent, as the official ``evaluate_graph_embeddings_using_svm``."""
    from sklearn.metrics import f1_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import SVC

    scores = []
    for train_idx, test_idx in StratifiedKFold(n_splits=folds, shuffle=True, random_state=fold_seed).split(x, y):
        clf = GridSearchCV(SVC(random_state=svc_seed), {"C": list(c_grid)})
        clf.fit(x[train_idx], y[train_idx])
        scores.append(f1_score(y[test_idx], clf.predict(x[test_idx]), average="micro"))
    return float(np.mean(scores) * 100.0), float(np.std(scores) * 100.0)


class GraphSVM(Evaluator):
    """GraphMAE's graph-classification protocol on pooled frozen embeddings."""

    name = "svm"

    def __init__(
        self,
        folds: int = 10,
        c_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0),
        fold_seed: int = 0,
        svc_seed: int = 42,
        batch_size: int | None = None,
        features: str = "embed",
    ) -> None:
        self.folds, self.c_grid, self.features = int(folds), tuple(float(c) for c in c_grid), features
        self.fold_seed, self.svc_seed, self.batch_size = int(fold_seed), int(svc_seed), batch_size

    def check(self, model: Any, datamodule: EvalData) -> None:
        require_task(datamodule, "graph")
        if not isinstance(model, GraphMAE) or model.pooling is None:
            raise ConfigError("eval=graph_svm needs pooled embeddings: set module.pooling to mean, max or sum")

    def __call__(self, model: Any, datamodule: EvalData, run_dir: Path) -> dict[str, float]:
        self.check(model, datamodule)
        x, y = graph_embeddings(model, datamodule, self.batch_size, self.features)
        mean, std = svm_cross_validation(x, y, self.folds, self.c_grid, self.fold_seed, self.svc_seed)
        return {f"eval_{self.name}/test_acc": mean, f"eval_{self.name}/test_acc_fold_std": std}
