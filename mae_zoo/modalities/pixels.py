"""What the pixel modalities (image, video) share: square frames cut into patches, the input
normalisation, the pooling choice and the reconstruction views."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from mae_zoo.core.errors import check_patch_size
from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.objectives import MaskedMSE


class PixelStats(nn.Module):
    """Per-channel input normalisation (``pixel_mean``, ``pixel_std``; None: 0 and 1) of images
    (B, C, H, W) or clips (B, C, T, H, W). Non-persistent buffers: checkpoints stay data-agnostic."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, mean: Sequence[float] | None, std: Sequence[float] | None, channels: int, spatial_dims: int
    ) -> None:
        super().__init__()
        self.channels, self.spatial_dims = channels, spatial_dims
        self.register_buffer("mean", torch.tensor(mean if mean is not None else [0.0] * channels), persistent=False)
        self.register_buffer("std", torch.tensor(std if std is not None else [1.0] * channels), persistent=False)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, ...) normalised input -> pixel values in [0, 1] units."""
        shape = (1, self.channels) + (1,) * self.spatial_dims
        return x.float() * self.std.view(shape) + self.mean.view(shape)

    def unnormalize_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The same for flattened tokens, whose fastest index is the channel."""
        reps = tokens.shape[-1] // self.channels
        return tokens * self.std.repeat(reps) + self.mean.repeat(reps)

    @staticmethod
    def views(
        target: torch.Tensor, pred: torch.Tensor, hidden: torch.Tensor, predicted: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token-space pictures in [0, 1] units: the input, the input with hidden tokens grey, and the
        reconstruction (visible tokens pasted in; hidden tokens the decoder did not predict stay grey)."""
        hidden_f = hidden[..., None].to(target.dtype)
        shown = predicted[..., None].to(target.dtype) * hidden_f
        grey = torch.full_like(target, 0.5)
        masked = target * (1 - hidden_f) + grey * hidden_f
        recon = target * (1 - hidden_f) + pred * shown + grey * (hidden_f - shown)
        return target, masked, recon


class PixelMAE(MaskedAutoencoder):
    """Base of the image and video MAEs: ``img_size`` square frames of ``in_chans`` channels, cut into
    ``patch_size`` patches; inputs normalised with ``pixel_mean``/``pixel_std``; ``embed_pool`` one of
    ``embed_pools`` (None: the first). The remaining keyword arguments are the shared entries."""

    spatial_dims: int = 2  # 2: images (B, C, H, W); 3: clips (B, C, T, H, W)
    frame_name: str = "image size"

    @classmethod
    def default_objective(cls, hparams: Mapping[str, Any]) -> dict:
        """MAE's pixel loss, norm-pix MSE on hidden patches (image MAE, SparK); video and multi-channel
        MAEs override it with their papers' variants."""
        return MaskedMSE.spec(norm_pix_loss=True)

    def __init__(
        self,
        img_size: int = 32,
        in_chans: int = 3,
        patch_size: int = 4,
        embed_pool: str | None = None,
        pixel_mean: list[float] | None = None,
        pixel_std: list[float] | None = None,
        **shared: Any,
    ) -> None:
        super().__init__(**shared)
        check_patch_size(patch_size, img_size, self.frame_name)
        self.embed_pool = self.check_embed_pool(embed_pool or self.embed_pools[0])
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.pixels = PixelStats(pixel_mean, pixel_std, in_chans, self.spatial_dims)
