"""SimMIM's random mask (Xie et al., CVPR 2022; microsoft/SimMIM ``MaskGenerator``): uniform random
over a coarse grid of mask cells (32 px: 7 x 7 cells on 224 px), ``ceil(cells * ratio)`` of them hidden,
each cell upsampled to the model's token grid (``cell`` tokens per side: 2 for 16 px patches)."""

from __future__ import annotations

import math

import torch

from mae_zoo.core.types import Layout
from mae_zoo.masks.base import MaskConfigError, MaskGenerator


class SimMIMMask(MaskGenerator):
    layouts = ("grid:h,w",)

    def __init__(self, ratio: float = 0.6, cell: int = 2) -> None:
        super().__init__(ratio)
        self.cell = int(cell)
        if self.cell < 1:
            raise MaskConfigError(f"mask.cell must be a positive number of tokens per side, got {cell}")

    def cells(self, layout: Layout) -> tuple[int, int]:
        h, w = layout.shape
        if h % self.cell or w % self.cell:
            raise MaskConfigError(
                f"mask.cell={self.cell} does not divide the token grid {h}x{w}; use a divisor of both sides "
                f"(SimMIM: 32 px cells = 32 / patch_size tokens)"
            )
        return h // self.cell, w // self.cell

    def check(self, layout: Layout) -> None:
        super().check(layout)
        self.cells(layout)

    def num_hidden_cells(self, num_cells: int) -> int:
        """SimMIM's count: ``ceil(cells * ratio)``."""
        return math.ceil(num_cells * self.ratio)

    def num_visible(self, num_tokens: int) -> int:
        cells = num_tokens // (self.cell * self.cell)
        return (cells - self.num_hidden_cells(cells)) * self.cell * self.cell

    def generate(self, layout: Layout, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        ch, cw = self.cells(layout)
        order = torch.rand(batch_size, ch * cw, generator=generator).argsort(dim=1)
        hidden = torch.zeros(batch_size, ch * cw, dtype=torch.bool)
        hidden.scatter_(1, order[:, : self.num_hidden_cells(ch * cw)], True)
        grid = hidden.view(batch_size, ch, cw)
        grid = grid.repeat_interleave(self.cell, dim=1).repeat_interleave(self.cell, dim=2)
        return grid.reshape(batch_size, -1)

    def __repr__(self) -> str:
        return f"{self.name}(ratio={self.ratio}, cell={self.cell})"
