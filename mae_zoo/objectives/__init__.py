"""Objectives, built from the ``objective`` config group: one file per family, one YAML per option."""

from mae_zoo.objectives.base import Objective, masked_mean, normalize_per_token
from mae_zoo.objectives.cosine import ScaledCosineError
from mae_zoo.objectives.mse import MaskedMSE, TubeNormalizedMSE

__all__ = ["MaskedMSE", "Objective", "ScaledCosineError", "TubeNormalizedMSE", "masked_mean", "normalize_per_token"]
