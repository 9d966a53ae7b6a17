"""VideoMAE (Tong et al. 2022) and VideoMAE V2 dual masking (Wang et al. 2023).

Faithful to the official pre-training model (checked against ``transformers.VideoMAEForPreTraining``
in ``tests/test_video_oracle.py``):

* tubelet embedding: a Conv3d with kernel = stride = (tubelet, patch, patch), no cls token;
* a fixed **1-D** sinusoid table over the flattened (t, h, w) index, sin on even and cos on odd
  channels (VideoMAE's table, not MAE's 2-D one), recomputed for the grid rather than stored;
* attention with a learnable q bias and v bias and no k bias;
* the encoder sees only the visible tokens; the decoder has its own width, gets
  ``[visible tokens + their positions, mask token + positions to reconstruct]`` and predicts only
  the latter;
* target: per tube and **per channel** normalised pixels (after undoing the input normalisation),
  ``(x - mean) / (std + 1e-6)`` with the unbiased std; MSE over reconstructed, encoder-hidden tokens.

V2 dual masking: a decoder mask (``decoder_mask=running_cell``) chooses which positions the decoder
reconstructs, independently of the encoder mask; the loss covers positions that are hidden from the
encoder *and* reconstructed. Without a decoder mask the decoder reconstructs exactly the hidden
positions, which is V1.

Clips are (B, C, T, H, W) (the official layout; HF takes (B, T, C, H, W)). Tokens, masks and
``model(batch, mask=...)`` use the (t, h, w) flattening order, i.e. HF's ``bool_masked_pos``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning_fabric.utilities.apply_func import apply_to_collection
from torch import Generator, Tensor

from mae_zoo.core.errors import ConfigError, divisors
from mae_zoo.core.types import Decoded, Encoded, Keep, Layout, Masks, Tokens
from mae_zoo.modalities.pixels import PixelMAE
from mae_zoo.nets.pos_embed import Grid
from mae_zoo.nets.video import VideoDecoder, VideoEncoder, init_videomae_weights
from mae_zoo.nets.vit import PatchProjection
from mae_zoo.objectives import TubeNormalizedMSE


# ----------------------------------------------------------------------------------- tokens
def tubeletify(videos: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, t*h*w, tubelet*p*p*C): tubes in (t, h, w) order, channel fastest."""
    b, c, frames, height, width = videos.shape
    t, h, w = frames // tubelet, height // patch, width // patch
    x = videos.reshape(b, c, t, tubelet, h, patch, w, patch).permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(b, t * h * w, tubelet * patch * patch * c)


def untubeletify(tokens: torch.Tensor, tubelet: int, patch: int, grid: tuple[int, ...], channels: int) -> torch.Tensor:
    """Inverse of :func:`tubeletify`."""
    b = tokens.shape[0]
    t, h, w = grid
    x = tokens.reshape(b, t, h, w, tubelet, patch, patch, channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, channels, t * tubelet, h * patch, w * patch)


