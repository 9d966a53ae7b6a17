"""ChA-MAEViT (Chau et al., NeurIPS 2025; chaudatascience/cha_mae_vit): a channel-aware MAE for
multi-channel images (microscopy, satellite), on the shared step.

- tokens per channel: every channel's p x p patches are tokens of their own, projected by one shared
  projection, told apart by learnable channel tokens (layout ``grid:c,h,w``, channel outermost);
- dynamic channel-patch masking (``mask=channel_patch``, :mod:`mae_zoo.masks.channel_patch`);
- memory tokens: extra learnable prefix rows of the encoder (default 4);
- the channel-aware decoder: mask tokens carry the encoder's position and channel embeddings;
- the loss: norm-pix MSE + 0.01 Fourier-magnitude L1 on hidden tokens (``objective=masked_mse_fourier``);
- hybrid token fusion (``embed_pool=fused``): cls gated by attention pooling of the patch tokens.

Not here: the official DiChaViT diversity terms (weights 1e-6 to 1e-3) and the supervised proxy /
cross-entropy terms its tables train jointly; LayerScale (``init_values=1``); channel subsets per image.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Decoded, Encoded, Layout, Masks, Tokens
from mae_zoo.modalities.pixels import PixelMAE
from mae_zoo.nets.multichannel import ChAMAEEncoder, ChannelAwareDecoder, HybridTokenFusion
from mae_zoo.nets.vit import init_linear_or_norm
from mae_zoo.objectives.fourier import MaskedMSEFourier


def patchify_channels(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C * h * w, p * p): one token per channel and patch, channel outermost,
    patches row-major inside a channel."""
    b, c, height, width = images.shape
    p = patch_size
    h, w = height // p, width // p
    x = images.reshape(b, c, h, p, w, p).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(b, c * h * w, p * p)


def unpatchify_channels(tokens: torch.Tensor, patch_size: int, channels: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`patchify_channels`."""
    b = tokens.shape[0]
    h, w = grid
    p = patch_size
    x = tokens.reshape(b, channels, h, w, p, p).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(b, channels, h * p, w * p)


class ChAMAEViT(PixelMAE):
    """ChA-MAEViT on (B, C, H, W) images. ``encoder``/``decoder``: sizes from ``conf/model`` (the encoder
    must be the token-dropping kind); ``num_memory_tokens``: memory tokens (official 4);
    ``allow_single_channel``: opt in to 1-channel data, where channel masking and channel tokens
    have nothing to work with. ``pixel``: as :class:`PixelMAE` (``embed_pool``: cls | mean | fused)."""

    datamodule_class = "mae_zoo.data.multichannel.MultiChannelDataModule"
    embed_pools = ("cls", "mean", "fused")
    encoder: ChAMAEEncoder
    decoder: ChannelAwareDecoder

    def __init__(
        self, encoder: dict, decoder: dict, num_memory_tokens: int = 4, allow_single_channel: bool = False, **pixel: Any
    ) -> None:
        super().__init__(**pixel)
        channels, p = self.in_chans, self.patch_size
        if channels < 2 and not allow_single_channel:
            raise ConfigError(
                f"ChA-MAEViT learns across channels, but the data has {channels} channel "
                "(data.num_channels): channel masking would never hide anything and the channel tokens "
                "would be one bias. Use modality=image for single-channel images, or set "
                "module.allow_single_channel=true to run it anyway"
            )
        if num_memory_tokens < 0:
            raise ConfigError(f"module.num_memory_tokens must be >= 0, got {num_memory_tokens}")
        grid = (self.img_size // p, self.img_size // p)
        self.set_layout(Layout("grid", ("c", "h", "w"), (channels, *grid)))
        encoder, decoder = dict(encoder), dict(decoder)
        if encoder.pop("kind", "dropping") != "dropping" or decoder.pop("kind", "mae") != "mae":
            raise ConfigError("ChA-MAEViT uses a token-dropping encoder and an MAE-style decoder (model.*.kind)")
        enc_dim = encoder.pop("embed_dim")
        self.encoder = ChAMAEEncoder(channels, grid[0] * grid[1], p, enc_dim, num_memory_tokens, **encoder)
        self.decoder = ChannelAwareDecoder(enc_dim, p * p, num_prefix=1 + num_memory_tokens, **decoder)
        # Trained only by a supervised term (the official CE / proxy losses) or fine-tuning: a pure MAE
        # loss never reaches it, so it exists only when the probes ask for it.
        self.fusion = HybridTokenFusion(enc_dim, encoder["num_heads"]) if self.embed_pool == "fused" else None
        self._init_weights()

    def _init_weights(self) -> None:
        """Official init: trunc-normal(0.02) Linear weights, zero biases, LayerNorm 1/0; trunc-normal
        pos table, cls, memory and mask tokens; the patch conv keeps PyTorch's default; channel
        tokens stay orthogonal."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            else:
                init_linear_or_norm(m)
        for p in (self.encoder.pos_embed, self.encoder.cls_token, self.encoder.memory_tokens, self.decoder.mask_token):
            nn.init.trunc_normal_(p, std=0.02)

    @classmethod
    def default_objective(cls, hparams: Mapping[str, Any]) -> dict:
        return MaskedMSEFourier.spec(patch_size=int(hparams.get("patch_size", 4)), fourier_weight=0.01)

    @property
    def grid(self) -> tuple[int, int]:
        _, h, w = self.layout.shape
        return h, w

    def tokenize(self, batch: Any) -> Tokens:
        images = self.batch_inputs(batch)
        expected = (self.in_chans, self.grid[0] * self.patch_size, self.grid[1] * self.patch_size)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"expected (B, C, H, W) = (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}")
        tokens = patchify_channels(images, self.patch_size)
        return Tokens(inputs=tokens, target=tokens, layout=self.layout)

    def decode(self, encoded: Encoded, tokens: Tokens, masks: Masks, keep: Any = ()) -> Decoded:
        return self.decoder(encoded, self.encoder.embedding_table(), keep=keep)

    def embed(self, batch: Any, block: int | None = None) -> torch.Tensor:
        if self.embed_pool != "fused":
            return super().embed(batch, block)
        if self.fusion is None:
            raise ConfigError("embed_pool=fused needs the fusion module, built only when the model is made with it")
        encoded = self.encode(self.tokenize(batch), None, keep=() if block is None else (block,))
        latent = encoded.latent if block is None else encoded.intermediates[0]
        return self.fusion(latent[:, 0], latent[:, encoded.num_prefix :])

    @torch.no_grad()
    def visualize(self, batch: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """(3, N, 3, H, W) in [0, 1]: input | masked input (hidden patches grey) | reconstruction, each
        showing the first three channels as RGB, in the data's [0, 1] units."""
        out = self(batch, generator=generator)
        target = self.tokenize(batch).target.float()
        pred = self.objective.denormalize(out.pred.float(), target)
        c, p = self.in_chans, self.patch_size

        def in_pixels(tokens: torch.Tensor) -> torch.Tensor:  # per-channel tokens, in [0, 1] units
            return patchify_channels(self.pixels.unnormalize(unpatchify_channels(tokens, p, c, self.grid)), p)

        views = self.pixels.views(in_pixels(target), in_pixels(pred), out.mask, out.predicted)
        images = [unpatchify_channels(x, p, c, self.grid) for x in views]
        rgb = [x[:, :3] if c >= 3 else x[:, :1].expand(-1, 3, -1, -1) for x in images]
        return torch.stack(rgb).clamp(0, 1)
