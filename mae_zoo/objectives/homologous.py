"""MixedAE's homologous contrastive term (Chen et al., CVPR 2023): each patch of a mixed image recognises
the patches of its own source image.

Written here (the paper gives no code) as InfoNCE between every token and the pooled features of the
sources of its mixed image: token ``p`` of source ``s`` (projected, L2-normalised) against the mean of each
source's projected tokens (L2-normalised); the positive is its own source, the negatives the other sources
mixed with it. Choices: a 2-layer MLP projector (width = encoder width), temperature 0.2, weight 1.0, the
final (normed) encoder output; the pooled feature includes the token itself.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mae_zoo.core.errors import ConfigError


def homologous_logits(
    z: torch.Tensor, valid: torch.Tensor, gid: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token-vs-source similarities within each mixed image.

    ``z`` (B, n, D) token features per source sample (L2-normalised), ``valid`` (B, n) real tokens (not
    padding), ``gid`` (B,) mixed image of each sample. Returns (logits (T, B), allowed (T, B), positive (T,))
    over the T valid tokens: logits against every sample's pooled feature, ``allowed`` True for the samples
    of the token's own mixed image, ``positive`` the index of the token's own sample.
    """
    w = valid[..., None].to(z.dtype)
    pooled = F.normalize((z * w).sum(1) / w.sum(1).clamp_min(1.0), dim=-1)  # (B, D)
    owner = torch.arange(z.shape[0], device=z.device)[:, None].expand_as(valid)[valid]  # (T,)
    tokens = z[valid]  # (T, D)
    logits = tokens @ pooled.t() / temperature
    allowed = gid[owner][:, None] == gid[None, :]
    return logits, allowed, owner


class HomologousContrastive(nn.Module):
    """``weight`` x InfoNCE(token, own source's pooled feature | the other sources of its mixed image)."""

    def __init__(self, dim: int, weight: float = 1.0, temperature: float = 0.2) -> None:
        super().__init__()
        if weight < 0 or temperature <= 0:
            raise ConfigError(
                f"module.contrastive needs weight >= 0 and temperature > 0, got {weight} and {temperature}"
            )
        self.weight, self.temperature = float(weight), float(temperature)
        self.projector = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor, gid: torch.Tensor) -> torch.Tensor:
        """``tokens`` (B, n, D) encoder rows of each source (prefix dropped), ``valid`` (B, n), ``gid`` (B,)."""
        z = F.normalize(self.projector(tokens).float(), dim=-1)
        logits, allowed, positive = homologous_logits(z, valid, gid, self.temperature)
        logits = logits.masked_fill(~allowed, float("-inf"))
        return self.weight * F.cross_entropy(logits, positive)
