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

import math
from typing import Any

import hydra.utils
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.attention import Attention

from mae_zoo.core.errors import ConfigError, check_patch_size, divisors
from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.core.objectives import masked_mean
from mae_zoo.core.types import Layout, MAEOutput, Tokens
from mae_zoo.core.vit import Encoded, PatchProjection, TransformerStack, Visible, init_linear_or_norm

Grid = tuple[int, int, int]


# ----------------------------------------------------------------------------------- tokens
def tubeletify(videos: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, t*h*w, tubelet*p*p*C): tubes in (t, h, w) order, channel fastest."""
    b, c, frames, height, width = videos.shape
    t, h, w = frames // tubelet, height // patch, width // patch
    x = videos.reshape(b, c, t, tubelet, h, patch, w, patch).permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(b, t * h * w, tubelet * patch * patch * c)


def untubeletify(tokens: torch.Tensor, tubelet: int, patch: int, grid: Grid, channels: int) -> torch.Tensor:
    """Inverse of :func:`tubeletify`."""
    b = tokens.shape[0]
    t, h, w = grid
    x = tokens.reshape(b, t, h, w, tubelet, patch, patch, channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, channels, t * tubelet, h * patch, w * patch)


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """VideoMAE's 1-D table (num_positions, dim): angle = pos / 10000^(2*floor(j/2)/dim),
    sin on even channels j, cos on odd ones (interleaved, unlike MAE's [sin | cos] halves)."""
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


def interpolate_table(table: torch.Tensor, source: Grid, target: Grid) -> torch.Tensor:
    """Resample a (t*h*w, D) position table from one (t, h, w) grid to another (trilinear), so a
    model trained at one clip size keeps the positions it learned at another."""
    if tuple(source) == tuple(target):
        return table
    x = table.T.reshape(1, table.shape[1], *source)
    x = F.interpolate(x.double(), size=tuple(target), mode="trilinear", align_corners=False)
    return x.reshape(table.shape[1], -1).T.to(table.dtype).contiguous()


class PositionTable(nn.Module):
    """The fixed table for the configured grid (a non-persistent buffer, as in the official code,
    so checkpoints load at any clip size), resampled for inputs of another size."""

    def __init__(self, grid: Grid, dim: int) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.register_buffer("table", sinusoid_table(math.prod(grid), dim), persistent=False)

    def forward(self, grid: Grid) -> torch.Tensor:
        return interpolate_table(self.table, self.grid, grid)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- attention
class QVBiasAttention(Attention):
    """timm ``Attention`` with VideoMAE's biases: learnable q and v biases, the k bias fixed at 0.

    Parameter names follow the official code (``qkv.weight``, ``q_bias``, ``v_bias``). The k part
    of the fused bias is a constant zero; only q and v are parameters.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, **kwargs: Any) -> None:
        super().__init__(dim, num_heads=num_heads, qkv_bias=False, **{k: v for k, v in kwargs.items() if k != "depth"})
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(self.attn_dim))
            self.v_bias = nn.Parameter(torch.zeros(self.attn_dim))
        else:
            self.q_bias = self.v_bias = None

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        bias = None
        if self.q_bias is not None:
            bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        b, n, _ = x.shape
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                           dropout_p=self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, self.attn_dim)))


# ----------------------------------------------------------------------------------- encoder / decoder
class VideoEncoder(TransformerStack):
    """Tubelet embedding + fixed positions on the visible tokens only, then the blocks and a LayerNorm."""

    def __init__(self, patch_embed: PatchProjection, grid: Grid, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path: float = 0.0, norm_eps: float = 1e-6) -> None:
        super().__init__(embed_dim, depth, num_heads, mlp_ratio, qkv_bias, drop_path, norm_eps, attn_layer=QVBiasAttention)
        self.patch_embed = patch_embed
        self.pos = PositionTable(grid, embed_dim)
        self.num_prefix = 0  # no cls token in VideoMAE pre-training

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, grid: Grid | None = None) -> Encoded:
        pos = self.pos(grid or self.pos.grid).to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        visible = None
        if mask is not None:
            visible = Visible.from_mask(mask)
            if visible.padding is not None:
                raise ValueError("VideoMAE drops hidden tokens, so every clip needs the same number hidden "
                                 "(use an exact-count mask: tube or random)")
            tokens, pos = visible.gather(tokens), visible.gather(pos)
        return Encoded(self.run_blocks(self.patch_embed(tokens) + pos), visible)


class VideoDecoder(TransformerStack):
    """``[visible + pos, mask token + pos of the positions to reconstruct]`` -> blocks -> norm -> head,
    predicting only the reconstructed positions (the official order; no unshuffling is needed
    because positions travel with the tokens)."""

    def __init__(self, encoder_dim: int, grid: Grid, out_dim: int, embed_dim: int = 384, depth: int = 4,
                 num_heads: int = 6, mlp_ratio: float = 4.0, qkv_bias: bool = True, norm_eps: float = 1e-6) -> None:
        super().__init__(embed_dim, depth, num_heads, mlp_ratio, qkv_bias, 0.0, norm_eps, attn_layer=QVBiasAttention)
        self.decoder_embed = nn.Linear(encoder_dim, embed_dim, bias=False)  # official: encoder_to_decoder
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos = PositionTable(grid, embed_dim)
        self.head = nn.Linear(embed_dim, out_dim)

    def forward(self, encoded: Encoded, reconstruct: torch.Tensor, grid: Grid | None = None) -> torch.Tensor:
        """(B, L, out_dim) predictions at the ``reconstruct`` positions, zero elsewhere."""
        visible = encoded.visible
        if visible is None:
            raise ValueError("the VideoMAE decoder needs the encoder's mask")
        counts = reconstruct.sum(dim=1)
        num = int(counts[0])
        if bool((counts != num).any()):
            raise ValueError("every clip must reconstruct the same number of positions")
        x = self.decoder_embed(encoded.latent)
        pos = self.pos(grid or self.pos.grid).to(x.dtype).expand(x.shape[0], -1, -1)
        ids = torch.argsort((~reconstruct).to(torch.uint8), dim=1, stable=True)[:, :num]  # position order
        pos_rec = torch.gather(pos, 1, ids[..., None].expand(-1, -1, pos.shape[-1]))
        x = torch.cat([x + visible.gather(pos), self.mask_token.to(x.dtype) + pos_rec], dim=1)
        out = self.head(self.run_blocks(x)[:, x.shape[1] - num :])  # LayerNorm is per token: slicing after is exact
        pred = out.new_zeros(out.shape[0], reconstruct.shape[1], out.shape[-1])
        return pred.scatter(1, ids[..., None].expand(-1, -1, out.shape[-1]), out)


class TubeNormalizedMSE(nn.Module):
    """VideoMAE's target and loss: per tube and per channel ``(x - mean) / (std + eps)`` (unbiased
    std, eps outside the square root), then the mean squared error over the tokens in ``mask``."""

    def __init__(self, channels: int = 3, norm_pix_loss: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.channels, self.norm_pix_loss, self.eps = channels, norm_pix_loss, eps

    def normalize(self, target: torch.Tensor) -> torch.Tensor:
        x = target.float().unflatten(-1, (-1, self.channels))  # (B, L, tubelet*p*p, C)
        x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, keepdim=True).sqrt() + self.eps)
        return x.flatten(-2)

    def stats(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per tube, per channel mean and (std + eps), broadcastable to the flattened target."""
        x = target.float().unflatten(-1, (-1, self.channels))
        mean, std = x.mean(dim=-2, keepdim=True), x.var(dim=-2, keepdim=True).sqrt() + self.eps
        return mean.expand_as(x).flatten(-2), std.expand_as(x).flatten(-2)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        target = self.normalize(target) if self.norm_pix_loss else target.float()
        per_token = (pred.float() - target).pow(2).mean(dim=-1)
        return masked_mean(per_token, mask), target


