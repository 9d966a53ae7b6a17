"""GraphMAE's GAT encoder/decoder for ``S`` seeds at once, in plain torch (one job, one optimizer).

Every parameter of the one-seed model (``mae_zoo.modalities.graph.GraphMAE`` with GAT encoder and
decoder) gets a leading seed dimension; seed ``i``'s slice is a copy of one-seed model ``i``'s
parameter, so the stack starts from exactly the weights the one-seed models would start from, and
:meth:`SeedStack.copy_to` writes a slice back into a one-seed model (evaluation, checks).

The arithmetic is PyG ``GATConv``'s (self-loops removed then added, LeakyReLU on the summed
attention logits, ``torch_geometric.utils.softmax`` over each node's incoming edges, dropout on the
attention, heads concatenated, bias), with exact rewrites that cut the work:

- the first layer's input is a sparse matrix (Cora's bag of words is ~1.3% non-zero): the visible
  and random-replacement rows of ``X`` go through a block-diagonal (over seeds) sparse product,
  only the [MASK]-token rows (dense once the token has trained) through a dense ``bmm``
  (:class:`_TokenRows`: one product fewer in backward than autograd on the dropped inputs);
- the attention-weighted sum over edges is a block-diagonal sparse product over (seed, head)
  blocks with a hand-written backward (:class:`_Aggregate`), never an (S, E, H, C) message tensor;
- the decoder's loss reads hidden nodes only, and GAT aggregation is linear:
  ``sum_j a_ij (W z_j) = W (sum_j a_ij z_j)``, so the 512-wide re-masked codes are aggregated and
  only the hidden rows are projected to the feature width; the attention logits use ``z . (W a)``.

Losses come back per seed; a caller backpropagates their *sum*, so that each seed's slice of a
stacked parameter receives exactly that seed's gradient (a mean would scale it by ``1/S``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_geometric.utils import add_self_loops, remove_self_loops, softmax

from mae_zoo.nets.gnn import GNN, GATLayer

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "elu": F.elu, "gelu": F.gelu}


@dataclass
class SeedGraph:
    """One graph prepared for the stack: dense features (targets), their CSR parts (the sparse first
    layer) and the edge list with self-loops, as ``GATConv(add_self_loops=True)`` uses it, sorted by
    destination (then source) so that it is the CSR order of the aggregation matrix."""

    x: torch.Tensor
    crow: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor
    src: torch.Tensor
    dst: torch.Tensor

    @classmethod
    def build(cls, x: torch.Tensor, edge_index: torch.Tensor) -> SeedGraph:
        x, edge_index_in = x.float(), edge_index
        n = x.shape[0]
        rows, col = x.nonzero(as_tuple=True)  # row-major: the CSR order
        crow = torch.zeros(n + 1, dtype=torch.long, device=x.device)
        crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
        edge_index, _ = remove_self_loops(edge_index)
        edge_index, _ = add_self_loops(edge_index, num_nodes=n)
        order = torch.argsort(edge_index[1] * n + edge_index[0])
        src, dst = edge_index[0, order], edge_index[1, order]
        graph = cls(x, crow, col, x[rows, col], src, dst)
        graph.__dict__["_raw"] = (x, edge_index_in)
        return graph

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    def pattern(self, seeds: int, heads: int) -> Pattern:
        """The aggregation pattern for ``seeds`` x ``heads`` (cached on this graph)."""
        cache: dict[tuple[int, int], Pattern] = self.__dict__.setdefault("_patterns", {})
        if (seeds, heads) not in cache:
            cache[seeds, heads] = Pattern.build(self.src, self.dst, self.num_nodes, seeds, heads)
        return cache[seeds, heads]

    def same(self, x: torch.Tensor, edge_index: torch.Tensor) -> bool:
        """Whether this was built from ``x`` and ``edge_index`` (full-batch: the same graph every step)."""
        raw = self.__dict__.get("_raw")
        return raw is not None and all(
            a.shape == b.shape and a.device == b.device and torch.equal(a, b) for a, b in zip(raw, (x, edge_index))
        )


@dataclass
class Pattern:
    """CSR structure of the aggregation ``out[s, i, h] = sum_{e: j -> i} alpha[s, e, h] x[s, j, h]`` on
    node features in their natural (S, N, H, C) layout, viewed as (S*N*H, C) rows: row ``(s, i, h)``
    holds the edges into ``i`` for head ``h`` (so no permute copies of features). ``order`` takes the
    (E*H) per-seed attention values (edge-major) to the CSR order; ``*_t``: the transpose (backward)."""

    crow: torch.Tensor
    col: torch.Tensor
    order: torch.Tensor
    crow_t: torch.Tensor
    col_t: torch.Tensor
    order_t: torch.Tensor
    size: int

    @classmethod
    def build(cls, src: torch.Tensor, dst: torch.Tensor, n: int, seeds: int, heads: int) -> Pattern:
        flat = torch.arange(src.numel() * heads, device=src.device)
        edge, head = flat // heads, flat % heads
        rows_per_seed, entries_per_seed = n * heads, flat.numel()
        seed = torch.arange(seeds, device=src.device)[:, None]

        def csr(rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            key = rows * heads + head
            order = torch.argsort(key, stable=True)  # edge order kept inside a row: columns ascend
            counts = torch.bincount(key, minlength=rows_per_seed)
            crow = torch.cumsum(counts, 0) - counts
            total = torch.tensor([seeds * entries_per_seed], device=src.device)
            crow = torch.cat([(crow[None] + seed * entries_per_seed).reshape(-1), total])
            col = (cols[edge[order]] * heads + head[order])[None] + seed * rows_per_seed
            return crow, col.reshape(-1), order

        crow, col, order = csr(dst[edge], src)
        crow_t, col_t, order_t = csr(src[edge], dst)
        return cls(crow, col, order, crow_t, col_t, order_t, seeds * rows_per_seed)

    def matrix(self, values: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """The sparse matrix with ``values`` (S, E*H) in edge-major order."""
        crow, col, order = (self.crow_t, self.col_t, self.order_t) if transpose else (self.crow, self.col, self.order)
        return torch.sparse_csr_tensor(
            crow, col, values[:, order].reshape(-1), (self.size, self.size), check_invariants=False
        )


class _Aggregate(torch.autograd.Function):
    """``out[s, i, h] = sum_{e: j -> i} alpha[s, e, h] x[s, j, h]`` as one sparse product: PyG's
    gather-multiply-scatter would write an (S, E, H, C) message tensor (0.5 GB at S=20 on Cora)
    forward and backward. Backward: ``A^T grad`` for x, and the sampled product ``<grad_i, x_j>`` on
    the edges (SDDMM) for alpha."""

    @staticmethod
    def forward(ctx: Any, alpha: torch.Tensor, x: torch.Tensor, pattern: Pattern) -> torch.Tensor:
        ctx.save_for_backward(alpha, x)
        ctx.pattern = pattern
        return torch.sparse.mm(pattern.matrix(alpha), x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        alpha, x = ctx.saved_tensors
        pattern: Pattern = ctx.pattern
        grad = grad.contiguous()
        grad_alpha = grad_x = None
        if ctx.needs_input_grad[1]:
            grad_x = torch.sparse.mm(pattern.matrix(alpha, transpose=True), grad)
        if ctx.needs_input_grad[0]:
            sampled = torch.sparse.sampled_addmm(pattern.matrix(torch.zeros_like(alpha)), grad, x.t(), beta=0.0)
            grad_alpha = torch.empty_like(alpha)
            grad_alpha[:, pattern.order] = sampled.values().view_as(alpha)  # back to edge-major order
        return grad_alpha, grad_x, None


def aggregate(alpha: torch.Tensor, x: torch.Tensor, graph: SeedGraph) -> torch.Tensor:
    """GAT's weighted sum over incoming edges: alpha (S, E, H) in ``graph``'s edge order, x (S, N, H, C)
    -> (S, N, H, C)."""
    s, n, h, c = x.shape
    pattern = graph.pattern(s, h)
    out = _Aggregate.apply(alpha.reshape(s, -1), x.reshape(s * n * h, c), pattern)
    return out.view(s, n, h, c)


@dataclass
class SeedPlan:
    """Per-seed masks of one step (rows: seeds): ``hidden`` (S, N) bool, ``tokens`` (S, T) the
    [MASK]-token nodes, ``noise`` (S, K) the random-replacement nodes and ``sources`` (S, K) whose
    features they take (counts are equal across seeds: they depend on N and the rates only)."""

    hidden: torch.Tensor
    tokens: torch.Tensor
    noise: torch.Tensor
    sources: torch.Tensor


class OneSeedModel(Protocol):
    """What the stack reads from (and writes into) a one-seed GraphMAE with GAT encoder and decoder."""

    encoder: GNN
    decoder: GNN
    encoder_to_decoder: nn.Linear
    mask_token: nn.Parameter


def gat_layers(net: GNN) -> list[GATLayer]:
    return [layer for layer in net.layers if isinstance(layer, GATLayer)]


def prelu_weight(layer: GATLayer) -> torch.Tensor:
    if not isinstance(layer.act, nn.PReLU):
        raise TypeError(f"expected a PReLU activation, got {type(layer.act).__name__}")
    return layer.act.weight


class StackedGAT(nn.Module):
    """``S`` copies of one ``GATLayer`` (no residual, no norm): weight (S, in, H*C), att_src/att_dst
    (S, H, C), bias (S, H*C), and a PReLU slope (S, 1) when the activation is PReLU."""

    def __init__(self, layers: Sequence[GATLayer], activation: str | None) -> None:
        super().__init__()
        convs = [layer.conv for layer in layers]
        self.heads, self.per_head = int(convs[0].heads), int(convs[0].out_channels)
        self.feat_drop = float(layers[0].feat_drop.p)
        self.attn_drop = float(convs[0].dropout)
        self.negative_slope = float(convs[0].negative_slope)
        self.activation = (activation or "identity").lower()
        self.weight = nn.Parameter(torch.stack([c.lin.weight.detach().t() for c in convs]).contiguous())
        self.att_src = nn.Parameter(torch.stack([c.att_src.detach()[0] for c in convs]))
        self.att_dst = nn.Parameter(torch.stack([c.att_dst.detach()[0] for c in convs]))
        self.bias = nn.Parameter(torch.stack([c.bias.detach() for c in convs]))
        self.prelu = (
            nn.Parameter(torch.stack([prelu_weight(layer).detach() for layer in layers]))
            if self.activation == "prelu"
            else None
        )

    def copy_to(self, layer: GATLayer, i: int) -> None:
        """Write seed ``i``'s slice into a one-seed ``GATLayer``."""
        with torch.no_grad():
            layer.conv.lin.weight.copy_(self.weight[i].t())
            layer.conv.att_src.copy_(self.att_src[i][None])
            layer.conv.att_dst.copy_(self.att_dst[i][None])
            layer.conv.bias.copy_(self.bias[i])
            if self.prelu is not None:
                prelu_weight(layer).copy_(self.prelu[i])

    def act(self, h: torch.Tensor) -> torch.Tensor:
        if self.prelu is not None:  # per-seed slope: the seed axis as PReLU's channel axis (one fused kernel)
            return F.prelu(h.reshape(1, h.shape[0], -1), self.prelu.view(-1)).view_as(h)
        if self.activation == "identity":
            return h
        return ACTIVATIONS[self.activation](h)

    def attend(self, xp: torch.Tensor, graph: SeedGraph) -> torch.Tensor:
        """GATConv after its linear map: xp (S, N, H*C) -> (S, N, H*C), bias and activation included."""
        s, n, _ = xp.shape
        xp = xp.view(s, n, self.heads, self.per_head)
        a_src = (xp * self.att_src[:, None]).sum(-1)  # (S, N, H)
        a_dst = (xp * self.att_dst[:, None]).sum(-1)
        alpha = F.leaky_relu(a_src[:, graph.src] + a_dst[:, graph.dst], self.negative_slope)
        alpha = softmax(alpha, graph.dst, num_nodes=n, dim=1)
        alpha = F.dropout(alpha, self.attn_drop, self.training)
        out = aggregate(alpha, xp, graph)
        return self.act(out.reshape(s, n, -1) + self.bias[:, None])


