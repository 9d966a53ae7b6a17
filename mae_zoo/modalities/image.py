"""Image MAE (He et al. 2022), faithful to facebookresearch/mae ``models_mae.py``."""
from __future__ import annotations

from typing import Any

import torch

from mae_zoo.core.errors import ConfigError, check_patch_size
from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.core.objectives import MaskedMSE
from mae_zoo.core.pos_embed import sincos_2d
from mae_zoo.core.types import Layout, Tokens
from mae_zoo.core.vit import MAEDecoder, PatchProjection, ViTEncoder, init_mae_weights


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


class ImageMAE(MaskedAutoencoder):
    """ViT MAE on images. ``encoder``/``decoder`` are dicts of sizes (see ``conf/model``)."""

    datamodule_class = "mae_zoo.data.image.ImageDataModule"

    def __init__(
        self,
        encoder: dict,
        decoder: dict,
        mask: dict,
        optim: dict,
        img_size: int = 32,
        in_chans: int = 3,
        patch_size: int = 4,
        norm_pix_loss: bool = True,
        embed_pool: str = "cls",
        pixel_mean: list[float] | None = None,
        pixel_std: list[float] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(mask=mask, optim=optim, seed=seed)
        check_patch_size(patch_size, img_size)
        if embed_pool not in ("cls", "mean"):
            raise ConfigError(f"embed_pool must be 'cls' or 'mean', got '{embed_pool}'")
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_pool = embed_pool
        grid = (img_size // patch_size, img_size // patch_size)
        self.layout = Layout("grid", ("h", "w"), grid)
        self.mask_generator.check(self.layout)

        enc_dim, dec_dim = encoder["embed_dim"], decoder["embed_dim"]
        self.encoder = ViTEncoder(
            PatchProjection(in_chans, (patch_size, patch_size), enc_dim),
            sincos_2d(enc_dim, *grid, cls_token=True),
            **encoder,
        )
        self.decoder = MAEDecoder(
            enc_dim, sincos_2d(dec_dim, *grid, cls_token=True), patch_size * patch_size * in_chans, **decoder
        )
        self.objective = MaskedMSE(norm_pix_loss=norm_pix_loss)
        init_mae_weights(self)
        mean = torch.tensor(pixel_mean if pixel_mean is not None else [0.0] * in_chans).view(1, -1, 1, 1)
        std = torch.tensor(pixel_std if pixel_std is not None else [1.0] * in_chans).view(1, -1, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    @property
    def grid(self) -> tuple[int, int]:
        return self.layout.shape  # type: ignore[return-value]

    def tokenize(self, batch: Any) -> Tokens:
        images = self.batch_inputs(batch)
        if images.shape[-2:] != tuple(s * self.patch_size for s in self.grid):
            raise ValueError(f"expected images of {self.grid[0] * self.patch_size}px, got {tuple(images.shape)}")
        patches = patchify(images, self.patch_size)
        return Tokens(inputs=patches, target=patches, layout=self.layout)

    def embed_tokens(self, batch: Any) -> torch.Tensor:
        """Per-patch features of the unmasked image, (B, L, D), cls row excluded (token-level probes)."""
        return self.encoder(self.tokenize(batch).inputs).latent[:, self.encoder.num_prefix :]

    def embed(self, batch: Any) -> torch.Tensor:
        latent = self.encoder(self.tokenize(batch).inputs).latent
        return latent[:, 0] if self.embed_pool == "cls" else latent[:, 1:].mean(dim=1)

    @torch.no_grad()
    def visualize(self, batch: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """(3, N, C, H, W) in [0, 1]: input | masked input | reconstruction with visible patches pasted.

        With norm_pix_loss the prediction is de-normalised with each patch's true mean and std
        (the usual MAE visualisation; it uses information the model did not see).
        """
        out = self(batch, generator=generator)
        target = self.tokenize(batch).target.float()
        pred = out.pred.float()
        if self.objective.norm_pix_loss:
            mean = target.mean(-1, keepdim=True)
            std = (target.var(-1, keepdim=True) + self.objective.eps).sqrt()
            pred = pred * std + mean
        hidden = out.mask[..., None].float()
        pasted = target * (1 - hidden) + pred * hidden
        masked = target * (1 - hidden)
        images = [unpatchify(x, self.patch_size, self.grid, self.in_chans) for x in (target, masked, pasted)]
        denorm = [(x * self.pixel_std + self.pixel_mean).clamp(0, 1) for x in images]
        # Hidden patches show as mid grey in the masked view.
        denorm[1] = torch.where(
            unpatchify(hidden.expand_as(target), self.patch_size, self.grid, self.in_chans) > 0,
            torch.full_like(denorm[1], 0.5),
            denorm[1],
        )
        return torch.stack(denorm)
