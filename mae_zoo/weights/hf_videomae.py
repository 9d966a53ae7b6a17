"""Explicit weight maps for :class:`mae_zoo.modalities.video.VideoMAE`: to and from
``transformers.VideoMAEForPreTraining`` (transformers 5.x names) and the official VideoMAE /
VideoMAE V2 pre-training checkpoints.

Our names follow the official code except two (``decoder.decoder_embed`` and ``decoder.mask_token``),
so the official map is nearly the identity. HF splits the fused ``qkv`` projection into
``query``/``key``/``value`` (rows ``[W_q; W_k; W_v]``, in that order) and has no key bias, which
matches VideoMAE's ``q_bias``/``v_bias`` (``qv_bias=True``). Full map (``i`` = block index; HF splits qkv)::

    ours                                    official                    HF VideoMAEForPreTraining
    encoder.patch_embed.proj.{weight,bias}  (same)                      videomae.embeddings.patch_embeddings.projection
    encoder.blocks.i.norm1                  (same)                      videomae.encoder.layer.i.layernorm_before
    encoder.blocks.i.attn.qkv.weight        (same)                      ...attention.attention.{query,key,value}.weight
    encoder.blocks.i.attn.q_bias / v_bias   (same)                      ...attention.attention.query.bias / value.bias
    encoder.blocks.i.attn.proj              (same)                      ...attention.output.dense
    encoder.blocks.i.norm2                  (same)                      ...layernorm_after
    encoder.blocks.i.mlp.fc1 / fc2          (same)                      ...intermediate.dense / output.dense
    encoder.norm                            (same)                      videomae.layernorm
    decoder.decoder_embed.weight            encoder_to_decoder.weight   encoder_to_decoder.weight
    decoder.mask_token                      mask_token                  mask_token
    decoder.blocks.i.<as encoder>           decoder.blocks.i.<same>     decoder.decoder_layers.i.<as encoder>
    decoder.norm, decoder.head              (same)                      decoder.norm, decoder.head

Position tables are fixed sinusoids recomputed by all three, never stored. Two HF settings matter
for equality: ``use_mean_pooling=False`` (otherwise HF drops the encoder's final LayerNorm) and the
decoder's final LayerNorm, which HF hard-codes at eps 1e-5 (official and ours: 1e-6; the difference
in predictions is ~1e-5, see ``tests/test_video_oracle.py``). HF also hard-codes ImageNet mean/std
for un-normalising the target; ours takes them from the data config (ImageNet by default).
``transformers`` is a dev extra, imported only inside the functions that need it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from mae_zoo.nets.video import QVBiasAttention
from mae_zoo.nets.vit import TransformerStack
from mae_zoo.objectives import TubeNormalizedMSE
from mae_zoo.weights.hf_vitmae import StateDictMismatchError, _submodule, load_state_dict_exact, raise_unmapped

if TYPE_CHECKING:  # pragma: no cover
    from transformers import VideoMAEConfig

    from mae_zoo.modalities.video import VideoMAE

StateDict = dict[str, torch.Tensor]

# ------------------------------------------------------------------------------------ official
_OFFICIAL_RENAMES = {"decoder.decoder_embed.weight": "encoder_to_decoder.weight", "decoder.mask_token": "mask_token"}
_OFFICIAL_RENAMES_INV = {v: k for k, v in _OFFICIAL_RENAMES.items()}
# Official modules with no parameters in pre-training (num_classes=0 heads are Identity) may still
# appear in a fine-tuning-style dict; those are refused below as unknown keys.
_OUR_KEY = re.compile(
    r"^(encoder\.(patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)|blocks\.\d+\.[\w.]+)"
    r"|decoder\.(blocks\.\d+\.[\w.]+|norm\.(weight|bias)|head\.(weight|bias)))$"
)


def official_to_mae_zoo(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename an official VideoMAE / VideoMAE V2 pre-training ``model`` state dict to ours."""
    out: StateDict = {}
    unknown = []
    for key, value in state_dict.items():
        ours = _OFFICIAL_RENAMES_INV.get(key, key)
        if ours in _OFFICIAL_RENAMES or _OUR_KEY.match(ours):
            out[ours] = value
        else:
            unknown.append(key)
    raise_unmapped("official_to_mae_zoo", unknown)
    return out


