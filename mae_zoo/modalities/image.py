"""Image MAE (He et al. 2022), faithful to facebookresearch/mae ``models_mae.py``."""

from __future__ import annotations

from typing import Any

import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Decoded, Encoded, Keep, Layout, Masks, Tokens
from mae_zoo.modalities.pixels import PixelMAE
from mae_zoo.nets.cae import CAEDecoder
from mae_zoo.nets.pos_embed import sincos_2d
from mae_zoo.nets.vit import (
    LinearPixelHead,
    MAEDecoder,
    MaskTokenViTEncoder,
    PatchProjection,
    ViTEncoder,
    init_mae_weights,
)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, h*w, p*p*C): patches row-major, channel the fastest index in a patch."""
    b, c, height, width = images.shape
    p = patch_size
    h, w = height // p, width // p
    x = images.reshape(b, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, h * w, p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    b = patches.shape[0]
    h, w = grid
    p = patch_size
    x = patches.reshape(b, h, w, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, h * p, w * p)


# model.encoder.kind: MAE's token-dropping encoder, or SimMIM's mask-token encoder (full sequence).
ENCODERS = {"dropping": ViTEncoder, "masked": MaskTokenViTEncoder}


class ImageMAE(PixelMAE):
    """ViT MAE on images (B, C, H, W). ``encoder``/``decoder`` are dicts of sizes (see ``conf/model``)
    and ``kind`` (encoder: dropping | masked; decoder: mae | linear, SimMIM's head | cae, CAE's regressor
    and decoder with its alignment term);
    ``pixel``: ``img_size``, ``in_chans``, ``patch_size``, ``embed_pool`` (cls | mean), ``pixel_mean``,
    ``pixel_std`` (:class:`PixelMAE`) and the shared entries (mask, objective, ..., seed)."""

    datamodule_class = "mae_zoo.data.image.ImageDataModule"
    embed_pools = ("cls", "mean")

    def __init__(self, encoder: dict, decoder: dict, **pixel: Any) -> None:
        super().__init__(**pixel)
        patch_size, in_chans = self.patch_size, self.in_chans
        grid = (self.img_size // patch_size, self.img_size // patch_size)
        self.set_layout(Layout("grid", ("h", "w"), grid))
        encoder, decoder = dict(encoder), dict(decoder)
        encoder_kind, decoder_kind = encoder.pop("kind", "dropping"), decoder.pop("kind", "mae")
        if encoder_kind not in ENCODERS or decoder_kind not in ("mae", "linear", "cae"):
            raise ConfigError(
                f"model.encoder.kind must be one of {sorted(ENCODERS)} and model.decoder.kind one of "
                f"['cae', 'linear', 'mae'], got {encoder_kind!r} and {decoder_kind!r}"
            )
        if decoder_kind == "cae":
            self.check_cae(encoder_kind)
        if decoder_kind == "linear" and encoder_kind != "masked":
            raise ConfigError(
                "model.decoder.kind=linear (SimMIM's head) predicts every patch from its own encoder token: "
                "it needs model.encoder.kind=masked (the dropping encoder has no rows for hidden patches)"
            )
        enc_dim, out_dim = encoder["embed_dim"], patch_size * patch_size * in_chans
        self.encoder = ENCODERS[encoder_kind](
            PatchProjection(in_chans, (patch_size, patch_size), enc_dim),
            sincos_2d(enc_dim, *grid, cls_token=True),
            **encoder,
        )
        if decoder_kind == "linear":
            self.decoder = LinearPixelHead(enc_dim, out_dim)
        elif decoder_kind == "cae":
            self.decoder = CAEDecoder(enc_dim, sincos_2d(decoder["embed_dim"], *grid), out_dim, **decoder)
        else:
            dec_dim = decoder["embed_dim"]
            self.decoder = MAEDecoder(enc_dim, sincos_2d(dec_dim, *grid, cls_token=True), out_dim, **decoder)
        init_mae_weights(self)

    def check_cae(self, encoder_kind: str) -> None:
        """CAE's regressor reads the visible latents of the token-dropping encoder, one count per sample,
        and predicts the hidden patches only."""
        if encoder_kind != "dropping":
            raise ConfigError(
                "model.decoder.kind=cae regresses hidden latents from the visible ones: it needs "
                f"model.encoder.kind=dropping, got {encoder_kind!r}"
            )
        if not self.mask_generator.exact_count:
            raise ConfigError(
                f"model.decoder.kind=cae needs the same number of hidden patches in every sample, and mask "
                f"{self.mask_generator.name} varies it: use mask=block mask.exact=true (CAE's own) or mask=random"
            )
        if self.objective.positions != "hidden":
            raise ConfigError(
                f"model.decoder.kind=cae predicts the hidden patches only: objective.positions must be 'hidden', "
                f"got {self.objective.positions!r}"
            )

    def decode(self, encoded: Encoded, tokens: Tokens, masks: Masks, keep: Keep = ()) -> Decoded:
        if not isinstance(self.decoder, CAEDecoder):
            return super().decode(encoded, tokens, masks, keep)
        # CAE's alignment target: the encoder's own latents of the hidden patches, seen alone, with no
        # gradient. The official code runs a no-grad copy of the encoder whose weights are the encoder's
        # tensors themselves, which is this same module under no_grad.
        with torch.no_grad():
            target = self.encoder(tokens.inputs, ~masks.hidden)
        return self.decoder(encoded, target, keep=keep)

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.layout.shape
        return h, w

    def tokenize(self, batch: Any) -> Tokens:
        images = self.batch_inputs(batch)
        if images.shape[-2:] != tuple(s * self.patch_size for s in self.grid):
            raise ValueError(f"expected images of {self.grid[0] * self.patch_size}px, got {tuple(images.shape)}")
        patches = patchify(images, self.patch_size)
        return Tokens(inputs=patches, target=patches, layout=self.layout)

    @torch.no_grad()
    def visualize(self, batch: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """(3, N, C, H, W) in [0, 1]: input | masked input (hidden patches grey) | reconstruction with
        the visible patches pasted in (predictions de-normalised by the objective)."""
        out = self(batch, generator=generator)
        target = self.tokenize(batch).target.float()
        pred = self.pixels.unnormalize_tokens(self.objective.denormalize(out.pred.float(), target))
        views = self.pixels.views(self.pixels.unnormalize_tokens(target), pred, out.mask, out.predicted)
        return torch.stack([unpatchify(x, self.patch_size, self.grid, self.in_chans) for x in views]).clamp(0, 1)
