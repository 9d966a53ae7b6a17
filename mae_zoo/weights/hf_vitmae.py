"""Explicit weight mapping between :class:`mae_zoo.modalities.image.ImageMAE` and
``transformers.ViTMAEForPreTraining`` (transformers **5.x** parameter names).

The two models compute the same function (verified by ``tests/test_oracle_hf_vitmae.py``); only
the parameter names differ, plus one structural difference: timm's ``Block`` holds the attention
input projection as one fused ``attn.qkv`` Linear, HF as three ``q_proj``/``k_proj``/``v_proj``
Linears. timm's fused weight is ``[W_q; W_k; W_v]`` stacked along the output dimension (its
forward reshapes the output to ``(3, heads, head_dim)``), so splitting in three along dim 0 is
exact, and HF's ``view(..., -1, head_dim)`` of each part uses the same head-major order.

Full map (``i`` = block index; every name also exists with ``.bias`` where it has ``.weight``)::

    ours                                   HF ViTMAEForPreTraining
    encoder.cls_token                      vit.embeddings.cls_token
    encoder.pos_embed                      vit.embeddings.position_embeddings
    encoder.patch_embed.proj.weight        vit.embeddings.patch_embeddings.projection.weight
    encoder.blocks.i.norm1                 vit.layers.i.layernorm_before
    encoder.blocks.i.attn.qkv              vit.layers.i.attention.{q,k,v}_proj   (split dim 0)
    encoder.blocks.i.attn.proj             vit.layers.i.attention.o_proj
    encoder.blocks.i.norm2                 vit.layers.i.layernorm_after
    encoder.blocks.i.mlp.fc1 / fc2         vit.layers.i.mlp.fc1 / fc2
    encoder.norm                           vit.layernorm
    decoder.decoder_embed                  decoder.decoder_embed
    decoder.mask_token                     decoder.mask_token
    decoder.decoder_pos_embed              decoder.decoder_pos_embed
    decoder.blocks.i.<as encoder>          decoder.decoder_layers.i.<as encoder>
    decoder.norm                           decoder.decoder_norm
    decoder.decoder_pred                   decoder.decoder_pred

The patch-embedding conv weight has shape ``(D, C, p, p)`` on both sides: our
``PatchProjection`` applies that same conv weight to channel-last flattened patches, which is why
it needs no permutation here.

Traps this module exists to avoid:

* ``ViTMAEForPreTraining(config)`` built from a config (no checkpoint) has all-zero encoder and
  decoder position tables and a zero mask token. They are frozen Parameters that live in both
  state dicts, so the maps below carry them and loading copies them; never rely on HF's init.
* HF's default ``layer_norm_eps`` is 1e-12; MAE uses 1e-6. :func:`hf_config_from_imagemae`
  takes the eps from our modules.
* transformers 4.x used other names (``vit.encoder.layer.i.attention.attention.query``, ...).
  ``from_pretrained`` in 5.x renames old checkpoints on load, so the state dict of a loaded HF
  model always has the 5.x names handled here; raw 4.x safetensors files are rejected (their keys
  are reported as unknown), not guessed at.

``transformers`` is a dev/test extra, so it is imported only inside the functions that need it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn as nn
from timm.layers.attention import Attention

from mae_zoo.nets.vit import TransformerStack
from mae_zoo.objectives import MaskedMSE

if TYPE_CHECKING:  # pragma: no cover - typing only; transformers is optional
    from transformers import ViTMAEConfig

    from mae_zoo.modalities.image import ImageMAE

StateDict = dict[str, torch.Tensor]

# Whole-tensor renames outside the transformer blocks, ours -> HF.
_TOP_LEVEL: dict[str, str] = {
    "encoder.cls_token": "vit.embeddings.cls_token",
    "encoder.pos_embed": "vit.embeddings.position_embeddings",
    "encoder.patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
    "encoder.patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
    "encoder.norm.weight": "vit.layernorm.weight",
    "encoder.norm.bias": "vit.layernorm.bias",
    "decoder.decoder_embed.weight": "decoder.decoder_embed.weight",
    "decoder.decoder_embed.bias": "decoder.decoder_embed.bias",
    "decoder.mask_token": "decoder.mask_token",
    "decoder.decoder_pos_embed": "decoder.decoder_pos_embed",
    "decoder.norm.weight": "decoder.decoder_norm.weight",
    "decoder.norm.bias": "decoder.decoder_norm.bias",
    "decoder.decoder_pred.weight": "decoder.decoder_pred.weight",
    "decoder.decoder_pred.bias": "decoder.decoder_pred.bias",
}
_TOP_LEVEL_INV = {hf: ours for ours, hf in _TOP_LEVEL.items()}

# Block containers, ours -> HF.
_STACKS: dict[str, str] = {"encoder.blocks": "vit.layers", "decoder.blocks": "decoder.decoder_layers"}
_STACKS_INV = {hf: ours for ours, hf in _STACKS.items()}

# Per-block module renames, ours (timm Block) -> HF ViTMAELayer; ``attn.qkv`` is split separately.
_IN_BLOCK: dict[str, str] = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.o_proj",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_IN_BLOCK_INV = {hf: ours for ours, hf in _IN_BLOCK.items()}
_QKV_PARTS = ("q_proj", "k_proj", "v_proj")  # the order timm stacks them in ``attn.qkv``

_OUR_BLOCK_KEY = re.compile(r"^(encoder\.blocks|decoder\.blocks)\.(\d+)\.(.+)\.(weight|bias)$")
_HF_BLOCK_KEY = re.compile(r"^(vit\.layers|decoder\.decoder_layers)\.(\d+)\.(.+)\.(weight|bias)$")


class StateDictMismatchError(KeyError):
    """A state dict's keys (or shapes) are not exactly what the target module expects."""

    def __init__(self, message: str, missing: list[str], unexpected: list[str], shape_mismatch: list[str]) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.shape_mismatch = shape_mismatch

    def __str__(self) -> str:  # KeyError would repr() the message and escape the newlines
        return str(self.args[0])


