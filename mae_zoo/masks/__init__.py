"""Mask generators. A new mask is one file here plus one YAML in ``conf/mask/``."""

from mae_zoo.masks.base import MaskConfigError, MaskGenerator, MaskLayoutError, mask_from_scores
from mae_zoo.masks.block import BlockMask
from mae_zoo.masks.colored_noise import ColoredNoiseMask
from mae_zoo.masks.frequency import FrequencyMask
from mae_zoo.masks.mixing import MixingMask
from mae_zoo.masks.point_block import PointBlockMask
from mae_zoo.masks.random import RandomMask
from mae_zoo.masks.simmim import SimMIMMask
from mae_zoo.masks.time import TimeMask
from mae_zoo.masks.time_frequency import TimeFrequencyMask
from mae_zoo.masks.tube import TubeMask

__all__ = [
    "BlockMask",
    "ColoredNoiseMask",
    "FrequencyMask",
    "MaskConfigError",
    "MaskGenerator",
    "MaskLayoutError",
    "MixingMask",
    "PointBlockMask",
    "RandomMask",
    "SimMIMMask",
    "TimeFrequencyMask",
    "TimeMask",
    "TubeMask",
    "mask_from_scores",
]
