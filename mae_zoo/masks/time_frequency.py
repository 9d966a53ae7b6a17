"""Audio-MAE's 2-D masking (``random_masking_2d``): hidden time rows and hidden frequency columns of
the spectrogram token grid (layout ``grid:t,f``), drawn independently; a token is visible only if
both its row and its column are kept."""

from __future__ import annotations

import torch

from mae_zoo.core.types import Layout
from mae_zoo.masks.base import MaskConfigError, MaskGenerator, MaskLayoutError, mask_from_scores


def kept_lines(num: int, ratio: float, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
    """(B, num) bool, True = kept: per sample exactly ``int(num * (1 - ratio))`` lines, MAE's argsort rule."""
    hidden = mask_from_scores(torch.rand(batch_size, num, generator=generator), int(num * (1.0 - ratio)))
    return ~hidden


class TimeFrequencyMask(MaskGenerator):
    """Keep ``int(T * (1 - time_ratio))`` time rows and ``int(F * (1 - freq_ratio))`` frequency columns
    (time noise drawn first, then frequency noise, as the official code); the encoder sees exactly
    keep_t x keep_f tokens. A ratio of 0 leaves that axis whole. Audio-MAE's defaults: 0.7 / 0.3."""

    layouts = ("grid:t,f",)

    def __init__(self, time_ratio: float = 0.7, freq_ratio: float = 0.3) -> None:
        time_ratio, freq_ratio = float(time_ratio), float(freq_ratio)
        for name, value in (("time_ratio", time_ratio), ("freq_ratio", freq_ratio)):
            if not 0.0 <= value < 1.0:
                raise MaskConfigError(f"mask.{name} must be in [0, 1), got {value}")
        if time_ratio == 0.0 and freq_ratio == 0.0:
            raise MaskConfigError("mask.time_ratio and mask.freq_ratio are both 0: nothing would be hidden")
        self.time_ratio, self.freq_ratio = time_ratio, freq_ratio
        self.ratio = 1.0 - (1.0 - time_ratio) * (1.0 - freq_ratio)  # nominal; the grid's int() rounding decides

    def kept_counts(self, layout: Layout) -> tuple[int, int]:
        t, f = layout.shape
        return int(t * (1.0 - self.time_ratio)), int(f * (1.0 - self.freq_ratio))

    def check(self, layout: Layout) -> None:
        if not self.supports(layout):
            raise MaskLayoutError(
                f"mask {self.name} does not fit this data's token layout '{layout.name}' "
                f"(it supports {list(self.layouts)})",
                layout,
            )
        keep_t, keep_f = self.kept_counts(layout)
        if keep_t * keep_f < 1:
            raise MaskConfigError(
                f"mask {self.name} keeps {keep_t} time rows x {keep_f} frequency columns of the "
                f"{layout.shape} grid: no visible token; lower the ratios"
            )

    def generate(self, layout: Layout, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        t, f = layout.shape
        rows = kept_lines(t, self.time_ratio, batch_size, generator)
        cols = kept_lines(f, self.freq_ratio, batch_size, generator)
        return ~(rows[:, :, None] & cols[:, None, :]).reshape(batch_size, t * f)

    def __repr__(self) -> str:
        return f"{self.name}(time_ratio={self.time_ratio}, freq_ratio={self.freq_ratio})"
