"""GraphMAE (Hou et al., KDD 2022) on torch-geometric, faithful to THUDM/GraphMAE.

The shared data path with graph pieces: tokens are the nodes of the (batched) graph, one "sample"
of ``N`` nodes; the mask hides node features, the encoder sees the whole graph with hidden nodes'
features replaced ([MASK] token or random nodes), a bias-free linear map plus re-masking (hidden
rows zeroed) feeds a one-layer GNN decoder, and the loss is the scaled cosine error on hidden nodes.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch_geometric.nn import global_add_pool, global_max_pool, global_mean_pool

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.gnn import GNN
from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.core.objectives import ScaledCosineError
from mae_zoo.core.types import Layout, Tokens
from mae_zoo.masks.base import MaskLayoutError

POOLINGS = {"mean": global_mean_pool, "max": global_max_pool, "sum": global_add_pool}
# Keys of the encoder config that the decoder inherits (the official code builds both from one set).
_SHARED_KEYS = ("activation", "feat_drop", "attn_drop", "negative_slope", "residual", "norm")


class GraphMAE(MaskedAutoencoder):
    """``encoder``/``decoder``: dicts from ``conf/model/gat.yaml`` or ``gin.yaml``.

    ``in_dim`` is the node feature width; left ``None`` it is read from the datamodule when training
    starts and stored in the checkpoint's hyperparameters. ``pooling`` (mean | max | sum) makes
    ``embed`` return one vector per graph (graph-level tasks); ``None`` returns one per node.
    """

    datamodule_class = "mae_zoo.data.graph.SBMDataModule"

    def __init__(self, encoder: dict, decoder: dict, mask: dict, optim: dict, in_dim: int | None = None,
                 alpha: float = 2.0, pooling: str | None = None, seed: int = 0) -> None:
        super().__init__(mask=mask, optim=optim, seed=seed)
        self.layout = Layout("graph")
        if not self.mask_generator.supports(self.layout):
            raise MaskLayoutError(f"mask {self.mask_generator.name} does not fit graphs (layout 'graph')", self.layout)
        if pooling is not None and pooling not in POOLINGS:
            raise ConfigError(f"module.pooling must be null (node embeddings) or one of {list(POOLINGS)}, got '{pooling}'")
        if encoder.get("kind") not in ("gat", "gin") or decoder.get("kind") not in ("gat", "gin"):
            raise ConfigError("model.encoder.kind and model.decoder.kind must be 'gat' or 'gin'")
        self.pooling = pooling
        self.objective = ScaledCosineError(alpha)
        self.in_dim: int | None = None
        if in_dim is not None:
            self._build(int(in_dim))

    def _build(self, in_dim: int) -> None:
        enc, dec = dict(self.hparams["encoder"]), dict(self.hparams["decoder"])
        hidden = int(enc["hidden"])
        shared = {k: enc[k] for k in _SHARED_KEYS if k in enc}
        self.encoder = GNN(enc["kind"], in_dim, hidden=hidden, out_dim=hidden, layers=int(enc["layers"]),
                           encoding=True, heads=int(enc.get("heads", 1)), out_heads=int(enc.get("heads", 1)), **shared)
        # Official: encoder_to_decoder is a bias-free Linear, then hidden rows are zeroed (re-mask).
        self.encoder_to_decoder = nn.Linear(hidden, hidden, bias=False)
        self.decoder = GNN(dec["kind"], hidden, hidden=hidden, out_dim=in_dim, layers=1, encoding=False,
                           heads=int(enc.get("heads", 1)), out_heads=int(dec.get("heads", 1)), **shared)
        # Zero-initialised and *added* to zeroed features of token nodes, as the official enc_mask_token.
        self.mask_token = nn.Parameter(torch.zeros(1, in_dim))
        self.in_dim = in_dim
        self.hparams["in_dim"] = in_dim

    def configure_model(self) -> None:
        if self.in_dim is not None:
            return
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        num_features = getattr(datamodule, "num_features", None)
        if num_features is None:
            raise ConfigError("GraphMAE needs module.in_dim or a datamodule with num_features")
        self._build(int(num_features))

    @property
    def embed_dim(self) -> int:
        return int(self.hparams["encoder"]["hidden"])

    # ----------------------------------------------------------------------------- the data path
    def tokenize(self, batch: Any) -> Tokens:
        if self.in_dim is None:
            raise RuntimeError("GraphMAE is not built yet: give module.in_dim or train with a graph datamodule")
        x = batch.x.float()
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"expected {self.in_dim} node features, got {x.shape[-1]}")
        layout = Layout("graph", shape=(x.shape[0],), extra={"edge_index": batch.edge_index})
        return Tokens(inputs=x.unsqueeze(0), target=x.unsqueeze(0), layout=layout)

    def encode(self, tokens: Tokens, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        corrupted, _ = self.mask_generator.corrupt(tokens.inputs[0], mask[0], self.mask_token, generator)
        edge_index = self.mask_generator.drop_edges(tokens.layout.extra["edge_index"], generator)
        return self.encoder(corrupted, edge_index)

    def decode(self, encoded: torch.Tensor, tokens: Tokens, mask: torch.Tensor) -> torch.Tensor:
        rep = self.encoder_to_decoder(encoded).masked_fill(mask[0, :, None], 0.0)
        return self.decoder(rep, tokens.layout.extra["edge_index"]).unsqueeze(0)

    def embed_nodes(self, batch: Any) -> torch.Tensor:
        """Encoder output on the clean graph, (N, hidden): the official ``embed``."""
        return self.encoder(batch.x.float(), batch.edge_index)

    def embed(self, batch: Any) -> torch.Tensor:
        nodes = self.embed_nodes(batch)
        if self.pooling is None:
            return nodes
        index = getattr(batch, "batch", None)
        if index is None:
            index = torch.zeros(nodes.shape[0], dtype=torch.long, device=nodes.device)
        return POOLINGS[self.pooling](nodes, index)
