"""The distillation contract (``conf/distill``): loss terms computed from the student's step and a
frozen teacher, added to the reconstruction loss.

One path for every transformer modality: a distiller names the student blocks it reads
(``encoder_blocks``, ``decoder_blocks``), the shared forward hands their hidden states out with the
rest of the step (:class:`DistillStep`), and the teacher is read through
``Teacher.hidden_states`` / ``Teacher.decoder_hidden_states``. Nothing here knows the modality.
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Decoded, Encoded, Masks, Tokens, in_keep_order
from mae_zoo.nets.vit import TransformerStack
from mae_zoo.teachers.base import Teacher

if TYPE_CHECKING:
    from mae_zoo.core.module import MaskedAutoencoder


@dataclass
class DistillStep:
    """What one student step hands a distiller. ``encoder_hidden``/``decoder_hidden``: the hidden
    states of the distiller's ``encoder_blocks``/``decoder_blocks``, in that order;
    ``encoder_attention``: the softmax attention (B, heads, N, N) of its ``attention_blocks``.
    ``student`` and ``generator`` let a method run the student once more (DMJD's second view)."""

    batch: Any
    tokens: Tokens
    masks: Masks
    encoded: Encoded
    decoded: Decoded
    encoder_hidden: list[torch.Tensor]
    decoder_hidden: list[torch.Tensor]
    encoder_attention: list[torch.Tensor] = field(default_factory=list)
    student: Any = None
    generator: torch.Generator | None = None

    def valid_rows(self) -> torch.Tensor | None:
        """(B, prefix + n) True for the rows of the encoder's output that are real tokens (a
        variable-count mask pads the visible set); None when every row is real."""
        visible = self.encoded.visible
        if visible is None or visible.padding is None:
            return None
        prefix = visible.padding.new_zeros(visible.padding.shape[0], self.encoded.num_prefix)
        return ~torch.cat([prefix, visible.padding], dim=1)


def row_mean(per_element: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean over every element of (B, N, D), ignoring the rows where ``valid`` is False."""
    if valid is None:
        return per_element.mean()
    weights = valid[..., None].to(per_element.dtype)
    return (per_element * weights).sum() / (weights.sum() * per_element.shape[-1]).clamp_min(1)


def whiten(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine parameters: the usual normalisation of teacher features (G2SD, MaskAlign)."""
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps)


class Distiller(nn.Module, ABC):
    """Base of every distillation objective. ``weight`` scales its term; ``recon_weight`` scales the
    student's own reconstruction loss (G2SD's generic stage trains on the feature term alone: 0).

    ``layouts``: glob patterns over ``Layout.name`` that the method fits (transformer token layouts;
    a graph model refuses it at start-up). Subclasses build their heads in :meth:`build`, once the
    student and the teacher exist, and return named, weighted terms from :meth:`forward`."""

    layouts: tuple[str, ...] = ("grid:*", "points", "seq")
    needs_teacher: bool = True  # False: the method distils within the student (DMJD's two views)

    def __init__(self, weight: float = 1.0, recon_weight: float = 1.0) -> None:
        super().__init__()
        self.weight, self.recon_weight = float(weight), float(recon_weight)
        if self.weight < 0 or self.recon_weight < 0:
            raise ConfigError(f"distill weights must be >= 0, got weight={weight}, recon_weight={recon_weight}")

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def encoder_blocks(self) -> tuple[int, ...]:
        """Student encoder blocks whose hidden states the method reads."""
        return ()

    @property
    def decoder_blocks(self) -> tuple[int, ...]:
        """Student decoder blocks whose hidden states the method reads."""
        return ()

    @property
    def attention_blocks(self) -> tuple[int, ...]:
        """Student encoder blocks whose attention maps the method reads."""
        return ()

    def teachers(self) -> tuple[Teacher, ...]:
        """Teachers the method holds itself, besides ``teacher=`` (Hybrid Distill's second one): kept
        outside the module tree like the main teacher, moved with the student, recorded in checkpoints."""
        return ()

    def build(self, student: MaskedAutoencoder, teacher: Teacher | None) -> None:
        """Check that the method fits the student and the teacher, then create heads. Subclasses
        call this first."""
        self.check_fits(student, teacher)
        encoder, decoder = stack(student.encoder), stack(student.decoder)
        if encoder is None:
            raise ConfigError(f"distill={self.name} needs a transformer encoder; {type(student).__name__} has none")
        self.check_blocks("student encoder", self.encoder_blocks, len(encoder.blocks))
        self.check_blocks("student encoder", self.attention_blocks, len(encoder.blocks))
        if self.decoder_blocks:
            self.check_blocks("student decoder", self.decoder_blocks, len(decoder.blocks) if decoder else 0)

    def check_fits(self, student: MaskedAutoencoder, teacher: Teacher | None) -> None:
        """What can be checked before the student is built: its layout and that a teacher is set."""
        layout = student.layout
        if not any(fnmatch.fnmatchcase(layout.name, p) for p in self.layouts):
            raise ConfigError(
                f"distill={self.name} reads transformer token features; {type(student).__name__} has the "
                f"'{layout.name}' layout (it fits {list(self.layouts)}). Use distill=none."
            )
        if teacher is None and self.needs_teacher:
            raise ConfigError(f"distill={self.name} needs a teacher: teacher=checkpoint|ema|timm|hf")

    @staticmethod
    def check_blocks(what: str, blocks: Sequence[int], depth: int) -> None:
        for i in blocks:
            if not -depth <= int(i) < depth:
                raise ConfigError(
                    f"block {i} is out of range for the {what} ({depth} blocks; 0-based, negative from the end)"
                )

    def propose_mask(
        self, student: MaskedAutoencoder, batch: Any, teacher: Teacher, generator: torch.Generator | None
    ) -> torch.Tensor | None:
        """A (B, L) mask (True = hidden) chosen by the method, or None to draw the configured one."""
        return None

    @abstractmethod
    def forward(self, step: DistillStep, teacher: Teacher | None) -> dict[str, torch.Tensor]:
        """Named loss terms, each already multiplied by its weight (logged as ``train/loss_<name>``)."""


def take_blocks(
    hidden: Sequence[torch.Tensor], keep: Sequence[int], wanted: Sequence[int], depth: int
) -> list[torch.Tensor]:
    """From the hidden states a stack returned for ``keep`` (block order), the ones of ``wanted``, in order."""
    table = dict(zip([int(i) % depth for i in keep], in_keep_order(hidden, keep, depth)))
    return [table[int(i) % depth] for i in wanted]


def stack(net: nn.Module) -> TransformerStack | None:
    """The network as a transformer stack (width ``dim``, ``blocks``, ``num_prefix``), or None."""
    return net if isinstance(net, TransformerStack) else None
