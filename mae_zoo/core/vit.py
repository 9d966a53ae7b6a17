"""Token-dropping ViT encoder and MAE decoder built from timm blocks (fused SDPA attention).

Attribute names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks``, ``norm``), so the encoder's state dict is already timm-native.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block


def layer_norm(eps: float = 1e-6) -> type[nn.LayerNorm]:
    return partial(nn.LayerNorm, eps=eps)  # type: ignore[return-value]


class PatchProjection(nn.Module):
    """A Conv2d/Conv3d patch embedding applied to already-flattened patch vectors.

    Tokenizers flatten each patch channel-last (``(p, p, C)`` or ``(t, p, p, C)``), so the conv
    weight viewed as ``(D, *kernel, C)`` is exactly the equivalent Linear. Keeping the conv
    parameter makes the state dict load straight into timm, and projecting flattened vectors lets
    the encoder embed only the visible patches.
    """

    def __init__(self, in_chans: int, kernel: tuple[int, ...], embed_dim: int) -> None:
        super().__init__()
        conv = nn.Conv2d if len(kernel) == 2 else nn.Conv3d
        self.proj = conv(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    @property
    def in_features(self) -> int:
        return self.proj.weight[0].numel()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight.movedim(1, -1).reshape(self.proj.out_channels, -1)
        # Raw pixels arrive in fp32; under FSDP mixed precision the weight itself is bf16.
        return F.linear(patches.to(weight.dtype), weight, self.proj.bias)


@dataclass
class Visible:
    """Which tokens an encoder saw and how to put them back.

    ``ids_keep`` (B, n): indices of the tokens fed to the encoder, visible ones first in position
    order; ``padding`` (B, n) is True where a sample had fewer than n visible tokens and the slot
    holds a hidden token that attention must ignore (None when all samples have n visible tokens);
    ``ids_restore`` (B, L) undoes the ordering ``[kept..., the rest...]``.
    """

    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    padding: torch.Tensor | None

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "Visible":
        visible_counts = (~mask).sum(dim=1)
        n = int(visible_counts.max())
        ids_shuffle = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        padding = None
        if int(visible_counts.min()) != n:
            padding = torch.arange(n, device=mask.device)[None, :] >= visible_counts[:, None]
        return cls(ids_shuffle[:, :n], ids_restore, padding)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Select the kept rows of a (B, L, C) tensor."""
        return torch.gather(x, 1, self.ids_keep[..., None].expand(-1, -1, x.shape[-1]))

    def attn_mask(self, num_prefix: int) -> torch.Tensor | None:
        """Boolean SDPA mask (True = attend) of shape (B, 1, 1, prefix + n), or None."""
        if self.padding is None:
            return None
        prefix = self.padding.new_zeros(self.padding.shape[0], num_prefix)
        return ~torch.cat([prefix, self.padding], dim=1)[:, None, None, :]


@dataclass
class Encoded:
    latent: torch.Tensor  # (B, prefix + n, D), after the final norm
    visible: Visible | None  # None when the encoder saw every token


class TransformerStack(nn.Module):
    """Plain pre-norm transformer blocks (timm ``Block``) with an optional final norm."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        attn_layer: type[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        rates = torch.linspace(0, drop_path, depth).tolist() if depth else []
        # attn_layer: timm's fused-qkv Attention unless a modality needs another (VideoMAE's q/v-only biases).
        extra = {"attn_layer": attn_layer} if attn_layer is not None else {}
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=r, norm_layer=layer_norm(norm_eps), **extra)
            for r in rates
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def run_blocks(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask)
        return self.norm(x)


class ViTEncoder(TransformerStack):
    """MAE encoder: embed the visible patches, add fixed positions, prepend cls, run the blocks."""

    def __init__(
        self,
        patch_embed: PatchProjection,
        pos_table: torch.Tensor,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        cls_token: bool = True,
    ) -> None:
        super().__init__(embed_dim, depth, num_heads, mlp_ratio, qkv_bias, drop_path, norm_eps)
        self.patch_embed = patch_embed
        self.num_prefix = 1 if cls_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cls_token else None
        # Fixed table, stored as a frozen Parameter (as the official code) so it is in the state dict.
        self.pos_embed = nn.Parameter(pos_table[None].clone(), requires_grad=False)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> Encoded:
        pos = self.pos_embed[:, self.num_prefix :].expand(tokens.shape[0], -1, -1)
        visible = None
        if mask is not None:
            visible = Visible.from_mask(mask)
            tokens, pos = visible.gather(tokens), visible.gather(pos)
        x = self.patch_embed(tokens) + pos
        if self.cls_token is not None:
            cls = self.cls_token + self.pos_embed[:, :1]
            x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
        attn_mask = visible.attn_mask(self.num_prefix) if visible is not None else None
        return Encoded(self.run_blocks(x, attn_mask), visible)


class MAEDecoder(TransformerStack):
    """MAE decoder: Linear -> mask tokens -> unshuffle -> + fixed positions -> blocks -> norm -> Linear."""

    def __init__(
        self,
        encoder_dim: int,
        pos_table: torch.Tensor,
        out_dim: int,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        num_prefix: int = 1,
    ) -> None:
        super().__init__(embed_dim, depth, num_heads, mlp_ratio, qkv_bias, 0.0, norm_eps)
        self.num_prefix = num_prefix
        self.decoder_embed = nn.Linear(encoder_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.decoder_pos_embed = nn.Parameter(pos_table[None].clone(), requires_grad=False)
        self.decoder_pred = nn.Linear(embed_dim, out_dim)

    def forward(self, encoded: Encoded) -> torch.Tensor:
        """Predictions for every token, (B, L, out_dim); the prefix (cls) row is dropped."""
        x = self.decoder_embed(encoded.latent)
        prefix, tokens = x[:, : self.num_prefix], x[:, self.num_prefix :]
        visible = encoded.visible
        if visible is not None:
            mask_token = self.mask_token.to(tokens.dtype)
            if visible.padding is not None:
                tokens = torch.where(visible.padding[..., None], mask_token, tokens)
            num_tokens = visible.ids_restore.shape[1]
            fill = mask_token.expand(tokens.shape[0], num_tokens - tokens.shape[1], -1)
            tokens = torch.cat([tokens, fill], dim=1)
            tokens = torch.gather(tokens, 1, visible.ids_restore[..., None].expand(-1, -1, tokens.shape[-1]))
        x = torch.cat([prefix, tokens], dim=1) + self.decoder_pos_embed
        x = self.run_blocks(x)
        return self.decoder_pred(x[:, self.num_prefix :])


def init_linear_or_norm(m: nn.Module) -> None:
    """The MAE-family init of one Linear (xavier-uniform, zero bias) or LayerNorm (1, 0); other modules
    are left alone. Called per module, in module order, so seeded inits keep their draw order."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def init_mae_weights(module: nn.Module) -> None:
    """Official MAE init: xavier-uniform Linear (and the flattened patch conv), zero bias,
    LayerNorm 1/0, cls and mask tokens N(0, 0.02)."""
    for m in module.modules():
        init_linear_or_norm(m)
        if isinstance(m, PatchProjection):
            w = m.proj.weight
            bound = math.sqrt(6.0 / (w.shape[0] + w[0].numel()))
            nn.init.uniform_(w, -bound, bound)  # xavier on the (D, C*k*k) view; bias keeps torch's init
    for name, p in module.named_parameters():
        if name.rsplit(".", 1)[-1] in ("cls_token", "mask_token"):
            nn.init.normal_(p, std=0.02)