def init_videomae_weights(module: nn.Module) -> None:
    """Official VideoMAE init: xavier-uniform Linear with zero bias, LayerNorm 1/0, mask token
    truncated normal (std 0.02, cut at +-0.02); the tubelet Conv3d keeps PyTorch's default."""
    for m in module.modules():
        init_linear_or_norm(m)
    for name, p in module.named_parameters():
        if name.endswith("mask_token"):
            nn.init.trunc_normal_(p, std=0.02, a=-0.02, b=0.02)


# ----------------------------------------------------------------------------------- the module
class VideoMAE(MaskedAutoencoder):
    """VideoMAE / VideoMAE V2 on clips (B, C, T, H, W). ``encoder``/``decoder`` are size dicts
    (``conf/model/videomae_*``); ``decoder_mask`` a mask config (None: V1)."""

    datamodule_class = "mae_zoo.data.video.VideoDataModule"

    def __init__(
        self,
        encoder: dict,
        decoder: dict,
        mask: dict,
        optim: dict,
        decoder_mask: dict | None = None,
        num_frames: int = 16,
        img_size: int = 32,
        in_chans: int = 3,
        patch_size: int = 4,
        tubelet_size: int = 2,
        norm_pix_loss: bool = True,
        embed_pool: str = "mean",
        pixel_mean: list[float] | None = None,
        pixel_std: list[float] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(mask=mask, optim=optim, seed=seed)
        check_patch_size(patch_size, img_size, "frame size")
        if num_frames % tubelet_size:
            raise ConfigError(f"model.tubelet_size={tubelet_size} does not divide data.num_frames={num_frames}; "
                              f"valid: {divisors(num_frames)}")
        if embed_pool != "mean":
            raise ConfigError(f"VideoMAE has no cls token: embed_pool must be 'mean', got '{embed_pool}'")
        self.patch_size, self.tubelet_size, self.in_chans = patch_size, tubelet_size, in_chans
        self.embed_pool = embed_pool
        grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.layout = Layout("grid", ("t", "h", "w"), grid)
        self.mask_generator.check(self.layout)
        self.decoder_mask_generator = hydra.utils.instantiate(decoder_mask) if decoder_mask else None
        if self.decoder_mask_generator is not None:
            self.decoder_mask_generator.check(self.layout)
            if not getattr(self.decoder_mask_generator, "enabled", True):
                self.decoder_mask_generator = None  # ratio 0: V1

        enc_dim = encoder["embed_dim"]
        kernel = (tubelet_size, patch_size, patch_size)
        self.encoder = VideoEncoder(PatchProjection(in_chans, kernel, enc_dim), grid, **encoder)
        self.decoder = VideoDecoder(enc_dim, grid, tubelet_size * patch_size * patch_size * in_chans, **decoder)
        self.objective = TubeNormalizedMSE(in_chans, norm_pix_loss)
        init_videomae_weights(self)
        mean = torch.tensor(pixel_mean if pixel_mean is not None else [0.0] * in_chans).view(1, -1, 1, 1, 1)
        std = torch.tensor(pixel_std if pixel_std is not None else [1.0] * in_chans).view(1, -1, 1, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    @property
    def grid(self) -> Grid:
        return self.layout.shape  # type: ignore[return-value]

    def tokenize(self, batch: Any) -> Tokens:
        videos = self.batch_inputs(batch)
        if videos.ndim != 5 or videos.shape[1] != self.in_chans:
            raise ValueError(f"expected clips (B, {self.in_chans}, T, H, W), got {tuple(videos.shape)}")
        _, _, frames, height, width = videos.shape
        if frames % self.tubelet_size or height % self.patch_size or width % self.patch_size:
            raise ValueError(f"clip {tuple(videos.shape[2:])} is not a multiple of (tubelet, patch, patch) = "
                             f"({self.tubelet_size}, {self.patch_size}, {self.patch_size})")
        grid = (frames // self.tubelet_size, height // self.patch_size, width // self.patch_size)
        layout = self.layout if grid == self.grid else Layout("grid", ("t", "h", "w"), grid)
        inputs = tubeletify(videos, self.tubelet_size, self.patch_size)
        # The target is built from pixels in [0, 1]: undo the input normalisation first (as official).
        target = tubeletify(videos.float() * self.pixel_std + self.pixel_mean, self.tubelet_size, self.patch_size)
        return Tokens(inputs=inputs, target=target, layout=layout)

    def forward(self, batch: Any, mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                decoder_mask: torch.Tensor | None = None) -> MAEOutput:
        """``mask`` (B, L) True = hidden from the encoder (HF's ``bool_masked_pos``); ``decoder_mask``
        (B, L) True = not reconstructed (V2). Either is drawn from its generator when not given.
        ``pred`` holds predictions at the reconstructed positions (``extras['reconstructed']``), zero elsewhere."""
        tokens = self.tokenize(batch)
        batch_size, grid = tokens.inputs.shape[0], tokens.layout.shape
        if mask is None:
            mask = self.mask_generator(tokens.layout, batch_size, generator)
        mask = mask.to(device=tokens.inputs.device, dtype=torch.bool)
        if mask.shape != tokens.inputs.shape[:2]:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match tokens {tuple(tokens.inputs.shape[:2])}")
        if decoder_mask is None and self.decoder_mask_generator is not None:
            decoder_mask = self.decoder_mask_generator(tokens.layout, batch_size, generator)
        reconstruct = mask if decoder_mask is None else ~decoder_mask.to(device=mask.device, dtype=torch.bool)
        encoded = self.encoder(tokens.inputs, mask, grid)
        pred = self.decoder(encoded, reconstruct, grid)
        loss_mask = mask & reconstruct
        loss, target = self.objective(pred, tokens.target, loss_mask)
        return MAEOutput(loss=loss, pred=pred, mask=mask, target=target,
                         extras={"reconstructed": reconstruct, "loss_mask": loss_mask})

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every file of the batch was unreadable (counted by the datamodule): skip the step
            return None
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if batch is not None:
            super().validation_step(batch, batch_idx)

    def embed_tokens(self, batch: Any) -> torch.Tensor:
        """Per-tube features of the unmasked clip, (B, L, D)."""
        tokens = self.tokenize(batch)
        return self.encoder(tokens.inputs, None, tokens.layout.shape).latent

    def embed(self, batch: Any) -> torch.Tensor:
        """Mean of the encoder's tube features over the whole clip, (B, D)."""
        return self.embed_tokens(batch).mean(dim=1)

    @torch.no_grad()
    def visualize(self, batch: Any, generator: torch.Generator | None = None, max_clips: int = 4) -> torch.Tensor:
        """(3*N, T, C, H, W) in [0, 1]: for each of N clips, rows input | masked input | reconstruction
        (visible tubes pasted in; hidden tubes the decoder did not reconstruct stay grey), one column per frame.

        With norm_pix_loss predictions are de-normalised with each tube's true per-channel mean and
        std (the usual MAE visualisation; it uses information the model did not see)."""
        batch = _take(batch, max_clips)
        out = self(batch, generator=generator)
        target = self.tokenize(batch).target.float()
        pred = out.pred.float()
        if self.objective.norm_pix_loss:
            mean, std = self.objective.stats(target)
            pred = pred * std + mean
        hidden = out.mask[..., None].float()
        shown = out.extras["reconstructed"][..., None].float() * hidden
        grey = torch.full_like(target, 0.5)
        masked = target * (1 - hidden) + grey * hidden
        recon = target * (1 - hidden) + pred * shown + grey * (hidden - shown)
        grid = self.tokenize(batch).layout.shape
        views = [untubeletify(x, self.tubelet_size, self.patch_size, grid, self.in_chans) for x in (target, masked, recon)]
        clips = torch.stack(views, dim=1).clamp(0, 1)  # (N, 3, C, T, H, W)
        return clips.permute(0, 1, 3, 2, 4, 5).flatten(0, 1)  # (N*3, T, C, H, W)


def _take(batch: Any, n: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[:n]
    if isinstance(batch, (tuple, list)):
        return type(batch)(_take(x, n) for x in batch)
    if isinstance(batch, dict):
        return {k: _take(v, n) for k, v in batch.items()}
    return batch
