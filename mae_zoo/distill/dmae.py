"""DMAE (Bai et al., CVPR 2023, "Masked Autoencoders Enable Efficient Knowledge Distillers").

As the official code: teacher and student see the **same visible tokens** (the teacher runs the
student's mask, so it costs a fraction of a full pass); the raw output of student block
``student_block`` (cls row included, before the final norm) goes through a Linear to the teacher's
width; both sides are L2-normalised over channels **after** the projection; L1 (mean), weight 1,
added to the student's pixel loss. Official ViT-B student / ViT-L teacher: blocks 8 <-> 17 (0-based).
The official script trains on raw pixels (no norm-pix): set ``objective.norm_pix_loss=false``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from mae_zoo.core.errors import ConfigError
from mae_zoo.distill.base import Distiller, DistillStep, row_mean, stack
from mae_zoo.teachers.base import Teacher

if TYPE_CHECKING:
    from mae_zoo.core.module import MaskedAutoencoder


class DMAE(Distiller):
    def __init__(self, student_block: int = 8, teacher_block: int = 17, weight: float = 1.0, recon_weight: float = 1.0):
        super().__init__(weight, recon_weight)
        self.student_block, self.teacher_block = int(student_block), int(teacher_block)
        self.proj: nn.Linear | None = None

    @property
    def encoder_blocks(self) -> tuple[int, ...]:
        return (self.student_block,)

    def build(self, student: MaskedAutoencoder, teacher: Teacher | None) -> None:
        super().build(student, teacher)
        assert teacher is not None
        teacher.check_grid(student, "distill=DMAE (teacher and student see the same visible tokens)")
        self.check_blocks("teacher", (self.teacher_block,), teacher.depth)
        encoder = stack(student.encoder)
        assert encoder is not None  # checked by Distiller.build
        if teacher.num_prefix != encoder.num_prefix:
            raise ConfigError(
                f"distill=DMAE aligns rows one to one: the teacher has {teacher.num_prefix} prefix rows, "
                f"the student {encoder.num_prefix}"
            )
        self.proj = nn.Linear(encoder.dim, teacher.dim)

    def forward(self, step: DistillStep, teacher: Teacher | None) -> dict[str, torch.Tensor]:
        assert teacher is not None  # needs_teacher: checked at start-up
        assert self.proj is not None
        with torch.no_grad():
            target = teacher.hidden_states(step.batch, [self.teacher_block], step.masks.hidden)[0]
        student = F.normalize(self.proj(step.encoder_hidden[0]).float(), dim=-1)
        target = F.normalize(target.float(), dim=-1)
        return {"distill": self.weight * row_mean((student - target).abs(), step.valid_rows())}
