"""Token-dropping ViT encoder and MAE decoder built from timm blocks (fused SDPA attention).

Attribute names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks``, ``norm``), so the encoder's state dict is already timm-native.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block
from torch import Tensor

from mae_zoo.core.types import Decoded, Encoded, Visible, keep_indices


def layer_norm(eps: float = 1e-6) -> type[nn.LayerNorm]:
    return partial(nn.LayerNorm, eps=eps)  # type: ignore[return-value]  # timm takes any norm factory


class PatchProjection(nn.Module):
    """A Conv2d/Conv3d patch embedding applied to already-flattened patch vectors.

    Tokenizers flatten each patch channel-last (``(p, p, C)`` or ``(t, p, p, C)``), so the conv
    weight viewed as ``(D, *kernel, C)`` is exactly the equivalent Linear. Keeping the conv
    parameter makes the state dict load straight into timm, and projecting flattened vectors lets
    the encoder embed only the visible patches.
    """

    def __init__(self, in_chans: int, kernel: tuple[int, ...], embed_dim: int) -> None:
        super().__init__()
        self.proj: nn.Conv2d | nn.Conv3d
        if len(kernel) == 2:
            self.proj = nn.Conv2d(
                in_chans, embed_dim, kernel_size=(kernel[0], kernel[1]), stride=(kernel[0], kernel[1])
            )
        elif len(kernel) == 3:
            size = (kernel[0], kernel[1], kernel[2])
            self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=size, stride=size)
        else:
            raise ValueError(f"patch kernels are 2-D (image) or 3-D (video tubes), got {kernel}")

    @property
    def in_features(self) -> int:
        return self.proj.weight[0].numel()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight.movedim(1, -1).reshape(self.proj.out_channels, -1)
        # Raw pixels arrive in fp32; under FSDP mixed precision the weight itself is bf16.
        return F.linear(patches.to(weight.dtype), weight, self.proj.bias)


class TransformerStack(nn.Module):
    """Plain pre-norm transformer blocks (timm ``Block``) and a final norm; the shared base of every
    transformer encoder and decoder. ``num_prefix``: leading non-token rows (a cls token)."""

    num_prefix: int = 0
    out_dim: int = 0  # a decoder's per-position prediction width (0: an encoder)

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
        self.dim = dim
        rates = torch.linspace(0, drop_path, depth).tolist() if depth else []
        # attn_layer: timm's fused-qkv Attention unless a modality needs another (VideoMAE's q/v-only biases).
        attn = attn_layer or Attention
        norm = layer_norm(norm_eps)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=r, norm_layer=norm, attn_layer=attn)
            for r in rates
        )
        self.norm: nn.Module = nn.LayerNorm(dim, eps=norm_eps)  # fine-tuning may swap it for Identity

    def forward_blocks(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, keep: Sequence[int] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the blocks and the final norm; also return the output of each block in ``keep``
        (before the final norm, in block order): the one way encoders and decoders hand out
        intermediate features (timm's ``forward_intermediates``)."""
        wanted = keep_indices(keep, len(self.blocks), f"a stack of {len(self.blocks)} blocks")
        hidden = []
        for i, block in enumerate(self.blocks):
            x = block(x, attn_mask=attn_mask)
            if i in wanted:
                hidden.append(x)
        return self.norm(x), hidden


class ViTEncoder(TransformerStack):
    """MAE encoder: embed the visible patches, add fixed positions, prepend cls, run the blocks."""

    def __init__(
        self,
        patch_embed: PatchProjection,
        pos_table: torch.Tensor,
        embed_dim: int,
        cls_token: bool = True,
        **stack: Any,
    ) -> None:
        """``stack``: the :class:`TransformerStack` sizes (depth, num_heads, mlp_ratio, ...)."""
        super().__init__(embed_dim, **stack)
        self.patch_embed = patch_embed
        self.num_prefix = 1 if cls_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cls_token else None
        # Fixed table, stored as a frozen Parameter (as the official code) so it is in the state dict.
        self.pos_embed = nn.Parameter(pos_table[None].clone(), requires_grad=False)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, keep: Sequence[int] = ()) -> Encoded:
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
        latent, hidden = self.forward_blocks(x, attn_mask, keep)
        return Encoded(latent, visible, self.num_prefix, hidden)


