"""MR-MAE (Gao et al., 2023, "Mimic before Reconstruct"), the feature-mimicking half.

From the paper (no official code was found): the encoder output at the **visible** tokens mimics a
frozen teacher's features at the same positions, while the decoder reconstructs pixels of the hidden
tokens as in MAE, so the two targets sit on disjoint tokens. The teacher sees the whole input. Our
choices where the paper is not specific: a Linear head from the student's width to the teacher's,
teacher features whitened (LayerNorm without affine), mean squared error, weight 1. With
``teacher=ema`` this is a data2vec-style self-distillation without a pre-trained teacher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from mae_zoo.core.types import Visible
from mae_zoo.distill.base import Distiller, DistillStep, row_mean, stack, whiten
from mae_zoo.teachers.base import Teacher

if TYPE_CHECKING:
    from mae_zoo.core.module import MaskedAutoencoder


class MRMAE(Distiller):
    def __init__(self, teacher_block: int = -1, weight: float = 1.0, recon_weight: float = 1.0) -> None:
        super().__init__(weight, recon_weight)
        self.teacher_block = int(teacher_block)
        self.head: nn.Linear | None = None

    def build(self, student: MaskedAutoencoder, teacher: Teacher | None) -> None:
        super().build(student, teacher)
        assert teacher is not None
        teacher.check_grid(student, "distill=MRMAE (features are matched position by position)")
        self.check_blocks("teacher", (self.teacher_block,), teacher.depth)
        encoder = stack(student.encoder)
        assert encoder is not None  # checked by Distiller.build
        self.head = nn.Linear(encoder.dim, teacher.dim)

    def forward(self, step: DistillStep, teacher: Teacher | None) -> dict[str, torch.Tensor]:
        assert teacher is not None  # needs_teacher: checked at start-up
        assert self.head is not None
        encoded = step.encoded
        with torch.no_grad():
            full = teacher.hidden_states(step.batch, [self.teacher_block], None)[0][:, teacher.num_prefix :]
            visible = encoded.visible or Visible.from_mask(torch.zeros_like(step.masks.hidden))
            target = whiten(visible.gather(full))
        pred = self.head(encoded.tokens).float()
        valid = None if visible.padding is None else ~visible.padding
        return {"distill": self.weight * row_mean((pred - target) ** 2, valid)}
