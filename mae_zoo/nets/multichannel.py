"""ChA-MAEViT's networks (Chau et al., NeurIPS 2025; chaudatascience/cha_mae_vit): per-channel patch
tokens with channel embeddings, memory tokens, the channel-aware decoder and the hybrid token fusion.

Tokens arrive per channel: (B, C * h * w, p * p), channel outermost (layout ``grid:c,h,w``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mae_zoo.core.types import Decoded, Encoded, Visible
from mae_zoo.nets.vit import MAEDecoder, PatchProjection, TransformerStack


class ChannelPatchEmbed(nn.Module):
    """One patch projection shared by every channel (the official ``Conv3d(1, D, (1, p, p))``) plus a
    learnable token per channel, initialised with orthogonal rows (the official default), so that
    the same patch in two channels gives two distinguishable tokens."""

    def __init__(self, channels: int, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.channels = channels
        self.proj = PatchProjection(1, (patch_size, patch_size), embed_dim)
        self.channel_tokens = nn.Parameter(torch.empty(channels, embed_dim))
        nn.init.orthogonal_(self.channel_tokens)

    def channel_table(self, patches: int) -> torch.Tensor:
        """(C * patches, D): each channel's token repeated over its patches (channel outermost)."""
        return self.channel_tokens.repeat_interleave(patches, dim=0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, C * P, p * p) -> (B, C * P, D)."""
        patches = tokens.shape[1] // self.channels
        return self.proj(tokens) + self.channel_table(patches)


class ChAMAEEncoder(TransformerStack):
    """Token-dropping ViT over per-channel tokens. Prefix rows: the cls token, then
    ``num_memory_tokens`` learnable memory tokens (official default 4), which every token can attend
    to and which never reach the loss. Positions: one learnable table over the h * w patches (and the
    prefix), shared by all channels, as the official code."""

    def __init__(
        self, channels: int, patches: int, patch_size: int, embed_dim: int, num_memory_tokens: int = 4, **stack: Any
    ) -> None:
        super().__init__(embed_dim, **stack)
        if num_memory_tokens < 0:
            raise ValueError(f"num_memory_tokens must be >= 0, got {num_memory_tokens}")
        self.channels, self.patches = channels, patches
        self.num_memory_tokens = num_memory_tokens
        self.num_prefix = 1 + num_memory_tokens
        self.patch_embed = ChannelPatchEmbed(channels, patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.memory_tokens = nn.Parameter(torch.zeros(1, num_memory_tokens, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix + patches, embed_dim))

    def embedding_table(self) -> torch.Tensor:
        """(prefix + C * P, D): position (shared across channels) plus channel token of every row; the
        prefix rows carry their positions only. What the channel-aware decoder adds to its tokens."""
        pos = self.pos_embed[0]
        tokens = pos[self.num_prefix :].repeat(self.channels, 1) + self.patch_embed.channel_table(self.patches)
        return torch.cat([pos[: self.num_prefix], tokens], dim=0)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, keep: Sequence[int] = ()) -> Encoded:
        pos = self.pos_embed[:, self.num_prefix :].repeat(1, self.channels, 1)
        x = self.patch_embed(tokens) + pos
        visible = None
        if mask is not None:
            visible = Visible.from_mask(mask)
            x = visible.gather(x)
        prefix = torch.cat([self.cls_token, self.memory_tokens], dim=1) + self.pos_embed[:, : self.num_prefix]
        x = torch.cat([prefix.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        attn_mask = visible.attn_mask(self.num_prefix) if visible is not None else None
        latent, hidden = self.forward_blocks(x, attn_mask, keep)
        return Encoded(latent, visible, self.num_prefix, hidden)


class ChannelAwareDecoder(MAEDecoder):
    """MAE's decoder (Linear -> mask tokens -> unshuffle -> blocks -> Linear) whose tokens get, in
    place of a fixed table, the encoder's own position and channel embeddings (projected to the
    decoder width): a mask token then knows which channel it stands for, so one decoder
    reconstructs every channel (official ``ChAMAEViTDecoder``, default 2 blocks). Predicts one
    channel's p * p patch per token."""

    def __init__(self, encoder_dim: int, out_dim: int, embed_dim: int = 512, num_prefix: int = 1, **stack: Any) -> None:
        super().__init__(encoder_dim, torch.zeros(1, embed_dim), out_dim, embed_dim, num_prefix, **stack)
        del self.decoder_pos_embed  # positions come from the encoder's table instead (forward)
        self.embedding_proj = nn.Linear(encoder_dim, embed_dim, bias=False)

    def forward(self, encoded: Encoded, embedding_table: torch.Tensor, keep: Sequence[int] = ()) -> Decoded:  # type: ignore[override]
        """``embedding_table`` (prefix + L, encoder_dim): :meth:`ChAMAEEncoder.embedding_table`."""
        x = self.unshuffle(encoded)
        x = x + self.embedding_proj(embedding_table).to(x.dtype)
        x, hidden = self.forward_blocks(x, keep=keep)
        return Decoded(self.decoder_pred(x[:, self.num_prefix :]), hidden)


class HybridTokenFusion(nn.Module):
    """ChA-MAEViT's hybrid token fusion (official ``encoder_pooling=cls_attn_pooling_sigmoid``): a
    learned query attends over the patch tokens (a Set Transformer MAB: multi-head attention with
    the projected query as residual, then ``O + relu(Linear(O))``), and the cls token is gated by the
    sigmoid of the result: ``cls * sigmoid(MAB(q, tokens))``. Fine-grained patch information thus
    modulates the global token."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.fc_q, self.fc_k, self.fc_v, self.fc_o = (nn.Linear(dim, dim) for _ in range(4))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, D): the MAB output of the learned query over ``tokens``."""
        b, _, d = tokens.shape
        heads = self.num_heads
        q = self.fc_q(self.query).expand(b, -1, -1)
        k, v = self.fc_k(tokens), self.fc_v(tokens)
        split = lambda t: t.unflatten(-1, (heads, d // heads)).transpose(1, 2)  # noqa: E731
        # Scaled by the full width, as the Set Transformer (not per head).
        attn = (split(q) @ split(k).transpose(-2, -1) / math.sqrt(d)).softmax(dim=-1)
        out = q + (attn @ split(v)).transpose(1, 2).flatten(-2)
        out = out + F.relu(self.fc_o(out))
        return out[:, 0]

    def forward(self, cls: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return cls * torch.sigmoid(self.pool(tokens))
