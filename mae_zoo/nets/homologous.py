"""MixedAE's encoder (Chen et al., CVPR 2023): mix, add segment embeddings, homologous attention, unmix.

Given a :class:`~mae_zoo.masks.mixing.MixingMask` (each position visible in exactly one sample of its
group), the visible tokens of a group are merged into one full sequence, a learnable segment embedding per
source slot is added (BERT-style, so tokens of one source share a code), and the ViT blocks run on the
mixed sequences with homologous attention. The output is split back per source into the usual
token-dropping :class:`~mae_zoo.core.types.Encoded` (each sample's visible rows, the group's cls row as its
prefix), so MAE's decoder reconstructs each source's own hidden patches unchanged.

Homologous attention, ``attention``:
- ``topk`` (the paper's): each token query attends only to the ``ceil(L / sources)`` token keys of highest
  score (per head), the count of its own source's tokens, so it must find its homologous patches itself;
- ``same_source``: an oracle mask, each token attends only to the tokens of its own source;
- ``full``: plain attention (the naive-mixing ablation).
Choices (no official code): the cls row attends to and is attended by every token in every mode; the
restriction applies in the blocks ``homologous_blocks`` (None: all). Without a mask (evaluation) nothing is
mixed: every token gets segment 0 and attention is full, which is what top-k gives with a single source.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.attention import Attention

from mae_zoo.core.types import Encoded, Visible, keep_indices
from mae_zoo.masks.mixing import group_index, group_sizes, sources_from_mask
from mae_zoo.nets.vit import PatchProjection, ViTEncoder

ATTENTION = ("topk", "same_source", "full")


class TopKAttention(Attention):
    """timm's Attention whose token queries keep only their ``topk`` highest-scoring token keys (per head;
    prefix rows always kept). ``num_keep`` (B,) long is set by the encoder for one forward; None: plain."""

    num_keep: torch.Tensor | None = None
    num_prefix: int = 1

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if self.num_keep is None:
            return super().forward(x, attn_mask, is_causal)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        p = self.num_prefix
        with torch.no_grad():  # the selection is discrete; gradients flow through the kept scores
            scores = (q[:, :, p:] @ k[:, :, p:].transpose(-2, -1)).float()
            kmax = int(self.num_keep.max())
            kth = scores.topk(kmax, dim=-1).values  # (B, H, L, kmax), descending
            idx = (self.num_keep.to(x.device) - 1).view(b, 1, 1, 1).expand(-1, kth.shape[1], kth.shape[2], 1)
            keep_tok = scores >= kth.gather(-1, idx)
            keep = torch.ones(b, self.num_heads, n, n, dtype=torch.bool, device=x.device)
            keep[:, :, p:, p:] = keep_tok
            if attn_mask is not None:
                keep = keep & attn_mask
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keep, dropout_p=self.attn_drop.p if self.training else 0.0
        )
        out = self.norm(out.transpose(1, 2).reshape(b, n, self.attn_dim))
        if self.gate is not None:
            out = out * self.gate(x).sigmoid()
        return self.proj_drop(self.proj(out))


class HomologousViTEncoder(ViTEncoder):
    """``group``: sources per mixed image (``1 / r``), the number of segment embeddings; ``attention``
    one of ``topk | same_source | full``; ``homologous_blocks``: block indices that use it (None: all);
    ``segment_embed``: add the per-source segment embeddings. ``stack``: the TransformerStack sizes."""

    def __init__(
        self,
        patch_embed: PatchProjection,
        pos_table: torch.Tensor,
        embed_dim: int,
        group: int,
        attention: str = "topk",
        homologous_blocks: Sequence[int] | None = None,
        segment_embed: bool = True,
        **stack: Any,
    ) -> None:
        if attention not in ATTENTION:
            raise ValueError(f"model.encoder.attention must be one of {list(ATTENTION)}, got {attention!r}")
        super().__init__(patch_embed, pos_table, embed_dim, attn_layer=TopKAttention, **stack)
        if self.num_prefix != 1:
            raise ValueError("the homologous encoder needs its cls token (the mixed image's prefix row)")
        self.group, self.attention = int(group), attention
        depth = len(self.blocks)
        chosen = range(depth) if homologous_blocks is None else homologous_blocks
        self.homologous = keep_indices(chosen, depth, f"a stack of {depth} blocks")
        # Zero start: the segment codes are learned from nothing (as BERT's are from a small init).
        self.segment_embed = nn.Parameter(torch.zeros(1, self.group, embed_dim)) if segment_embed else None

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, keep: Sequence[int] = ()) -> Encoded:
        pos = self.pos_embed[:, 1:]
        x = self.patch_embed(tokens) + pos
        if mask is None:  # evaluation: one source, nothing mixed
            if self.segment_embed is not None:
                x = x + self.segment_embed[:, :1]
            latent, hidden = self.run(self.with_cls(x), None, None, keep)
            return Encoded(latent, None, 1, hidden)
        b, num_tokens = mask.shape
        gid, slot = (t.to(x.device) for t in group_index(b, self.group))
        sources = sources_from_mask(mask, self.group)  # (G, L) slot per position
        if self.segment_embed is not None:
            x = x + self.segment_embed[0, slot][:, None]
        visible = (~mask)[..., None].to(x.dtype)
        mixed = x.new_zeros(sources.shape[0], num_tokens, x.shape[-1]).index_add_(0, gid, x * visible)
        sizes = torch.tensor(group_sizes(b, self.group), device=x.device)
        latent, hidden = self.run(self.with_cls(mixed), sources, sizes, keep)
        vis = Visible.from_mask(mask)
        return Encoded(self.unmix(latent, gid, vis), vis, 1, [self.unmix(h, gid, vis) for h in hidden])

    def with_cls(self, x: torch.Tensor) -> torch.Tensor:
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # type: ignore[operator]
        return torch.cat([cls, x], dim=1)

    def run(
        self, x: torch.Tensor, sources: torch.Tensor | None, sizes: torch.Tensor | None, keep: Sequence[int]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The blocks on (mixed) sequences; ``sources`` (G, L) / ``sizes`` (G,) None: unmixed, full attention."""
        wanted = keep_indices(keep, len(self.blocks), f"a stack of {len(self.blocks)} blocks")
        same = None
        topk = None
        if sources is not None and sizes is not None and self.attention == "same_source":
            same = torch.ones(x.shape[0], 1, x.shape[1], x.shape[1], dtype=torch.bool, device=x.device)
            same[:, 0, 1:, 1:] = sources[:, :, None] == sources[:, None, :]
        elif sources is not None and sizes is not None and self.attention == "topk":
            topk = torch.div(sources.shape[1] + sizes - 1, sizes, rounding_mode="floor")  # ceil(L / sources)
        hidden = []
        try:
            for i, block in enumerate(self.blocks):
                on = i in self.homologous
                top_k_attention(block).num_keep = topk if on else None
                x = block(x, attn_mask=same if on else None)
                if i in wanted:
                    hidden.append(x)
        finally:
            for block in self.blocks:
                top_k_attention(block).num_keep = None
        return self.norm(x), hidden

    @staticmethod
    def unmix(rows: torch.Tensor, gid: torch.Tensor, visible: Visible) -> torch.Tensor:
        """(G, 1 + L, D) mixed rows -> (B, 1 + n, D): each sample's group cls row, then its kept rows."""
        per_sample = rows[gid]
        return torch.cat([per_sample[:, :1], visible.gather(per_sample[:, 1:])], dim=1)


def top_k_attention(block: nn.Module) -> TopKAttention:
    attn = block.attn
    if not isinstance(attn, TopKAttention):
        raise TypeError(f"expected a block with TopKAttention, got {type(attn).__name__}")
    return attn


def topk_count(num_tokens: int, sources: int) -> int:
    """Keys a token query keeps under top-k homologous attention: its own source's share, rounded up."""
    return math.ceil(num_tokens / sources)
