"""ChA-MAEViT's dynamic channel-patch masking (DCP; Chau et al., NeurIPS 2025, chaudatascience/cha_mae_vit).

Multi-channel images are tokenised per channel, on a ``grid:c,h,w`` layout (C channels of h x w
patches, channel outermost). Each step draws one strategy for the whole batch:

- ``patch`` (probability ``p_patch``): in every channel, keep ``int((1 - ratio) * h * w)`` random
  patches, independently per sample and per channel;
- ``channel`` (probability ``p_channel``): hide ``k`` whole channels, k ~ U{0, ..., C-1}
  (U{1, ..., C-1} with ``at_least_one_channel``), the same channels for the whole batch (the
  official code's rule when every image has the same channels);
- ``both`` (the remaining probability): the union of the two, so the kept tokens are the
  ``int((1 - ratio) * h * w)`` kept patches of each of the C - k kept channels.

Official defaults: ``p_patch = p_channel = 0.5`` and ``ratio = 0.75`` ("alternate" masking; CHAMMI);
``p_patch = p_channel = 0`` with ``ratio = 0.25`` is the "combination" masking (So2Sat).
A channel-only step with k = 0 hides nothing: the official code then skips the reconstruction loss,
and here the objective scores no position (a zero loss), which has the same effect.
"""

from __future__ import annotations

import torch

from mae_zoo.core.types import Layout
from mae_zoo.masks.base import MaskConfigError, MaskGenerator

STRATEGIES = ("patch", "channel", "both")


class ChannelPatchMask(MaskGenerator):
    """Dynamic channel-patch masking over a ``grid:c,h,w`` layout. ``ratio``: the per-channel patch
    ratio of the patch and both strategies. ``last_strategy`` names the strategy of the last draw."""

    layouts = ("grid:c,h,w",)
    exact_count = False  # the count changes from step to step (never within a batch)

    def __init__(
        self, ratio: float = 0.75, p_patch: float = 0.5, p_channel: float = 0.5, at_least_one_channel: bool = False
    ) -> None:
        super().__init__(ratio)
        p_patch, p_channel = float(p_patch), float(p_channel)
        if p_patch < 0 or p_channel < 0 or p_patch + p_channel > 1 + 1e-9:
            raise MaskConfigError(
                f"mask.p_patch and mask.p_channel must be >= 0 with a sum <= 1 (the rest is 'both'), "
                f"got {p_patch} and {p_channel}"
            )
        self.p_patch, self.p_channel = p_patch, p_channel
        self.at_least_one_channel = bool(at_least_one_channel)
        self.last_strategy: str | None = None

    def check(self, layout: Layout) -> None:
        super().check(layout)
        channels, h, w = layout.shape
        if self.keep_per_channel(h * w) < 1:
            raise MaskConfigError(f"mask.ratio={self.ratio} keeps no patch of a channel of {h * w} patches; lower it")
        if self.at_least_one_channel and channels < 2 and self.p_patch < 1:
            raise MaskConfigError(
                "mask.at_least_one_channel=true hides a whole channel, but the data has one channel: "
                "nothing would be left to see"
            )

    def num_visible(self, num_tokens: int) -> int:
        # The base class's start-up check asks for at least one visible token; the per-channel
        # count is checked in check(), where the layout is known.
        return max(1, int(num_tokens * (1.0 - self.ratio)))

    def keep_per_channel(self, patches: int) -> int:
        """Official rule: ``int((1 - ratio) * P)`` patches kept in each channel."""
        return int((1.0 - self.ratio) * patches)

    def draw_strategy(self, generator: torch.Generator | None) -> str:
        u = float(torch.rand((), generator=generator))
        if u < self.p_patch:
            return "patch"
        if u < self.p_patch + self.p_channel:
            return "channel"
        return "both"

    def patch_mask(
        self, batch_size: int, channels: int, patches: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        """(B, C, P) True = hidden: per sample and channel, all but ``keep_per_channel`` random patches."""
        noise = torch.rand(batch_size, channels, patches, generator=generator)
        ids = noise.argsort(dim=-1)[..., : self.keep_per_channel(patches)]
        mask = torch.ones(batch_size, channels, patches, dtype=torch.bool)
        return mask.scatter_(-1, ids, False)

    def channel_mask(self, batch_size: int, channels: int, generator: torch.Generator | None) -> torch.Tensor:
        """(B, C) True = hidden: k ~ U{0 (or 1), ..., C-1} channels, the same for the whole batch."""
        low = 1 if self.at_least_one_channel else 0
        k = int(torch.randint(low, max(low + 1, channels), (), generator=generator)) if channels > 1 else 0
        hidden = torch.zeros(channels, dtype=torch.bool)
        hidden[torch.randperm(channels, generator=generator)[:k]] = True
        return hidden.expand(batch_size, -1).clone()

    def generate(self, layout: Layout, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        channels, h, w = layout.shape
        strategy = self.draw_strategy(generator)
        self.last_strategy = strategy
        mask = torch.zeros(batch_size, channels, h * w, dtype=torch.bool)
        if strategy in ("patch", "both"):
            mask |= self.patch_mask(batch_size, channels, h * w, generator)
        if strategy in ("channel", "both"):
            mask |= self.channel_mask(batch_size, channels, generator)[..., None]
        return mask.reshape(batch_size, -1)

    def __repr__(self) -> str:
        return (
            f"{self.name}(ratio={self.ratio}, p_patch={self.p_patch}, p_channel={self.p_channel}, "
            f"at_least_one_channel={self.at_least_one_channel})"
        )