def mae_zoo_to_official(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    return {_OFFICIAL_RENAMES.get(k, k): v for k, v in state_dict.items()}


# ------------------------------------------------------------------------------------ HF
_HF_TOP = {
    "encoder.patch_embed.proj.weight": "videomae.embeddings.patch_embeddings.projection.weight",
    "encoder.patch_embed.proj.bias": "videomae.embeddings.patch_embeddings.projection.bias",
    "encoder.norm.weight": "videomae.layernorm.weight",
    "encoder.norm.bias": "videomae.layernorm.bias",
    "decoder.decoder_embed.weight": "encoder_to_decoder.weight",
    "decoder.mask_token": "mask_token",
    "decoder.norm.weight": "decoder.norm.weight",
    "decoder.norm.bias": "decoder.norm.bias",
    "decoder.head.weight": "decoder.head.weight",
    "decoder.head.bias": "decoder.head.bias",
}
_HF_TOP_INV = {v: k for k, v in _HF_TOP.items()}
_HF_STACKS = {"encoder.blocks": "videomae.encoder.layer", "decoder.blocks": "decoder.decoder_layers"}
_HF_STACKS_INV = {v: k for k, v in _HF_STACKS.items()}
_HF_IN_BLOCK = {  # (our module path, kind) -> HF path
    ("norm1", "weight"): "layernorm_before.weight",
    ("norm1", "bias"): "layernorm_before.bias",
    ("norm2", "weight"): "layernorm_after.weight",
    ("norm2", "bias"): "layernorm_after.bias",
    ("attn.proj", "weight"): "attention.output.dense.weight",
    ("attn.proj", "bias"): "attention.output.dense.bias",
    ("mlp.fc1", "weight"): "intermediate.dense.weight",
    ("mlp.fc1", "bias"): "intermediate.dense.bias",
    ("mlp.fc2", "weight"): "output.dense.weight",
    ("mlp.fc2", "bias"): "output.dense.bias",
    ("attn", "q_bias"): "attention.attention.query.bias",
    ("attn", "v_bias"): "attention.attention.value.bias",
}
_HF_IN_BLOCK_INV = {v: k for k, v in _HF_IN_BLOCK.items()}
_QKV = ("query", "key", "value")
_OUR_BLOCK = re.compile(r"^(encoder\.blocks|decoder\.blocks)\.(\d+)\.(.+)\.(weight|bias|q_bias|v_bias)$")
_HF_BLOCK = re.compile(r"^(videomae\.encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.+)$")


def mae_zoo_to_hf(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename a ``VideoMAE`` state dict to ``VideoMAEForPreTraining`` names, splitting ``attn.qkv``."""
    out: StateDict = {}
    unknown = []
    for key, value in state_dict.items():
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        match = _OUR_BLOCK.match(key)
        if match is None:
            unknown.append(key)
            continue
        stack, index, module, kind = match.groups()
        prefix = f"{_HF_STACKS[stack]}.{index}"
        if (module, kind) == ("attn.qkv", "weight"):
            for part, chunk in zip(_QKV, value.chunk(3, dim=0)):
                out[f"{prefix}.attention.attention.{part}.weight"] = chunk.clone()
        elif (module, kind) in _HF_IN_BLOCK:
            out[f"{prefix}.{_HF_IN_BLOCK[(module, kind)]}"] = value
        else:
            unknown.append(key)
    raise_unmapped("mae_zoo_to_hf", unknown)
    return out


def hf_to_mae_zoo(hf_state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename a ``VideoMAEForPreTraining`` state dict to ``VideoMAE`` names, fusing query/key/value."""
    out: StateDict = {}
    unknown = []
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in hf_state_dict.items():
        if key in _HF_TOP_INV:
            out[_HF_TOP_INV[key]] = value
            continue
        match = _HF_BLOCK.match(key)
        if match is None:
            unknown.append(key)
            continue
        stack, index, rest = match.groups()
        prefix = f"{_HF_STACKS_INV[stack]}.{index}"
        parts = rest.split(".")
        if len(parts) == 4 and parts[:2] == ["attention", "attention"] and parts[2] in _QKV and parts[3] == "weight":
            qkv.setdefault(f"{prefix}.attn.qkv.weight", {})[parts[2]] = value
        elif rest in _HF_IN_BLOCK_INV:
            module, kind = _HF_IN_BLOCK_INV[rest]
            out[f"{prefix}.{module}.{kind}"] = value
        else:
            unknown.append(key)  # e.g. a key bias: VideoMAE has none
    raise_unmapped("hf_to_mae_zoo", unknown)
    for key, parts in qkv.items():
        absent = [p for p in _QKV if p not in parts]
        if absent:
            raise StateDictMismatchError(f"hf_to_mae_zoo: {key} lacks {absent}", absent, [], [])
        out[key] = torch.cat([parts[p] for p in _QKV], dim=0)
    return out


def load_hf_into_videomae(model: nn.Module, hf_state_dict: Mapping[str, torch.Tensor]) -> None:
    load_state_dict_exact(model, hf_to_mae_zoo(hf_state_dict))


def load_videomae_into_hf(hf_model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    load_state_dict_exact(hf_model, mae_zoo_to_hf(state_dict))


# ------------------------------------------------------------------------------------ configs
def _stack(stack: nn.Module, name: str) -> dict[str, Any]:
    if not isinstance(stack, TransformerStack):
        raise TypeError(f"{name} is a {type(stack).__name__}, not a TransformerStack")
    blocks = list(stack.blocks)
    if not blocks:
        raise ValueError(f"{name} has no blocks; HF VideoMAE needs at least one layer")
    norm = _submodule(stack, "norm", nn.LayerNorm)
    eps = {m.eps for m in blocks[0].modules() if isinstance(m, nn.LayerNorm)} | {norm.eps}
    if len(eps) != 1:
        raise ValueError(f"{name} mixes LayerNorm eps values {sorted(eps)}")
    first = blocks[0]
    attn = _submodule(first, "attn", QVBiasAttention)
    return {
        "dim": _submodule(first, "norm1", nn.LayerNorm).normalized_shape[0],
        "depth": len(blocks),
        "heads": attn.num_heads,
        "intermediate": _submodule(first, "mlp.fc1", nn.Linear).out_features,
        "qv_bias": attn.q_bias is not None,
        "eps": eps.pop(),
    }


def hf_config_from_videomae(model: VideoMAE) -> VideoMAEConfig:
    """A ``VideoMAEConfig`` describing ``model``'s built modules, set up to compute what it computes
    (``use_mean_pooling=False``; HF's decoder norm eps stays 1e-5, which it cannot configure)."""
    from transformers import VideoMAEConfig

    enc, dec = _stack(model.encoder, "encoder"), _stack(model.decoder, "decoder")
    if enc["qv_bias"] != dec["qv_bias"]:
        raise ValueError("HF VideoMAE shares qv_bias between encoder and decoder; ours differ")
    t, h, w = model.grid
    if h != w:
        raise ValueError(f"HF VideoMAE needs square frames, got a {h}x{w} token grid")
    return VideoMAEConfig(
        image_size=h * model.patch_size,
        patch_size=model.patch_size,
        num_channels=model.in_chans,
        num_frames=t * model.tubelet_size,
        tubelet_size=model.tubelet_size,
        hidden_size=enc["dim"],
        num_hidden_layers=enc["depth"],
        num_attention_heads=enc["heads"],
        intermediate_size=enc["intermediate"],
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=enc["eps"],
        qv_bias=enc["qv_bias"],
        use_mean_pooling=False,
        decoder_hidden_size=dec["dim"],
        decoder_num_hidden_layers=dec["depth"],
        decoder_num_attention_heads=dec["heads"],
        decoder_intermediate_size=dec["intermediate"],
        norm_pix_loss=bool(model.objective.norm_pix_loss),
    )


def _single_size(value: int | list[int] | tuple[int, int], name: str) -> int:
    """A HF size field (an int, or a (height, width) pair) as the one int that VideoMAE takes."""
    if isinstance(value, (list, tuple)):
        raise TypeError(f"config.{name}={value!r}: VideoMAE takes a single int (square frames and patches)")
    return int(value)


def videomae_kwargs_from_hf_config(config: VideoMAEConfig) -> dict[str, Any]:
    """``VideoMAE`` constructor arguments equivalent to a ``VideoMAEConfig`` (all but ``optim``).

    The encoder mask is tube 0.9 (HF has no mask generator: it takes ``bool_masked_pos``)."""
    if config.hidden_act != "gelu":
        raise ValueError(f"VideoMAE's blocks use exact GELU; HF config has hidden_act={config.hidden_act!r}")
    if config.use_mean_pooling:
        raise ValueError(
            "use_mean_pooling=True drops the encoder's final LayerNorm (a classification setting); "
            "VideoMAE pre-training has it: only use_mean_pooling=False loads"
        )
    eps = float(config.layer_norm_eps)
    qv_bias = bool(config.qv_bias)

    def stack(dim: int, depth: int, heads: int, inner: int) -> dict[str, Any]:
        if int(dim * (inner / dim)) != inner:
            raise ValueError(f"MLP size {inner} is not int({dim} * ratio)")
        return {
            "embed_dim": int(dim),
            "depth": int(depth),
            "num_heads": int(heads),
            "mlp_ratio": inner / dim,
            "qkv_bias": qv_bias,
            "norm_eps": eps,
        }

    return {
        "num_frames": int(config.num_frames),
        "img_size": _single_size(config.image_size, "image_size"),
        "in_chans": int(config.num_channels),
        "patch_size": _single_size(config.patch_size, "patch_size"),
        "tubelet_size": int(config.tubelet_size),
        "objective": TubeNormalizedMSE.spec(
            channels=int(config.num_channels), norm_pix_loss=bool(config.norm_pix_loss)
        ),
        "encoder": stack(
            config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size
        ),
        "decoder": stack(
            config.decoder_hidden_size,
            config.decoder_num_hidden_layers,
            config.decoder_num_attention_heads,
            config.decoder_intermediate_size,
        ),
        "mask": {"_target_": "mae_zoo.masks.TubeMask", "ratio": 0.9},
    }


def export_hf(model: VideoMAE, out_dir: str | Path) -> list[str]:
    """Write ``model`` as a ``VideoMAEForPreTraining`` directory (``save_pretrained``); returns the files written."""
    from transformers import VideoMAEForPreTraining

    out = Path(out_dir)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()} if out.is_dir() else {}
    hf = VideoMAEForPreTraining(hf_config_from_videomae(model)).eval()
    load_videomae_into_hf(hf, model.state_dict())
    hf.save_pretrained(str(out))
    return sorted(p.name for p in out.iterdir() if before.get(p.name) != p.stat().st_mtime_ns)
