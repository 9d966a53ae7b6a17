"""ColorMAE (Hinojosa et al., ECCV 2024): masks from filtered noise, thresholded to the exact ratio.

The paper ships pre-computed noise images; we generate them procedurally from white noise with
Gaussian filters in token units: red = low-pass, blue = high-pass, green = band-pass (difference of
two blurs), purple = white - green (low + high). The ``keep`` tokens with the largest filtered value
stay visible (top-k), so every sample has exactly ``int(L*(1-r))`` visible tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mae_zoo.core.types import Layout
from mae_zoo.masks.base import MaskConfigError, MaskGenerator, mask_from_scores

COLORS = ("red", "green", "blue", "purple")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) with reflect padding."""
    radius = max(1, math.ceil(3 * sigma))
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (coords / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = x[:, None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x[:, 0]


class ColoredNoiseMask(MaskGenerator):
    layouts = ("grid:h,w",)

    def __init__(
        self,
        ratio: float = 0.75,
        color: str = "green",
        sigma_low: float = 1.0,
        sigma_high: float = 2.0,
        margin: int = 4,
    ) -> None:
        super().__init__(ratio)
        if color not in COLORS:
            raise MaskConfigError(f"mask.color must be one of {list(COLORS)}, got '{color}'")
        if not 0 < sigma_low < sigma_high:
            raise MaskConfigError(f"need 0 < mask.sigma_low < mask.sigma_high, got {sigma_low}, {sigma_high}")
        self.color = color
        self.sigma_low = float(sigma_low)
        self.sigma_high = float(sigma_high)
        self.margin = int(margin)  # generate a larger field and crop, so borders are not special

    def noise(self, layout: Layout, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """Filtered noise of shape (B, H, W)."""
        height, width = layout.shape
        m = self.margin
        white = torch.randn(batch_size, height + 2 * m, width + 2 * m, generator=generator)
        if self.color == "red":
            field = gaussian_blur(white, self.sigma_high)
        elif self.color == "blue":
            field = white - gaussian_blur(white, self.sigma_low)
        else:
            band = gaussian_blur(white, self.sigma_low) - gaussian_blur(white, self.sigma_high)
            field = band if self.color == "green" else white - band
        return field[:, m : m + height, m : m + width]

    def generate(self, layout: Layout, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        field = self.noise(layout, batch_size, generator).flatten(1)
        # Largest values stay visible: negate so that mask_from_scores keeps the smallest.
        return mask_from_scores(-field, self.num_visible(layout.num_tokens))

    def __repr__(self) -> str:
        return f"{self.name}(ratio={self.ratio}, color={self.color})"
