"""BEiT blockwise masking (Bao et al. 2022), generalised from 14x14 to any 2-D token grid."""

from __future__ import annotations

import math
import random

import torch

from mae_zoo.core.types import Layout
from mae_zoo.masks.base import MaskConfigError, MaskGenerator


class BlockMask(MaskGenerator):
    """Mask rectangular blocks until ``int(L*ratio)`` tokens are hidden or a block cannot be placed.

    Each block has a target area U[min_block, remaining] and a log-uniform aspect ratio in
    [min_aspect, 1/min_aspect]; it must fit strictly inside the grid and add between 1 and
    ``remaining`` new tokens, with up to 10 attempts per block. The count can end below the target
    (never above), so it varies per sample. ``exact``: keep placing blocks until the count is exactly
    the target, as CAE's copy of the generator does (``while mask_count != num_masking_patches``).
    """

    layouts = ("grid:h,w", "grid:t,f")
    exact_count = False

    def __init__(
        self,
        ratio: float = 0.4,
        min_block: int = 16,
        min_aspect: float = 0.3,
        max_attempts: int = 10,
        exact: bool = False,
    ):
        super().__init__(ratio)
        self.exact_count = bool(exact)
        if min_block < 1:
            raise MaskConfigError(f"mask.min_block must be >= 1, got {min_block}")
        if not 0.0 < min_aspect <= 1.0:
            raise MaskConfigError(f"mask.min_aspect must be in (0, 1], got {min_aspect}")
        self.min_block = int(min_block)
        self.log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
        self.max_attempts = int(max_attempts)

    def check(self, layout: Layout) -> None:
        super().check(layout)
        side = math.ceil(math.sqrt(self.min_block))
        if any(s <= side for s in layout.shape):
            raise MaskConfigError(
                f"block mask needs a grid larger than {side}x{side} tokens for min_block={self.min_block}; "
                f"got {layout.shape}. Lower mask.min_block or use more tokens."
            )
        if self.num_masked(layout) < 1:
            raise MaskConfigError(f"mask.ratio={self.ratio} masks no token of {layout.num_tokens}")

    def num_masked(self, layout: Layout) -> int:
        return int(layout.num_tokens * self.ratio)

    def generate(self, layout: Layout, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        height, width = layout.shape
        target = self.num_masked(layout)
        # One python RNG per batch, seeded from the torch generator: BEiT's reference uses `random`.
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        masks = torch.zeros(batch_size, height, width, dtype=torch.bool)
        for b in range(batch_size):
            self._fill(masks[b], target, rng)
        return masks.flatten(1)

    def _fill(self, mask: torch.Tensor, target: int, rng: random.Random) -> None:
        count, failures = 0, 0
        while count < target:
            added = self._place_block(mask, target - count, rng)
            if added == 0:
                if not self.exact_count:
                    break
                # CAE retries without limit; a one-token block always fits in the end, so this cap
                # only turns a would-be endless loop into an error.
                failures += 1
                if failures > 10_000:
                    raise RuntimeError(f"block mask could not reach exactly {target} hidden tokens")
                continue
            count += added

    def _place_block(self, mask: torch.Tensor, remaining: int, rng: random.Random) -> int:
        height, width = mask.shape
        for _ in range(self.max_attempts):
            area = rng.uniform(self.min_block, remaining)
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if w < width and h < height:
                top = rng.randint(0, height - h)
                left = rng.randint(0, width - w)
                window = mask[top : top + h, left : left + w]
                new = h * w - int(window.sum())
                if 0 < new <= remaining:
                    window.fill_(True)
                    return new
        return 0
