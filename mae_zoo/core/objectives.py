"""Reconstruction objectives. Each returns (loss, normalised target)."""
from __future__ import annotations

import torch


def normalize_per_token(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE ``norm_pix_loss`` target: per token, (x - mean) / sqrt(var + eps), unbiased variance."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of a (B, L) per-token loss over the hidden tokens of the whole batch."""
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp_min(1.0)


class MaskedMSE(torch.nn.Module):
    """MSE on hidden tokens only, with MAE's optional per-token target normalisation."""

    def __init__(self, norm_pix_loss: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm_pix_loss = norm_pix_loss
        self.eps = eps

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        target = target.float()
        if self.norm_pix_loss:
            target = normalize_per_token(target, self.eps)
        per_token = (pred.float() - target).pow(2).mean(dim=-1)
        return masked_mean(per_token, mask), target


class ScaledCosineError(torch.nn.Module):
    """GraphMAE's scaled cosine error on hidden tokens: mean over them of ``(1 - cos(pred, target))^alpha``."""

    def __init__(self, alpha: float = 2.0) -> None:
        super().__init__()
        if alpha < 1:
            raise ValueError(f"alpha (the SCE scaling exponent) must be >= 1, got {alpha}")
        self.alpha = float(alpha)

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pred = torch.nn.functional.normalize(pred.float(), p=2, dim=-1)
        target = torch.nn.functional.normalize(target.float(), p=2, dim=-1)
        per_token = (1.0 - (pred * target).sum(dim=-1)).pow(self.alpha)
        return masked_mean(per_token, mask), target
