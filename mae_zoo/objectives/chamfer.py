"""Chamfer distance between predicted and true point groups (Point-MAE)."""

from __future__ import annotations

import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.nets.point_ops import chamfer_l1, chamfer_l2
from mae_zoo.objectives.base import Objective

KINDS = ("cdl2", "cdl1")


class ChamferLoss(Objective):
    """Chamfer distance between each scored group's predicted points and its true points, both
    flattened per token as ``group_size * 3`` relative coordinates.

    ``kind``: ``cdl2`` (default, Point-MAE's ``ChamferDistanceL2``: mean squared nearest distance both
    ways, summed, no 1/2) or ``cdl1`` (``ChamferDistanceL1``: square-rooted, the two means averaged).
    The loss is the mean over the scored groups of the batch, which equals the official mean over all
    masked groups' points (every group has ``group_size`` points). ``scale`` multiplies it
    (Point-CMAE weighs its reconstruction terms by 1000)."""

    def __init__(self, kind: str = "cdl2", scale: float = 1.0, positions: str = "hidden") -> None:
        super().__init__(positions)
        if kind not in KINDS:
            raise ConfigError(f"objective.kind must be one of {list(KINDS)}, got '{kind}'")
        self.kind, self.scale = kind, float(scale)

    def per_group(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Chamfer distance of every row of (M, k*3) predictions against (M, k*3) targets, (M,)."""
        a, b = pred.float().unflatten(-1, (-1, 3)), target.float().unflatten(-1, (-1, 3))
        fn = chamfer_l2 if self.kind == "cdl2" else chamfer_l1
        return fn(a, b, reduction="none")

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, score: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        target = target.float()
        if not bool(score.any()):
            return pred.sum() * 0.0, target
        loss = self.per_group(pred[score], target[score]).mean()
        return self.scale * loss, target
