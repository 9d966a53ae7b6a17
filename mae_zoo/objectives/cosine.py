"""GraphMAE's scaled cosine error (Hou et al. 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mae_zoo.core.errors import ConfigError
from mae_zoo.objectives.base import Objective, masked_mean


class ScaledCosineError(Objective):
    """Mean over the scored tokens of ``(1 - cos(pred, target))^alpha``; ``alpha`` >= 1 down-weights
    the easy tokens, whose cosine is already close to 1."""

    def __init__(self, alpha: float = 2.0, positions: str = "hidden") -> None:
        super().__init__(positions)
        if alpha < 1:
            raise ConfigError(f"objective.alpha (the SCE scaling exponent) must be >= 1, got {alpha}")
        self.alpha = float(alpha)

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, score: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pred = F.normalize(pred.float(), p=2, dim=-1)
        target = F.normalize(target.float(), p=2, dim=-1)
        per_token = (1.0 - (pred * target).sum(dim=-1)).pow(self.alpha)
        return masked_mean(per_token, score), target
