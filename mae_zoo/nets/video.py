"""VideoMAE networks: attention with q/v biases, the tubelet encoder on visible tokens and the decoder
that predicts only the positions it is asked for (official VideoMAE / VideoMAE V2 layout)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.attention import Attention

from mae_zoo.core.types import Decoded, Encoded, Visible
from mae_zoo.nets.pos_embed import Grid, PositionTable
from mae_zoo.nets.vit import PatchProjection, TransformerStack, init_linear_or_norm


class QVBiasAttention(Attention):
    """timm ``Attention`` with VideoMAE's biases: learnable q and v biases, the k bias fixed at 0.

    Parameter names follow the official code (``qkv.weight``, ``q_bias``, ``v_bias``). The k part
    of the fused bias is a constant zero; only q and v are parameters.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, **kwargs: Any) -> None:
        super().__init__(dim, num_heads=num_heads, qkv_bias=False, **{k: v for k, v in kwargs.items() if k != "depth"})
        self.q_bias: nn.Parameter | None
        self.v_bias: nn.Parameter | None
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(self.attn_dim))
            self.v_bias = nn.Parameter(torch.zeros(self.attn_dim))
        else:
            self.q_bias = self.v_bias = None

    def qkv_projection(self, x: torch.Tensor) -> torch.Tensor:
        bias = None
        if self.q_bias is not None and self.v_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        return F.linear(x, self.qkv.weight, bias)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv_projection(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=self.attn_drop.p if self.training else 0.0
        )
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, self.attn_dim)))


class VideoEncoder(TransformerStack):
    """Tubelet embedding + fixed positions on the visible tokens only, then the blocks and a LayerNorm."""

    def __init__(self, patch_embed: PatchProjection, grid: Grid, embed_dim: int, **stack: Any) -> None:
        """``stack``: the :class:`TransformerStack` sizes; no cls token in VideoMAE pre-training."""
        super().__init__(embed_dim, attn_layer=QVBiasAttention, **stack)
        self.patch_embed = patch_embed
        self.pos = PositionTable(grid, embed_dim)

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor | None = None, grid: Grid | None = None, keep: Sequence[int] = ()
    ) -> Encoded:
        pos = self.pos(grid or self.pos.grid).to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        visible = None
        if mask is not None:
            visible = Visible.from_mask(mask)
            if visible.padding is not None:
                raise ValueError(
                    "VideoMAE drops hidden tokens, so every clip needs the same number hidden "
                    "(use an exact-count mask: tube or random)"
                )
            tokens, pos = visible.gather(tokens), visible.gather(pos)
        latent, hidden = self.forward_blocks(self.patch_embed(tokens) + pos, keep=keep)
        return Encoded(latent, visible, 0, hidden)


class VideoDecoder(TransformerStack):
    """``[visible + pos, mask token + pos of the positions to reconstruct]`` -> blocks -> norm -> head,
    predicting only the reconstructed positions (the official order; no unshuffling is needed
    because positions travel with the tokens)."""

    def __init__(
        self,
        encoder_dim: int,
        grid: Grid,
        out_dim: int,
        embed_dim: int = 384,
        depth: int = 4,
        num_heads: int = 6,
        **stack: Any,
    ) -> None:
        super().__init__(embed_dim, depth, num_heads, attn_layer=QVBiasAttention, **stack)
        self.decoder_embed = nn.Linear(encoder_dim, embed_dim, bias=False)  # official: encoder_to_decoder
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos = PositionTable(grid, embed_dim)
        self.head = nn.Linear(embed_dim, out_dim)
        self.out_dim = out_dim

    def forward(
        self, encoded: Encoded, reconstruct: torch.Tensor, grid: Grid | None = None, keep: Sequence[int] = ()
    ) -> Decoded:
        """(B, L, out_dim) predictions at the ``reconstruct`` positions, zero elsewhere."""
        visible = encoded.visible
        if visible is None:
            raise ValueError("the VideoMAE decoder needs the encoder's mask")
        counts = reconstruct.sum(dim=1)
        num = int(counts[0])
        if bool((counts != num).any()):
            raise ValueError("every clip must reconstruct the same number of positions")
        x = self.decoder_embed(encoded.latent)
        pos = self.pos(grid or self.pos.grid).to(x.dtype).expand(x.shape[0], -1, -1)
        ids = torch.argsort((~reconstruct).to(torch.uint8), dim=1, stable=True)[:, :num]  # position order
        pos_rec = torch.gather(pos, 1, ids[..., None].expand(-1, -1, pos.shape[-1]))
        x = torch.cat([x + visible.gather(pos), self.mask_token.to(x.dtype) + pos_rec], dim=1)
        x, hidden = self.forward_blocks(x, keep=keep)
        out = self.head(x[:, x.shape[1] - num :])  # LayerNorm is per token: slicing after is exact
        pred = out.new_zeros(out.shape[0], reconstruct.shape[1], out.shape[-1])
        return Decoded(pred.scatter(1, ids[..., None].expand(-1, -1, out.shape[-1]), out), hidden)


def init_videomae_weights(module: nn.Module) -> None:
    """Official VideoMAE init: xavier-uniform Linear with zero bias, LayerNorm 1/0, mask token
    truncated normal (std 0.02, cut at +-0.02); the tubelet Conv3d keeps PyTorch's default."""
    for m in module.modules():
        init_linear_or_norm(m)
    for name, p in module.named_parameters():
        if name.endswith("mask_token"):
            nn.init.trunc_normal_(p, std=0.02, a=-0.02, b=0.02)
