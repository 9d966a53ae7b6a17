"""MixedAE's patch-wise mixing (Chen et al., CVPR 2023), written as a mask over the batch.

Consecutive samples form groups of ``1 / r`` images (``r``: the mixing ratio, 0.25 in the paper). Each
group becomes ONE mixed image: every position takes the patch of exactly one group member, each member
owning ``r`` of the positions (a random permutation of balanced source labels). Seen from one source image
this is a mask that keeps ``r`` of its patches and hides the rest, so the shared path (decoder, objective)
reconstructs each source's own hidden patches: the "unmixing". The encoder that merges the group's visible
tokens into one sequence is :class:`mae_zoo.nets.homologous.HomologousViTEncoder`.

Choice (the paper gives no code): one mixed image per group, so the encoder processes ``B * r`` full
sequences, the same token count as MAE at mask ratio ``1 - r``. A batch that is not a multiple of the
group size is split into ``ceil(B / group)`` groups as even as possible (sizes differ by at most one, never
below 2), so every sample is mixed and no segment index exceeds ``group - 1``.
"""

from __future__ import annotations

import math

import torch

from mae_zoo.core.types import Layout
from mae_zoo.masks.base import MaskConfigError, MaskGenerator


def group_sizes(batch_size: int, group: int) -> list[int]:
    """Sizes of the consecutive groups a batch is mixed in: ``ceil(B / group)`` groups, as even as possible."""
    if batch_size < 2:
        raise ValueError(f"mixing needs at least 2 samples per batch, got {batch_size}")
    n = math.ceil(batch_size / group)
    base, extra = divmod(batch_size, n)
    return [base + 1 if i < extra else base for i in range(n)]


def group_index(batch_size: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(group id, slot within the group) of every sample, both (B,) long."""
    sizes = group_sizes(batch_size, group)
    gid = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    starts = torch.cumsum(torch.tensor([0, *sizes[:-1]]), 0)
    return gid, torch.arange(batch_size) - starts[gid]


def draw_sources(batch_size: int, num_tokens: int, group: int, generator: torch.Generator | None) -> torch.Tensor:
    """(num_groups, L) long: which slot of the group each position of each mixed image takes its patch from.
    Balanced: slot s owns ``ceil`` or ``floor`` of ``L / size`` positions, placed uniformly at random."""
    rows = []
    for size in group_sizes(batch_size, group):
        labels = torch.arange(num_tokens) % size
        rows.append(labels[torch.randperm(num_tokens, generator=generator)])
    return torch.stack(rows)


def sources_from_mask(mask: torch.Tensor, group: int) -> torch.Tensor:
    """Invert :class:`MixingMask`: (num_groups, L) slot of the source at each position of each mixed image.
    Raises when ``mask`` is not a mixing (each position visible in exactly one member of its group)."""
    gid, slot = group_index(mask.shape[0], group)
    gid, slot = gid.to(mask.device), slot.to(mask.device)
    visible = (~mask).long()
    count = torch.zeros(int(gid.max()) + 1, mask.shape[1], dtype=torch.long, device=mask.device)
    count.index_add_(0, gid, visible)
    if not bool((count == 1).all()):
        raise ValueError(
            "not a mixing mask: every position must be visible in exactly one sample of its group of "
            f"{group} consecutive samples (use mask=mixing)"
        )
    sources = torch.zeros_like(count)
    return sources.index_add_(0, gid, visible * slot[:, None])


class MixingMask(MaskGenerator):
    """``mixing_ratio`` r: each source keeps ``r`` of its patches in the mixed image; ``1 / r`` images are
    mixed (an integer, at least 2). Hidden ratio per source: ``1 - r``."""

    layouts = ("grid:h,w",)
    exact_count = False  # sizes differ by one when the group does not divide L (7 x 7 grid, 4 sources)

    def __init__(self, mixing_ratio: float = 0.25) -> None:
        r = float(mixing_ratio)
        group = round(1.0 / r) if r > 0 else 0
        if not 0.0 < r <= 0.5 or abs(group * r - 1.0) > 1e-6:
            raise MaskConfigError(
                f"mask.mixing_ratio must be 1/n for an integer n >= 2 (0.5, 0.25, 0.125, ...), got {mixing_ratio}"
            )
        super().__init__(1.0 - r)
        self.mixing_ratio, self.group = r, group

    def num_visible(self, num_tokens: int) -> int:
        return num_tokens // self.group

    def generate(self, layout: Layout, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        sources = draw_sources(batch_size, layout.num_tokens, self.group, generator)
        gid, slot = group_index(batch_size, self.group)
        return sources[gid] != slot[:, None]

    def __repr__(self) -> str:
        return f"{self.name}(mixing_ratio={self.mixing_ratio})"
