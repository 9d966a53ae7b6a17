"""SimMIM's loss (microsoft/SimMIM ``models/simmim.py``): L1 between predicted and true pixels of the
hidden patches, summed over pixels and channels and divided by (hidden pixels x channels), that is the
mean absolute error over every hidden pixel value; the target is the (dataset-normalised) image itself."""

from __future__ import annotations

import torch

from mae_zoo.objectives.mse import MaskedMSE


class MaskedL1(MaskedMSE):
    """:class:`MaskedMSE` with an absolute error; no per-patch normalisation by default (SimMIM)."""

    def __init__(self, norm_pix_loss: bool = False, eps: float = 1e-6, positions: str = "hidden") -> None:
        super().__init__(norm_pix_loss, eps, positions)

    def error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target).abs().mean(dim=-1)
