"""MaskAlign (Xue et al., CVPR 2023, "Stare at What You See"), as the official code (OpenDriveLab/maskalign).

The student encodes only the visible tokens; the teacher sees the whole input. Every student block's
raw output (cls row included, before the final norm) is mixed across depth by a learnable
layer-fusion matrix (``fusion=linear``: identity + 0.01, the official default when depths agree;
``sum``: uniform 1/S rows, the official alternative for unequal depths) and mapped by one Linear head
per teacher layer. Targets: the teacher's block outputs, LayerNorm-whitened without affine, at the
visible positions plus the cls row; Smooth-L1 (beta 1) times 2, averaged over the ``top_k`` (5) last
teacher layers; no reconstruction (``recon_weight`` 0). ``mask=attention`` draws the visible tokens
without replacement with probability proportional to the teacher's last-block cls attention.

Where we differ: the official model has no decoder at all; ours still runs the student's decoder so
reconstruction pictures and ``train/loss_recon`` stay available (its loss is weighted 0, so it does
not change the encoder's gradients, only the step time). Heads exist only for the ``top_k`` layers
that carry loss (the official code builds one per teacher layer; the others never receive gradient).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Visible
from mae_zoo.distill.base import Distiller, DistillStep, row_mean, stack, whiten
from mae_zoo.teachers.base import Teacher

if TYPE_CHECKING:
    from mae_zoo.core.module import MaskedAutoencoder


class MaskAlign(Distiller):
    def __init__(
        self,
        top_k: int = 5,
        fusion: str = "linear",
        mask: str = "random",
        beta: float = 1.0,
        weight: float = 2.0,
        recon_weight: float = 0.0,
    ) -> None:
        super().__init__(weight, recon_weight)
        if fusion not in ("linear", "sum"):
            raise ConfigError(f"distill.fusion must be 'linear' or 'sum', got '{fusion}'")
        if mask not in ("random", "attention"):
            raise ConfigError(f"distill.mask must be 'random' (the configured mask) or 'attention', got '{mask}'")
        if int(top_k) < 1:
            raise ConfigError(f"distill.top_k must be >= 1, got {top_k}")
        self.top_k, self.fusion, self.mask, self.beta = int(top_k), fusion, mask, float(beta)
        self.student_depth = 0
        self.teacher_layers: tuple[int, ...] = ()
        self.heads = nn.ModuleList()
        self.weights: nn.Parameter | None = None  # (top_k, student_depth) rows of the fusion matrix

    @property
    def encoder_blocks(self) -> tuple[int, ...]:
        return tuple(range(self.student_depth))

    def build(self, student: MaskedAutoencoder, teacher: Teacher | None) -> None:
        super().build(student, teacher)
        assert teacher is not None
        teacher.check_grid(student, "distill=MaskAlign (teacher features are gathered at the visible positions)")
        encoder = stack(student.encoder)
        assert encoder is not None  # checked by Distiller.build
        depth, k = len(encoder.blocks), self.top_k
        if k > teacher.depth:
            raise ConfigError(f"distill.top_k={k} exceeds the teacher's {teacher.depth} blocks")
        if self.fusion == "linear" and depth != teacher.depth:
            raise ConfigError(
                f"distill.fusion=linear mixes layer i into layer i: the student has {depth} blocks, the teacher "
                f"{teacher.depth}; use distill.fusion=sum for unequal depths"
            )
        if self.mask == "attention" and student.mask_generator.name != "RandomMask":
            raise ConfigError("distill.mask=attention replaces the mask draw: use it with mask=random (its ratio)")
        self.student_depth = depth
        self.teacher_layers = tuple(range(teacher.depth - k, teacher.depth))
        if self.fusion == "linear":
            init = torch.eye(depth)[list(self.teacher_layers)] + 0.01
        else:
            init = torch.full((k, depth), 1.0 / depth)
        self.weights = nn.Parameter(init)
        self.heads = nn.ModuleList(nn.Linear(encoder.dim, teacher.dim) for _ in range(k))

    def propose_mask(
        self, student: MaskedAutoencoder, batch: Any, teacher: Teacher, generator: torch.Generator | None
    ) -> torch.Tensor | None:
        if self.mask != "attention":
            return None
        with torch.no_grad():
            importance = teacher.cls_attention(batch).float().cpu()  # the mask generators draw on the CPU
        count = student.mask_generator.num_visible(importance.shape[1])
        order = torch.multinomial(importance.clamp_min(1e-12), importance.shape[1], generator=generator)
        mask = torch.ones_like(importance, dtype=torch.bool)
        mask.scatter_(1, order[:, :count], False)
        return mask

    def forward(self, step: DistillStep, teacher: Teacher | None) -> dict[str, torch.Tensor]:
        assert teacher is not None  # needs_teacher: checked at start-up
        assert self.weights is not None
        student = torch.stack(step.encoder_hidden)  # (S, B, rows, D)
        fused = torch.einsum("ts,sbnd->tbnd", self.weights.to(student.dtype), student)
        visible = step.encoded.visible or Visible.from_mask(torch.zeros_like(step.masks.hidden))
        s_prefix, t_prefix = step.encoded.num_prefix, teacher.num_prefix
        cls = min(1, s_prefix, t_prefix)  # the cls row is matched when both sides have one
        with torch.no_grad():
            targets = []
            for hidden in teacher.hidden_states(step.batch, self.teacher_layers, None):
                hidden = whiten(hidden)
                targets.append(torch.cat([hidden[:, :cls], visible.gather(hidden[:, t_prefix:])], dim=1))
        valid = step.valid_rows()
        rows = torch.cat([torch.arange(cls), torch.arange(s_prefix, fused.shape[2])]).to(fused.device)
        valid = None if valid is None else valid[:, rows]
        loss = fused.new_zeros((), dtype=torch.float32)
        for head, x, target in zip(self.heads, fused[:, :, rows], targets):
            per = F.smooth_l1_loss(head(x).float(), target, reduction="none", beta=self.beta)
            loss = loss + row_mean(per, valid) / len(targets)
        return {"distill": self.weight * loss}
