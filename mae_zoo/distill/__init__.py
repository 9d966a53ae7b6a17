"""Distillation objectives (``conf/distill``): loss terms from a frozen teacher (or, for DMJD, from a
second view of the student itself), one file each."""

from mae_zoo.distill.base import Distiller, DistillStep
from mae_zoo.distill.dmae import DMAE
from mae_zoo.distill.dmjd import DMJD
from mae_zoo.distill.g2sd import G2SD
from mae_zoo.distill.hybrid import HybridDistill
from mae_zoo.distill.maskalign import MaskAlign
from mae_zoo.distill.mrmae import MRMAE

__all__ = ["DMAE", "DMJD", "G2SD", "MRMAE", "DistillStep", "Distiller", "HybridDistill", "MaskAlign"]