def raise_unmapped(direction: str, unknown: list[str]) -> None:
    """Raise :class:`StateDictMismatchError` naming every key a converter could not map, if any:
    a converter that silently dropped them would half-load (or half-export) a model."""
    if unknown:
        raise StateDictMismatchError(
            f"{direction}: {len(unknown)} key(s) have no mapping: {sorted(unknown)}", [], sorted(unknown), []
        )


def mae_zoo_to_hf(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename an ``ImageMAE`` state dict to ``ViTMAEForPreTraining`` names, splitting ``attn.qkv``.

    Raises :class:`StateDictMismatchError` listing every key it does not know, rather than
    silently dropping it, so a model with extra parameters cannot be half-exported.
    """
    out: StateDict = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if key in _TOP_LEVEL:
            out[_TOP_LEVEL[key]] = value
            continue
        match = _OUR_BLOCK_KEY.match(key)
        if match is None:
            unknown.append(key)
            continue
        stack, index, module, kind = match.groups()
        prefix = f"{_STACKS[stack]}.{index}"
        if module == "attn.qkv":
            if value.shape[0] % 3:
                raise ValueError(f"{key}: first dimension {value.shape[0]} is not divisible by 3")
            # clone: chunks are views of one storage, which safetensors refuses to save.
            for part, chunk in zip(_QKV_PARTS, value.chunk(3, dim=0)):
                out[f"{prefix}.attention.{part}.{kind}"] = chunk.clone()
        elif module in _IN_BLOCK:
            out[f"{prefix}.{_IN_BLOCK[module]}.{kind}"] = value
        else:
            unknown.append(key)
    raise_unmapped("mae_zoo_to_hf", unknown)
    return out


def hf_to_mae_zoo(hf_state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename a ``ViTMAEForPreTraining`` state dict (5.x names) to ``ImageMAE`` names, fusing q/k/v.

    Every block must provide all three of ``q_proj``/``k_proj``/``v_proj`` for each of weight and
    bias it has; a partial triple raises instead of producing a wrongly sized ``qkv``.
    """
    out: StateDict = {}
    unknown: list[str] = []
    qkv: dict[str, dict[str, torch.Tensor]] = {}  # our qkv key -> {part: tensor}
    for key, value in hf_state_dict.items():
        if key in _TOP_LEVEL_INV:
            out[_TOP_LEVEL_INV[key]] = value
            continue
        match = _HF_BLOCK_KEY.match(key)
        if match is None:
            unknown.append(key)
            continue
        stack, index, module, kind = match.groups()
        prefix = f"{_STACKS_INV[stack]}.{index}"
        part = module.removeprefix("attention.")
        if module.startswith("attention.") and part in _QKV_PARTS:
            qkv.setdefault(f"{prefix}.attn.qkv.{kind}", {})[part] = value
        elif module in _IN_BLOCK_INV:
            out[f"{prefix}.{_IN_BLOCK_INV[module]}.{kind}"] = value
        else:
            unknown.append(key)
    raise_unmapped("hf_to_mae_zoo", unknown)
    for key, parts in qkv.items():
        absent = [p for p in _QKV_PARTS if p not in parts]
        if absent:
            raise StateDictMismatchError(f"hf_to_mae_zoo: {key} lacks {absent}", absent, [], [])
        out[key] = torch.cat([parts[p] for p in _QKV_PARTS], dim=0)
    return out


def load_state_dict_exact(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    missing: Iterable[str] = (),
    unexpected: Iterable[str] = (),
) -> None:
    """Load ``state_dict`` into ``module``, requiring exactly the given missing/unexpected keys.

    ``strict=True`` alone can only express "none"; a conversion sometimes legitimately leaves
    known keys out, and those should be named, not tolerated wholesale. Keys and shapes are
    checked *before* anything is copied, because ``load_state_dict`` copies the matching tensors
    before it reports a shape error, which would leave the module half-loaded.
    """
    own = module.state_dict()
    want_missing, want_unexpected = set(missing), set(unexpected)
    got_missing = set(own) - set(state_dict)
    got_unexpected = set(state_dict) - set(own)
    shape_mismatch = sorted(
        f"{k}: got {tuple(state_dict[k].shape)}, expected {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if state_dict[k].shape != own[k].shape
    )
    if got_missing != want_missing or got_unexpected != want_unexpected or shape_mismatch:
        lines = [f"state dict does not fit {type(module).__name__}:"]
        if got_missing != want_missing:
            lines.append(f"  missing keys: {sorted(got_missing)} (expected {sorted(want_missing)})")
        if got_unexpected != want_unexpected:
            lines.append(f"  unexpected keys: {sorted(got_unexpected)} (expected {sorted(want_unexpected)})")
        if shape_mismatch:
            lines.append(f"  shape mismatches: {shape_mismatch}")
        raise StateDictMismatchError("\n".join(lines), sorted(got_missing), sorted(got_unexpected), shape_mismatch)
    result = module.load_state_dict(dict(state_dict), strict=False)
    # Re-check what torch itself reports, in case its notion of keys differs from state_dict().
    if set(result.missing_keys) != want_missing or set(result.unexpected_keys) != want_unexpected:
        raise StateDictMismatchError(
            f"load_state_dict reported missing={sorted(result.missing_keys)}, "
            f"unexpected={sorted(result.unexpected_keys)}",
            sorted(result.missing_keys),
            sorted(result.unexpected_keys),
            [],
        )


def load_hf_into_imagemae(model: nn.Module, hf_state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy a ``ViTMAEForPreTraining`` state dict into an ``ImageMAE`` (every key must match)."""
    load_state_dict_exact(model, hf_to_mae_zoo(hf_state_dict))


def load_imagemae_into_hf(hf_model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy an ``ImageMAE`` state dict into a ``ViTMAEForPreTraining``, position tables included."""
    load_state_dict_exact(hf_model, mae_zoo_to_hf(state_dict))


# ------------------------------------------------------------------------------------ configs
def _square(value: Any, name: str) -> int:
    """HF allows ``int`` or ``(h, w)`` sizes; ImageMAE is square only."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"ImageMAE needs a square {name}, HF config has {value}")
        value = value[0]
    return int(value)


def _mlp_ratio(hidden: int, intermediate: int, name: str) -> float:
    # timm's Block sizes its MLP as int(dim * mlp_ratio); make sure that gives back the HF size.
    ratio = intermediate / hidden
    if int(hidden * ratio) != intermediate:
        raise ValueError(f"{name}={intermediate} is not reproducible as int({hidden} * mlp_ratio)")
    return ratio


def imagemae_kwargs_from_hf_config(config: ViTMAEConfig) -> dict[str, Any]:
    """``ImageMAE`` constructor arguments equivalent to a ``ViTMAEConfig`` (all but ``optim``).

    The result includes ``mask`` (``RandomMask`` at ``config.mask_ratio``, HF's only masking).
    Raises ``ValueError`` for settings ImageMAE cannot reproduce: non-square images or patches, an
    activation other than exact GELU, dropout (our blocks have none), or an explicit ``head_dim``
    that differs from ``hidden_size // num_attention_heads``.
    """
    if config.hidden_act != "gelu":
        raise ValueError(f"ImageMAE's blocks use exact GELU; HF config has hidden_act={config.hidden_act!r}")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        if getattr(config, name, 0.0):
            raise ValueError(f"ImageMAE has no dropout; HF config has {name}={getattr(config, name)}")
    # HF's decoder layers deep-copy the config, so an explicit head_dim applies to both stacks.
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None and (
        head_dim * config.num_attention_heads != config.hidden_size
        or head_dim * config.decoder_num_attention_heads != config.decoder_hidden_size
    ):
        raise ValueError(f"head_dim={head_dim} does not equal width // heads for both encoder and decoder")
    eps = float(config.layer_norm_eps)
    qkv_bias = bool(config.qkv_bias)
    return {
        "img_size": _square(config.image_size, "image_size"),
        "patch_size": _square(config.patch_size, "patch_size"),
        "in_chans": int(config.num_channels),
        "objective": MaskedMSE.spec(norm_pix_loss=bool(config.norm_pix_loss)),
        "encoder": {
            "embed_dim": int(config.hidden_size),
            "depth": int(config.num_hidden_layers),
            "num_heads": int(config.num_attention_heads),
            "mlp_ratio": _mlp_ratio(config.hidden_size, config.intermediate_size, "intermediate_size"),
            "qkv_bias": qkv_bias,
            "norm_eps": eps,
        },
        "decoder": {
            "embed_dim": int(config.decoder_hidden_size),
            "depth": int(config.decoder_num_hidden_layers),
            "num_heads": int(config.decoder_num_attention_heads),
            "mlp_ratio": _mlp_ratio(
                config.decoder_hidden_size, config.decoder_intermediate_size, "decoder_intermediate_size"
            ),
            "qkv_bias": qkv_bias,
            "norm_eps": eps,
        },
        "mask": {"_target_": "mae_zoo.masks.RandomMask", "ratio": float(config.mask_ratio)},
    }


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _submodule(module: nn.Module, path: str, kind: type[ModuleT]) -> ModuleT:
    """``module.get_submodule(path)``, checked to be a ``kind`` (typed access to a built submodule)."""
    sub = module.get_submodule(path)
    if not isinstance(sub, kind):
        raise TypeError(f"{path} is a {type(sub).__name__}, expected a {kind.__name__}")
    return sub


def _stack_shape(stack: nn.Module, name: str) -> dict[str, Any]:
    """Width, depth, heads, MLP size, qkv bias and eps read off a built ``TransformerStack``."""
    if not isinstance(stack, TransformerStack):
        raise TypeError(f"{name} is a {type(stack).__name__}, not a TransformerStack")
    blocks = list(stack.blocks)
    if not blocks:
        raise ValueError(f"{name} has no blocks; HF ViTMAE needs at least one layer")
    first = blocks[0]
    # HF layers have no layer scale, q/k norm or inner norms, and use exact GELU; a block with any
    # of those would export its weights but compute something else in HF.
    extras = ("ls1", "ls2", "attn.q_norm", "attn.k_norm", "attn.norm", "mlp.norm")
    for i, block in enumerate(blocks):
        for path in extras:
            if not isinstance(block.get_submodule(path), nn.Identity):
                raise ValueError(f"{name}.blocks.{i}.{path} is not Identity; HF ViTMAE has no such layer")
        act = block.get_submodule("mlp.act")
        if not (isinstance(act, nn.GELU) and act.approximate == "none"):
            raise ValueError(f"{name}.blocks.{i}.mlp.act is {act}; HF config 'gelu' is exact GELU")
    eps = {m.eps for m in stack.modules() if isinstance(m, nn.LayerNorm)}
    if len(eps) != 1:
        raise ValueError(f"{name} mixes LayerNorm eps values {sorted(eps)}")
    return {
        "dim": _submodule(first, "norm1", nn.LayerNorm).normalized_shape[0],
        "depth": len(blocks),
        "heads": _submodule(first, "attn", Attention).num_heads,
        "intermediate": _submodule(first, "mlp.fc1", nn.Linear).out_features,
        "qkv_bias": _submodule(first, "attn.qkv", nn.Linear).bias is not None,
        "eps": eps.pop(),
    }


def hf_config_from_imagemae(model: ImageMAE) -> ViTMAEConfig:
    """A ``ViTMAEConfig`` describing ``model``, read from its built modules (not its hparams).

    The config's ``mask_ratio`` is our mask generator's ratio; HF always masks uniformly at random,
    so a model trained with another mask exports its weights faithfully but not its masking.
    ``drop_path`` is not exported (HF has none; it only matters in training). Raises
    ``ValueError`` where HF has a single setting and our encoder and decoder differ (LayerNorm eps,
    qkv bias), or when the encoder has no cls token (HF always has one).
    """
    from transformers import ViTMAEConfig

    if model.encoder.cls_token is None:
        raise ValueError("HF ViTMAE always has a cls token; this ImageMAE was built with cls_token=False")
    enc = _stack_shape(model.encoder, "encoder")
    dec = _stack_shape(model.decoder, "decoder")
    for field in ("eps", "qkv_bias"):
        if enc[field] != dec[field]:
            raise ValueError(
                f"HF ViTMAE shares one {field} across encoder and decoder; got {enc[field]} vs {dec[field]}"
            )
    proj = _submodule(model.encoder, "patch_embed.proj", nn.Conv2d)
    grid_h, grid_w = model.grid
    if grid_h != grid_w:
        raise ValueError(f"HF ViTMAE needs a square grid, got {model.grid}")
    return ViTMAEConfig(
        image_size=grid_h * model.patch_size,
        patch_size=model.patch_size,
        num_channels=proj.in_channels,
        hidden_size=enc["dim"],
        num_hidden_layers=enc["depth"],
        num_attention_heads=enc["heads"],
        intermediate_size=enc["intermediate"],
        decoder_hidden_size=dec["dim"],
        decoder_num_hidden_layers=dec["depth"],
        decoder_num_attention_heads=dec["heads"],
        decoder_intermediate_size=dec["intermediate"],
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=enc["eps"],
        qkv_bias=enc["qkv_bias"],
        mask_ratio=float(model.mask_generator.ratio),
        norm_pix_loss=bool(model.objective.norm_pix_loss),
    )


def export_hf(model: ImageMAE, out_dir: str | os.PathLike[str]) -> list[str]:
    """Write ``model`` as a ``ViTMAEForPreTraining`` directory (``save_pretrained``) into ``out_dir``.

    The HF model is built from :func:`hf_config_from_imagemae` and filled with
    :func:`load_imagemae_into_hf` (exact keys, position tables and mask token included). Returns
    the names of the files written. ``transformers`` 5.x writes its legacy (4.x) parameter names
    on disk and renames them when loading, so read the directory back with ``from_pretrained`` (or
    ``mae_zoo.load``), not by reading the safetensors file against the 5.x names.
    """
    from pathlib import Path

    from transformers import ViTMAEForPreTraining

    out = Path(out_dir)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()} if out.is_dir() else {}
    hf = ViTMAEForPreTraining(hf_config_from_imagemae(model)).eval()
    load_imagemae_into_hf(hf, model.state_dict())
    hf.save_pretrained(str(out))
    return sorted(p.name for p in out.iterdir() if before.get(p.name) != p.stat().st_mtime_ns)


__all__ = [
    "StateDictMismatchError",
    "export_hf",
    "hf_config_from_imagemae",
    "hf_to_mae_zoo",
    "imagemae_kwargs_from_hf_config",
    "load_hf_into_imagemae",
    "load_imagemae_into_hf",
    "load_state_dict_exact",
    "mae_zoo_to_hf",
    "raise_unmapped",
]
