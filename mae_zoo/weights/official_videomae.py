"""Official VideoMAE / VideoMAE V2 pre-training checkpoints (``.pth`` with a ``model`` state dict,
as written by their ``run_mae_pretraining.py``) -> :class:`mae_zoo.modalities.video.VideoMAE`.

The architecture is read off the tensors (tubelet and patch size from the Conv3d, widths, depths,
MLP ratio, q/v biases); what a state dict does not store comes from the file's ``args`` when
present (``num_frames``, ``input_size``, ``mask_ratio``, ``decoder_mask_type``/``decoder_mask_ratio``,
``normlize_target``), else an explicit argument, else the standard value. Every choice is reported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.objectives import TubeNormalizedMSE
from mae_zoo.weights.hf_videomae import official_to_mae_zoo
from mae_zoo.weights.hf_vitmae import load_state_dict_exact

# Standard heads per width: ViT-S/B/L/H/g encoders; decoders 192/384/512/640 (official scripts).
ENCODER_HEADS = {384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}
DECODER_HEADS = {192: 3, 384: 6, 512: 8, 640: 8}
DEFAULT_OPTIM = {"blr": 1.5e-4, "weight_decay": 0.05, "betas": [0.9, 0.95], "warmup_epochs": 40}


@dataclass
class OfficialVideoLoad:
    model: Any
    choices: list[str] = field(default_factory=list)


def is_official_videomae(state_dict: Mapping[str, torch.Tensor]) -> bool:
    weight = state_dict.get("encoder.patch_embed.proj.weight")
    return isinstance(weight, torch.Tensor) and weight.dim() == 5


def _depth(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    return 1 + max((int(m.group(1)) for k in state_dict if (m := pattern.match(k))), default=-1)


def _heads(width: int, given: int | None, table: dict[int, int], what: str, choices: list[str]) -> int:
    if given is not None:
        choices.append(f"{what} heads={given} (given)")
        return int(given)
    if width not in table:
        raise ConfigError(f"{what} width {width} is not a standard VideoMAE size; pass its number of heads")
    choices.append(f"{what} heads={table[width]} (standard for width {width})")
    return table[width]


def load_official_videomae(
    state_dict: Mapping[str, torch.Tensor],
    args: Any = None,
    num_heads: int | None = None,
    decoder_num_heads: int | None = None,
    norm_pix_loss: bool | None = None,
) -> OfficialVideoLoad:
    from mae_zoo.modalities.video import VideoMAE

    if "encoder_to_decoder.weight" not in state_dict:
        raise ConfigError(
            "this official VideoMAE file has no decoder (encoder_to_decoder.weight): "
            "only pre-training checkpoints load; fine-tuned ones are classifiers"
        )
    choices: list[str] = []
    proj = state_dict["encoder.patch_embed.proj.weight"]
    width, chans, tubelet, patch, _ = proj.shape
    dec_width = state_dict["encoder_to_decoder.weight"].shape[0]
    qkv_bias = "encoder.blocks.0.attn.q_bias" in state_dict

    def arg(name: str, default: Any) -> Any:
        value = getattr(args, name, None) if args is not None else None
        choices.append(
            f"{name}={value if value is not None else default} ({'file args' if value is not None else 'default'})"
        )
        return value if value is not None else default

    num_frames, img_size = int(arg("num_frames", 16)), int(arg("input_size", 224))
    mask_ratio = float(arg("mask_ratio", 0.9))
    decoder_mask = None
    if getattr(args, "decoder_mask_type", None) == "run_cell" and float(getattr(args, "decoder_mask_ratio", 0.0)) > 0:
        decoder_mask = {
            "_target_": "mae_zoo.masks.running_cell.RunningCellMask",
            "ratio": float(args.decoder_mask_ratio),
        }
        choices.append(f"decoder_mask=running_cell {args.decoder_mask_ratio} (file args)")
    if norm_pix_loss is None:
        norm_pix_loss = bool(arg("normlize_target", True))
    else:
        choices.append(f"norm_pix_loss={norm_pix_loss} (given)")
    stack = lambda prefix, dim, heads: {  # noqa: E731
        "embed_dim": int(dim),
        "depth": _depth(state_dict, prefix),
        "num_heads": heads,
        "mlp_ratio": state_dict[f"{prefix}.0.mlp.fc1.weight"].shape[0] / dim,
        "qkv_bias": qkv_bias,
    }
    model = VideoMAE(
        encoder=stack("encoder.blocks", width, _heads(width, num_heads, ENCODER_HEADS, "encoder", choices)),
        decoder=stack(
            "decoder.blocks", dec_width, _heads(dec_width, decoder_num_heads, DECODER_HEADS, "decoder", choices)
        ),
        mask={"_target_": "mae_zoo.masks.TubeMask", "ratio": mask_ratio},
        optim=dict(DEFAULT_OPTIM),
        decoder_mask=decoder_mask,
        num_frames=num_frames,
        img_size=img_size,
        in_chans=int(chans),
        patch_size=int(patch),
        tubelet_size=int(tubelet),
        objective=TubeNormalizedMSE.spec(channels=int(chans), norm_pix_loss=norm_pix_loss),
        pixel_mean=[0.485, 0.456, 0.406],
        pixel_std=[0.229, 0.224, 0.225],
    )
    load_state_dict_exact(model, official_to_mae_zoo(state_dict))
    return OfficialVideoLoad(model, choices)
