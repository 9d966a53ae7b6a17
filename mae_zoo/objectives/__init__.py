"""Objectives, built from the ``objective`` config group: one file per family, one YAML per option."""

from mae_zoo.objectives.base import Objective, masked_mean, normalize_per_token
from mae_zoo.objectives.chamfer import ChamferLoss
from mae_zoo.objectives.cosine import ScaledCosineError
from mae_zoo.objectives.mse import MaskedMSE, TubeNormalizedMSE

__all__ = [
    "ChamferLoss",
    "MaskedMSE",
    "Objective",
    "ScaledCosineError",
    "TubeNormalizedMSE",
    "masked_mean",
    "normalize_per_token",
]
