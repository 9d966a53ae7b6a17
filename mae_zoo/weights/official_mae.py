"""Explicit weight mapping between official facebookresearch/mae checkpoints and
:class:`mae_zoo.modalities.image.ImageMAE`, and inference of the architecture from the weights.

An official checkpoint is a ``.pth`` dict with a ``model`` entry (the state dict) and, when
written by the official training scripts, ``args`` (an ``argparse.Namespace``), ``optimizer``,
``epoch`` and ``scaler``. Three kinds of ``model`` state dict exist:

* **pre-training** (``models_mae.MaskedAutoencoderViT``, e.g. ``mae_visualize_vit_large.pth``):
  encoder + decoder;
* **encoder only** (the released ``mae_pretrain_vit_*.pth``): the same encoder keys, no decoder;
* **fine-tuned** (``models_vit.VisionTransformer``, e.g. ``mae_finetuned_vit_base.pth``): the
  encoder plus ``head.*``; with global pooling (the fine-tuning default) ``fc_norm.*`` replaces
  ``norm.*`` (``fc_norm`` normalises the *mean* of the patch tokens, so it is not our final
  ``encoder.norm`` and is not copied into it).

Full map (``i`` = block index, ``X`` one of ``norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
mlp.fc2`` with ``.weight`` and ``.bias``)::

    official                         ours
    cls_token                        encoder.cls_token
    pos_embed                        encoder.pos_embed
    patch_embed.proj.{weight,bias}   encoder.patch_embed.proj.{weight,bias}
    blocks.i.X                       encoder.blocks.i.X
    norm.{weight,bias}               encoder.norm.{weight,bias}
    mask_token                       decoder.mask_token
    decoder_embed.{weight,bias}      decoder.decoder_embed.{weight,bias}
    decoder_pos_embed                decoder.decoder_pos_embed
    decoder_blocks.i.X               decoder.blocks.i.X
    decoder_norm.{weight,bias}       decoder.norm.{weight,bias}
    decoder_pred.{weight,bias}       decoder.decoder_pred.{weight,bias}
    head.*, fc_norm.*                (kept aside: ``classifier`` tensors, no place in ImageMAE)

Both sides use timm blocks with a fused ``attn.qkv`` (rows ``[W_q; W_k; W_v]``, head-major), so
qkv needs no reshaping; the official code pins timm 0.3.2, whose ``Block``/``Attention``/``Mlp``
have the same parameter names and the same computation as timm 1.x's.

What a state dict does not store and how it is chosen (every choice is reported):

* attention heads: an explicit argument, else the model name in ``args.model``
  (``mae_vit_base_patch16`` -> ViT-B -> 12), else the standard width
  (192 -> 3, 384 -> 6, 768 -> 12, 1024 -> 16, 1280 -> 16; decoder 512 -> 16), else an error;
* LayerNorm eps: 1e-6 (the official value for every model);
* ``norm_pix_loss`` and ``mask_ratio``: from ``args`` when present, else an argument, else the
  official recipe (True, 0.75);
* a missing decoder: the official ``dec512d8b`` decoder (512 wide, 8 blocks, 16 heads, MLP 4),
  freshly initialised.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.objectives import MaskedMSE
from mae_zoo.weights.hf_vitmae import StateDictMismatchError, load_state_dict_exact, raise_unmapped

StateDict = dict[str, torch.Tensor]

# Whole-tensor renames outside the blocks, official -> ours.
_TOP_LEVEL: dict[str, str] = {
    "cls_token": "encoder.cls_token",
    "pos_embed": "encoder.pos_embed",
    "patch_embed.proj.weight": "encoder.patch_embed.proj.weight",
    "patch_embed.proj.bias": "encoder.patch_embed.proj.bias",
    "norm.weight": "encoder.norm.weight",
    "norm.bias": "encoder.norm.bias",
    "mask_token": "decoder.mask_token",
    "decoder_embed.weight": "decoder.decoder_embed.weight",
    "decoder_embed.bias": "decoder.decoder_embed.bias",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
    "decoder_norm.weight": "decoder.norm.weight",
    "decoder_norm.bias": "decoder.norm.bias",
    "decoder_pred.weight": "decoder.decoder_pred.weight",
    "decoder_pred.bias": "decoder.decoder_pred.bias",
}
_TOP_LEVEL_INV = {ours: official for official, ours in _TOP_LEVEL.items()}

# Block containers, official -> ours; the inner names are identical on both sides.
_STACKS: dict[str, str] = {"blocks": "encoder.blocks", "decoder_blocks": "decoder.blocks"}
_STACKS_INV = {ours: official for official, ours in _STACKS.items()}
_BLOCK_MODULES = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
_MODULES_RE = "|".join(re.escape(m) for m in _BLOCK_MODULES)
_OFFICIAL_BLOCK_KEY = re.compile(rf"^(blocks|decoder_blocks)\.(\d+)\.({_MODULES_RE})\.(weight|bias)$")
_OUR_BLOCK_KEY = re.compile(rf"^(encoder\.blocks|decoder\.blocks)\.(\d+)\.({_MODULES_RE})\.(weight|bias)$")

# Fine-tuning classifier tensors: expected in a fine-tuned file, with no place in ImageMAE.
CLASSIFIER_KEYS = ("head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias")
# The official decoder keys (besides ``decoder_blocks.*``): present all together or not at all.
_DECODER_TOP = ("mask_token", "decoder_embed", "decoder_pos_embed", "decoder_norm", "decoder_pred")

# Heads are not in a state dict. Standard ViT widths (and the official 512-d decoder).
STANDARD_ENCODER_HEADS: dict[int, int] = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
STANDARD_DECODER_HEADS: dict[int, int] = {512: 16}
# Size names used by the official model names (``mae_vit_base_patch16``, ``vit_large_patch16``).
SIZE_NAMES: dict[str, tuple[int, int]] = {
    "tiny": (192, 3),
    "small": (384, 6),
    "base": (768, 12),
    "large": (1024, 16),
    "huge": (1280, 16),
}
_MODEL_NAME = re.compile(r"vit_(tiny|small|base|large|huge)_patch(\d+)")
OFFICIAL_DECODER: dict[str, Any] = {"embed_dim": 512, "depth": 8, "num_heads": 16, "mlp_ratio": 4.0}
OFFICIAL_NORM_EPS = 1e-6
# The optimiser settings ImageMAE records as hparams when built from a foreign checkpoint
# (the values of conf/train.yaml; they matter only if the model is trained further).
DEFAULT_OPTIM: dict[str, Any] = {
    "blr": 1.5e-4,
    "lr": None,
    "betas": [0.9, 0.95],
    "weight_decay": 0.05,
    "warmup_epochs": 5,
    "warmup_steps": None,
    "min_lr": 0.0,
}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


# ---------------------------------------------------------------------------------- key mapping
def split_official(state_dict: Mapping[str, torch.Tensor]) -> tuple[StateDict, StateDict]:
    """Rename an official ``model`` state dict to ImageMAE names.

    Returns ``(ours, classifier)``: ``classifier`` holds the ``head.*``/``fc_norm.*`` tensors of a
    fine-tuned file under their official names. Any other key raises
    :class:`StateDictMismatchError` listing all of them.
    """
    ours: StateDict = {}
    classifier: StateDict = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if key in _TOP_LEVEL:
            ours[_TOP_LEVEL[key]] = value
        elif key in CLASSIFIER_KEYS:
            classifier[key] = value
        elif (match := _OFFICIAL_BLOCK_KEY.match(key)) is not None:
            stack, index, module, kind = match.groups()
            ours[f"{_STACKS[stack]}.{index}.{module}.{kind}"] = value
        else:
            unknown.append(key)
    raise_unmapped("official MAE checkpoint", unknown)
    return ours, classifier


def mae_zoo_to_official(state_dict: Mapping[str, torch.Tensor], encoder_only: bool = False) -> StateDict:
    """Rename an ImageMAE state dict to official MAE names (``encoder_only`` drops the decoder)."""
    out: StateDict = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if encoder_only and key.startswith("decoder."):
            continue
        if key in _TOP_LEVEL_INV:
            out[_TOP_LEVEL_INV[key]] = value
        elif (match := _OUR_BLOCK_KEY.match(key)) is not None:
            stack, index, module, kind = match.groups()
            out[f"{_STACKS_INV[stack]}.{index}.{module}.{kind}"] = value
        else:
            unknown.append(key)
    raise_unmapped("mae_zoo_to_official", unknown)
    return out


# ---------------------------------------------------------------------------------- inference
def _hint(args: Any, name: str) -> Any:
    """``args.<name>`` from an argparse.Namespace or a dict (the official ``args`` entry)."""
    if args is None:
        return None
    if isinstance(args, Mapping):
        return args.get(name)
    return getattr(args, name, None)


def _require(sd: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in sd:
        raise StateDictMismatchError(
            f"official MAE checkpoint: {what} needs '{key}', which the file lacks", [key], [], []
        )
    return sd[key]


def _depth(sd: Mapping[str, torch.Tensor], stack: str) -> int:
    indices = sorted({int(m.group(2)) for k in sd if (m := _OFFICIAL_BLOCK_KEY.match(k)) and m.group(1) == stack})
    if indices != list(range(len(indices))):
        raise StateDictMismatchError(f"official MAE checkpoint: {stack} indices are not 0..n-1: {indices}", [], [], [])
    return len(indices)


def _mlp_ratio(sd: Mapping[str, torch.Tensor], stack: str, dim: int) -> float:
    hidden = _require(sd, f"{stack}.0.mlp.fc1.weight", f"{stack} MLP width").shape[0]
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        raise ValueError(f"{stack} MLP width {hidden} is not reproducible as int({dim} * mlp_ratio)")
    return ratio


def _heads(
    width: int, explicit: int | None, named: int | None, name: str | None, table: dict[int, int], which: str, arg: str
) -> tuple[int, str]:
    if explicit is not None:
        heads, why = int(explicit), f"{arg}={explicit} given"
    elif named is not None:
        heads, why = named, f"model name '{name}' in the checkpoint's args"
    elif width in table:
        heads, why = table[width], f"standard width {width}"
    else:
        raise ConfigError(
            f"cannot infer the {which} attention heads: official state dicts do not store them, the checkpoint "
            f"names no standard model, and width {width} is not a standard one ({sorted(table)}); "
            f"pass {arg}=... (e.g. mae_zoo.load(path, {arg}={max(1, width // 64)}))"
        )
    if heads <= 0 or width % heads:
        raise ConfigError(f"{arg}={heads} does not divide the {which} width {width}")
    return heads, f"{which} num_heads={heads} ({why})"


@dataclass
class OfficialArchitecture:
    """ImageMAE constructor arguments inferred from an official checkpoint, and how."""

    kwargs: dict[str, Any]
    kind: str  # "pretrain" (encoder + decoder), "encoder" (encoder only), "finetune" (encoder + head/fc_norm)
    has_decoder: bool
    has_norm: bool
    choices: list[str] = field(default_factory=list)


def infer_architecture(
    state_dict: Mapping[str, torch.Tensor],
    args: Any = None,
    num_heads: int | None = None,
    decoder_num_heads: int | None = None,
    norm_pix_loss: bool | None = None,
) -> OfficialArchitecture:
    """ImageMAE arguments for an official ``model`` state dict (official key names).

    Sizes come from the tensors: width, input channels and patch size from ``patch_embed.proj``,
    the image size from ``pos_embed`` (1 + grid² rows, square grid), depth from the block
    indices, MLP ratio from ``fc1``, qkv bias from its presence. ``args`` is the checkpoint's
    ``args`` entry (or None); see the module docstring for what it and the arguments decide.
    """
    choices: list[str] = []
    proj = _require(state_dict, "patch_embed.proj.weight", "the patch size and width")
    if proj.ndim != 4 or proj.shape[2] != proj.shape[3]:
        raise ValueError(f"patch_embed.proj.weight has shape {tuple(proj.shape)}; ImageMAE needs (D, C, p, p)")
    dim, in_chans, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    _require(state_dict, "cls_token", "the cls token (ImageMAE always has one)")
    pos = _require(state_dict, "pos_embed", "the image size")
    num_tokens = pos.shape[1] - 1
    grid = math.isqrt(num_tokens)
    if pos.ndim != 3 or grid * grid != num_tokens or pos.shape[2] != dim:
        raise ValueError(f"pos_embed has shape {tuple(pos.shape)}; expected (1, 1 + g*g, {dim}) for a square grid")
    depth = _depth(state_dict, "blocks")
    if depth == 0:
        raise ValueError("official MAE checkpoint has no encoder blocks ('blocks.0.*')")

    name = _hint(args, "model")
    named_heads = None
    if isinstance(name, str) and (match := _MODEL_NAME.search(name)) is not None:
        size_width, size_heads = SIZE_NAMES[match.group(1)]
        if size_width != dim or int(match.group(2)) != patch:
            raise ValueError(
                f"the checkpoint's args.model='{name}' means width {size_width}, patch {match.group(2)}, "
                f"but the weights have width {dim}, patch {patch}"
            )
        named_heads = size_heads
    heads, why = _heads(dim, num_heads, named_heads, name, STANDARD_ENCODER_HEADS, "encoder", "num_heads")
    choices.append(why)

    encoder = {
        "embed_dim": dim,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": _mlp_ratio(state_dict, "blocks", dim),
        "qkv_bias": "blocks.0.attn.qkv.bias" in state_dict,
        "norm_eps": OFFICIAL_NORM_EPS,
    }
    choices.append(f"LayerNorm eps={OFFICIAL_NORM_EPS} (the official value; not stored in the weights)")

    has_decoder = any(k.startswith(_DECODER_TOP) or k.startswith("decoder_blocks.") for k in state_dict)
    if has_decoder:
        dec_w = _require(state_dict, "decoder_embed.weight", "the decoder width")
        dec_dim = int(dec_w.shape[0])
        if dec_w.shape[1] != dim:
            raise ValueError(f"decoder_embed.weight has shape {tuple(dec_w.shape)}; expected (*, {dim})")
        pred = _require(state_dict, "decoder_pred.weight", "the decoder output")
        if pred.shape[0] != patch * patch * in_chans:
            raise ValueError(
                f"decoder_pred predicts {pred.shape[0]} values per patch; ImageMAE predicts p*p*C = "
                f"{patch * patch * in_chans}"
            )
        dec_heads, why = _heads(
            dec_dim, decoder_num_heads, None, None, STANDARD_DECODER_HEADS, "decoder", "decoder_num_heads"
        )
        choices.append(why)
        decoder = {
            "embed_dim": dec_dim,
            "depth": _depth(state_dict, "decoder_blocks"),
            "num_heads": dec_heads,
            "mlp_ratio": _mlp_ratio(state_dict, "decoder_blocks", dec_dim),
            "qkv_bias": "decoder_blocks.0.attn.qkv.bias" in state_dict,
            "norm_eps": OFFICIAL_NORM_EPS,
        }
    else:
        dec_heads, _ = _heads(
            OFFICIAL_DECODER["embed_dim"],
            decoder_num_heads,
            None,
            None,
            STANDARD_DECODER_HEADS,
            "decoder",
            "decoder_num_heads",
        )
        decoder = {**OFFICIAL_DECODER, "num_heads": dec_heads, "qkv_bias": True, "norm_eps": OFFICIAL_NORM_EPS}
        choices.append(
            f"decoder not in the file: the official one (512 wide, 8 blocks, {decoder['num_heads']} heads), "
            "freshly initialised"
        )

    recorded_npl = _hint(args, "norm_pix_loss")
    if norm_pix_loss is not None:
        npl, why = bool(norm_pix_loss), "given"
    elif recorded_npl is not None:
        npl, why = bool(recorded_npl), "from the checkpoint's args"
    else:
        npl, why = True, "the official recipe; not recorded in the file"
    choices.append(f"norm_pix_loss={npl} ({why})")
    ratio = _hint(args, "mask_ratio")
    ratio = float(ratio) if ratio is not None else 0.75
    choices.append(f"mask: random, ratio {ratio}")

    has_classifier = any(k in state_dict for k in CLASSIFIER_KEYS)
    kind = "finetune" if has_classifier else ("pretrain" if has_decoder else "encoder")
    kwargs = {
        "img_size": grid * patch,
        "patch_size": patch,
        "in_chans": in_chans,
        "objective": MaskedMSE.spec(norm_pix_loss=npl),
        "encoder": encoder,
        "decoder": decoder,
        "mask": {"_target_": "mae_zoo.masks.RandomMask", "ratio": ratio},
        "optim": dict(DEFAULT_OPTIM),
    }
    if in_chans == 3:  # official models are trained on ImageNet-normalised inputs (used for pictures only)
        kwargs.update(pixel_mean=list(IMAGENET_MEAN), pixel_std=list(IMAGENET_STD))
    return OfficialArchitecture(kwargs, kind, has_decoder, "norm.weight" in state_dict, choices)


# ---------------------------------------------------------------------------------- loading
@dataclass
class OfficialLoad:
    model: Any  # ImageMAE
    kind: str
    not_in_file: list[str]  # our keys left at their fresh init
    classifier: StateDict  # head.* / fc_norm.* of a fine-tuned file (official names)
    choices: list[str]


def load_official_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    args: Any = None,
    num_heads: int | None = None,
    decoder_num_heads: int | None = None,
    norm_pix_loss: bool | None = None,
) -> OfficialLoad:
    """Build an ImageMAE for an official ``model`` state dict and load it with an exact key check.

    Keys allowed to be absent are decided by the kind of file, not by what happens to be
    missing: the whole decoder when the file has no decoder key at all, and ``encoder.norm.*``
    when the file has ``fc_norm.*`` instead of ``norm.*`` (global-pool fine-tuning). Anything
    else missing, any unknown key, or any shape mismatch raises :class:`StateDictMismatchError`
    with the exact lists, before any tensor is copied.
    """
    from mae_zoo.modalities.image import ImageMAE

    arch = infer_architecture(state_dict, args, num_heads, decoder_num_heads, norm_pix_loss)
    ours, classifier = split_official(state_dict)
    model = ImageMAE(**arch.kwargs)
    own = model.state_dict()
    allowed_missing = set()
    if not arch.has_decoder:
        allowed_missing |= {k for k in own if k.startswith("decoder.")}
    if not arch.has_norm and "fc_norm.weight" in classifier:
        allowed_missing |= {"encoder.norm.weight", "encoder.norm.bias"}
    load_state_dict_exact(model, ours, missing=allowed_missing)
    return OfficialLoad(model.eval(), arch.kind, sorted(allowed_missing), classifier, arch.choices)


__all__ = [
    "CLASSIFIER_KEYS",
    "DEFAULT_OPTIM",
    "OFFICIAL_DECODER",
    "STANDARD_DECODER_HEADS",
    "STANDARD_ENCODER_HEADS",
    "OfficialArchitecture",
    "OfficialLoad",
    "infer_architecture",
    "load_official_state_dict",
    "mae_zoo_to_official",
    "split_official",
]