# ----------------------------------------------------------------------------------- the module
class VideoMAE(PixelMAE):
    """VideoMAE / VideoMAE V2 on clips (B, C, T, H, W) of ``num_frames`` frames, cut into tubes of
    ``tubelet_size`` frames. ``encoder``/``decoder`` are size dicts (``conf/model/videomae_*``);
    ``pixel``: frame size, channels, patch, pooling and normalisation (:class:`PixelMAE`) and the
    shared entries (mask, decoder_mask, objective, ..., seed)."""

    datamodule_class = "mae_zoo.data.video.VideoDataModule"
    embed_pools = ("mean",)  # no cls token: features are the mean of the tube tokens
    spatial_dims = 3
    frame_name = "frame size"

    def __init__(self, encoder: dict, decoder: dict, num_frames: int = 16, tubelet_size: int = 2, **pixel: Any) -> None:
        super().__init__(**pixel)
        if num_frames % tubelet_size:
            raise ConfigError(
                f"model.tubelet_size={tubelet_size} does not divide data.num_frames={num_frames}; "
                f"valid: {divisors(num_frames)}"
            )
        self.tubelet_size = tubelet_size
        patch_size, in_chans = self.patch_size, self.in_chans
        grid = (num_frames // tubelet_size, self.img_size // patch_size, self.img_size // patch_size)
        self.set_layout(Layout("grid", ("t", "h", "w"), grid))
        enc_dim = encoder["embed_dim"]
        kernel = (tubelet_size, patch_size, patch_size)
        self.encoder = VideoEncoder(PatchProjection(in_chans, kernel, enc_dim), grid, **encoder)
        self.decoder = VideoDecoder(enc_dim, grid, tubelet_size * patch_size * patch_size * in_chans, **decoder)
        init_videomae_weights(self)

    @classmethod
    def default_objective(cls, hparams: Mapping[str, Any]) -> dict:
        return TubeNormalizedMSE.spec(channels=int(hparams.get("in_chans", 3)), norm_pix_loss=True)

    @property
    def grid(self) -> Grid:
        t, h, w = self.layout.shape
        return t, h, w

    def tokenize(self, batch: Any) -> Tokens:
        videos = self.batch_inputs(batch)
        if videos.ndim != 5 or videos.shape[1] != self.in_chans:
            raise ValueError(f"expected clips (B, {self.in_chans}, T, H, W), got {tuple(videos.shape)}")
        _, _, frames, height, width = videos.shape
        if frames % self.tubelet_size or height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"clip {tuple(videos.shape[2:])} is not a multiple of (tubelet, patch, patch) = "
                f"({self.tubelet_size}, {self.patch_size}, {self.patch_size})"
            )
        grid = (frames // self.tubelet_size, height // self.patch_size, width // self.patch_size)
        layout = self.layout if grid == self.grid else Layout("grid", ("t", "h", "w"), grid)
        inputs = tubeletify(videos, self.tubelet_size, self.patch_size)
        # The target is built from pixels in [0, 1]: undo the input normalisation first (as official).
        target = tubeletify(self.pixels.unnormalize(videos), self.tubelet_size, self.patch_size)
        return Tokens(inputs=inputs, target=target, layout=layout)

    def encode(
        self, tokens: Tokens, mask: Tensor | None, generator: Generator | None = None, keep: Keep = ()
    ) -> Encoded:
        # The grid travels with the tokens: clips of another size resample the position table.
        return self.encoder(tokens.inputs, mask, tokens.layout.shape, keep=keep)

    def decode(self, encoded: Encoded, tokens: Tokens, masks: Masks, keep: Keep = ()) -> Decoded:
        return self.decoder(encoded, masks.predict, tokens.layout.shape, keep=keep)

    @torch.no_grad()
    def visualize(self, batch: Any, generator: torch.Generator | None = None, max_clips: int = 4) -> torch.Tensor:
        """(3*N, T, C, H, W) in [0, 1]: for each of N clips, rows input | masked input | reconstruction
        (visible tubes pasted in; hidden tubes the decoder did not predict stay grey), one column per frame.
        Predictions are de-normalised by the objective."""
        batch = apply_to_collection(batch, torch.Tensor, lambda x: x[:max_clips])
        out = self(batch, generator=generator)
        tokens = self.tokenize(batch)
        target = tokens.target.float()
        views = self.pixels.views(target, self.objective.denormalize(out.pred.float(), target), out.mask, out.predicted)
        clips = [untubeletify(x, self.tubelet_size, self.patch_size, tokens.layout.shape, self.in_chans) for x in views]
        stacked = torch.stack(clips, dim=1).clamp(0, 1)  # (N, 3, C, T, H, W)
        return stacked.permute(0, 1, 3, 2, 4, 5).flatten(0, 1)  # (N*3, T, C, H, W)
