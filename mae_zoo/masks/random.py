"""MAE's uniform random masking (He et al. 2022)."""

from __future__ import annotations

import torch

from mae_zoo.core.types import Layout
from mae_zoo.masks.base import MaskGenerator, mask_from_scores


class RandomMask(MaskGenerator):
    """Per sample, argsort U[0,1) noise and keep the ``int(L*(1-r))`` tokens with the smallest noise.
    On point groups the count is Point-MAE's: exactly ``int(r*G)`` hidden (38 of 64 at 0.6, not 39)."""

    layouts = ("grid:*", "points")

    def generate(self, layout: Layout, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        noise = torch.rand(batch_size, layout.num_tokens, generator=generator)
        if layout.kind == "points":
            return mask_from_scores(noise, layout.num_tokens - int(self.ratio * layout.num_tokens))
        return self.from_noise(noise)

    def from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """The mask the official code (and HF ``ViTMAEForPreTraining(noise=...)``) draws from ``noise``."""
        return mask_from_scores(noise, self.num_visible(noise.shape[1]))