class _TokenRows(torch.autograd.Function):
    """The first layer on the [MASK]-token rows: ``(keep * m * scale) @ W`` per seed, with ``keep``
    the (S, T, F) 0/1 dropout draw and ``scale = 1 / (1 - p)``. Written as ``keep @ (scale * m * W)``
    so that the backward needs one product, ``Q = keep^T grad``, for both gradients:
    ``grad W = scale * m * Q``, ``grad m = scale * rowsum(W * Q)`` (autograd on the dense dropout would
    do two, and materialise the dropped inputs)."""

    @staticmethod
    def forward(ctx: Any, token: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(token, weight, keep)
        ctx.scale = scale
        return torch.bmm(keep, (scale * token)[:, :, None] * weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        token, weight, keep = ctx.saved_tensors
        q = torch.bmm(keep.transpose(1, 2), grad)  # (S, F, H*C)
        return ctx.scale * (weight * q).sum(-1), (ctx.scale * token)[:, :, None] * q, None, None


class SeedStack(nn.Module):
    """The trainable part of ``S`` GraphMAE models (GAT encoder, bias-free encoder-to-decoder map,
    one-layer GAT decoder, [MASK] token), built from ``models`` (one-seed ``GraphMAE`` modules)."""

    def __init__(self, models: Sequence[OneSeedModel], activation: str | None) -> None:
        super().__init__()
        depth = len(gat_layers(models[0].encoder))
        self.encoder = nn.ModuleList(
            StackedGAT([gat_layers(m.encoder)[d] for m in models], activation) for d in range(depth)
        )
        self.decoder = StackedGAT([gat_layers(m.decoder)[0] for m in models], None)
        self.to_decoder = nn.Parameter(
            torch.stack([m.encoder_to_decoder.weight.detach().t() for m in models]).contiguous()
        )
        self.mask_token = nn.Parameter(torch.stack([m.mask_token.detach()[0] for m in models]))
        self.num_seeds = len(models)

    @property
    def layers(self) -> list[StackedGAT]:
        """The encoder's stacked layers, typed."""
        return [layer for layer in self.encoder if isinstance(layer, StackedGAT)]

    def copy_to(self, model: OneSeedModel, i: int) -> None:
        """Write seed ``i``'s parameters into a one-seed GraphMAE ``model``."""
        for stacked, layer in zip(self.layers, gat_layers(model.encoder)):
            stacked.copy_to(layer, i)
        self.decoder.copy_to(gat_layers(model.decoder)[0], i)
        with torch.no_grad():
            model.encoder_to_decoder.weight.copy_(self.to_decoder[i].t())
            model.mask_token.copy_(self.mask_token[i][None])

    # ----------------------------------------------------------------------------- the encoder
    def first_projection(self, graph: SeedGraph, plan: SeedPlan | None) -> torch.Tensor:
        """The first layer's ``dropout(corrupted X) @ W`` per seed, (S, N, H*C), without forming the
        dense corrupted inputs: non-token rows are rows of ``X`` (their own or a noise node's
        source), sparse; token rows are the [MASK] vector, dense."""
        layer = self.layers[0]
        s, n, f = self.num_seeds, graph.num_nodes, graph.x.shape[1]
        device = graph.x.device
        row_of = torch.arange(n, device=device).expand(s, n).clone()  # which row of X each node shows
        shows_x = torch.ones(s, n, dtype=torch.bool, device=device)
        if plan is not None:
            row_of.scatter_(1, plan.noise, plan.sources)
            shows_x.scatter_(1, plan.tokens, False)
        seed_idx, node_idx = shows_x.nonzero(as_tuple=True)
        rows = row_of[seed_idx, node_idx]
        starts, counts = graph.crow[rows], graph.crow[rows + 1] - graph.crow[rows]
        entry = torch.repeat_interleave(torch.arange(rows.numel(), device=device), counts)
        offset = torch.arange(entry.numel(), device=device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts
        )
        pos = starts[entry] + offset
        values = F.dropout(graph.val[pos], layer.feat_drop, self.training)  # dropout per seed: own entries
        indices = torch.stack([seed_idx[entry] * n + node_idx[entry], seed_idx[entry] * f + graph.col[pos]])
        sparse = torch.sparse_coo_tensor(indices, values, (s * n, s * f), check_invariants=False)
        h = torch.sparse.mm(sparse, layer.weight.reshape(s * f, -1)).view(s, n, -1)
        if plan is None or plan.tokens.shape[1] == 0:
            return h
        t = plan.tokens.shape[1]
        if self.training and layer.feat_drop > 0:  # each token row drops its own entries
            keep = torch.empty(s, t, f, device=device).bernoulli_(1.0 - layer.feat_drop)
            token_h = _TokenRows.apply(self.mask_token, layer.weight, keep, 1.0 / (1.0 - layer.feat_drop))
        else:  # every token row is the same vector: project it once
            token_h = torch.bmm(self.mask_token[:, None], layer.weight).expand(s, t, -1)
        # Token rows of h are zero (no X entries), so a scatter-add puts the token projection there.
        return h.scatter_add(1, plan.tokens[..., None].expand(s, t, h.shape[-1]), token_h)

    def encode(self, graph: SeedGraph, plan: SeedPlan | None) -> torch.Tensor:
        """(S, N, hidden): the encoder on each seed's corrupted graph (``plan`` None: the clean graph)."""
        first, *rest = self.layers
        h = first.attend(self.first_projection(graph, plan), graph)
        for layer in rest:
            h = layer.attend(torch.bmm(F.dropout(h, layer.feat_drop, self.training), layer.weight), graph)
        return h

    # ----------------------------------------------------------------------------- the decoder and loss
    def decode_hidden(self, latent: torch.Tensor, graph: SeedGraph, plan: SeedPlan) -> torch.Tensor:
        """The decoder's predictions at each seed's hidden nodes, (S, M, F), M hidden nodes per seed
        (in node order). Exact rewrite of the full decoder restricted to those rows (module docstring)."""
        dec = self.decoder
        s, n = latent.shape[:2]
        rep = torch.bmm(latent, self.to_decoder).masked_fill(plan.hidden[..., None], 0.0)  # re-mask
        rep = F.dropout(rep, dec.feat_drop, self.training)
        w = dec.weight  # (S, D, F), one head
        a_src = torch.bmm(rep, torch.bmm(w, dec.att_src.transpose(1, 2))).squeeze(-1)  # (S, N): z . (W a)
        a_dst = torch.bmm(rep, torch.bmm(w, dec.att_dst.transpose(1, 2))).squeeze(-1)
        alpha = F.leaky_relu(a_src[:, graph.src] + a_dst[:, graph.dst], dec.negative_slope)
        alpha = softmax(alpha, graph.dst, num_nodes=n, dim=1)
        alpha = F.dropout(alpha, dec.attn_drop, self.training)
        agg = aggregate(alpha[..., None], rep[:, :, None], graph)[:, :, 0]  # (S, N, D): one head
        hidden_idx = plan.hidden.nonzero(as_tuple=True)[1].view(s, -1)  # (S, M), node order per seed
        rows = agg.gather(1, hidden_idx[..., None].expand(-1, -1, agg.shape[-1]))
        return torch.bmm(rows, w) + dec.bias[:, None]

    def losses(self, graph: SeedGraph, plan: SeedPlan, alpha: float) -> torch.Tensor:
        """(S,) GraphMAE loss of each seed: mean over its hidden nodes of ``(1 - cos(pred, x))^alpha``."""
        pred = self.decode_hidden(self.encode(graph, plan), graph, plan)
        hidden_idx = plan.hidden.nonzero(as_tuple=True)[1].view(self.num_seeds, -1)
        target = F.normalize(graph.x[hidden_idx], p=2, dim=-1)
        cos = (F.normalize(pred, p=2, dim=-1) * target).sum(-1)
        return (1.0 - cos).pow(alpha).mean(dim=1)
