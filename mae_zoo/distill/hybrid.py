"""Hybrid Distill (Shi et al., ICLR 2024, "Hybrid Distillation: Connecting Masked Autoencoders with
Contrastive Learners"): one student, two frozen teachers.

What the paper states, and what is mirrored here: a contrastive or supervised teacher (``teacher=``:
CLIP, DeiT, DINO) gives **features at the output**; a masked-image-modeling teacher
(``distill.relation_teacher``: an MAE) gives **token relations** (attention maps) at intermediate
layers; the student sees a masked input; both terms weigh 1 (alpha = beta = 1).

No official code has been released (lygsbw/hybriddistill holds a README only), so these are our
choices, each a config value: teachers see the whole input and are read at the student's visible
positions (+ cls), as MaskAlign and dBOT do; the feature term matches the student's last block
(Linear to the teacher's width) with the teacher's whitened last block, MSE; the relation term is
KL(teacher || student) between softmax attention rows over the visible tokens (the teacher's
restricted to them and renormalised), per head when head counts agree, else on the head mean; no
pixel reconstruction (``recon_weight`` 0). The paper's progressive redundant-token masking is not
built: use ``mask.ratio`` for the student's share of tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Visible
from mae_zoo.distill.base import Distiller, DistillStep, row_mean, stack, whiten
from mae_zoo.teachers.base import Teacher
from mae_zoo.utils.instantiate import instantiate_checked

if TYPE_CHECKING:
    from mae_zoo.core.module import MaskedAutoencoder


def relation_kl(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over batch, heads and query rows of KL(teacher row || student row), both (B, H, N, N)
    softmax maps; with different head counts both sides are averaged over heads first."""
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(dim=1, keepdim=True), teacher.mean(dim=1, keepdim=True)
    t = teacher.float()
    return (t * ((t + eps).log() - (student.float() + eps).log())).sum(dim=-1).mean()


class HybridDistill(Distiller):
    def __init__(
        self,
        relation_teacher: dict | Teacher | None = None,
        relation_blocks: Sequence[int] = (-2,),
        teacher_relation_blocks: Sequence[int] = (-2,),
        feature_weight: float = 1.0,
        relation_weight: float = 1.0,
        weight: float = 1.0,
        recon_weight: float = 0.0,
    ) -> None:
        super().__init__(weight, recon_weight)
        if not relation_teacher:
            raise ConfigError(
                "distill=hybrid needs distill.relation_teacher: the masked-image-modeling teacher whose attention "
                "the student imitates, e.g. {_target_: mae_zoo.teachers.CheckpointTeacher, path: mae.ckpt}"
            )
        if len(relation_blocks) != len(teacher_relation_blocks):
            raise ConfigError(
                f"distill=hybrid pairs relation_blocks {list(relation_blocks)} with teacher_relation_blocks "
                f"{list(teacher_relation_blocks)} one to one: give lists of equal length"
            )
        built: Any = relation_teacher
        if not isinstance(built, Teacher):  # a config (conf/distill/hybrid.yaml builds it here, _recursive_: false)
            with torch.random.fork_rng(devices=[]):  # as teacher=: building it leaves the run's random stream alone
                built = instantiate_checked(dict(built))
        if not isinstance(built, Teacher):
            raise ConfigError(
                f"distill.relation_teacher must build an mae_zoo.teachers.Teacher, got {type(built).__name__}"
            )
        # Outside the module tree, like teacher=: never trained, saved or synchronised.
        object.__setattr__(self, "relation_teacher", built.requires_grad_(False).eval())
        self.relation_teacher: Teacher
        self.relation_blocks = tuple(int(i) for i in relation_blocks)
        self.teacher_relation_blocks = tuple(int(i) for i in teacher_relation_blocks)
        self.feature_weight, self.relation_weight = float(feature_weight), float(relation_weight)
        self.head: nn.Linear | None = None

    @property
    def encoder_blocks(self) -> tuple[int, ...]:
        return (-1,)

    @property
    def attention_blocks(self) -> tuple[int, ...]:
        return self.relation_blocks

    def teachers(self) -> tuple[Teacher, ...]:
        return (self.relation_teacher,)

    def build(self, student: MaskedAutoencoder, teacher: Teacher | None) -> None:
        super().build(student, teacher)
        assert teacher is not None
        self.relation_teacher.bind(student)
        teacher.check_grid(student, "distill=hybrid (features are matched position by position)")
        self.relation_teacher.check_grid(student, "distill=hybrid relation teacher (attention maps are matched)")
        self.check_blocks("relation teacher", self.teacher_relation_blocks, self.relation_teacher.depth)
        encoder = stack(student.encoder)
        assert encoder is not None  # checked by Distiller.build
        if self.relation_teacher.num_prefix != encoder.num_prefix:
            raise ConfigError(
                f"distill=hybrid matches attention rows one to one: the relation teacher has "
                f"{self.relation_teacher.num_prefix} prefix rows, the student {encoder.num_prefix}"
            )
        self.relation_teacher.to(student.device)
        self.head = nn.Linear(encoder.dim, teacher.dim)

    def forward(self, step: DistillStep, teacher: Teacher | None) -> dict[str, torch.Tensor]:
        assert teacher is not None and self.head is not None
        hidden = step.masks.hidden
        visible = step.encoded.visible or Visible.from_mask(torch.zeros_like(hidden))
        if visible.padding is not None:
            raise ConfigError("distill=hybrid needs the same visible count in every sample (mask=random)")
        s_prefix, t_prefix = step.encoded.num_prefix, teacher.num_prefix
        cls = min(1, s_prefix, t_prefix)  # the cls row is matched when both sides have one
        with torch.no_grad():
            full = teacher.hidden_states(step.batch, [-1], None)[0]
            target = whiten(torch.cat([full[:, :cls], visible.gather(full[:, t_prefix:])], dim=1))
            relations = self.relation_teacher.attention_maps(step.batch, self.teacher_relation_blocks, None)
            relations = [self.relation_teacher.restrict(r, hidden) for r in relations]
        last = step.encoder_hidden[0]
        pred = self.head(torch.cat([last[:, :cls], last[:, s_prefix:]], dim=1)).float()
        feature = row_mean((pred - target) ** 2, None)
        relation = torch.stack([relation_kl(s, t) for s, t in zip(step.encoder_attention, relations)]).mean()
        return {
            "feature": self.weight * self.feature_weight * feature,
            "relation": self.weight * self.relation_weight * relation,
        }
