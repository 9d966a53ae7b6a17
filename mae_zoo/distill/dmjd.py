"""DMJD (Ma et al., IEEE TMM 2023, "Disjoint Masking with Joint Distillation for Efficient Masked
Image Modeling"), as the official code (mx-mark/DMJD, ``models_dmjd.py``) does it.

* **Disjoint masking.** Every image is seen twice in one step. The second view hides as many tokens
  as the first (the masking rate of each view is kept), taking first the tokens the first view showed
  (``min(L - hidden, hidden)`` of them) and the rest from the first view's hidden ones, so for
  ratios >= 0.5 the two views' visible sets are disjoint and together every token is predicted.
* **Joint distillation.** Two branches on each view: the usual decoder predicts the hidden tokens
  (the modality's objective), and a visible branch (3-layer projector: Linear-LN-GELU twice, Linear,
  LN without affine, at the decoder's width; then a Linear predictor) predicts the **visible** tokens'
  targets from the encoder output, Smooth-L1 with beta 2.
* Loss as the official batch-doubled mean: ``recon_weight * (recon_1 + recon_2) + weight * (vis_1 + vis_2) / 2``
  with ``recon_weight`` 0.5 and ``weight`` 1 (theta). There is no teacher network.

The official code trains on HOG targets; here both branches use the modality's own target (norm-pix
for images), and a HOG objective, where one is configured, is used the same way. Draws are per
sample (the official code shares one permutation across the batch); masks with a per-sample count
(block masks) are supported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Masks, Visible
from mae_zoo.distill.base import Distiller, DistillStep, row_mean, stack
from mae_zoo.teachers.base import Teacher

if TYPE_CHECKING:
    from mae_zoo.core.module import MaskedAutoencoder


def disjoint_view(hidden: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The second DMJD view of a (B, L) mask (True = hidden): the same hidden count per sample,
    ``min(L - h, h)`` of them drawn from the first view's visible tokens, the rest from its hidden ones."""
    b, length = hidden.shape
    h = hidden.sum(dim=1)
    extra = torch.minimum(length - h, h)
    noise = torch.rand(b, length, generator=generator, device="cpu").to(hidden.device)
    # Rank tokens within each group in random order: visible tokens first for one ranking, hidden first for the other.
    rank_visible = torch.argsort(torch.argsort(noise + 2.0 * hidden, dim=1), dim=1)
    rank_hidden = torch.argsort(torch.argsort(noise + 2.0 * ~hidden, dim=1), dim=1)
    return (~hidden & (rank_visible < extra[:, None])) | (hidden & (rank_hidden < (h - extra)[:, None]))


class DMJD(Distiller):
    needs_teacher = False

    def __init__(self, beta: float = 2.0, weight: float = 1.0, recon_weight: float = 0.5) -> None:
        super().__init__(weight, recon_weight)
        self.beta = float(beta)
        self.projector: nn.Sequential | None = None
        self.predictor: nn.Linear | None = None

    def build(self, student: MaskedAutoencoder, teacher: Teacher | None) -> None:
        super().build(student, teacher)
        encoder, decoder = stack(student.encoder), stack(student.decoder)
        assert encoder is not None  # checked by Distiller.build
        if decoder is None or not decoder.out_dim:
            raise ConfigError(
                f"distill=dmjd needs a transformer decoder that predicts tokens; {type(student).__name__} has none"
            )
        if student.objective.positions != "hidden":
            raise ConfigError(
                "distill=dmjd predicts the hidden tokens with the decoder: use objective.positions=hidden"
            )
        width, target_dim = decoder.dim, decoder.out_dim
        self.projector = nn.Sequential(
            nn.Linear(encoder.dim, width),
            nn.LayerNorm(width),
            nn.GELU(),
            nn.Linear(width, width),
            nn.LayerNorm(width),
            nn.GELU(),
            nn.Linear(width, width),
            nn.LayerNorm(width, elementwise_affine=False),
        )
        self.predictor = nn.Linear(width, target_dim)

    def visible_term(self, step: DistillStep, latent: torch.Tensor, masks: Masks) -> torch.Tensor:
        """Smooth-L1 between the visible branch's predictions from the encoder output ``latent`` and the
        visible tokens' targets, as the objective normalises them."""
        assert self.projector is not None and self.predictor is not None
        student = step.student
        with torch.no_grad():
            raw = student.target(step.batch, step.tokens, masks)
            _, compared = student.objective(raw, raw, ~masks.hidden)  # the target as the objective compares it
        visible = Visible.from_mask(masks.hidden)
        pred = self.predictor(self.projector(latent)).float()
        valid = None if visible.padding is None else ~visible.padding
        return row_mean(
            F.smooth_l1_loss(pred, visible.gather(compared.float()), beta=self.beta, reduction="none"), valid
        )

    def forward(self, step: DistillStep, teacher: Teacher | None) -> dict[str, torch.Tensor]:
        student = step.student
        masks = student.masks(step.tokens, disjoint_view(step.masks.hidden, step.generator), None, step.generator)
        encoded = student.encode(step.tokens, masks.hidden, step.generator)
        decoded = student.decode(encoded, step.tokens, masks)
        recon, _ = student.objective(decoded.pred, student.target(step.batch, step.tokens, masks), masks.score)
        visible = self.visible_term(step, step.encoded.tokens, step.masks) + self.visible_term(
            step, encoded.tokens, masks
        )
        return {"second_view": self.recon_weight * recon, "distill": self.weight * visible / 2}
