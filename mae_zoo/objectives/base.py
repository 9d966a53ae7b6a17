"""What every objective shares: the call contract, the scored positions and the masked mean.

An objective is an ``nn.Module`` built from the ``objective`` config group (``conf/objective``):
``objective(pred, target, score) -> (loss, target as compared)``, where ``score`` (B, L) marks the
positions it scores. ``positions`` (hidden | visible | all) says which positions those are, so a
method that scores every token (G2SD) or only the visible ones (MaskAlign) is a config value.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import POSITIONS


def normalize_per_token(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE ``norm_pix_loss`` target: per token, (x - mean) / sqrt(var + eps), unbiased variance."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def masked_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of a (B, L) per-token loss over the positions in ``mask``, over the whole batch."""
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp_min(1.0)


class Objective(torch.nn.Module, ABC):
    """Base of every objective. ``positions``: which positions are scored (default: the hidden ones)."""

    def __init__(self, positions: str = "hidden") -> None:
        super().__init__()
        if positions not in POSITIONS:
            raise ConfigError(f"objective.positions must be one of {list(POSITIONS)}, got '{positions}'")
        self.positions = positions

    @classmethod
    def spec(cls, **kwargs: Any) -> dict[str, Any]:
        """The config dict that builds this objective, e.g. ``MaskedMSE.spec(norm_pix_loss=False)``."""
        return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **kwargs}

    @abstractmethod
    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, score: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scalar loss over the ``score`` positions, the target as the loss compared it)."""

    def denormalize(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Predictions in the units of the raw ``target``, for pictures (default: they already are).
        Objectives that normalise the target undo it with the true target's statistics, the usual MAE
        visualisation (it uses information the model did not see)."""
        return pred
