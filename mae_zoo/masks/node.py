"""GraphMAE's node masking (Hou et al. 2022): hide node features, substitute [MASK] or random nodes."""
from __future__ import annotations

import torch

from mae_zoo.core.types import Layout
from mae_zoo.masks.base import MaskConfigError, MaskGenerator


class NodeMask(MaskGenerator):
    """Hide ``int(ratio * N)`` uniformly random nodes of the (batched) graph.

    ``corrupt`` then builds the encoder input as the official ``encoding_mask_noise``: of the ``M``
    hidden nodes, ``int((1 - replace_rate) * M)`` are zeroed and get the learnable [MASK] vector added
    ("token" nodes), the last ``int(replace_rate * M)`` take the features of random nodes ("noise"
    nodes). Both counts are floored separately, so one or two hidden nodes may keep their own
    features; they still count as hidden for re-masking and the loss, exactly as in the official code.
    ``drop_edge_rate`` removes that fraction of edges from the encoder's graph (DropEdge); the decoder
    always sees the full graph.
    """

    layouts = ("graph",)

    def __init__(self, ratio: float, replace_rate: float = 0.0, drop_edge_rate: float = 0.0) -> None:
        super().__init__(ratio)
        for key, value in (("replace_rate", replace_rate), ("drop_edge_rate", drop_edge_rate)):
            if not 0.0 <= float(value) < 1.0:
                raise MaskConfigError(f"mask.{key} must be in [0, 1), got {value}")
        self.replace_rate = float(replace_rate)
        self.drop_edge_rate = float(drop_edge_rate)

    def num_masked(self, num_nodes: int) -> int:
        """Official rule: ``int(mask_rate * num_nodes)`` hidden nodes."""
        return int(self.ratio * num_nodes)

    def num_visible(self, num_tokens: int) -> int:
        return num_tokens - self.num_masked(num_tokens)

    def split_counts(self, num_masked: int) -> tuple[int, int]:
        """(token nodes, noise nodes) among ``num_masked`` hidden ones, with the official floors."""
        if self.replace_rate <= 0:
            return num_masked, 0
        return int((1.0 - self.replace_rate) * num_masked), int(self.replace_rate * num_masked)

    def generate(self, layout: Layout, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        num_nodes = layout.num_tokens
        mask = torch.zeros(batch_size, num_nodes, dtype=torch.bool)
        for row in mask:
            row[torch.randperm(num_nodes, generator=generator)[: self.num_masked(num_nodes)]] = True
        return mask

    def corrupt(self, x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder input for node features ``x`` (N, F) and hidden nodes ``mask`` (N,): returns the
        corrupted features and the bool vector of token nodes (those that got [MASK])."""
        masked = mask.nonzero().flatten()
        num_tokens, num_noise = self.split_counts(masked.numel())
        order = masked[torch.randperm(masked.numel(), generator=generator).to(x.device)]
        token_nodes = order[:num_tokens]
        out = x.clone()
        out[token_nodes] = 0.0
        if num_noise > 0:
            noise_nodes = order[masked.numel() - num_noise:]
            sources = torch.randperm(x.shape[0], generator=generator)[:num_noise].to(x.device)
            out[noise_nodes] = x[sources]
        out[token_nodes] = out[token_nodes] + mask_token.to(out.dtype)
        is_token = torch.zeros_like(mask)
        is_token[token_nodes] = True
        return out, is_token

    def drop_edges(self, edge_index: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Keep each edge with probability ``1 - drop_edge_rate`` (the official ``drop_edge``)."""
        if self.drop_edge_rate <= 0:
            return edge_index
        keep = torch.rand(edge_index.shape[1], generator=generator) >= self.drop_edge_rate
        return edge_index[:, keep.to(edge_index.device)]

    def __repr__(self) -> str:
        return f"{self.name}(ratio={self.ratio}, replace_rate={self.replace_rate}, drop_edge_rate={self.drop_edge_rate})"


class EdgeMask(NodeMask):
    """Structure masking for ablations: the node mask at ``node_ratio`` plus DropEdge at ``ratio``.

    ``mask=edge`` hides ``ratio`` of the edges from the encoder (the official ``drop_edge_rate``, 0.5
    in the ogbn-arxiv config) while node features are masked as usual; set ``node_ratio`` to change
    how many nodes the loss covers. ``mask=node mask.drop_edge_rate=...`` is the same thing spelled
    from the node side.
    """

    def __init__(self, ratio: float, node_ratio: float = 0.5, replace_rate: float = 0.0) -> None:
        if not 0.0 < float(ratio) < 1.0:
            raise MaskConfigError(f"mask.ratio (fraction of edges dropped) must be in (0, 1), got {ratio}")
        super().__init__(node_ratio, replace_rate=replace_rate, drop_edge_rate=ratio)
        self.edge_ratio = float(ratio)
