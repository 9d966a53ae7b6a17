"""Public Python API for notebooks and tests."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.core.types import LoadInfo
from mae_zoo.utils.checks import safe_load
from mae_zoo.utils.instantiate import import_object


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def load(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
    *,
    num_heads: int | None = None,
    decoder_num_heads: int | None = None,
    norm_pix_loss: bool | None = None,
) -> MaskedAutoencoder:
    """Rebuild a model from a checkpoint; the format is recognised from the path's content.

    * an mae_zoo checkpoint (``.ckpt`` with an ``mae_zoo`` entry), loaded with ``weights_only=True``;
    * an official facebookresearch/mae checkpoint (``.pth`` with a ``model`` entry): pre-training
      (encoder + decoder), encoder-only, or fine-tuned (encoder + ``head``/``fc_norm``), loaded
      with ``weights_only=True``; the architecture is inferred from the tensors, the attention
      heads from ``num_heads``/``decoder_num_heads``, else the model name in the file's ``args``,
      else the standard width (768 -> 12, 1024 -> 16, ...; decoder 512 -> 16); ``norm_pix_loss``
      overrides the loss target (default: the file's ``args``, else True);
    * a HF ``ViTMAEForPreTraining`` directory written by ``save_pretrained`` (``config.json`` and
      weights); needs ``transformers``; loads from that local directory only.

    Every foreign format is mapped with an explicit key map and loaded with an exact check of
    missing and unexpected keys. Where the file lacks part of the model (a fine-tuned or
    encoder-only file has no decoder) the rest stays freshly initialised and a ``UserWarning``
    says so. ``model.load_info`` (:class:`LoadInfo`) lists those keys, the head/fc_norm tensors
    and every choice made. ``strict=False`` applies to mae_zoo checkpoints only.

    The returned model is in eval mode; ``model(batch, mask=None)`` gives an ``MAEOutput`` with
    ``loss``, ``pred``, ``mask`` and ``target``, and ``model.embed(batch)`` gives features.
    """
    path = Path(path)
    overrides = {"num_heads": num_heads, "decoder_num_heads": decoder_num_heads, "norm_pix_loss": norm_pix_loss}
    given = {k: v for k, v in overrides.items() if v is not None}
    if path.is_dir():
        model, info = _load_hf_dir(path, num_heads, decoder_num_heads, norm_pix_loss)
    elif path.is_file():
        checkpoint = safe_load(path, map_location)
        if not isinstance(checkpoint, Mapping):
            raise ValueError(f"{path} is not an mae_zoo checkpoint: it holds a {type(checkpoint).__name__}, not a dict")
        if "mae_zoo" in checkpoint:
            if given:
                raise ConfigError(
                    f"{sorted(given)} apply to foreign checkpoints; {path} records its own hyperparameters"
                )
            model, info = _load_mae_zoo(checkpoint, strict), LoadInfo(str(path), "mae_zoo")
        elif _is_state_dict(checkpoint.get("base_model")):  # an official Point-MAE checkpoint
            model, info = _load_official_point(checkpoint, path, num_heads)
        elif _is_state_dict(checkpoint.get("model")) and _is_official_video(checkpoint["model"]):
            model, info = _load_official_video(checkpoint, path, **overrides)
        elif _is_state_dict(checkpoint.get("model")) and _is_official_audio(checkpoint["model"]):
            model, info = _load_official_audio(checkpoint, path, **overrides)
        elif _is_state_dict(checkpoint.get("model")):
            model, info = _load_official(checkpoint, path, **overrides)
        else:
            raise ValueError(
                f"{path} is not an mae_zoo checkpoint (no 'mae_zoo' entry) nor an official MAE checkpoint "
                f"(no 'model' state dict); its top-level keys are {sorted(map(str, checkpoint))[:20]}"
            )
    else:
        raise ConfigError(f"{path} does not exist; pass an mae_zoo .ckpt, an official MAE .pth or a HF directory")
    if not strict and info.format != "mae_zoo":
        raise ConfigError("strict=False applies to mae_zoo checkpoints only; foreign formats load with exact key sets")
    model.load_info = info
    return model.eval()


def _load_mae_zoo(checkpoint: Mapping[str, Any], strict: bool) -> MaskedAutoencoder:
    """The model alone: a distilled student comes back without its teacher and distillation heads
    (what evaluation, export and a teacher=checkpoint need)."""
    from mae_zoo.teachers.model import student_weights

    hparams = {**checkpoint["hyper_parameters"], "teacher": None, "distill": None}
    model = import_object(checkpoint["mae_zoo"]["class"]).from_hparams(hparams)
    model.load_state_dict(student_weights(checkpoint["state_dict"]), strict=strict)
    return model


def _load_official(checkpoint: Mapping[str, Any], path: Path, **overrides: Any) -> tuple[MaskedAutoencoder, LoadInfo]:
    from mae_zoo.weights.official_mae import load_official_state_dict

    result = load_official_state_dict(checkpoint["model"], args=checkpoint.get("args"), **overrides)
    info = LoadInfo(str(path), "official_mae", result.kind, result.not_in_file, result.classifier, result.choices)
    given = "; ".join(result.choices)
    if result.not_in_file:
        what = "fine-tuned" if result.kind == "finetune" else "encoder-only"
        decoder_fresh = any(k.startswith("decoder.") for k in result.not_in_file)
        parts = ["the decoder (official 512-d, 8 blocks)"] if decoder_fresh else []
        if "encoder.norm.weight" in result.not_in_file:
            parts.append("encoder.norm (the file has fc_norm, which normalises the pooled feature instead)")
        extra = (
            f"; head/fc_norm tensors {sorted(result.classifier)} are in model.load_info.extra"
            if result.classifier
            else ""
        )
        warnings.warn(
            f"{path} is an official {what} checkpoint: {' and '.join(parts)} stay freshly initialised "
            f"({len(result.not_in_file)} keys, listed in model.load_info.not_in_file){extra}. Chosen: {given}",
            UserWarning,
            stacklevel=3,
        )
    elif overrides.get("num_heads") is None or overrides.get("decoder_num_heads") is None:
        warnings.warn(f"{path}: official MAE checkpoint; chosen: {given}", UserWarning, stacklevel=3)
    return result.model, info


def _load_official_point(
    checkpoint: Mapping[str, Any], path: Path, num_heads: int | None
) -> tuple[MaskedAutoencoder, LoadInfo]:
    """An official Point-MAE pre-training checkpoint (see ``weights/official_pointmae.py``)."""
    from mae_zoo.weights.official_pointmae import is_official_pointmae, load_official_pointmae

    if not is_official_pointmae(checkpoint["base_model"]):
        raise ConfigError(f"{path}: its 'base_model' is not an official Point-MAE pre-training state dict")
    result = load_official_pointmae(checkpoint["base_model"], num_heads=num_heads)
    warnings.warn(
        f"{path}: official Point-MAE checkpoint; chosen: {'; '.join(result.choices)}", UserWarning, stacklevel=3
    )
    return result.model, LoadInfo(str(path), "official_pointmae", "pretrain", choices=result.choices)


def _is_official_video(state_dict: Mapping[str, Any]) -> bool:
    from mae_zoo.weights.official_videomae import is_official_videomae

    return is_official_videomae(state_dict)


def _is_official_audio(state_dict: Mapping[str, Any]) -> bool:
    from mae_zoo.weights.official_audiomae import is_official_audiomae

    return is_official_audiomae(state_dict)


def _load_official_audio(
    checkpoint: Mapping[str, Any], path: Path, **overrides: Any
) -> tuple[MaskedAutoencoder, LoadInfo]:
    """An official Audio-MAE pre-training checkpoint (see ``weights/official_audiomae.py``)."""
    from mae_zoo.weights.official_audiomae import load_official_audiomae

    result = load_official_audiomae(checkpoint["model"], args=checkpoint.get("args"), **overrides)
    warnings.warn(
        f"{path}: official Audio-MAE checkpoint; chosen: {'; '.join(result.choices)}", UserWarning, stacklevel=3
    )
    return result.model, LoadInfo(str(path), "official_audiomae", "pretrain", choices=result.choices)


def _load_official_video(
    checkpoint: Mapping[str, Any], path: Path, **overrides: Any
) -> tuple[MaskedAutoencoder, LoadInfo]:
    """An official VideoMAE / VideoMAE V2 pre-training checkpoint (see ``weights/official_videomae.py``)."""
    from mae_zoo.weights.official_videomae import load_official_videomae

    result = load_official_videomae(checkpoint["model"], args=checkpoint.get("args"), **overrides)
    warnings.warn(
        f"{path}: official VideoMAE checkpoint; chosen: {'; '.join(result.choices)}", UserWarning, stacklevel=3
    )
    return result.model, LoadInfo(str(path), "official_videomae", "pretrain", choices=result.choices)


if TYPE_CHECKING:  # transformers is a dev extra, imported where it is needed
    from transformers import PreTrainedModel

_HF = TypeVar("_HF", bound="PreTrainedModel")


def _from_pretrained_exact(cls: type[_HF], path: Path) -> _HF:
    """``cls.from_pretrained`` on a local directory that must fit exactly: nothing missing, unexpected or
    misshapen (HF's loader reads its own on-disk names; we map its state dict with an exact map after)."""
    from mae_zoo.weights.hf_vitmae import StateDictMismatchError

    # from_pretrained is annotated as returning the model alone; output_loading_info=True adds the report
    hf, report = cast(
        tuple[_HF, dict[str, Any]],
        cls.from_pretrained(str(path.resolve()), local_files_only=True, output_loading_info=True),
    )
    problems = {k: sorted(map(str, v)) for k, v in report.items() if v}
    if problems:
        raise StateDictMismatchError(
            f"{path} does not fit {cls.__name__}: {problems}",
            problems.get("missing_keys", []),
            problems.get("unexpected_keys", []),
            problems.get("mismatched_keys", []),
        )
    return hf


def _load_hf_video_dir(
    path: Path, norm_pix_loss: bool | None, **heads: int | None
) -> tuple[MaskedAutoencoder, LoadInfo]:
    """A HF ``VideoMAEForPreTraining`` directory, mapped with the exact map of ``weights/hf_videomae.py``."""
    from transformers import VideoMAEForPreTraining

    from mae_zoo.modalities.video import VideoMAE
    from mae_zoo.weights.hf_videomae import load_hf_into_videomae, videomae_kwargs_from_hf_config
    from mae_zoo.weights.official_videomae import DEFAULT_OPTIM

    if any(v is not None for v in heads.values()):
        raise ConfigError(f"{path}: a HF directory records its heads in config.json; do not pass {sorted(heads)}")
    hf = _from_pretrained_exact(VideoMAEForPreTraining, path)
    kwargs = videomae_kwargs_from_hf_config(hf.config)
    choices = ["mask=tube 0.9 (HF stores no mask generator)", "pixel mean/std = ImageNet (HF's hard-coded values)"]
    if norm_pix_loss is not None:
        kwargs["objective"]["norm_pix_loss"] = bool(norm_pix_loss)
        choices.append(f"norm_pix_loss={bool(norm_pix_loss)} (given; config.json says {hf.config.norm_pix_loss})")
    model = VideoMAE(
        optim=dict(DEFAULT_OPTIM), pixel_mean=[0.485, 0.456, 0.406], pixel_std=[0.229, 0.224, 0.225], **kwargs
    )
    load_hf_into_videomae(model, hf.state_dict())
    return model, LoadInfo(str(path), "hf_videomae", "pretrain", choices=choices)


def _load_hf_dir(
    path: Path, num_heads: int | None, decoder_num_heads: int | None, norm_pix_loss: bool | None
) -> tuple[MaskedAutoencoder, LoadInfo]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{path} is a directory without config.json; expected a HF save_pretrained directory")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type == "videomae":
        return _load_hf_video_dir(path, norm_pix_loss, num_heads=num_heads, decoder_num_heads=decoder_num_heads)
    if model_type != "vit_mae":
        raise ConfigError(
            f"{path}: config.json has model_type={model_type!r}; only 'vit_mae' (ViTMAEForPreTraining) "
            "and 'videomae' (VideoMAEForPreTraining) load"
        )
    try:
        from transformers import ViTMAEForPreTraining
    except ImportError as err:  # pragma: no cover - transformers is a dev extra
        raise ConfigError("loading a HF directory needs transformers (pip install -e '.[dev]')") from err

    from mae_zoo.modalities.image import ImageMAE
    from mae_zoo.weights.hf_vitmae import imagemae_kwargs_from_hf_config, load_hf_into_imagemae
    from mae_zoo.weights.official_mae import DEFAULT_OPTIM

    # HF owns its on-disk names (5.x saves the 4.x names and renames them on load), so its own
    # loader reads the directory; we require it to report nothing missing, unexpected or misshapen,
    # then map its (5.x) state dict with the exact map of hf_vitmae.
    hf = _from_pretrained_exact(ViTMAEForPreTraining, path)
    kwargs = imagemae_kwargs_from_hf_config(hf.config)
    for arg, value, stack in (("num_heads", num_heads, "encoder"), ("decoder_num_heads", decoder_num_heads, "decoder")):
        if value is not None and int(value) != kwargs[stack]["num_heads"]:
            raise ConfigError(f"{arg}={value} contradicts {path}/config.json ({kwargs[stack]['num_heads']})")
    choices = []
    if norm_pix_loss is not None:
        kwargs["objective"]["norm_pix_loss"] = bool(norm_pix_loss)
        choices.append(f"norm_pix_loss={bool(norm_pix_loss)} (given; config.json says {hf.config.norm_pix_loss})")
    model = ImageMAE(optim=dict(DEFAULT_OPTIM), **kwargs)
    load_hf_into_imagemae(model, hf.state_dict())
    return model, LoadInfo(str(path), "hf_vitmae", "pretrain", choices=choices)


__all__ = ["LoadInfo", "load"]
