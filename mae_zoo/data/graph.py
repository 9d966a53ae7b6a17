"""Graph data: an embedded stochastic-block-model graph, Planetoid (Cora/CiteSeer/PubMed) and TU datasets.

Node-level data (``task = "node"``) is one graph trained full-batch: every epoch is one step on the
whole graph, as GraphMAE does. Graph-level data (``task = "graph"``) is a set of small graphs
trained in shuffled mini-batches of ``batch_size`` graphs. Either way the loaders yield
torch-geometric ``Batch`` objects, and ``graphs()`` gives the evaluators the whole set.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.loader.dataloader import Collater
from torch_geometric.utils import add_self_loops, degree, remove_self_loops, stochastic_blockmodel_graph, to_undirected

from mae_zoo.core.errors import ConfigError
from mae_zoo.data.base import MAEDataModule, ResumableLoader, loader_generator

log = logging.getLogger(__name__)

PLANETOID = ("Cora", "CiteSeer", "PubMed")
MAX_DEGREE = 400  # official GraphMAE cap on one-hot degree features


def row_normalize(x: torch.Tensor) -> torch.Tensor:
    """Each node's features divided by their sum (PyG ``NormalizeFeatures``, DGL's citation sets)."""
    return x / x.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def one_hot_degree(graphs: list[Data], cap: int = MAX_DEGREE) -> int:
    """Give featureless graphs one-hot in-degree features, capped at ``cap`` (official GraphMAE); returns the width."""
    degrees = [degree(g.edge_index[1], g.num_nodes, dtype=torch.long) for g in graphs]
    width = min(max(int(d.max()) if d.numel() else 0 for d in degrees), cap) + 1
    for g, d in zip(graphs, degrees):
        g.x = torch.nn.functional.one_hot(d.clamp_max(cap), width).float()
    return width


def working_root(root: str, name: str, cache_dir: str | None, family: str) -> str:
    """The root PyG should read: ``root`` itself, or with ``cache_dir`` a copy of ``<root>/<name>/raw``
    under ``<cache_dir>/<family>`` (PyG writes ``processed/`` next to ``raw/``; shared data stays untouched)."""
    if cache_dir is None:
        return root
    src, dst = Path(root) / name / "raw", Path(cache_dir) / family / name / "raw"
    if src.is_dir() and not dst.is_dir():
        tmp = dst.with_name(f".raw.{id(dst)}")
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        tmp.replace(dst)  # atomic: parallel seed runs never see half a copy
    return str(Path(cache_dir) / family)


@contextlib.contextmanager
def dataset_lock(root: str, name: str) -> Iterator[None]:
    """Serialise PyG's first-time processing when several seed runs start at once on the same root."""
    lock = Path(root) / f".{name}.lock"
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "w")  # noqa: SIM115 - held for the whole context below
    except OSError:  # a read-only root: PyG must find processed/ already there, nothing to serialise
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def check_raw_root(root: str | None, name: str, download: bool, kind: str) -> None:
    """Fail at start-up unless ``root/<name>/raw`` exists (or a download was asked for)."""
    if root is None:
        raise ConfigError(f"data.root is required: the folder holding <name>/raw/ (e.g. ../shared/data/{kind})")
    raw = Path(root) / name / "raw"
    if not download and not raw.is_dir():
        raise ConfigError(
            f"no {kind} files in {raw}; point data.root at the folder holding {name}/raw/ or set data.download=true"
        )


class GraphDataModule(MAEDataModule):
    """Shared loaders. Subclasses implement ``load()`` returning the list of graphs and the number of classes."""

    task: str = "node"
    """``node``: one graph, node labels (node_linear); ``graph``: a set of graphs, graph labels (graph_svm)."""

    def __init__(self, batch_size: int = 1, num_workers: int = 0) -> None:
        super().__init__(int(batch_size), int(num_workers))
        self._graphs: list[Data] | None = None
        self._num_classes: int | None = None

    def load(self) -> tuple[list[Data], int]:
        """The graphs and the number of classes; each dataset family implements it."""
        raise NotImplementedError(f"{type(self).__name__} must define load()")

    def graphs(self) -> list[Data]:
        if self._graphs is None:
            self._graphs, self._num_classes = self.load()
        return self._graphs

    @property
    def num_classes(self) -> int | None:
        """Number of classes of the node or graph labels; None until the graphs are loaded."""
        return self._num_classes

    @property
    def num_features(self) -> int:
        return int(self.graphs()[0].x.shape[-1])

    def setup(self, stage: str | None = None) -> None:
        self.graphs()

    def graph_loader(self, train: bool) -> ResumableLoader:
        """The batches torch-geometric's ``DataLoader`` gives (its ``Collater``), from a loader whose
        position Lightning checkpoints and whose shuffling draws from its own generator."""
        graphs = self.graphs()
        workers = self.num_workers if train else 0
        return ResumableLoader(
            graphs,
            batch_size=self.batch_size,
            shuffle=train and self.task == "graph",
            num_workers=workers,
            persistent_workers=workers > 0,
            collate_fn=Collater(graphs),
            generator=loader_generator(int(train)),
        )

    def train_dataloader(self) -> ResumableLoader:
        return self.resume_train_loader(self.graph_loader(train=True))

    def val_dataloader(self) -> ResumableLoader:
        return self.graph_loader(train=False)

    def eval_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """All graphs in a fixed order, for embedding extraction."""
        return DataLoader(self.graphs(), batch_size=batch_size or max(self.batch_size, 1), shuffle=False)


