"""Masked mean squared error on pixels: MAE's per-token normalised target and VideoMAE's per-tube,
per-channel one."""

from __future__ import annotations

import torch

from mae_zoo.objectives.base import Objective, masked_mean, normalize_per_token


class MaskedMSE(Objective):
    """MSE on the scored tokens, with MAE's optional per-token target normalisation (``norm_pix_loss``:
    unbiased variance, eps inside the square root, as facebookresearch/mae)."""

    def __init__(self, norm_pix_loss: bool = True, eps: float = 1e-6, positions: str = "hidden") -> None:
        super().__init__(positions)
        self.norm_pix_loss = norm_pix_loss
        self.eps = eps

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, score: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        target = target.float()
        if self.norm_pix_loss:
            target = normalize_per_token(target, self.eps)
        return masked_mean(self.error(pred.float(), target), score), target

    def error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, L) per-token error: the mean squared difference over the token's values."""
        return (pred - target).pow(2).mean(dim=-1)

    def denormalize(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self.norm_pix_loss:
            return pred
        target = target.float()
        return pred * (target.var(-1, keepdim=True) + self.eps).sqrt() + target.mean(-1, keepdim=True)


class TubeNormalizedMSE(Objective):
    """VideoMAE's target and loss: per tube and per channel ``(x - mean) / (std + eps)`` (unbiased
    std, eps outside the square root), then the mean squared error over the scored tokens.
    ``channels``: the clip's channels, the fastest index of a flattened tube."""

    def __init__(
        self, channels: int = 3, norm_pix_loss: bool = True, eps: float = 1e-6, positions: str = "hidden"
    ) -> None:
        super().__init__(positions)
        self.channels, self.norm_pix_loss, self.eps = channels, norm_pix_loss, eps

    def stats(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per tube, per channel mean and (std + eps), broadcastable to the flattened target."""
        x = target.float().unflatten(-1, (-1, self.channels))  # (B, L, tubelet*p*p, C)
        mean, std = x.mean(dim=-2, keepdim=True), x.var(dim=-2, keepdim=True).sqrt() + self.eps
        return mean.expand_as(x).flatten(-2), std.expand_as(x).flatten(-2)

    def normalize(self, target: torch.Tensor) -> torch.Tensor:
        mean, std = self.stats(target)
        return (target.float() - mean) / std

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, score: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        target = self.normalize(target) if self.norm_pix_loss else target.float()
        return masked_mean(self.error(pred.float(), target), score), target

    def error(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, L) per-token error: the mean squared difference over the token's values."""
        return (pred - target).pow(2).mean(dim=-1)

    def denormalize(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self.norm_pix_loss:
            return pred
        mean, std = self.stats(target)
        return pred * std + mean
