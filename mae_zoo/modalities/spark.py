"""SparK (Tian et al., ICLR 2023; keyu-tian/SparK ``pretrain/spark.py``, ``encoder.py``, ``decoder.py``):
masked image modelling for ConvNets.

* The encoder is an unchanged timm ResNet or ConvNeXt (``model.encoder.name`` + ``args``), run sparsely
  (:mod:`mae_zoo.nets.sparse_cnn`): hidden cells are zeroed in the input and after every layer at each
  scale, and BatchNorm sees only the visible positions.
* The mask is a random mask over the network's downsample grid (image / ``downsample_ratio``; 32 for
  ResNet/ConvNeXt at the paper's setting), ratio 0.6, one cell = one patch of the target.
* Densify: per feature level (the last ``levels`` of ``forward_intermediates``, deepest first) a
  sparse norm (BatchNorm for ResNets, LayerNorm for ConvNeXts), a learnable mask token filling the
  hidden positions, and a projection to the decoder width at that scale (1x1 at the deepest scale,
  identity when the widths already agree, 3x3 elsewhere).
* The light UNet decoder: ``log2(downsample_ratio)`` blocks, each a 2x transposed-conv upsampling and
  two 3x3 convs with BatchNorm, widths halving from ``model.decoder.width``; a densified feature is
  added before the block at its scale; a 1x1 conv gives the pixels.
* Loss: MSE on hidden patches against the per-patch normalised target (``MaskedMSE``, norm_pix_loss).

A small image needs a small stride: timm ResNets take ``output_stride`` (8 or 16: the last stages
dilate instead of striding). When several levels share a stride, the deepest of them feeds the decoder
at that scale; at output stride 32 every level has its own scale, as in the paper.

The encoder exports as the timm model itself (:func:`export_timm_convnet`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Decoded, Encoded, Keep, Layout, Masks, Tokens, keep_indices
from mae_zoo.masks.base import MaskConfigError
from mae_zoo.modalities.image import patchify, unpatchify
from mae_zoo.modalities.pixels import PixelMAE
from mae_zoo.nets.sparse_cnn import SparseMask, sparse_batch_norm, sparsify

DENSIFY_NORMS = ("bn", "ln", "none")


def spark_masks() -> tuple[type, ...]:
    """Masks that hide whole cells of the downsample grid with no assumption about ViT patch tokens.
    SimMIM's mask counts its cells in ViT tokens (32 px = 2 tokens of 16 px); on SparK's grid, whose cell
    is already the 32 px downsample cell, the same setting would mean 64 px cells, so it is refused."""
    from mae_zoo.masks import BlockMask, ColoredNoiseMask, RandomMask

    return (RandomMask, BlockMask, ColoredNoiseMask)


def masks_for_spark() -> list[str]:
    """The ``conf/mask`` options SparK accepts, for error messages."""
    from hydra.utils import instantiate

    from mae_zoo.utils.instantiate import CONF_DIR

    names = []
    for path in sorted(CONF_DIR.joinpath("mask").glob("*.yaml")):
        if isinstance(instantiate(OmegaConf.load(path)), spark_masks()):
            names.append(path.stem)
    return names


@dataclass
class SparKEncoded(Encoded):
    """Encoded plus the hierarchical feature maps (shallow to deep, (B, C, H, W)) and the active map
    (B, 1, h, w) at the mask grid (None: dense)."""

    features: list[torch.Tensor] = field(default_factory=list)
    active: torch.Tensor | None = None


class SparseConvNet(nn.Module):
    """A timm ConvNet (``net``, no classifier) that runs sparsely while given an active map."""

    net: Any  # a timm model: forward_intermediates is not on nn.Module
    sparse: SparseMask
    timm_name: str
    timm_args: dict[str, Any]

    def __init__(self, name: str, args: Mapping[str, Any], in_chans: int, levels: int = 4) -> None:
        super().__init__()
        import timm

        if not isinstance(name, str) or not timm.is_model(name):
            raise ConfigError(
                f"model.encoder.name must be a timm ConvNet (e.g. resnet50, convnext_small), got {name!r}; "
                "SparK runs on model=spark_resnet50 | spark_micro | spark_convnext_micro"
            )
        self.timm_name, self.timm_args = name, {**dict(args), "in_chans": in_chans, "num_classes": 0, "global_pool": ""}
        self.net = timm.create_model(name, pretrained=False, **self.timm_args)
        if not hasattr(self.net, "forward_intermediates"):
            raise ConfigError(f"timm model {name} has no forward_intermediates; SparK needs its feature levels")
        self.levels = int(levels)
        self.sparse = SparseMask()
        sparsify(self.net, self.sparse)
        self._freeze_head()

    def _freeze_head(self) -> None:
        """Classifier-side parameters (a ConvNeXt's ``head.norm``) are outside the feature path: kept, so the
        export loads strictly into timm, but frozen, so DDP sees no parameter without a gradient."""
        for name, param in self.net.named_parameters():
            if name.split(".")[0] in ("head", "fc", "norm_pre"):
                param.requires_grad_(False)

    def forward(self, images: torch.Tensor, active: torch.Tensor | None) -> list[torch.Tensor]:
        """Feature maps of the last ``levels`` levels, shallow to deep. ``active`` (B, 1, h, w) bool at the
        mask grid, True = visible; None: dense."""
        with self.sparse.using(active):
            return list(self.net.forward_intermediates(images, indices=self.levels, intermediates_only=True))


class Densify(nn.Module):
    """One feature level to the decoder: sparse norm, mask token at hidden positions, projection."""

    def __init__(self, width: int, out_width: int, stage: int, norm: str, sparse: SparseMask) -> None:
        super().__init__()
        from timm.layers import LayerNorm2d, trunc_normal_

        self.norm: nn.Module
        if norm == "bn":
            self.norm = sparse_batch_norm(width, sparse)
        elif norm == "ln":
            self.norm = LayerNorm2d(width, eps=1e-6)  # per position: dense then zeroed = SparK's sparse LayerNorm
            self.norm.register_forward_hook(sparse.mask_output)
        else:
            self.norm = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, width, 1, 1))
        trunc_normal_(self.mask_token, mean=0.0, std=0.02, a=-0.02, b=0.02)
        self.proj: nn.Module
        if stage == 0 and width == out_width:
            self.proj = nn.Identity()
        else:
            kernel = 1 if stage == 0 else 3
            self.proj = nn.Conv2d(width, out_width, kernel_size=kernel, padding=kernel // 2, bias=True)

    def forward(self, feature: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
        x = self.norm(feature)
        if active is not None:
            x = torch.where(active, x, self.mask_token.to(x.dtype))
        return self.proj(x)


class UNetBlock(nn.Module):
    """2x upsampling (4x4 transposed conv), then conv3x3-BN-ReLU6-conv3x3-BN."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up_sample = nn.ConvTranspose2d(cin, cin, kernel_size=4, stride=2, padding=1, bias=True)
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cin, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU6(inplace=True),
            nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up_sample(x))


