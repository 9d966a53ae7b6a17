"""VideoMAE V2 running-cell mask (Wang et al. 2023), used as the *decoder* mask of dual masking.

A 2x2 spatial cell holds a queue of four entries, ``int(4*ratio)`` "drop" then the rest "keep";
the queue rotates by one entry per temporal slot and the cell is tiled over the (h, w) grid. One
of the four starting phases is drawn per sample. So every slot keeps exactly ``1 - int(4r)/4`` of
its positions, the pattern has period 4 in time, and over four slots each position is kept the
same number of times. True = the decoder does *not* reconstruct that position.

``ratio=0`` switches decoder masking off: the decoder then reconstructs exactly the positions the
encoder hid, which is VideoMAE V1 (the official V2 code does the same when its decoder ratio is 0).
"""

from __future__ import annotations

import torch

from mae_zoo.core.types import Layout
from mae_zoo.masks.base import MaskConfigError, MaskGenerator

CELL = 4  # entries in the 2x2 cell's queue


class RunningCellMask(MaskGenerator):
    layouts = ("grid:t,h,w",)

    def __init__(self, ratio: float = 0.5) -> None:
        ratio = float(ratio)
        drops = int(CELL * ratio)
        if ratio != 0.0 and not 0 < drops < CELL:
            raise MaskConfigError(
                f"decoder_mask.ratio={ratio} gives {drops} of 4 cell entries dropped; "
                "use 0 (off, V1) or a ratio in [0.25, 1) such as 0.5"
            )
        self.ratio = ratio
        self.drops = drops

    @property
    def enabled(self) -> bool:
        return self.drops > 0

    def check(self, layout: Layout) -> None:
        if not self.supports(layout):
            super().check(layout)  # raises the layout error
        _, h, w = layout.shape
        if self.enabled and (h % 2 or w % 2):
            raise MaskConfigError(
                f"running-cell masking tiles a 2x2 cell, so it needs an even (h, w) token grid; got {layout.shape}"
            )

    def generate(self, layout: Layout, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        if not self.enabled:
            raise RuntimeError("RunningCellMask(ratio=0) is off; the model reconstructs the encoder-hidden positions")
        t, h, w = layout.shape
        queue = torch.tensor([True] * self.drops + [False] * (CELL - self.drops))
        phase = torch.randint(0, CELL, (batch_size,), generator=generator)
        # Entry of the 2x2 cell at (i, j): 2*(i%2) + j%2; the queue advances one step per slot,
        # starting one step in (the official generator advances before it reads the first slot).
        rows, cols = torch.arange(h) % 2, torch.arange(w) % 2
        entry = (2 * rows[:, None] + cols[None, :]).reshape(1, 1, h * w)
        step = torch.arange(t).reshape(1, t, 1) + 1
        index = (entry + step + phase.reshape(batch_size, 1, 1)) % CELL
        return queue[index].reshape(batch_size, t * h * w)

    def __repr__(self) -> str:
        return f"{self.name}(ratio={self.ratio})"
