"""G2SD generic distillation (Huang et al., CVPR 2023), faithful to pengzhiliang/G2SD.

Teacher and student run the **same mask**; the student's decoder hidden state after all its blocks
(before the decoder norm and pixel head) goes through an MLP (Linear-GELU-Linear, hidden width =
the teacher's decoder width) and matches the teacher decoder's hidden state after
``teacher_decoder_block`` + 1 of its blocks (official: 4 of 8), whitened by a LayerNorm without
affine, on **all** rows (cls, visible and hidden: ``supervise_all``), Smooth-L1 with beta 2. The
official generic stage trains on this term alone (``recon_weight`` 0; its encoder-feature term is
weighted 0 and left out here). The teacher must be an MAE with its decoder:
``teacher=checkpoint teacher.decoder=true``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from mae_zoo.core.errors import ConfigError
from mae_zoo.distill.base import Distiller, DistillStep, stack, whiten
from mae_zoo.teachers.base import Teacher

if TYPE_CHECKING:
    from mae_zoo.core.module import MaskedAutoencoder


class G2SD(Distiller):
    def __init__(
        self, teacher_decoder_block: int = 3, beta: float = 2.0, weight: float = 1.0, recon_weight: float = 0.0
    ) -> None:
        super().__init__(weight, recon_weight)
        self.teacher_decoder_block, self.beta = int(teacher_decoder_block), float(beta)
        self.head: nn.Sequential | None = None

    @property
    def decoder_blocks(self) -> tuple[int, ...]:
        return (-1,)

    def build(self, student: MaskedAutoencoder, teacher: Teacher | None) -> None:
        super().build(student, teacher)
        assert teacher is not None
        teacher.check_grid(student, "distill=G2SD (decoder features are matched position by position)")
        if not teacher.decoder_depth:
            raise ConfigError(
                "distill=G2SD reads the teacher's MAE decoder: use teacher=checkpoint teacher.decoder=true "
                "with a file that has decoder weights"
            )
        self.check_blocks("teacher decoder", (self.teacher_decoder_block,), teacher.decoder_depth)
        decoder = stack(student.decoder)
        assert decoder is not None  # checked by Distiller.build (decoder_blocks)
        if teacher.num_prefix != decoder.num_prefix:
            raise ConfigError("distill=G2SD: teacher and student decoders differ in prefix rows (cls)")
        width = teacher.decoder_dim
        self.head = nn.Sequential(nn.Linear(decoder.dim, width), nn.GELU(), nn.Linear(width, width))

    def forward(self, step: DistillStep, teacher: Teacher | None) -> dict[str, torch.Tensor]:
        assert teacher is not None  # needs_teacher: checked at start-up
        assert self.head is not None
        with torch.no_grad():
            target = teacher.decoder_hidden_states(step.batch, [self.teacher_decoder_block], step.masks.hidden)[0]
        pred = self.head(step.decoder_hidden[0]).float()
        return {"distill": self.weight * F.smooth_l1_loss(pred, whiten(target), beta=self.beta)}
