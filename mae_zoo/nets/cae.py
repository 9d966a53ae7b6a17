"""CAE, the Context Autoencoder (Chen et al., IJCV 2023), after Atten4Vis/CAE ``models/modeling_cae.py``
and ``modeling_cae_helper.py``: a latent contextual regressor and a reconstruction decoder behind the
shared token-dropping encoder.

The regressor predicts the latents of the hidden patches from the visible ones: [MASK] queries at the
hidden positions cross-attend to ``[visible latents, the queries themselves]`` (no self-attention
block of their own). An alignment term pulls these predictions towards the encoder's own latents of
the hidden patches, computed with no gradient (the caller supplies them). The decoder then reconstructs
the hidden patches from the predicted latents alone, so reconstruction cannot bypass the regressor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import Tensor

from mae_zoo.core.types import Decoded, Encoded, keep_indices
from mae_zoo.nets.vit import layer_norm


def _rows(x: Tensor, ids: Tensor) -> Tensor:
    """The rows ``ids`` (B, m) of ``x`` (B or 1, L, D)."""
    return x.expand(ids.shape[0], -1, -1).gather(1, ids[..., None].expand(-1, -1, x.shape[-1]))


def _layer_scale(dim: int, value: float) -> nn.Parameter:
    """Learnable per-channel residual scale at ``value``; 0 means none (a fixed 1, as the official code)."""
    if value > 0:
        return nn.Parameter(torch.full((dim,), float(value)))
    return nn.Parameter(torch.ones(dim), requires_grad=False)


class CrossAttention(nn.Module):
    """Multi-head attention with separate query, key and value inputs. As the official layer, the key
    projection has no bias (one would add a per-query constant to the logits, which softmax removes)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        b, n, c = q.shape

        def heads(x: Tensor) -> Tensor:
            return x.reshape(b, x.shape[1], self.num_heads, c // self.num_heads).transpose(1, 2)

        x = F.scaled_dot_product_attention(heads(self.q(q)), heads(self.k(k)), heads(self.v(v)))
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class RegressorBlock(nn.Module):
    """One block of the latent contextual regressor (official ``RegressorBlock``)::

        x = q + g1 * CrossAttn(LN_q(q + pos_q), LN_k(kv + pos_kv), LN_v(kv))
        x = LN(x)                                  # post-norm, then the MLP residual
        x = x + g2 * MLP(x)

    Positions enter the queries and keys, not the values."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, layer_scale: float = 0.1) -> None:
        super().__init__()
        norm = layer_norm()
        self.norm1_q, self.norm1_k, self.norm1_v, self.norm2_cross = norm(dim), norm(dim), norm(dim), norm(dim)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.mlp_cross = Mlp(dim, int(dim * mlp_ratio))
        self.gamma_1_cross = _layer_scale(dim, layer_scale)
        self.gamma_2_cross = _layer_scale(dim, layer_scale)

    def forward(self, x_q: Tensor, x_kv: Tensor, pos_q: Tensor, pos_kv: Tensor) -> Tensor:
        attended = self.cross_attn(self.norm1_q(x_q + pos_q), self.norm1_k(x_kv + pos_kv), self.norm1_v(x_kv))
        x = self.norm2_cross(x_q + self.gamma_1_cross * attended)
        return x + self.gamma_2_cross * self.mlp_cross(x)


class CAEDecoder(nn.Module):
    """Regressor, alignment term and reconstruction decoder of CAE, at width ``embed_dim``.

    ``forward(encoded, target)``: ``encoded`` is the token-dropping encoder's output on the visible
    patches (the same count in every sample); ``target`` the encoder's output on the hidden patches
    alone, computed without gradient (None: no alignment term). Returns predictions for the hidden
    positions (B, L, ``out_dim``), zero elsewhere, and ``terms={"align": align_weight * MSE}``.

    Official defaults (``tools/run_pretraining.py``, ``scripts/cae_base_*.sh``): regressor and decoder
    4 blocks each, 12 heads, width = the encoder's (768 for ViT-B), layer scale 0.1, alignment weight 2.
    A width other than the encoder's adds the official Linear + LayerNorm from encoder to regressor,
    applied to the visible latents and to the alignment targets alike.
    """

    def __init__(
        self,
        encoder_dim: int,
        pos_table: Tensor,
        out_dim: int,
        embed_dim: int = 768,
        depth: int = 4,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        regressor_depth: int = 4,
        align_weight: float = 2.0,
        layer_scale: float = 0.1,
    ) -> None:
        super().__init__()
        if regressor_depth < 1:
            raise ValueError(f"model.decoder.regressor_depth must be >= 1, got {regressor_depth}")
        self.out_dim, self.align_weight = out_dim, float(align_weight)
        self.encoder_to_regressor: nn.Module = nn.Identity()
        if encoder_dim != embed_dim:
            self.encoder_to_regressor = nn.Sequential(nn.Linear(encoder_dim, embed_dim), layer_norm()(embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # (1, L, D) fixed table of the patch positions (no cls row: the regressor never reads cls).
        self.pos_embed = nn.Parameter(pos_table[None].clone(), requires_grad=False)
        self.regressor_blocks = nn.ModuleList(
            RegressorBlock(embed_dim, num_heads, mlp_ratio, layer_scale) for _ in range(regressor_depth)
        )
        self.regressor_norm = layer_norm()(embed_dim)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias=True,
                init_values=layer_scale if layer_scale > 0 else None,
                norm_layer=layer_norm(),
            )
            for _ in range(depth)
        )
        self.norm = layer_norm()(embed_dim)
        self.head = nn.Linear(embed_dim, out_dim)

    @staticmethod
    def hidden_ids(encoded: Encoded) -> Tensor:
        """(B, m) positions of the hidden patches, in position order: the rows ``Visible.from_mask(~mask)``
        keeps, so they line up with an encoder run on the hidden patches alone."""
        visible = encoded.visible
        if visible is None:
            raise ValueError("CAE's regressor reads the visible latents of a token-dropping encoder")
        if visible.padding is not None:
            raise ValueError(
                "CAE needs the same number of hidden patches in every sample (as the official code): use an "
                "exact-count mask (mask=random, or mask=block mask.exact=true)"
            )
        ids_shuffle = torch.argsort(visible.ids_restore, dim=1)  # [visible..., hidden...], each in order
        return ids_shuffle[:, visible.ids_keep.shape[1] :]

    def regress(self, encoded: Encoded) -> tuple[Tensor, Tensor]:
        """Predicted latents of the hidden patches (B, m, D), after the regressor's norm, and their positions."""
        ids = self.hidden_ids(encoded)
        latent = self.encoder_to_regressor(encoded.tokens)
        assert encoded.visible is not None  # hidden_ids checked it
        pos_hidden = _rows(self.pos_embed, ids)
        pos_kv = torch.cat([_rows(self.pos_embed, encoded.visible.ids_keep), pos_hidden], dim=1)
        x = self.mask_token.to(latent.dtype).expand(latent.shape[0], ids.shape[1], -1)
        for block in self.regressor_blocks:
            x = block(x, torch.cat([latent, x.to(latent.dtype)], dim=1), pos_hidden, pos_kv)
        return self.regressor_norm(x), ids

    def alignment(self, predicted: Tensor, ids: Tensor, target: Encoded) -> Tensor:
        """``align_weight`` x MSE between the predicted latents and the (projected) target latents; the
        target carries no gradient, into the encoder nor into the projection (official: ``torch.no_grad``)."""
        if target.visible is None or not torch.equal(target.visible.ids_keep, ids):
            raise ValueError("the alignment target must be the encoder run on exactly the hidden patches")
        with torch.no_grad():
            aim = self.encoder_to_regressor(target.tokens.detach())
        return self.align_weight * F.mse_loss(predicted.float(), aim.float())

    def forward(self, encoded: Encoded, target: Encoded | None = None, keep: Sequence[int] = ()) -> Decoded:
        predicted, ids = self.regress(encoded)
        terms = {"align": self.alignment(predicted, ids, target)} if target is not None else {}
        wanted = keep_indices(keep, len(self.blocks), f"a decoder of {len(self.blocks)} blocks")
        x, hidden = predicted + _rows(self.pos_embed, ids), []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in wanted:
                hidden.append(x)
        y = self.head(self.norm(x))
        pred = y.new_zeros(y.shape[0], self.pos_embed.shape[1], self.out_dim)
        pred = pred.scatter(1, ids[..., None].expand(-1, -1, self.out_dim), y)
        return Decoded(pred, hidden, terms)