class SBMDataModule(GraphDataModule):
    """Embedded default: a stochastic-block-model graph whose communities are the node labels.

    Features are sparse binary bag-of-words like Cora's: each community prefers its own slice of the
    vocabulary, so features and structure both carry the label, and features can be reconstructed
    from neighbours. Splits follow Planetoid: ``train_per_class`` labelled nodes per class, then
    ``num_val`` and ``num_test`` nodes. Generated in memory from ``graph_seed``; no download.
    """

    def __init__(
        self,
        num_classes: int = 5,
        nodes_per_class: int = 200,
        p_in: float = 0.02,
        p_out: float = 0.004,
        num_features: int = 500,
        words_per_node: int = 20,
        topic_strength: float = 0.3,
        train_per_class: int = 20,
        num_val: int = 200,
        num_test: int = 400,
        graph_seed: int = 0,
        batch_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.save_hyperparameters()
        if num_classes * nodes_per_class < num_classes * train_per_class + num_val + num_test:
            raise ConfigError("data: nodes_per_class x num_classes must cover the train/val/test splits")

    def load(self) -> tuple[list[Data], int]:
        h = self.hparams
        gen = torch.Generator().manual_seed(int(h["graph_seed"]))
        k, n, f = int(h["num_classes"]), int(h["nodes_per_class"]), int(h["num_features"])
        probs = torch.full((k, k), float(h["p_out"])).fill_diagonal_(float(h["p_in"]))
        with torch.random.fork_rng():  # stochastic_blockmodel_graph draws from the global RNG
            torch.manual_seed(int(h["graph_seed"]))
            edge_index = stochastic_blockmodel_graph([n] * k, probs, directed=False)
        y = torch.arange(k).repeat_interleave(n)
        # Community c prefers vocabulary slice c; each word is drawn from it with prob topic_strength.
        slice_size = f // k
        words = torch.randint(0, f, (k * n, int(h["words_per_node"])), generator=gen)
        topical = torch.rand(k * n, int(h["words_per_node"]), generator=gen) < float(h["topic_strength"])
        own = y[:, None] * slice_size + torch.randint(0, slice_size, words.shape, generator=gen)
        words = torch.where(topical, own, words)
        x = torch.zeros(k * n, f).scatter_(1, words, 1.0)
        order = torch.randperm(k * n, generator=gen)
        train = torch.cat([order[y[order] == c][: int(h["train_per_class"])] for c in range(k)])
        rest = order[~torch.isin(order, train)]
        masks = {}
        for name, idx in (
            ("train", train),
            ("val", rest[: int(h["num_val"])]),
            ("test", rest[int(h["num_val"]) : int(h["num_val"]) + int(h["num_test"])]),
        ):
            masks[f"{name}_mask"] = torch.zeros(k * n, dtype=torch.bool).index_fill_(0, idx, True)
        data = Data(x=row_normalize(x), edge_index=to_undirected(edge_index, num_nodes=k * n), y=y, **masks)
        return [data], k


class PlanetoidDataModule(GraphDataModule):
    """Cora / CiteSeer / PubMed with the public Planetoid split, features row-normalised (GraphMAE).

    ``root`` is the folder holding ``<name>/raw/ind.<name>.*`` (PyG downloads there when missing and
    ``download`` is true; it writes ``<name>/processed/`` next to ``raw/``).
    """

    def __init__(
        self,
        root: str | None,
        name: str = "Cora",
        normalize_features: bool = True,
        download: bool = False,
        cache_dir: str | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.save_hyperparameters()
        if name not in PLANETOID:
            raise ConfigError(f"data.name must be one of {list(PLANETOID)}, got '{name}'")
        check_raw_root(root, name, download, "planetoid")

    def load(self) -> tuple[list[Data], int]:
        from torch_geometric.datasets import Planetoid

        h = self.hparams
        name: str = h["name"]
        root = working_root(h["root"], name, h["cache_dir"], "planetoid")
        with dataset_lock(root, name):
            dataset = Planetoid(root, name)
        data = dataset[0]
        if h["normalize_features"]:
            data.x = row_normalize(data.x)
        return [data], int(dataset.num_classes)


class TUDataModule(GraphDataModule):
    """TU graph-classification sets (MUTAG, ENZYMES, PROTEINS, IMDB-BINARY, ...), as official GraphMAE:
    one-hot node labels as features when the dataset has them, else one-hot degree capped at 400;
    self-loops removed then added once (GIN's sum then counts each node twice, as DGL's GIN does).

    ``root`` is the folder holding ``<name>/raw/<name>_*.txt``.
    """

    task = "graph"

    def __init__(
        self,
        root: str | None,
        name: str = "MUTAG",
        batch_size: int = 32,
        use_node_attr: bool = False,
        degree_features: bool = False,
        download: bool = False,
        cache_dir: str | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.save_hyperparameters()
        check_raw_root(root, name, download, "tudataset")

    def load(self) -> tuple[list[Data], int]:
        from torch_geometric.datasets import TUDataset

        h = self.hparams
        name: str = h["name"]
        root = working_root(h["root"], name, h["cache_dir"], "tudataset")
        with dataset_lock(root, name):
            dataset = TUDataset(root, name, use_node_attr=h["use_node_attr"])
        graphs = [dataset[i] for i in range(len(dataset))]
        if dataset.num_node_features == 0 or h["degree_features"]:
            width = one_hot_degree(graphs)
            log.info("%s: one-hot degree node features (%d wide)", name, width)
        for g in graphs:
            g.x = g.x.float()
            g.edge_index = add_self_loops(remove_self_loops(g.edge_index)[0], num_nodes=g.num_nodes)[0]
            g.edge_attr = None
        return graphs, int(dataset.num_classes)