class MaskTokenViTEncoder(ViTEncoder):
    """SimMIM's encoder: every token runs through the blocks, the hidden ones replaced by a learnable
    [MASK] embedding after the patch projection (``x * (1 - w) + m * w``), so any mask, of any count
    per sample, needs no padding; it costs the full sequence. ``Encoded.visible`` is None: every row is there."""

    def __init__(self, patch_embed: PatchProjection, pos_table: torch.Tensor, embed_dim: int, **kwargs: Any) -> None:
        super().__init__(patch_embed, pos_table, embed_dim, **kwargs)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, keep: Sequence[int] = ()) -> Encoded:
        x = self.patch_embed(tokens)
        if mask is not None:
            w = mask[..., None].to(x.dtype)
            x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        x = x + self.pos_embed[:, self.num_prefix :]
        if self.cls_token is not None:
            cls = self.cls_token + self.pos_embed[:, :1]
            x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
        latent, hidden = self.forward_blocks(x, None, keep)
        return Encoded(latent, None, self.num_prefix, hidden)


class LinearPixelHead(nn.Module):
    """SimMIM's decoder: a 1x1 convolution to ``patch² * C`` channels and a PixelShuffle on the token
    map, that is one Linear per token to its own patch's pixels. Needs an encoder that keeps every token."""

    def __init__(self, encoder_dim: int, out_dim: int) -> None:
        super().__init__()
        self.pred = nn.Linear(encoder_dim, out_dim)
        self.out_dim = out_dim

    def forward(self, encoded: Encoded, keep: Sequence[int] = ()) -> Decoded:
        if keep:
            raise ValueError("the linear pixel head has no blocks to hand out")
        if encoded.visible is not None:
            raise ValueError("the linear pixel head predicts from every token: use a mask-token encoder")
        return Decoded(self.pred(encoded.latent[:, encoded.num_prefix :]))


class MAEDecoder(TransformerStack):
    """MAE decoder: Linear -> mask tokens -> unshuffle -> + fixed positions -> blocks -> norm -> Linear."""

    def __init__(
        self, encoder_dim: int, pos_table: Tensor, out_dim: int, embed_dim: int = 512, num_prefix: int = 1, **stack: Any
    ) -> None:
        """``stack``: the :class:`TransformerStack` sizes; MAE's decoder defaults to 8 blocks of 16 heads."""
        super().__init__(embed_dim, **{"depth": 8, "num_heads": 16, **stack})
        self.num_prefix = num_prefix
        self.decoder_embed = nn.Linear(encoder_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.decoder_pos_embed = nn.Parameter(pos_table[None].clone(), requires_grad=False)
        self.decoder_pred = nn.Linear(embed_dim, out_dim)
        self.out_dim = out_dim

    def forward(self, encoded: Encoded, keep: Sequence[int] = ()) -> Decoded:
        """Predictions for every token, (B, L, out_dim); the prefix (cls) row is dropped."""
        x = self.unshuffle(encoded) + self.decoder_pos_embed
        x, hidden = self.forward_blocks(x, keep=keep)
        return Decoded(self.decoder_pred(x[:, self.num_prefix :]), hidden)

    def unshuffle(self, encoded: Encoded) -> Tensor:
        """(B, prefix + L, embed_dim): the projected encoder rows back in position order, mask tokens
        at the hidden positions (before the position table is added)."""
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
        return torch.cat([prefix, tokens], dim=1)


def attention_weights(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, heads, N, N) softmax attention of a timm ``Block`` on its input ``x`` (``attn_mask``: the
    boolean SDPA mask it ran with, True = attend): the maps fused SDPA never materialises, recomputed
    for the blocks that need them (attention-guided masking, relation distillation)."""
    attn: Any = block.attn  # a timm Block
    h = block.norm1(x)  # type: ignore[operator]
    b, n, _ = h.shape
    project = getattr(attn, "qkv_projection", attn.qkv)
    q, k, _ = project(h).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q.float() * attn.scale) @ k.float().transpose(-2, -1)
    if attn_mask is not None:
        logits = logits.masked_fill(~attn_mask, float("-inf"))
    return logits.softmax(dim=-1)


@contextmanager
def block_inputs(blocks: Sequence[nn.Module]) -> Iterator[list[tuple[torch.Tensor, torch.Tensor | None] | None]]:
    """While open, record what each of ``blocks`` was last called with, as (input, attn_mask), in the
    order of ``blocks`` (None until called): what :func:`attention_weights` needs to rebuild that
    block's attention maps after the forward."""
    seen: list[tuple[torch.Tensor, torch.Tensor | None] | None] = [None] * len(blocks)

    def record(k: int, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen[k] = (args[0], kwargs.get("attn_mask"))

    handles = [b.register_forward_pre_hook(partial(record, k), with_kwargs=True) for k, b in enumerate(blocks)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


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
