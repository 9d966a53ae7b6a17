"""Objectives, built from the ``objective`` config group: one file per family, one YAML per option."""

from mae_zoo.objectives.base import Objective, masked_mean, normalize_per_token
from mae_zoo.objectives.chamfer import ChamferLoss
from mae_zoo.objectives.cosine import ScaledCosineError
from mae_zoo.objectives.l1 import MaskedL1
from mae_zoo.objectives.mse import MaskedMSE, TubeNormalizedMSE

__all__ = [
    "ChamferLoss",
    "MaskedL1",
    "MaskedMSE",
    "Objective",
    "ScaledCosineError",
    "TubeNormalizedMSE",
    "masked_mean",
    "normalize_per_token",
]
