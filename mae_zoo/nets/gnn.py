"""Graph encoders and decoders for GraphMAE, on torch-geometric's ``GATConv`` and ``GINConv``.

The layer stacks follow the official GraphMAE ``GAT``/``GIN`` classes (THUDM/GraphMAE): feature
dropout before every layer, an activation (and norm/residual when configured) after every hidden
layer, and on the last layer only when the stack is an encoder (``encoding=True``); a decoder's
last layer is linear. Initialisation follows the official GATConv (Xavier-normal, gain sqrt(2)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch_geometric.nn import GATConv, GINConv

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import keep_indices

ACTIVATIONS = ("prelu", "relu", "elu", "gelu", "identity")
NORMS = (None, "batchnorm", "layernorm")


def make_activation(name: str | None) -> nn.Module:
    name = (name or "identity").lower()
    if name not in ACTIVATIONS:
        raise ConfigError(f"model.activation must be one of {list(ACTIVATIONS)}, got '{name}'")
    # A fresh module per use: PReLU has its own learnable slope in every layer, as in the official code.
    return {"prelu": nn.PReLU, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "identity": nn.Identity}[name]()


def make_norm(name: str | None, dim: int) -> nn.Module:
    if name not in NORMS:
        raise ConfigError(f"model.norm must be one of {list(NORMS)}, got '{name}'")
    if name == "batchnorm":
        return nn.BatchNorm1d(dim)
    if name == "layernorm":
        return nn.LayerNorm(dim)
    return nn.Identity()


class GATLayer(nn.Module):
    """One GraphMAE GAT layer: dropout -> GATConv (heads concatenated) -> residual -> norm -> activation."""

    def __init__(
        self,
        in_dim: int,
        out_per_head: int,
        heads: int,
        feat_drop: float,
        attn_drop: float,
        negative_slope: float,
        residual: bool,
        norm: str | None,
        activation: str | None,
    ) -> None:
        super().__init__()
        out_dim = out_per_head * heads
        self.feat_drop = nn.Dropout(feat_drop)
        self.conv = GATConv(
            in_dim,
            out_per_head,
            heads=heads,
            concat=True,
            negative_slope=negative_slope,
            dropout=attn_drop,
            add_self_loops=True,
            bias=True,
        )
        self.res_fc = (
            (nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim, bias=False)) if residual else None
        )
        self.norm = make_norm(norm, out_dim)
        self.act = make_activation(activation)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        gain = nn.init.calculate_gain("relu")
        nn.init.xavier_normal_(self.conv.lin.weight, gain=gain)
        nn.init.xavier_normal_(self.conv.att_src, gain=gain)
        nn.init.xavier_normal_(self.conv.att_dst, gain=gain)
        nn.init.zeros_(self.conv.bias)
        if isinstance(self.res_fc, nn.Linear):
            nn.init.xavier_normal_(self.res_fc.weight, gain=gain)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.feat_drop(x), edge_index)
        if self.res_fc is not None:
            h = h + self.res_fc(x)
        return self.act(self.norm(h))


class GINMLP(nn.Module):
    """GIN's update MLP: Linear -> norm -> activation -> Linear, then (``post``) norm -> activation."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, norm: str | None, activation: str, post: bool) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), make_norm(norm, hidden), make_activation(activation), nn.Linear(hidden, out_dim)
        )
        self.post = nn.Sequential(make_norm(norm, out_dim), make_activation(activation)) if post else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.net(x))


class GINLayer(nn.Module):
    """One GraphMAE GIN layer: dropout -> sum aggregation with fixed eps 0 -> MLP (-> residual)."""

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        out_dim: int,
        dropout: float,
        norm: str | None,
        activation: str,
        post: bool,
        residual: bool,
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.conv = GINConv(GINMLP(in_dim, hidden, out_dim, norm, activation, post), eps=0.0, train_eps=False)
        self.res_fc = (
            (nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim, bias=False)) if residual else None
        )

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        h = self.conv(x, edge_index)
        return h + self.res_fc(x) if self.res_fc is not None else h


