"""Explicit weight map from an official Point-MAE pre-training checkpoint (Pang-Yatian/Point-MAE,
``models/Point_MAE.py``) to :class:`mae_zoo.modalities.point.PointMAE`.

The official file is a dict with ``base_model`` (the state dict, keys prefixed ``module.`` when saved
under DataParallel/DDP), ``optimizer``, ``epoch`` and metrics. Map (``i`` = block index, ``X`` one of
``norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2``; the official blocks have timm's names)::

    official                                  ours
    mask_token                                decoder.mask_token
    MAE_encoder.encoder.{first,second}_conv.* encoder.encoder.{first,second}_conv.*  (mini-PointNet, BN stats too)
    MAE_encoder.pos_embed.{0,2}.*             encoder.pos_embed.{0,2}.*
    MAE_encoder.blocks.blocks.i.X             encoder.blocks.i.X
    MAE_encoder.norm.*                        encoder.norm.*
    decoder_pos_embed.{0,2}.*                 decoder.pos_embed.{0,2}.*
    MAE_decoder.blocks.i.X                    decoder.blocks.i.X
    MAE_decoder.norm.*                        decoder.norm.*
    increase_dim.0.*                          decoder.increase_dim.0.*

What the state dict does not store and how it is chosen (reported in ``choices``): attention heads
(an argument, else width / 64: 384 -> 6, the official value), the number of groups (an argument,
else 64), the mask (random 0.6) and the loss (Chamfer-L2); drop path 0.1 (only matters in training).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mae_zoo.core.errors import ConfigError

_RULES = (
    (r"^mask_token$", "decoder.mask_token"),
    (r"^MAE_encoder\.encoder\.(.*)$", r"encoder.encoder.\1"),
    (r"^MAE_encoder\.pos_embed\.(.*)$", r"encoder.pos_embed.\1"),
    (r"^MAE_encoder\.blocks\.blocks\.(.*)$", r"encoder.blocks.\1"),
    (r"^MAE_encoder\.norm\.(.*)$", r"encoder.norm.\1"),
    (r"^decoder_pos_embed\.(.*)$", r"decoder.pos_embed.\1"),
    (r"^MAE_decoder\.blocks\.(.*)$", r"decoder.blocks.\1"),
    (r"^MAE_decoder\.norm\.(.*)$", r"decoder.norm.\1"),
    (r"^increase_dim\.(.*)$", r"decoder.increase_dim.\1"),
)


def is_official_pointmae(state_dict: Mapping[str, Any]) -> bool:
    keys = {k.removeprefix("module.") for k in state_dict}
    return "MAE_encoder.encoder.first_conv.0.weight" in keys and "increase_dim.0.weight" in keys


def official_to_ours(name: str) -> str | None:
    for pattern, repl in _RULES:
        if re.match(pattern, name):
            return re.sub(pattern, repl, name)
    return None


@dataclass
class PointLoadResult:
    model: Any
    choices: list[str] = field(default_factory=list)


def _depth(keys: list[str], prefix: str) -> int:
    found = [int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))]
    return max(found) + 1 if found else 0


def load_official_pointmae(
    state_dict: Mapping[str, torch.Tensor], num_heads: int | None = None, num_groups: int | None = None
) -> PointLoadResult:
    """A :class:`PointMAE` holding the official pre-training weights (exact key check)."""
    from mae_zoo.modalities.point import PointMAE

    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    keys = list(sd)
    dim = int(sd["MAE_encoder.pos_embed.2.weight"].shape[0])
    widths = [
        int(sd["MAE_encoder.encoder.first_conv.0.weight"].shape[0]),
        int(sd["MAE_encoder.encoder.first_conv.3.weight"].shape[0]),
        int(sd["MAE_encoder.encoder.second_conv.0.weight"].shape[0]),
    ]
    group_size = int(sd["increase_dim.0.weight"].shape[0]) // 3
    mlp_ratio = int(sd["MAE_encoder.blocks.blocks.0.mlp.fc1.weight"].shape[0]) / dim
    heads = num_heads or dim // 64
    groups = num_groups or 64
    choices = [
        f"num_heads={heads} ({'given' if num_heads else 'width / 64, the official 6 for 384'})",
        f"num_groups={groups} ({'given' if num_groups else 'the official 64'}); group_size={group_size} from the head",
        "mask random 0.6, Chamfer-L2, drop path 0.1 (the official pre-training recipe)",
    ]
    stack = {"num_heads": heads, "mlp_ratio": mlp_ratio, "drop_path": 0.1}
    model = PointMAE(
        encoder={
            "embed_dim": dim,
            "depth": _depth(keys, "MAE_encoder.blocks.blocks."),
            "pointnet_widths": widths,
            **stack,
        },
        decoder={"embed_dim": dim, "depth": _depth(keys, "MAE_decoder.blocks."), **stack},
        num_groups=groups,
        group_size=group_size,
        mask={"_target_": "mae_zoo.masks.RandomMask", "ratio": 0.6},
        optim={"lr": 1e-3, "weight_decay": 0.05, "betas": [0.9, 0.999]},
    )
    mapped: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in sd.items():
        ours = official_to_ours(name)
        if ours is None:
            unknown.append(name)
        else:
            mapped[ours] = tensor
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    if unknown or missing:
        raise ConfigError(
            f"not an official Point-MAE pre-training state dict: unknown keys {unknown[:5]}, missing {missing[:5]}"
        )
    bad = [k for k, v in mapped.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise ConfigError(f"shape mismatch for {bad[:5]} (heads or widths differ from the inferred ones)")
    model.load_state_dict(mapped, strict=True)
    return PointLoadResult(model, choices)
