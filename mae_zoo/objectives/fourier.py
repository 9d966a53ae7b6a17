"""MSE plus a Fourier-magnitude term, ChA-MAEViT's reconstruction loss (official ``FourierLoss`` from
Recursion's channel-agnostic MAE): ``(1 - w) * MSE + w * L1(|FFT2(pred)|, |FFT2(target)|)``, both on
the scored tokens, ``w = mae_recon_fourier_lambda = 0.01``.

Each token is one channel's p x p patch; its 2-D FFT is taken per patch. (The official code views
the flattened reconstruction as (B, -1, sqrt(P), sqrt(P)) planes, which mixes pixels of different
patches into one plane; the per-patch transform is what that reshape aims at and keeps the term
local to the scored tokens.) The official overall factor ``mae_lambda = 0.99`` only rescales the
loss, which AdamW is invariant to, so it is left out.
"""

from __future__ import annotations

import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.objectives.mse import MaskedMSE


class MaskedMSEFourier(MaskedMSE):
    """``norm_pix_loss`` MSE (as :class:`MaskedMSE`) mixed with the L1 distance of per-patch Fourier
    magnitudes. ``patch_size``: the side of the square patch a token holds (tokens of ``patch_size²``
    values, one channel)."""

    def __init__(
        self,
        patch_size: int,
        fourier_weight: float = 0.01,
        norm_pix_loss: bool = True,
        eps: float = 1e-6,
        positions: str = "hidden",
    ) -> None:
        super().__init__(norm_pix_loss, eps, positions)
        if not 0.0 <= fourier_weight <= 1.0:
            raise ConfigError(f"objective.fourier_weight must be in [0, 1], got {fourier_weight}")
        self.patch_size, self.fourier_weight = int(patch_size), float(fourier_weight)

    def fourier_error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, L): mean L1 distance of the 2-D FFT magnitudes of each token's patch."""
        p = self.patch_size
        if pred.shape[-1] != p * p:
            raise ValueError(f"tokens of {pred.shape[-1]} values are not {p}x{p} single-channel patches")
        spectrum = lambda x: torch.fft.fft2(x.unflatten(-1, (p, p))).abs()  # noqa: E731
        return (spectrum(pred) - spectrum(target)).abs().flatten(-2).mean(dim=-1)

    def error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, L) per-token error: MSE and the Fourier term, mixed by ``fourier_weight``."""
        w = self.fourier_weight
        return (1 - w) * super().error(pred, target) + w * self.fourier_error(pred, target)
