"""Point-MAE (Pang et al., ECCV 2022) and Point-CMAE (ACCV 2024) on point clouds, in plain torch.

Faithful to the official ``models/Point_MAE.py`` (names and widths there; the CUDA extensions are
replaced by :mod:`mae_zoo.nets.point_ops`):

* tokens: FPS ``num_groups`` centres (start at point 0), the ``group_size`` nearest points of each,
  centred on it (no scaling); the token input and the target are the flattened groups
  (``group_size * 3`` relative coordinates), the layout is ``points`` with the centres in
  ``layout.extra["centers"]`` for the masks and the position MLPs;
* encoder: mini-PointNet on every group, the visible tokens through the blocks with the centre MLP
  added before each block, LayerNorm; no cls token, qkv bias off;
* decoder: the encoder width, a mask token per hidden group, its own centre MLP before each block,
  a Conv1d head to ``group_size * 3``; Chamfer-L2 on the hidden groups (``objective=chamfer``).

Batches are ``(points (B, N, 3), label)``, as :class:`mae_zoo.data.point.PointDataModule` gives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Generator, Tensor

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.core.types import Decoded, Encoded, Keep, Layout, MAEOutput, Masks, Tokens
from mae_zoo.nets.point import PointDecoder, PointEncoder, init_pointmae_weights
from mae_zoo.nets.point_ops import group_points
from mae_zoo.objectives import ChamferLoss

POOLS = ("max_mean", "max", "mean")


class PointMAE(MaskedAutoencoder):
    """``encoder``/``decoder``: size dicts (``conf/model/pointmae*.yaml``); ``num_groups`` centres of
    ``group_size`` points; ``fps_random_start``: FPS from a random point instead of point 0;
    ``fps_skip_origin``: mirror pointnet2_ops' skipping of points within ``|p|^2 <= 1e-3`` of the origin;
    ``embed_pool``: features for probes, ``max_mean`` (max- and mean-pooled tokens concatenated, the
    Point-M2AE SVM protocol), ``max`` or ``mean``."""

    datamodule_class = "mae_zoo.data.point.PointDataModule"
    embed_pools = POOLS
    encoder: PointEncoder
    decoder: PointDecoder

    def __init__(
        self,
        encoder: dict,
        decoder: dict,
        num_groups: int = 64,
        group_size: int = 32,
        fps_random_start: bool = False,
        embed_pool: str = "max_mean",
        fps_skip_origin: bool = False,
        **shared: Any,
    ) -> None:
        super().__init__(**shared)
        self.num_groups, self.group_size = int(num_groups), int(group_size)
        self.fps_random_start, self.fps_skip_origin = bool(fps_random_start), bool(fps_skip_origin)
        self.embed_pool = self.check_embed_pool(embed_pool)
        self.set_layout(Layout("points", shape=(self.num_groups,)))
        dim = int(encoder["embed_dim"])
        dec = {k: v for k, v in decoder.items() if k != "embed_dim"}
        if int(decoder.get("embed_dim", dim)) != dim:
            raise ConfigError(
                f"Point-MAE's decoder has the encoder width {dim}, got decoder.embed_dim={decoder['embed_dim']}"
            )
        self.encoder = PointEncoder(**encoder)
        self.decoder = PointDecoder(dim, self.group_size, **dec)
        init_pointmae_weights(self)

    @classmethod
    def default_objective(cls, hparams: Mapping[str, Any]) -> dict:
        return ChamferLoss.spec(kind="cdl2")

    @property
    def embed_dim(self) -> int:
        return int(self.encoder.dim)

    # ----------------------------------------------------------------------------- the data path
    def tokenize(self, batch: Any) -> Tokens:
        points = self.batch_inputs(batch)
        if points.ndim != 3 or points.shape[-1] != 3:
            raise ValueError(f"expected point clouds (B, N, 3), got {tuple(points.shape)}")
        if points.shape[1] < max(self.num_groups, self.group_size):
            raise ValueError(
                f"clouds of {points.shape[1]} points cannot give {self.num_groups} groups of {self.group_size}"
            )
        groups, centers = group_points(
            points.float(), self.num_groups, self.group_size, self.fps_random_start, skip_origin=self.fps_skip_origin
        )
        flat = groups.flatten(2)
        layout = Layout("points", shape=(self.num_groups,), extra={"centers": centers})
        return Tokens(inputs=flat, target=flat, layout=layout)

    def groups(self, tokens: Tokens) -> Tensor:
        return tokens.inputs.unflatten(-1, (self.group_size, 3))

    def encode(
        self, tokens: Tokens, mask: Tensor | None, generator: Generator | None = None, keep: Keep = ()
    ) -> Encoded:
        return self.encoder(self.groups(tokens), tokens.layout.extra["centers"], mask, keep=keep)

    def decode(self, encoded: Encoded, tokens: Tokens, masks: Masks, keep: Keep = ()) -> Decoded:
        return self.decoder(encoded, tokens.layout.extra["centers"], keep=keep)

    def pool(self, tokens: Tensor) -> Tensor:
        if self.embed_pool == "max":
            return tokens.max(dim=1).values
        if self.embed_pool == "mean":
            return tokens.mean(dim=1)
        return torch.cat([tokens.max(dim=1).values, tokens.mean(dim=1)], dim=-1)

    def embed(self, batch: Any, block: int | None = None) -> Tensor:
        """Pooled tokens of every group, unmasked (``embed_pool``); with ``block``, of that block's
        hidden state (before the final norm)."""
        encoded = self.encode(self.tokenize(batch), None, keep=() if block is None else (block,))
        return self.pool(encoded.latent if block is None else encoded.intermediates[0])

    # ----------------------------------------------------------------------------- pictures
    @torch.no_grad()
    def visualize(self, batch: Any, generator: torch.Generator | None = None, size: int = 160) -> Tensor:
        """(3, N, 3, size, size) in [0, 1]: per cloud, input | visible groups | visible groups (grey)
        with the reconstructed hidden groups (red, predicted offsets + their centres), drawn as 3-D
        scatter plots from a fixed viewpoint, nearer points over farther ones."""
        out = self(batch, generator=generator)
        tokens = self.tokenize(batch)
        centers = tokens.layout.extra["centers"].float()
        true = self.groups(tokens).float() + centers[:, :, None]
        pred = out.pred.float().unflatten(-1, (self.group_size, 3)) + centers[:, :, None]
        points = self.batch_inputs(batch).float()
        rows: list[list[Tensor]] = [[], [], []]
        grey, blue, red = (0.55, 0.55, 0.6), (0.15, 0.35, 0.85), (0.9, 0.15, 0.1)
        for i in range(points.shape[0]):
            hidden = out.mask[i]
            vis = true[i][~hidden].reshape(-1, 3)
            rec = pred[i][hidden].reshape(-1, 3)
            rows[0].append(render_points(points[i], [blue] * 1, size))
            rows[1].append(render_points(vis, [blue], size))
            both = torch.cat([vis, rec])
            colours = torch.tensor(grey).expand(len(vis), 3)
            colours = torch.cat([colours, torch.tensor(red).expand(len(rec), 3)])
            rows[2].append(render_points(both, colours, size))
        return torch.stack([torch.stack(r) for r in rows])


def view_rotation(elevation: float = 20.0, azimuth: float = 40.0) -> Tensor:
    """Rotation that looks at the origin from the given elevation and azimuth (degrees), z up."""
    a, e = math.radians(azimuth), math.radians(elevation)
    rz = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rx = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(e), -math.sin(e)], [0.0, math.sin(e), math.cos(e)]])
    return rx @ rz


def render_points(points: Tensor, colours: Any, size: int = 160, extent: float = 1.3, dot: int = 2) -> Tensor:
    """(3, size, size) image in [0, 1] of ``points`` (P, 3): an orthographic 3-D scatter on white,
    ``dot`` x ``dot`` pixels per point, the nearest point wins each pixel, shaded darker with depth.
    ``colours``: (P, 3) or one colour in a list for all points."""
    pts = points.detach().float().cpu() @ view_rotation().T  # x right, y depth, z up
    col = torch.as_tensor(colours, dtype=torch.float32)
    col = col.expand(len(pts), 3) if col.shape[0] == 1 else col
    image = torch.ones(3, size, size)
    if len(pts) == 0:
        return image
    u = ((pts[:, 0] / extent + 1) / 2 * (size - dot)).round().long().clamp(0, size - dot)
    v = ((1 - (pts[:, 2] / extent + 1) / 2) * (size - dot)).round().long().clamp(0, size - dot)
    depth = pts[:, 1]
    shade = 0.65 + 0.35 * (1 - ((depth / extent + 1) / 2).clamp(0, 1))  # near: bright, far: dark
    rank = torch.argsort(torch.argsort(-depth))  # larger rank = nearer
    lin, ranks = [], []
    for dy in range(dot):
        for dx in range(dot):
            lin.append((v + dy) * size + (u + dx))
            ranks.append(rank)
    lin_t, rank_t = torch.cat(lin), torch.cat(ranks)
    best = torch.full((size * size,), -1, dtype=torch.long).scatter_reduce(0, lin_t, rank_t, "amax")
    hit = best >= 0
    owner = torch.argsort(rank)[best[hit]]  # the point of each rank
    flat = image.view(3, -1)
    flat[:, hit] = (col[owner] * shade[owner, None]).T
    return image.clamp(0, 1)


# --------------------------------------------------------------------------------------- Point-CMAE
class PointCMAE(PointMAE):
    """Point-CMAE: Point-MAE with two independent masks per sample through the shared encoder, two
    decoders (own mask token, position MLP, blocks and head), Chamfer on both branches, plus a
    contrastive term between the two decoders' features at the groups hidden in *both* views.

    Mirrored from the official code (Amazingren/Point-CMAE ``models/Point_CMAE.py``, read for this):
    two independent ``int(0.6 G)`` random masks; two decoders with their own mask tokens, position
    MLPs and heads; the reconstruction terms summed and weighted by ``recon_weight`` (1000, the
    runner's factor); the decoder features put back in position order, L2-normalised, the full G x G
    cosine matrix between view 1 and view 2, and ``1 - cos`` averaged over *all* columns of the rows
    hidden in both views (``contrast="matrix"``; ``"matched"`` uses only the same position, what the
    paper's text suggests). Our choices: the features are each decoder's output after its final norm
    (the official ``de_feats`` come from its ``models/transformers.py``, not read here); the official
    per-branch cls tokens (and their projection, which no loss reads) are left out, so the encoder
    attends over the visible groups only, as Point-MAE's; the mini-PointNet runs once per view (the
    official embeds once; same values, BatchNorm sees the same batch)."""

    def __init__(
        self,
        encoder: dict,
        decoder: dict,
        contrast: str = "matrix",
        contrast_weight: float = 1.0,
        recon_weight: float = 1000.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(encoder, decoder, **kwargs)
        if contrast not in ("matrix", "matched"):
            raise ConfigError(f"module.contrast must be 'matrix' or 'matched', got '{contrast}'")
        self.contrast, self.contrast_weight, self.recon_weight = contrast, float(contrast_weight), float(recon_weight)
        dec = {k: v for k, v in decoder.items() if k != "embed_dim"}
        self.decoder2 = PointDecoder(self.embed_dim, self.group_size, **dec)
        init_pointmae_weights(self.decoder2)

    def contrastive(self, h1: Tensor, h2: Tensor, both: Tensor) -> Tensor:
        """Mean ``1 - cos`` at the co-hidden positions ``both`` (B, G) between features h1, h2 (B, G, D)."""
        if not bool(both.any()):
            return h1.sum() * 0.0
        z1, z2 = F.normalize(h1.float(), dim=-1), F.normalize(h2.float(), dim=-1)
        if self.contrast == "matched":
            return (1 - (z1 * z2).sum(-1))[both].mean()
        cos = z1 @ z2.transpose(1, 2)  # (B, G, G): row i of view 1 against every position of view 2
        return (1 - cos)[both].mean()

    def forward(
        self,
        batch: Any,
        mask: Tensor | None = None,
        generator: Generator | None = None,
        decoder_mask: Tensor | None = None,
        keep: Any = (),
        keep_decoder: Any = (),
    ) -> MAEOutput:
        """Two views: ``mask`` (B, G) or (2, B, G) given, or both drawn from the mask generator."""
        tokens = self.tokenize(batch)
        if mask is not None and mask.ndim == 3:
            m1, m2 = mask[0], mask[1]
        else:
            m1 = mask if mask is not None else self.mask_generator(tokens.layout, tokens.inputs.shape[0], generator)
            m2 = self.mask_generator(tokens.layout, tokens.inputs.shape[0], generator)
        masks1, masks2 = self.masks(tokens, m1, None, generator), self.masks(tokens, m2, None, generator)
        centers = tokens.layout.extra["centers"]
        enc1 = self.encode(tokens, masks1.hidden, generator, keep)
        enc2 = self.encode(tokens, masks2.hidden, generator)
        x1 = self.decoder.unshuffle(enc1)
        x2 = self.decoder2.unshuffle(enc2)
        h1, dec_hidden = self.decoder.forward_pos(x1, self.decoder.pos_embed(centers.to(x1.dtype)), keep=keep_decoder)
        h2, _ = self.decoder2.forward_pos(x2, self.decoder2.pos_embed(centers.to(x2.dtype)))
        pred1 = self.decoder.increase_dim(h1.transpose(1, 2)).transpose(1, 2)
        pred2 = self.decoder2.increase_dim(h2.transpose(1, 2)).transpose(1, 2)
        target = self.target(batch, tokens, masks1)
        loss1, target1 = self.objective(pred1, target, masks1.score)
        loss2, _ = self.objective(pred2, target, masks2.score)
        contrast = self.contrastive(h1, h2, masks1.hidden & masks2.hidden)
        loss = self.recon_weight * (loss1 + loss2) + self.contrast_weight * contrast
        extras = {"loss_recon1": loss1.detach(), "loss_recon2": loss2.detach(), "loss_contrast": contrast.detach()}
        return MAEOutput(
            loss=loss,
            pred=pred1,
            mask=masks1.hidden,
            target=target1,
            predicted=masks1.predict,
            scored=masks1.score,
            encoder_hidden=enc1.intermediates,
            decoder_hidden=dec_hidden,
            extras=extras,
        )


__all__ = ["PointCMAE", "PointMAE", "render_points"]
