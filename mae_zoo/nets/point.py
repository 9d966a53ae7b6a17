"""Point-MAE networks (Pang et al., ECCV 2022): mini-PointNet group embedding, token-dropping
transformer encoder and mask-token decoder with a learnable position MLP re-added before every block.

Module and parameter names follow the official ``models/Point_MAE.py`` where the pieces are the same
(``first_conv``/``second_conv`` Sequentials, ``pos_embed`` MLP, timm-style block names), so the
official checkpoint maps onto them one to one (``mae_zoo/weights/official_pointmae.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from mae_zoo.core.types import Decoded, Encoded, Visible, keep_indices
from mae_zoo.nets.vit import TransformerStack


class MiniPointNet(nn.Module):
    """Official token embedding: per point Conv1d 3->128, BN, ReLU, Conv1d 128->256; max over the
    group; the global max concatenated (first) to every point's feature (512); Conv1d 512->512, BN,
    ReLU, Conv1d 512->``out_dim``; max over the group: one token per group."""

    def __init__(self, out_dim: int, widths: Sequence[int] = (128, 256, 512)) -> None:
        super().__init__()
        w1, w2, w3 = (int(w) for w in widths)
        self.out_dim = out_dim
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, w1, 1), nn.BatchNorm1d(w1), nn.ReLU(inplace=True), nn.Conv1d(w1, w2, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(2 * w2, w3, 1), nn.BatchNorm1d(w3), nn.ReLU(inplace=True), nn.Conv1d(w3, out_dim, 1)
        )

    def forward(self, groups: Tensor) -> Tensor:
        """(B, G, k, 3) centred groups -> (B, G, out_dim) tokens."""
        b, g, k, _ = groups.shape
        x = groups.reshape(b * g, k, 3).transpose(1, 2).to(next(self.parameters()).dtype)
        feature = self.first_conv(x)  # (BG, w2, k)
        glob = feature.max(dim=2, keepdim=True).values
        feature = self.second_conv(torch.cat([glob.expand(-1, -1, k), feature], dim=1))
        return feature.max(dim=2).values.reshape(b, g, self.out_dim)


def position_mlp(dim: int, hidden: int = 128) -> nn.Sequential:
    """Learnable position embedding of a centre: Linear 3->128, GELU, Linear 128->dim."""
    return nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, dim))


class PositionedStack(TransformerStack):
    """A :class:`TransformerStack` whose blocks each get the position embedding added to their input
    (``x = block(x + pos)``), as Point-MAE's ``TransformerEncoder``/``TransformerDecoder``."""

    def forward_pos(
        self, x: Tensor, pos: Tensor, attn_mask: Tensor | None = None, keep: Sequence[int] = ()
    ) -> tuple[Tensor, list[Tensor]]:
        wanted = keep_indices(keep, len(self.blocks), f"a stack of {len(self.blocks)} blocks")
        hidden = []
        for i, block in enumerate(self.blocks):
            x = block(x + pos, attn_mask=attn_mask)
            if i in wanted:
                hidden.append(x)
        return self.norm(x), hidden


class PointEncoder(PositionedStack):
    """Point-MAE's ``MaskTransformer``: every group embedded by the mini-PointNet (BatchNorm sees all
    groups of the batch, as the official code, which embeds before selecting), the visible tokens
    kept, the centre MLP added before every block, final LayerNorm; no cls token."""

    def __init__(self, embed_dim: int, pointnet_widths: Sequence[int] = (128, 256, 512), **stack: Any) -> None:
        super().__init__(embed_dim, **{"qkv_bias": False, "norm_eps": 1e-5, **stack})
        self.encoder = MiniPointNet(embed_dim, pointnet_widths)
        self.pos_embed = position_mlp(embed_dim)

    def forward(self, groups: Tensor, centers: Tensor, mask: Tensor | None = None, keep: Sequence[int] = ()) -> Encoded:
        tokens = self.encoder(groups)
        visible = None
        if mask is not None:
            visible = Visible.from_mask(mask)
            tokens, centers = visible.gather(tokens), visible.gather(centers)
        pos = self.pos_embed(centers.to(tokens.dtype))
        attn_mask = visible.attn_mask(0) if visible is not None else None
        latent, hidden = self.forward_pos(tokens, pos, attn_mask, keep)
        return Encoded(latent, visible, 0, hidden)


class PointDecoder(PositionedStack):
    """Point-MAE's decoder: encoder width (no projection), a learnable mask token at every hidden
    group, its own centre MLP added before every block, LayerNorm, and a Conv1d head to
    ``group_size * 3`` relative coordinates per group.

    The official decoder orders its input [visible..., hidden...]; this one restores position order
    (attention is permutation-equivariant and positions come only from the centre MLP, so every
    token's output is the same) and predicts at every position; the objective scores the hidden ones.
    """

    def __init__(self, embed_dim: int, group_size: int, **stack: Any) -> None:
        super().__init__(embed_dim, **{"depth": 4, "qkv_bias": False, "norm_eps": 1e-5, **stack})
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = position_mlp(embed_dim)
        self.increase_dim = nn.Sequential(nn.Conv1d(embed_dim, 3 * group_size, 1))

    def unshuffle(self, encoded: Encoded) -> Tensor:
        """Encoder tokens back in position order, mask tokens at the hidden (and padding) positions."""
        tokens = encoded.tokens
        visible = encoded.visible
        if visible is None:
            return tokens
        mask_token = self.mask_token.to(tokens.dtype)
        if visible.padding is not None:
            tokens = torch.where(visible.padding[..., None], mask_token, tokens)
        fill = mask_token.expand(tokens.shape[0], visible.ids_restore.shape[1] - tokens.shape[1], -1)
        tokens = torch.cat([tokens, fill], dim=1)
        return torch.gather(tokens, 1, visible.ids_restore[..., None].expand(-1, -1, tokens.shape[-1]))

    def forward(self, encoded: Encoded, centers: Tensor, keep: Sequence[int] = ()) -> Decoded:
        x = self.unshuffle(encoded)
        x, hidden = self.forward_pos(x, self.pos_embed(centers.to(x.dtype)), keep=keep)
        pred = self.increase_dim(x.transpose(1, 2)).transpose(1, 2)
        return Decoded(pred, hidden)


def init_pointmae_weights(module: nn.Module) -> None:
    """Official init: Linear and Conv1d trunc-normal(0.02) with zero bias, LayerNorm 1/0, BatchNorm
    torch's default, mask token trunc-normal(0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for name, p in module.named_parameters():
        if name.rsplit(".", 1)[-1] == "mask_token":
            nn.init.trunc_normal_(p, std=0.02)
