"""Official Audio-MAE pre-training checkpoints (facebookresearch/AudioMAE ``main_pretrain.py``: a ``.pth``
with a ``model`` state dict of ``models_mae.MaskedAutoencoderViT``) -> :class:`mae_zoo.modalities.audio.AudioMAE`.

Official names (``models_mae.py``): ``patch_embed.proj`` (Conv2d, 1 input channel), ``cls_token``,
``pos_embed`` (1, 1 + T*F, D), ``blocks.i.*``, ``norm``; ``decoder_embed``, ``mask_token``,
``decoder_pos_embed``, ``decoder_blocks.i.*`` (timm ``Block`` for ``decoder_mode=0``, timm
``SwinTransformerBlock`` with ``attn.relative_position_bias_table`` for ``decoder_mode=1``),
``decoder_norm``, ``decoder_pred``. The Swin blocks' buffers (``attn.relative_position_index``,
``attn_mask``), which old timm versions saved, are recomputed here; a saved index must equal ours.

Read off the tensors: patch size, widths, depths, MLP ratio, the decoder mode, its window (from the
bias table) and its heads. Not stored, hence chosen and reported: the mel bins (``num_mel_bins``,
default 128: the frequency grid is bins / patch), the encoder heads (standard per width, or
``num_heads``), the global decoder's heads (16, or ``decoder_num_heads``), the shift (2, 0) and the
loss target (``norm_pix_loss`` from the file's ``args``, else True).
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
from mae_zoo.weights.hf_vitmae import load_state_dict_exact, raise_unmapped
from mae_zoo.weights.official_mae import DEFAULT_OPTIM

ENCODER_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
TOP_LEVEL = {
    "cls_token": "encoder.cls_token",
    "pos_embed": "encoder.pos_embed",
    "patch_embed.proj.weight": "encoder.patch_embed.proj.weight",
    "patch_embed.proj.bias": "encoder.patch_embed.proj.bias",
    "norm.weight": "encoder.norm.weight",
    "norm.bias": "encoder.norm.bias",
    "decoder_embed.weight": "decoder.decoder_embed.weight",
    "decoder_embed.bias": "decoder.decoder_embed.bias",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
    "decoder_norm.weight": "decoder.norm.weight",
    "decoder_norm.bias": "decoder.norm.bias",
    "decoder_pred.weight": "decoder.decoder_pred.weight",
    "decoder_pred.bias": "decoder.decoder_pred.bias",
}
_BLOCK = re.compile(r"^(blocks|decoder_blocks)\.(\d+)\.(.+)$")
_RECOMPUTED = ("attn.relative_position_index", "attn_mask")  # buffers old timm saved


@dataclass
class OfficialAudioLoad:
    model: Any
    choices: list[str] = field(default_factory=list)


def is_official_audiomae(state_dict: Mapping[str, Any]) -> bool:
    """A one-channel patch embedding with a decoder: Swin decoder blocks, or a token count that is no
    square grid (an image MAE's is), e.g. 512 = 64 x 8."""
    proj, pos = state_dict.get("patch_embed.proj.weight"), state_dict.get("pos_embed")
    if (
        not isinstance(proj, torch.Tensor)
        or proj.dim() != 4
        or proj.shape[1] != 1
        or "decoder_pred.weight" not in state_dict
    ):
        return False
    swin = any(k.endswith("attn.relative_position_bias_table") for k in state_dict if k.startswith("decoder_blocks."))
    tokens = pos.shape[1] - 1 if isinstance(pos, torch.Tensor) else 0
    return swin or math.isqrt(tokens) ** 2 != tokens


def official_to_mae_zoo(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(ours, recomputed buffers): official names -> AudioMAE names; any other key raises."""
    ours: dict[str, torch.Tensor] = {}
    buffers: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if key in TOP_LEVEL:
            ours[TOP_LEVEL[key]] = value
        elif (m := _BLOCK.match(key)) is not None:
            stack, index, rest = m.groups()
            name = f"{'encoder' if stack == 'blocks' else 'decoder'}.blocks.{index}.{rest}"
            (buffers if rest in _RECOMPUTED else ours)[name] = value
        else:
            unknown.append(key)
    raise_unmapped("official Audio-MAE checkpoint", unknown)
    return ours, buffers


def _depth(sd: Mapping[str, torch.Tensor], stack: str) -> int:
    pattern = re.compile(rf"^{stack}\.(\d+)\.")
    return 1 + max((int(m.group(1)) for k in sd if (m := pattern.match(k))), default=-1)


def _arg(args: Any, name: str) -> Any:
    if isinstance(args, Mapping):
        return args.get(name)
    return getattr(args, name, None) if args is not None else None


def load_official_audiomae(
    state_dict: Mapping[str, torch.Tensor],
    args: Any = None,
    num_heads: int | None = None,
    decoder_num_heads: int | None = None,
    norm_pix_loss: bool | None = None,
    num_mel_bins: int = 128,
) -> OfficialAudioLoad:
    from mae_zoo.modalities.audio import AudioMAE

    choices: list[str] = []
    proj = state_dict["patch_embed.proj.weight"]
    width, _, patch, patch_w = proj.shape
    if patch != patch_w:
        raise ConfigError(f"official Audio-MAE patches are square; got {tuple(proj.shape[2:])}")
    tokens = state_dict["pos_embed"].shape[1] - 1
    grid_f = num_mel_bins // patch
    if grid_f < 1 or tokens % grid_f:
        raise ConfigError(
            f"{tokens} tokens do not form a grid of {grid_f} frequency columns (num_mel_bins={num_mel_bins})"
        )
    grid_t = tokens // grid_f
    choices.append(f"num_mel_bins={num_mel_bins} (given or the Audio-MAE default): grid {grid_t} x {grid_f}")
    if num_heads is None:
        if width not in ENCODER_HEADS:
            raise ConfigError(f"encoder width {width} is not a standard ViT size; pass num_heads")
        num_heads = ENCODER_HEADS[width]
        choices.append(f"encoder heads={num_heads} (standard for width {width})")
    dec_width = state_dict["decoder_embed.weight"].shape[0]
    table_key = "decoder_blocks.0.attn.relative_position_bias_table"
    local = table_key in state_dict
    window = (4, 4)
    if local:
        entries, table_heads = state_dict[table_key].shape
        side = (math.isqrt(entries) + 1) // 2
        if (2 * side - 1) ** 2 != entries:
            raise ConfigError(f"{table_key} has {entries} rows: not a square window's (2w-1)^2")
        window = (side, side)
        if decoder_num_heads is not None and decoder_num_heads != table_heads:
            raise ConfigError(f"decoder_num_heads={decoder_num_heads}, but the bias table has {table_heads} heads")
        decoder_num_heads = int(table_heads)
        choices.append(
            f"decoder_mode=local (Swin blocks), window {window}, heads {table_heads} (from the file), shift (2, 0)"
        )
    elif decoder_num_heads is None:
        decoder_num_heads = 16
        choices.append("decoder_mode=global, heads 16 (Audio-MAE's decoder)")
    if norm_pix_loss is None:
        hint = _arg(args, "norm_pix_loss")
        norm_pix_loss = bool(hint) if hint is not None else True
        choices.append(f"norm_pix_loss={norm_pix_loss} ({'file args' if hint is not None else 'default'})")
    mlp = state_dict["blocks.0.mlp.fc1.weight"].shape[0] / width
    dec_mlp = state_dict["decoder_blocks.0.mlp.fc1.weight"].shape[0] / dec_width
    mask_ratio = _arg(args, "mask_ratio") or 0.8
    model = AudioMAE(
        encoder={
            "embed_dim": width,
            "depth": _depth(state_dict, "blocks"),
            "num_heads": num_heads,
            "mlp_ratio": mlp,
            "qkv_bias": "blocks.0.attn.qkv.bias" in state_dict,
        },
        decoder={
            "embed_dim": dec_width,
            "depth": _depth(state_dict, "decoder_blocks"),
            "num_heads": decoder_num_heads,
            "mlp_ratio": dec_mlp,
        },
        target_length=grid_t * patch,
        num_mel_bins=grid_f * patch,
        patch_size=patch,
        decoder_mode="local" if local else "global",
        decoder_window=window,
        mask={"_target_": "mae_zoo.masks.RandomMask", "ratio": float(mask_ratio)},
        objective=MaskedMSE.spec(norm_pix_loss=norm_pix_loss),
        optim=dict(DEFAULT_OPTIM),
    )
    ours, buffers = official_to_mae_zoo(state_dict)
    for name, value in buffers.items():
        mine = dict(model.named_buffers()).get(name)
        if name.endswith("relative_position_index") and (mine is None or not torch.equal(mine, value.to(mine.dtype))):
            raise ConfigError(f"{name} in the file differs from timm's window index for window {window}")
    load_state_dict_exact(model, ours)
    return OfficialAudioLoad(model, choices)
