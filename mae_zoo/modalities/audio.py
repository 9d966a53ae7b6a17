"""Audio-MAE (Huang et al. 2022), faithful to facebookresearch/AudioMAE ``models_mae.py``.

Input: log-mel maps (B, 1, T, F) from :func:`mae_zoo.data.audio.log_mel` (time rows, frequency
columns). Tokens: non-overlapping ``patch_size`` x ``patch_size`` patches, time-major (1024 x 128 ->
64 x 8 = 512 tokens), layout ``grid:t,f``; fixed 2-D sin-cos positions (the first half of the
channels encodes the frequency column, the second the time row, as MAE's table). Encoder: the
image MAE's token-dropping ViT. Decoder: MAE's global decoder (``decoder_mode: global``, Audio-MAE's
``decoder_mode=0``) or the local shifted-window decoder (``local``, ``decoder_mode=1``).
Objective: MSE on hidden patches with per-patch target normalisation (``norm_pix_loss``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.core.types import Layout, Tokens
from mae_zoo.modalities.image import patchify, unpatchify
from mae_zoo.modalities.pixels import PixelStats
from mae_zoo.nets.audio import LocalDecoder
from mae_zoo.nets.pos_embed import sincos_2d
from mae_zoo.nets.vit import MAEDecoder, PatchProjection, ViTEncoder, init_mae_weights
from mae_zoo.objectives import MaskedMSE

DECODER_MODES = ("global", "local")


class AudioMAE(MaskedAutoencoder):
    """ViT MAE on spectrograms. ``encoder``/``decoder``: sizes (``conf/model``); ``target_length``
    frames x ``num_mel_bins`` bins cut in ``patch_size`` patches; ``decoder_mode`` global | local with
    ``decoder_window``/``decoder_shift`` (tokens, time x freq) for the local one; ``embed_pool``
    mean (Audio-MAE's global pool) | cls; the remaining keyword arguments are the shared entries."""

    datamodule_class = "mae_zoo.data.audio.AudioDataModule"
    embed_pools = ("mean", "cls")

    def __init__(
        self,
        encoder: dict,
        decoder: dict,
        target_length: int = 1024,
        num_mel_bins: int = 128,
        patch_size: int = 16,
        decoder_mode: str = "local",
        decoder_window: Sequence[int] = (4, 4),
        decoder_shift: Sequence[int] = (2, 0),
        embed_pool: str | None = None,
        **shared: Any,
    ) -> None:
        super().__init__(**shared)
        for name, size in (("target_length", target_length), ("num_mel_bins", num_mel_bins)):
            if size % patch_size:
                raise ConfigError(f"model.patch_size={patch_size} does not divide data.{name}={size}")
        if decoder_mode not in DECODER_MODES:
            raise ConfigError(f"decoder_mode='{decoder_mode}' is unknown; valid: {list(DECODER_MODES)}")
        self.embed_pool = self.check_embed_pool(embed_pool or self.embed_pools[0])
        self.patch_size, self.decoder_mode = patch_size, decoder_mode
        grid = (target_length // patch_size, num_mel_bins // patch_size)
        self.set_layout(Layout("grid", ("t", "f"), grid))
        enc_dim, dec_dim = encoder["embed_dim"], decoder["embed_dim"]
        self.encoder = ViTEncoder(
            PatchProjection(1, (patch_size, patch_size), enc_dim), sincos_2d(enc_dim, *grid, cls_token=True), **encoder
        )
        out_dim, dec_pos = patch_size * patch_size, sincos_2d(dec_dim, *grid, cls_token=True)
        self.decoder: MAEDecoder
        if decoder_mode == "local":
            self.decoder = LocalDecoder(
                enc_dim, dec_pos, out_dim, grid, window=decoder_window, shift=decoder_shift, **decoder
            )
        else:
            self.decoder = MAEDecoder(enc_dim, dec_pos, out_dim, **decoder)
        init_mae_weights(self)

    @classmethod
    def default_objective(cls, hparams: Mapping[str, Any]) -> dict:
        return MaskedMSE.spec(norm_pix_loss=True)

    @property
    def grid(self) -> tuple[int, int]:
        t, f = self.layout.shape
        return t, f

    def tokenize(self, batch: Any) -> Tokens:
        spec = self.batch_inputs(batch)
        if spec.dim() == 3:  # (B, T, F): add the channel
            spec = spec[:, None]
        expected = tuple(s * self.patch_size for s in self.grid)
        if spec.dim() != 4 or spec.shape[1] != 1 or tuple(spec.shape[-2:]) != expected:
            raise ValueError(f"expected log-mel maps (B, 1, {expected[0]}, {expected[1]}), got {tuple(spec.shape)}")
        patches = patchify(spec, self.patch_size)
        return Tokens(inputs=patches, target=patches, layout=self.layout)

    @torch.no_grad()
    def visualize(self, batch: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """(3, N, 1, F, T) in [0, 1]: spectrogram | masked (hidden patches grey) | reconstruction with
        the visible patches pasted in; time runs left to right, low frequencies at the bottom. Each
        clip is scaled by the range of its input."""
        out = self(batch, generator=generator)
        target = self.tokenize(batch).target.float()
        pred = self.objective.denormalize(out.pred.float(), target)
        lo = target.amin(dim=(1, 2), keepdim=True)
        span = (target.amax(dim=(1, 2), keepdim=True) - lo).clamp_min(1e-6)
        views = PixelStats.views((target - lo) / span, (pred - lo) / span, out.mask, out.predicted)
        maps = [unpatchify(x, self.patch_size, self.grid, 1) for x in views]  # (N, 1, T, F)
        return torch.stack([m.transpose(-1, -2).flip(-2) for m in maps]).clamp(0, 1)
