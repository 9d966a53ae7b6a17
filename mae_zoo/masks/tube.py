"""VideoMAE tube masking (Tong et al. 2022): one spatial random mask repeated over every time slot."""

from __future__ import annotations

import torch

from mae_zoo.core.types import Layout
from mae_zoo.masks.base import MaskGenerator, mask_from_scores


class TubeMask(MaskGenerator):
    """Exactly ``int(h*w*ratio)`` spatial cells hidden, identical for every temporal slot."""

    layouts = ("grid:t,h,w",)

    def num_visible(self, num_tokens: int) -> int:  # counted per frame, as the official generator
        return num_tokens - int(num_tokens * self.ratio)

    def generate(self, layout: Layout, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        t, h, w = layout.shape
        spatial = mask_from_scores(torch.rand(batch_size, h * w, generator=generator), self.num_visible(h * w))
        return spatial[:, None, :].expand(batch_size, t, h * w).reshape(batch_size, t * h * w)
