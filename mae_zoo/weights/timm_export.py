"""Export an ImageMAE encoder as a timm ``VisionTransformer`` (and describe how to rebuild it).

Our encoder already uses timm's parameter names (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.i.*``, ``norm``), so its state dict *is* a timm ViT state dict
for ``class_token=True``, ``no_embed_class=False`` (``pos_embed`` of shape ``(1, 1 + L, D)``
with the cls row), ``global_pool='token'`` (final ``norm``, no ``fc_norm``) and
``num_classes=0`` (no ``head``). Our fixed sin-cos table becomes timm's (learnable) ``pos_embed``
with the same values. timm's ViT LayerNorm eps is 1e-6, MAE's; other eps values are refused.

The ``model.json`` written next to the weights is ``{"model_name": ..., "model_args": {...}}``
such that ``timm.create_model(model_name, pretrained=False, **model_args)`` builds the same
network. ``model_name`` is the standard timm name when the sizes are a standard ViT
(``vit_base_patch16_224``, ...); otherwise ``vit_base_patch16_224`` serves as a template and
``model_args`` overrides every size (timm merges keyword arguments over the variant's defaults).
``model_args`` always lists every size explicitly, so the name never decides the architecture.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from mae_zoo.weights.hf_vitmae import _stack_shape, _submodule

if TYPE_CHECKING:  # pragma: no cover
    from mae_zoo.modalities.image import ImageMAE

TIMM_NORM_EPS = 1e-6
# (patch, width, depth, heads) -> timm variant stem; the image size is appended.
STANDARD_TIMM: dict[tuple[int, int, int, int], str] = {
    (16, 192, 12, 3): "vit_tiny_patch16",
    (16, 384, 12, 6): "vit_small_patch16",
    (32, 384, 12, 6): "vit_small_patch32",
    (16, 768, 12, 12): "vit_base_patch16",
    (32, 768, 12, 12): "vit_base_patch32",
    (16, 1024, 24, 16): "vit_large_patch16",
    (32, 1024, 24, 16): "vit_large_patch32",
    (14, 1024, 24, 16): "vit_large_patch14",
    (14, 1280, 32, 16): "vit_huge_patch14",
}
TEMPLATE = "vit_base_patch16_224"


def timm_spec(model: ImageMAE) -> dict[str, Any]:
    """``{"model_name", "model_args"}`` rebuilding ``model.encoder`` with timm (no classifier)."""
    import timm

    encoder = model.encoder
    if encoder.cls_token is None:
        raise ValueError("timm export needs the cls token (class_token=True, global_pool='token')")
    shape = _stack_shape(encoder, "encoder")  # also refuses layer scale, q/k norm, non-exact GELU
    if shape["eps"] != TIMM_NORM_EPS:
        raise ValueError(f"encoder LayerNorm eps is {shape['eps']}; timm's ViT uses {TIMM_NORM_EPS}")
    grid_h, grid_w = model.grid
    patch, dim = model.patch_size, shape["dim"]
    # A rectangular grid (an AudioMAE spectrogram, (time, freq)) exports with img_size = (rows, cols).
    img_size: int | tuple[int, int] = grid_h * patch if grid_h == grid_w else (grid_h * patch, grid_w * patch)
    mlp_ratio = shape["intermediate"] / dim
    if int(dim * mlp_ratio) != shape["intermediate"]:
        raise ValueError(f"MLP width {shape['intermediate']} is not int({dim} * mlp_ratio)")
    stem = STANDARD_TIMM.get((patch, dim, shape["depth"], shape["heads"]))
    name = TEMPLATE
    if stem is not None:
        name = next((n for n in (f"{stem}_{img_size}", f"{stem}_224") if timm.is_model(n)), TEMPLATE)
    args = {
        "img_size": img_size,
        "patch_size": patch,
        "in_chans": _submodule(encoder, "patch_embed.proj", nn.Conv2d).in_channels,
        "embed_dim": dim,
        "depth": shape["depth"],
        "num_heads": shape["heads"],
        "mlp_ratio": mlp_ratio,
        "qkv_bias": shape["qkv_bias"],
        "class_token": True,
        "no_embed_class": False,
        "global_pool": "token",
        "num_classes": 0,
    }
    return {"model_name": name, "model_args": args}


def timm_state_dict(model: ImageMAE) -> dict[str, torch.Tensor]:
    """The encoder's state dict under timm names (they are ours): contiguous CPU copies. A mask-token
    encoder's [MASK] embedding is pre-training only (SimMIM drops it too)."""
    state = model.encoder.state_dict()
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items() if k != "mask_token"}


def build_timm(spec: dict[str, Any], device: str | torch.device | None = None) -> nn.Module:
    import timm

    extra: dict[str, Any] = {"device": device} if device is not None else {}
    return timm.create_model(spec["model_name"], pretrained=False, **spec["model_args"], **extra)


def export_timm(model: ImageMAE, out_dir: str | Path) -> list[Path]:
    """Write ``model.safetensors`` (timm-native encoder weights) and ``model.json`` into ``out_dir``.

    Before writing, the weights are loaded with ``strict=True`` into the timm model that
    ``model.json`` describes (built on the meta device, so this costs no memory), so an export
    that timm could not load is never written.
    """

    spec = timm_spec(model)
    state = timm_state_dict(model)
    try:
        probe = build_timm(spec, device="meta")
    except TypeError:  # a timm without the device argument
        probe = build_timm(spec)
    probe.load_state_dict(state, strict=True, assign=True)
    return write_timm_files(out_dir, spec, state)


def write_timm_files(out_dir: str | Path, spec: dict[str, Any], state: dict[str, torch.Tensor]) -> list[Path]:
    """``model.safetensors`` (``state``) and ``model.json`` (``spec``) in ``out_dir``; returns both paths."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights, meta = out / "model.safetensors", out / "model.json"
    save_file(state, str(weights), metadata={"format": "pt"})
    meta.write_text(json.dumps(spec, indent=2) + "\n")
    return [weights, meta]


def load_timm(out_dir: str | Path) -> nn.Module:
    """Rebuild the exported encoder with timm from ``model.json`` + ``model.safetensors`` (strict)."""
    from safetensors.torch import load_file

    out = Path(out_dir)
    spec = json.loads((out / "model.json").read_text())
    model = build_timm(spec)
    model.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    return model.eval()


__all__ = ["STANDARD_TIMM", "build_timm", "export_timm", "load_timm", "timm_spec", "timm_state_dict"]