class LightDecoder(nn.Module):
    """SparK's decoder: ``log2(ratio)`` UNet blocks from the grid up to the image, widths halving."""

    def __init__(self, ratio: int, width: int, out_chans: int) -> None:
        super().__init__()
        from timm.layers import trunc_normal_

        stages = round(math.log2(ratio))
        self.width, self.channels = width, [width // 2**i for i in range(stages + 1)]
        if self.channels[-1] < 1:
            raise ConfigError(
                f"model.decoder.width={width} is too small to halve {stages} times (at least {2**stages})"
            )
        self.blocks = nn.ModuleList(UNetBlock(a, b) for a, b in zip(self.channels[:-1], self.channels[1:]))
        self.proj = nn.Conv2d(self.channels[-1], out_chans, kernel_size=1, bias=True)
        # SparK's initialisation: truncated normal (0.02) for convs, Kaiming (fan out) for the transposed ones.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, to_dec: list[torch.Tensor | None]) -> torch.Tensor:
        x: torch.Tensor | None = None
        for i, block in enumerate(self.blocks):
            feature = to_dec[i] if i < len(to_dec) else None
            if feature is not None:
                x = feature if x is None else x + feature
            if x is None:
                raise RuntimeError("the decoder's first stage has no feature")
            x = block(x)
        assert x is not None
        return self.proj(x)


class SparK(PixelMAE):
    """SparK on images (B, C, H, W). ``encoder``: ``name`` (a timm ResNet/ConvNeXt), ``args`` (its
    ``timm.create_model`` keyword arguments, e.g. ``output_stride``), ``levels`` (feature levels fed to the
    decoder, 4); ``decoder``: ``width``; ``downsample_ratio``: the network's final stride, checked against
    the built network; ``densify_norm``: bn | ln | none. The rest: :class:`PixelMAE` and the shared entries."""

    datamodule_class = "mae_zoo.data.image.ImageDataModule"
    embed_pools = ("mean",)
    encoder: SparseConvNet

    def __init__(
        self,
        encoder: dict,
        decoder: dict,
        downsample_ratio: int = 32,
        densify_norm: str = "bn",
        img_size: int = 224,
        **pixel: Any,
    ) -> None:
        ratio = int(downsample_ratio)
        if ratio < 2 or ratio & (ratio - 1):
            raise ConfigError(f"model.downsample_ratio must be a power of two >= 2, got {downsample_ratio}")
        if img_size % ratio:
            raise ConfigError(
                f"data.image_size={img_size} is not a multiple of model.downsample_ratio={ratio}: SparK masks "
                f"{ratio} px cells. Use an image size in {[ratio * k for k in range(1, 8)]}..., or a smaller stride "
                "(model=spark_micro: output_stride 8 for 32 px images)"
            )
        if densify_norm not in DENSIFY_NORMS:
            raise ConfigError(f"model.densify_norm must be one of {list(DENSIFY_NORMS)}, got {densify_norm!r}")
        encoder, decoder = dict(encoder), dict(decoder)
        if "name" not in encoder or "width" not in decoder:
            raise ConfigError(
                "SparK needs model.encoder.name (a timm ConvNet) and model.decoder.width: use model=spark_resnet50, "
                f"spark_micro or spark_convnext_micro (got encoder keys {sorted(encoder)})"
            )
        pixel.pop("patch_size", None)  # the cell is the downsample ratio (a checkpoint's hparams repeat it)
        super().__init__(img_size=img_size, patch_size=ratio, **pixel)
        grid = (img_size // ratio, img_size // ratio)
        layout = Layout("grid", ("h", "w"), grid)
        mask_gen = self.mask_generator
        if not isinstance(mask_gen, spark_masks()):
            why = (
                "it counts its cells in ViT patch tokens"
                if mask_gen.supports(layout)
                else f"it does not fit an image grid (it supports {list(mask_gen.layouts)})"
            )
            raise MaskConfigError(
                f"mask {mask_gen.name} does not fit SparK: {why}; SparK hides whole cells of the ConvNet's "
                f"downsample grid. Masks that fit SparK: {masks_for_spark()}"
            )
        self.set_layout(layout)
        self.encoder = SparseConvNet(
            encoder["name"], encoder.get("args") or {}, self.in_chans, encoder.get("levels", 4)
        )
        strides = self._level_strides()
        if strides[-1] != ratio:
            raise ConfigError(
                f"model.downsample_ratio={ratio}, but {encoder['name']} with args {dict(encoder.get('args') or {})} "
                f"downsamples by {strides[-1]} (level strides {strides}); set them to agree"
            )
        # Deepest level first; one level per decoder scale (the deepest when dilated stages share a stride).
        width = int(decoder["width"])
        self.level_stage: dict[int, int] = {}
        for level in reversed(range(len(strides))):
            stage = math.log2(ratio / strides[level])
            if stage != int(stage):
                raise ConfigError(f"feature level {level} has stride {strides[level]}, not ratio / 2^k")
            if int(stage) not in self.level_stage.values() and int(stage) < round(math.log2(ratio)):
                self.level_stage[level] = int(stage)
        widths = [self._level_widths[level] for level in self.level_stage]
        self.densify = nn.ModuleList(
            Densify(w, width // 2**stage, stage, densify_norm, self.encoder.sparse)
            for w, stage in zip(widths, self.level_stage.values())
        )
        self.decoder = LightDecoder(ratio, width, self.in_chans)

    def _level_strides(self) -> list[int]:
        """Strides and widths of the feature levels, from one dense forward of a blank image."""
        net, was_training = self.encoder, self.encoder.training
        net.eval()
        with torch.no_grad():
            feats = net(torch.zeros(1, self.in_chans, self.img_size, self.img_size), None)
        net.train(was_training)
        self._level_widths = [f.shape[1] for f in feats]
        return [self.img_size // f.shape[-1] for f in feats]

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.layout.shape
        return h, w

    def tokenize(self, batch: Any) -> Tokens:
        images = self.batch_inputs(batch)
        if images.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"expected images of {self.img_size}px, got {tuple(images.shape)}")
        patches = patchify(images, self.patch_size)
        return Tokens(inputs=patches, target=patches, layout=self.layout)

    def active_map(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) hidden mask -> (B, 1, h, w) active (visible) map at the grid."""
        return (~mask).view(mask.shape[0], 1, *self.grid)

    def encode(
        self, tokens: Tokens, mask: torch.Tensor | None, generator: torch.Generator | None = None, keep: Keep = ()
    ) -> SparKEncoded:
        images = unpatchify(tokens.inputs, self.patch_size, self.grid, self.in_chans)
        active = None if mask is None else self.active_map(mask)
        if active is not None:  # SparK zeroes the hidden pixels before the first layer
            r = self.patch_size
            images = images * active.repeat_interleave(r, 2).repeat_interleave(r, 3).to(images.dtype)
        feats = self.encoder(images, active)
        rows = [f.flatten(2).transpose(1, 2) for f in feats]  # (B, h*w, C) per level
        chosen = keep_indices(keep, len(feats), "the encoder's feature levels") if keep else set()
        return SparKEncoded(
            latent=rows[-1], intermediates=[rows[i] for i in sorted(chosen)], features=feats, active=active
        )

    def decode(self, encoded: Encoded, tokens: Tokens, masks: Masks, keep: Keep = ()) -> Decoded:
        if not isinstance(encoded, SparKEncoded):
            raise TypeError("SparK decodes what its own encoder returned")
        active = encoded.active
        stages = round(math.log2(self.patch_size))
        to_dec: list[torch.Tensor | None] = [None] * stages
        sparse = self.encoder.sparse
        with sparse.using(active):
            for densify, (level, stage) in zip(self.densify, self.level_stage.items()):
                feature = encoded.features[level]
                level_active = sparse.at(feature.shape[-2], feature.shape[-1])
                to_dec[stage] = densify(feature, level_active)
        images = self.decoder(to_dec)
        return Decoded(pred=patchify(images, self.patch_size))

    @torch.no_grad()
    def visualize(self, batch: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """(3, N, C, H, W) in [0, 1]: input | hidden cells grey | reconstruction with visible cells pasted in."""
        out = self(batch, generator=generator)
        target = self.tokenize(batch).target.float()
        pred = self.pixels.unnormalize_tokens(self.objective.denormalize(out.pred.float(), target))
        views = self.pixels.views(self.pixels.unnormalize_tokens(target), pred, out.mask, out.predicted)
        return torch.stack([unpatchify(x, self.patch_size, self.grid, self.in_chans) for x in views]).clamp(0, 1)


# ----------------------------------------------------------------------------- export
def timm_convnet_spec(model: SparK) -> dict[str, Any]:
    """``{"model_name", "model_args"}``: ``timm.create_model(model_name, pretrained=False, **model_args)``
    builds the encoder's network (``num_classes=0``: no classifier, as pre-trained)."""
    return {"model_name": model.encoder.timm_name, "model_args": dict(model.encoder.timm_args)}


def timm_convnet_state_dict(model: SparK) -> dict[str, torch.Tensor]:
    """The encoder's weights under timm's own names (the sparse emulation adds none)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.encoder.net.state_dict().items()}


def export_timm_convnet(model: SparK, out_dir: str | Path) -> list[Path]:
    """Write ``model.safetensors`` and ``model.json`` (the spec); checked first with a strict load into
    the timm model the spec builds, so an export timm cannot load is never written."""
    import timm

    from mae_zoo.weights.timm_export import write_timm_files

    spec, state = timm_convnet_spec(model), timm_convnet_state_dict(model)
    probe = timm.create_model(spec["model_name"], pretrained=False, **spec["model_args"])
    probe.load_state_dict(state, strict=True)
    return write_timm_files(out_dir, spec, state)
