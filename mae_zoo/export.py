"""Export weights: ``python -m mae_zoo.export ckpt=PATH format=timm|hf``.

The source is anything :func:`mae_zoo.load` reads (an mae_zoo ``.ckpt``, an official MAE
``.pth``, a HF ViTMAE directory). Into the export's own run folder go ``config.yaml``,
``git_revision.txt``, ``export.json`` (what was written, from what, and every choice made), and:

* ``format=timm``: the encoder as a timm-native ``model.safetensors`` plus ``model.json`` =
  ``{"model_name", "model_args"}``; ``timm.create_model(model_name, pretrained=False,
  **model_args)`` rebuilds it and ``load_state_dict(strict=True)`` takes the weights;
* ``format=hf``: the whole pre-training model as a ``ViTMAEForPreTraining`` directory
  (``config.json`` + ``model.safetensors``; the run folder itself is that directory).

The last line printed is the run folder.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from mae_zoo.api import load
from mae_zoo.core.errors import ConfigError
from mae_zoo.utils.console import print_config_tree
from mae_zoo.utils.runtime import write_run_records

FORMATS = ("timm", "hf")


def export(cfg: DictConfig) -> dict[str, Any]:
    """Load ``cfg.ckpt``, write ``cfg.format`` into ``cfg.paths.run_dir``; returns the manifest."""
    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt} is unknown; valid: {list(FORMATS)}")
    source = Path(str(cfg.ckpt))
    if not source.exists():
        raise ConfigError(
            f"ckpt={source} does not exist; pass an mae_zoo .ckpt, an official MAE .pth or a HF directory"
        )
    run_dir = Path(cfg.paths.run_dir)
    if source.resolve() == run_dir.resolve():
        raise ConfigError(f"ckpt={source} is the export's own run folder")
    from mae_zoo.modalities.audio import AudioMAE
    from mae_zoo.modalities.image import ImageMAE
    from mae_zoo.modalities.spark import SparK
    from mae_zoo.modalities.video import VideoMAE

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load(source, num_heads=cfg.get("num_heads"), decoder_num_heads=cfg.get("decoder_num_heads"))
    notes = [str(w.message) for w in caught if w.category is UserWarning]
    for note in notes:
        print(f"mae_zoo: warning: {note}", file=sys.stderr)
    kind = type(model).__name__
    if kind == "AudioMAE" and fmt != "timm":  # the encoder is the image ViT on a (time, freq) grid
        raise ConfigError(f"format={fmt} does not take Audio-MAE models; format=timm exports the encoder ({source})")
    if kind == "SparK" and fmt != "timm":  # the encoder is a timm ConvNet
        raise ConfigError(f"format={fmt} does not take SparK models; format=timm exports the ConvNet ({source})")
    if kind not in ("ImageMAE", "VideoMAE", "AudioMAE", "SparK") or (kind == "VideoMAE" and fmt != "hf"):
        raise ConfigError(f"format={fmt} exports image MAEs (and format=hf also VideoMAE); {source} holds a {kind}")
    if not isinstance(
        model, (ImageMAE, VideoMAE, AudioMAE, SparK)
    ):  # pragma: no cover - the name check above admits no other
        raise ConfigError(f"format={fmt} exports ImageMAE and VideoMAE; {source} holds a {kind}")
    write_run_records(cfg, run_dir)
    if cfg.get("print_config", False):
        print_config_tree(cfg)
    try:
        if isinstance(model, VideoMAE):  # format=hf (checked above): a VideoMAEForPreTraining directory
            from mae_zoo.weights.hf_videomae import export_hf as export_hf_video

            files = export_hf_video(model, run_dir)
        elif isinstance(model, SparK):
            from mae_zoo.modalities.spark import export_timm_convnet

            files = [p.name for p in export_timm_convnet(model, run_dir)]
        elif fmt == "timm":
            from mae_zoo.weights.timm_export import export_timm

            files = [p.name for p in export_timm(model, run_dir)]  # type: ignore[arg-type]  # AudioMAE: same encoder
        else:
            from mae_zoo.weights.hf_vitmae import export_hf

            assert isinstance(model, ImageMAE)  # AudioMAE exports to timm only (checked above)
            files = export_hf(model, run_dir)
    except ValueError as err:  # the model has a feature the target format cannot express
        raise ConfigError(f"cannot export {source} to {fmt}: {err}") from None
    info = model.load_info
    assert info is not None, "mae_zoo.load records what it read"
    manifest = {
        "format": fmt,
        "files": files,
        "source": str(source.resolve()),
        "source_format": info.format,
        "source_kind": info.kind,
        "not_in_source": info.not_in_file,  # exported at their fresh initialisation
        "source_extra_not_exported": sorted(info.extra),
        "choices": info.choices,
    }
    if fmt == "timm":
        manifest["rebuild"] = (
            "timm.create_model(j['model_name'], pretrained=False, **j['model_args']) with j = model.json"
        )
    (run_dir / "export.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        manifest = export(cfg)
    except ConfigError as err:
        print(f"mae_zoo: configuration error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"exported {manifest['source']} ({manifest['source_format']}) as {manifest['format']}: {manifest['files']}")
    if manifest["not_in_source"]:
        print(f"note: {len(manifest['not_in_source'])} parameters were not in the source and are freshly initialised")
    print(Path(cfg.paths.run_dir).resolve())


if __name__ == "__main__":
    main()
