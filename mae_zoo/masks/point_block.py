"""Point-MAE's block masking: the groups whose centres are nearest one random centre."""

from __future__ import annotations

import torch

from mae_zoo.core.types import Layout
from mae_zoo.masks.base import MaskConfigError, MaskGenerator


class PointBlockMask(MaskGenerator):
    """Per sample, pick a centre uniformly at random and hide the ``int(ratio * G)`` groups whose
    centres are nearest to it (Euclidean; the picked centre itself first), as the official
    ``_mask_center_block``. Needs the group centres: ``layout.extra["centers"]`` (B, G, 3), which the
    point tokenizer puts there."""

    layouts = ("points",)

    def __init__(self, ratio: float = 0.6) -> None:
        super().__init__(ratio)

    def check(self, layout: Layout) -> None:
        super().check(layout)
        if int(self.ratio * layout.num_tokens) < 1:
            raise MaskConfigError(f"mask.ratio={self.ratio} hides no group of {layout.num_tokens}")

    def num_visible(self, num_tokens: int) -> int:
        return num_tokens - int(self.ratio * num_tokens)  # official: int(ratio * G) hidden

    def generate(self, layout: Layout, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        centers = layout.extra.get("centers")
        if centers is None:
            raise MaskConfigError("mask=point_block needs the group centres (layout.extra['centers'])")
        centers = centers.detach().float().cpu()
        if centers.shape[:2] != (batch_size, layout.num_tokens):
            raise ValueError(f"centres {tuple(centers.shape)} do not match ({batch_size}, {layout.num_tokens})")
        seed = torch.randint(0, layout.num_tokens, (batch_size,), generator=generator)
        dist = (centers - centers[torch.arange(batch_size), seed][:, None]).pow(2).sum(-1)
        order = torch.argsort(dist, dim=1, stable=True)
        mask = torch.zeros(batch_size, layout.num_tokens, dtype=torch.bool)
        mask.scatter_(1, order[:, : int(self.ratio * layout.num_tokens)], True)
        return mask
