"""GraphMAE's node masking (Hou et al. 2022): hide node features, substitute [MASK] or random nodes."""

from __future__ import annotations

import torch

from mae_zoo.core.types import Layout
from mae_zoo.masks.base import MaskConfigError, MaskGenerator


class NodeMask(MaskGenerator):
    """Hide ``int(ratio * N)`` uniformly random nodes of the (batched) graph.

    The mask only chooses nodes; GraphMAE corrupts the encoder's input with the two rates declared
    here (``mae_zoo.nets.gnn.corrupt_nodes`` and ``drop_edges``): ``replace_rate`` of the hidden nodes
    get random nodes' features instead of the [MASK] token, and ``drop_edge_rate`` of the edges are
    removed from the encoder's graph (DropEdge; the decoder always sees the full graph).
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

    def generate(self, layout: Layout, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        num_nodes = layout.num_tokens
        mask = torch.zeros(batch_size, num_nodes, dtype=torch.bool)
        for row in mask:
            row[torch.randperm(num_nodes, generator=generator)[: self.num_masked(num_nodes)]] = True
        return mask

    def __repr__(self) -> str:
        return (
            f"{self.name}(ratio={self.ratio}, replace_rate={self.replace_rate}, drop_edge_rate={self.drop_edge_rate})"
        )


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
