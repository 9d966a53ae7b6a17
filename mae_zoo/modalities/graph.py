"""GraphMAE (Hou et al., KDD 2022) on torch-geometric, faithful to THUDM/GraphMAE.

The shared data path with graph pieces: tokens are the nodes of the (batched) graph, one "sample"
of ``N`` nodes; the mask hides node features, the encoder sees the whole graph with hidden nodes'
features replaced ([MASK] token or random nodes), a bias-free linear map plus re-masking (hidden
rows zeroed) feeds a one-layer GNN decoder, and the loss is the scaled cosine error on hidden nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from torch import Generator, Tensor
from torch_geometric.nn import global_add_pool, global_max_pool, global_mean_pool

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.core.types import Decoded, Encoded, Keep, Layout, Masks, Tokens
from mae_zoo.data.base import trainer_datamodule
from mae_zoo.data.graph import GraphDataModule
from mae_zoo.masks.node import NodeMask
from mae_zoo.nets.gnn import GNN, corrupt_nodes, drop_edges
from mae_zoo.objectives import ScaledCosineError

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
    encoder: GNN
    decoder: GNN

    def __init__(
        self, encoder: dict, decoder: dict, in_dim: int | None = None, pooling: str | None = None, **shared: Any
    ) -> None:
        super().__init__(**shared)
        self.set_layout(Layout("graph"))
        if not isinstance(self.mask_generator, NodeMask):  # a node mask declares the corruption rates
            raise ConfigError(f"GraphMAE needs a node mask (mask=node or mask=edge), got {self.mask_generator.name}")
        self.node_mask: NodeMask = self.mask_generator
        if pooling is not None and pooling not in POOLINGS:
            raise ConfigError(
                f"module.pooling must be null (node embeddings) or one of {list(POOLINGS)}, got '{pooling}'"
            )
        if encoder.get("kind") not in ("gat", "gin") or decoder.get("kind") not in ("gat", "gin"):
            raise ConfigError("model.encoder.kind and model.decoder.kind must be 'gat' or 'gin'")
        self.pooling = pooling
        self.in_dim: int | None = None
        if in_dim is not None:
            self._build(int(in_dim))

    @classmethod
    def default_objective(cls, hparams: Mapping[str, Any]) -> dict:
        return ScaledCosineError.spec(alpha=2.0)

    def _build(self, in_dim: int) -> None:
        enc, dec = dict(self.hparams["encoder"]), dict(self.hparams["decoder"])
        hidden = int(enc["hidden"])
        shared = {k: enc[k] for k in _SHARED_KEYS if k in enc}
        self.encoder = GNN(
            enc["kind"],
            in_dim,
            hidden=hidden,
            out_dim=hidden,
            layers=int(enc["layers"]),
            encoding=True,
            heads=int(enc.get("heads", 1)),
            out_heads=int(enc.get("heads", 1)),
            **shared,
        )
        # Official: encoder_to_decoder is a bias-free Linear, then hidden rows are zeroed (re-mask).
        self.encoder_to_decoder = nn.Linear(hidden, hidden, bias=False)
        self.decoder = GNN(
            dec["kind"],
            hidden,
            hidden=hidden,
            out_dim=in_dim,
            layers=1,
            encoding=False,
            heads=int(enc.get("heads", 1)),
            out_heads=int(dec.get("heads", 1)),
            **shared,
        )
        # Zero-initialised and *added* to zeroed features of token nodes, as the official enc_mask_token.
        self.mask_token = nn.Parameter(torch.zeros(1, in_dim))
        self.in_dim = in_dim
        self.hparams["in_dim"] = in_dim

    def configure_model(self) -> None:
        if self.in_dim is None:
            datamodule = trainer_datamodule(self._trainer)
            if not isinstance(datamodule, GraphDataModule):
                if self._trainer is None:  # train.build's start-up check: the rest waits for the datamodule
                    self.distiller_checked()
                    return
                raise ConfigError("GraphMAE needs module.in_dim or a graph datamodule (its num_features)")
            self._build(datamodule.num_features)
        super().configure_model()

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

    def encode(
        self, tokens: Tokens, mask: Tensor | None, generator: Generator | None = None, keep: Keep = ()
    ) -> Encoded:
        """The encoder on the whole graph; with a mask, hidden nodes' features corrupted and DropEdge
        applied (in the official draw order). ``keep``: GNN layers whose outputs to return."""
        x, edge_index = tokens.inputs[0], tokens.layout.extra["edge_index"]
        if mask is not None:
            x, _ = corrupt_nodes(x, mask[0], self.mask_token, self.node_mask.replace_rate, generator)
            edge_index = drop_edges(edge_index, self.node_mask.drop_edge_rate, generator)
        latent, hidden = self.encoder.forward_layers(x, edge_index, keep)
        return Encoded(latent, intermediates=hidden)

    def decode(self, encoded: Encoded, tokens: Tokens, masks: Masks, keep: Keep = ()) -> Decoded:
        # Re-mask: the decoder must rebuild hidden nodes from their neighbours' codes alone.
        rep = self.encoder_to_decoder(encoded.latent).masked_fill(masks.hidden[0, :, None], 0.0)
        pred, hidden = self.decoder.forward_layers(rep, tokens.layout.extra["edge_index"], keep)
        return Decoded(pred.unsqueeze(0), hidden)

    def embed_nodes(self, batch: Any, block: int | None = None) -> torch.Tensor:
        """Encoder output on the clean graph, (N, hidden): the official ``embed``; with ``block``,
        that GNN layer's output instead."""
        encoded = self.encode(self.tokenize(batch), None, keep=() if block is None else (block,))
        return encoded.latent if block is None else encoded.intermediates[0]

    def embed(self, batch: Any, block: int | None = None) -> torch.Tensor:
        nodes = self.embed_nodes(batch, block)
        if self.pooling is None:
            return nodes
        index = batch.batch  # None for a single graph
        if index is None:
            index = torch.zeros(nodes.shape[0], dtype=torch.long, device=nodes.device)
        return POOLINGS[self.pooling](nodes, index)
