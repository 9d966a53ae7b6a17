"""VideoMAE weights in and out: official VideoMAE / V2 pre-training ``.pth`` files and HF
``VideoMAEForPreTraining`` directories through ``mae_zoo.load``, and ``mae_zoo.export format=hf``."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import mae_zoo.api as api
from mae_zoo.core.errors import ConfigError
from mae_zoo.export import export
from mae_zoo.masks import TubeMask
from mae_zoo.masks.running_cell import RunningCellMask
from mae_zoo.weights.hf_videomae import mae_zoo_to_official
from tests.conftest import compose_cfg
from tests.test_video import small_model

transformers = pytest.importorskip("transformers")


@torch.no_grad()
def trained_like(**kwargs):
    model = small_model(**kwargs)
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        if p.requires_grad:
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


@torch.no_grad()
def same_outputs(a, b, decoder: bool = False) -> None:
    videos = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    mask = TubeMask(0.75)(a.layout, 2, torch.Generator().manual_seed(2))
    dmask = RunningCellMask(0.5)(a.layout, 2, torch.Generator().manual_seed(3)) if decoder else None
    out_a, out_b = a(videos, mask=mask, decoder_mask=dmask), b(videos, mask=mask, decoder_mask=dmask)
    assert torch.equal(out_a.pred, out_b.pred) and torch.equal(out_a.loss, out_b.loss)
    assert torch.equal(a.embed(videos), b.embed(videos))


def test_official_v2_checkpoint_loads_with_its_args(tmp_path) -> None:
    model = trained_like(decoder_mask={"_target_": "mae_zoo.masks.running_cell.RunningCellMask", "ratio": 0.5})
    args = argparse.Namespace(
        num_frames=4,
        input_size=16,
        mask_ratio=0.75,
        decoder_mask_type="run_cell",
        decoder_mask_ratio=0.5,
        normlize_target=True,
        model="pretrain_videomae_small_patch16_224",
    )
    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": mae_zoo_to_official(model.state_dict()), "args": args, "epoch": 799}, path)
    with pytest.warns(UserWarning, match="official VideoMAE"):
        loaded = api.load(path, num_heads=2, decoder_num_heads=2)
    assert type(loaded).__name__ == "VideoMAE" and loaded.load_info.format == "official_videomae"
    assert loaded.grid == (2, 4, 4) and loaded.decoder_mask_generator.ratio == 0.5
    assert loaded.mask_generator.ratio == 0.75
    same_outputs(model, loaded, decoder=True)
    with pytest.raises(ConfigError, match="heads"):  # width 32 is not a standard size
        api.load(path)


def test_export_hf_and_load_back(tmp_path) -> None:
    model = trained_like()
    ckpt = tmp_path / "model.ckpt"
    torch.save(
        {
            "mae_zoo": {"class": "mae_zoo.modalities.video.VideoMAE", "layout": "grid:t,h,w"},
            "hyper_parameters": dict(model.hparams),
            "state_dict": model.state_dict(),
        },
        ckpt,
    )
    out = tmp_path / "hf"
    manifest = export(compose_cfg([f"ckpt={ckpt}", "format=hf"], out, config_name="export"))
    assert (
        "config.json" in manifest["files"] and json.loads((out / "config.json").read_text())["model_type"] == "videomae"
    )
    loaded = api.load(out)
    assert loaded.load_info.format == "hf_videomae"
    same_outputs(model, loaded)
    # HF itself reads the directory and agrees (its decoder LayerNorm eps is 1e-5, ours 1e-6).
    hf = transformers.VideoMAEForPreTraining.from_pretrained(str(out), local_files_only=True).eval()
    hf.decoder.norm.eps = 1e-6
    videos = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    mask = TubeMask(0.75)(model.layout, 2, torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = hf(pixel_values=videos.permute(0, 2, 1, 3, 4), bool_masked_pos=mask)
        ours = model(videos, mask=mask)
    assert (ours.pred[mask].reshape(2, -1, ours.pred.shape[-1]) - ref.logits).abs().max() <= 1e-5
    with pytest.raises(ConfigError, match="format=timm"):
        export(compose_cfg([f"ckpt={ckpt}", "format=timm"], tmp_path / "timm", config_name="export"))
