"""Mask generators: a layout and a ``torch.Generator`` in, a boolean mask out (True = hidden).

Masks live outside the encoder (as in lightly): the same encoder runs under any mask, and a mask
can be handed to ``model(batch, mask=...)`` from outside.
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod

import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Layout


class MaskConfigError(ConfigError):
    """A mask that does not fit the data or has an invalid parameter; raised before training."""


class MaskLayoutError(MaskConfigError):
    """The mask does not apply to this modality's token layout."""

    def __init__(self, message: str, layout: Layout) -> None:
        super().__init__(message)
        self.layout = layout


class MaskGenerator(ABC):
    """Base class. Subclasses set ``layouts`` (glob patterns over ``Layout.name``) and ``exact_count``.

    ``exact_count`` is True when every sample gets exactly ``num_masked(L)`` hidden tokens; masks
    with a variable count (BEiT blocks) are still valid for token-dropping encoders, which pad the
    visible set per batch and ignore the padding in attention.
    """

    layouts: tuple[str, ...] = ("grid:*", "points")
    exact_count: bool = True

    def __init__(self, ratio: float) -> None:
        ratio = float(ratio)
        if not 0.0 < ratio < 1.0:
            raise MaskConfigError(f"mask.ratio must be in the open interval (0, 1), got {ratio}")
        self.ratio = ratio

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def enabled(self) -> bool:
        """False for a mask that is switched off by its parameters (a decoder mask at ratio 0): the
        model then behaves as if none were configured."""
        return True

    def supports(self, layout: Layout) -> bool:
        return any(fnmatch.fnmatchcase(layout.name, pattern) for pattern in self.layouts)

    def check(self, layout: Layout) -> None:
        """Raise ``MaskConfigError`` when this mask cannot be used with ``layout``."""
        if not self.supports(layout):
            raise MaskLayoutError(
                f"mask {self.name} does not fit this data's token layout '{layout.name}' "
                f"(it supports {list(self.layouts)})",
                layout,
            )
        if self.num_visible(layout.num_tokens) < 1:
            raise MaskConfigError(
                f"mask.ratio={self.ratio} leaves no visible token out of {layout.num_tokens}; lower it"
            )

    def num_visible(self, num_tokens: int) -> int:
        """Official MAE rule: keep ``int(L * (1 - ratio))`` tokens."""
        return int(num_tokens * (1.0 - self.ratio))

    def __call__(self, layout: Layout, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        mask = self.generate(layout, batch_size, generator)
        if mask.shape != (batch_size, layout.num_tokens) or mask.dtype != torch.bool:
            raise RuntimeError(f"{self.name} returned {tuple(mask.shape)} {mask.dtype}")
        return mask

    @abstractmethod
    def generate(self, layout: Layout, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """Return a (batch_size, layout.num_tokens) bool tensor on the CPU, True = hidden."""

    def __repr__(self) -> str:
        return f"{self.name}(ratio={self.ratio})"


def mask_from_scores(scores: torch.Tensor, num_visible: int) -> torch.Tensor:
    """Keep the ``num_visible`` tokens with the *smallest* score per row (MAE's argsort rule)."""
    ids_shuffle = torch.argsort(scores, dim=1)
    mask = torch.ones_like(scores, dtype=torch.bool)
    mask.scatter_(1, ids_shuffle[:, :num_visible], False)
    return mask