class GNN(nn.Module):
    """A stack of GAT or GIN layers. ``out_dim`` is the width of the last layer's output (for GAT:
    per head times ``out_heads``); returns node features (N, out_dim)."""

    def __init__(
        self,
        kind: str,
        in_dim: int,
        hidden: int,
        out_dim: int,
        layers: int,
        encoding: bool,
        heads: int = 1,
        out_heads: int = 1,
        activation: str = "prelu",
        feat_drop: float = 0.0,
        attn_drop: float = 0.0,
        negative_slope: float = 0.2,
        residual: bool = False,
        norm: str | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("gat", "gin"):
            raise ConfigError(f"model.kind must be 'gat' or 'gin', got '{kind}'")
        if layers < 1:
            raise ConfigError(f"model.layers must be >= 1, got {layers}")
        self.kind, self.out_dim = kind, out_dim
        last_act = activation if encoding else None
        last_norm = norm if encoding else None
        last_res = residual and encoding
        self.layers = nn.ModuleList()
        if kind == "gat":
            if hidden % heads or out_dim % out_heads:
                raise ConfigError(
                    f"GAT widths must divide by the heads: hidden {hidden} / heads {heads}, "
                    f"out {out_dim} / out_heads {out_heads}"
                )
            dims = [in_dim] + [hidden] * (layers - 1)
            for i in range(layers - 1):
                self.layers.append(
                    GATLayer(
                        dims[i],
                        hidden // heads,
                        heads,
                        feat_drop,
                        attn_drop,
                        negative_slope,
                        residual,
                        norm,
                        activation,
                    )
                )
            self.layers.append(
                GATLayer(
                    dims[-1],
                    out_dim // out_heads,
                    out_heads,
                    feat_drop,
                    attn_drop,
                    negative_slope,
                    last_res,
                    last_norm,
                    last_act,
                )
            )
        else:
            dims = [in_dim] + [hidden] * (layers - 1)
            for i in range(layers - 1):
                self.layers.append(GINLayer(dims[i], hidden, hidden, feat_drop, norm, activation, True, residual))
            # The last layer's MLP ends linear in a decoder; an encoder adds norm + activation after it.
            self.layers.append(
                GINLayer(
                    dims[-1],
                    hidden,
                    out_dim,
                    feat_drop,
                    norm,
                    activation,
                    post=encoding and norm is not None,
                    residual=last_res,
                )
            )

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.forward_layers(x, edge_index)[0]

    def forward_layers(
        self, x: torch.Tensor, edge_index: torch.Tensor, keep: Sequence[int] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The output and the outputs of the layers in ``keep`` (negative: from the last)."""
        wanted = keep_indices(keep, len(self.layers), f"a GNN of {len(self.layers)} layers")
        hidden = []
        for i, layer in enumerate(self.layers):
            x = layer(x, edge_index)
            if i in wanted:
                hidden.append(x)
        return x, hidden


def split_counts(num_masked: int, replace_rate: float) -> tuple[int, int]:
    """(token nodes, noise nodes) among ``num_masked`` hidden ones, with the official floors."""
    if replace_rate <= 0:
        return num_masked, 0
    return int((1.0 - replace_rate) * num_masked), int(replace_rate * num_masked)


def corruption_plan(
    mask: torch.Tensor, replace_rate: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random draws of :func:`corrupt_nodes`, in its order, without touching features: (token
    nodes, noise nodes, the nodes whose features the noise nodes take). The batched many-seed model
    (``mae_zoo.nets.gat_seeds``) uses it to draw exactly what the one-seed model draws."""
    masked = mask.nonzero().flatten()
    num_tokens, num_noise = split_counts(masked.numel(), replace_rate)
    order = masked[torch.randperm(masked.numel(), generator=generator).to(mask.device)]
    token_nodes = order[:num_tokens]
    noise_nodes = order[masked.numel() - num_noise :] if num_noise > 0 else order[:0]
    sources = (
        torch.randperm(mask.shape[0], generator=generator)[:num_noise].to(mask.device) if num_noise > 0 else order[:0]
    )
    return token_nodes, noise_nodes, sources


def corrupt_nodes(
    x: torch.Tensor,
    mask: torch.Tensor,
    mask_token: torch.Tensor,
    replace_rate: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GraphMAE's encoder input (the official ``encoding_mask_noise``) for node features ``x`` (N, F)
    and hidden nodes ``mask`` (N,): of the ``M`` hidden nodes, ``int((1 - replace_rate) * M)`` are
    zeroed and get the learnable [MASK] vector added ("token" nodes), the last ``int(replace_rate * M)``
    take the features of random nodes ("noise" nodes). Both counts are floored separately, so one or
    two hidden nodes may keep their own features; they still count as hidden for re-masking and the
    loss, exactly as in the official code. Returns the features and the bool vector of token nodes."""
    token_nodes, noise_nodes, sources = corruption_plan(mask.to(x.device), replace_rate, generator)
    out = x.clone()
    out[token_nodes] = 0.0
    if noise_nodes.numel() > 0:
        out[noise_nodes] = x[sources]
    out[token_nodes] = out[token_nodes] + mask_token.to(out.dtype)
    is_token = torch.zeros_like(mask)
    is_token[token_nodes.to(mask.device)] = True
    return out, is_token


def drop_edges(edge_index: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep each edge with probability ``1 - rate`` (the official ``drop_edge``; DropEdge)."""
    if rate <= 0:
        return edge_index
    keep = torch.rand(edge_index.shape[1], generator=generator) >= rate
    return edge_index[:, keep.to(edge_index.device)]
