"""VideoMAE: mask properties (tube, running cell), tokens, target, positions, config errors, and
CLI smoke runs on the embedded moving shapes (V1 tube / random, V2 running cell)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Layout
from mae_zoo.masks import TubeMask
from mae_zoo.masks.base import MaskConfigError
from mae_zoo.masks.running_cell import RunningCellMask
from mae_zoo.modalities.video import VideoMAE, tubeletify, untubeletify
from mae_zoo.nets.pos_embed import interpolate_table, sinusoid_table
from mae_zoo.objectives import TubeNormalizedMSE
from mae_zoo.train import build, train
from tests.conftest import compose_cfg, run_cli

VIDEO_FAST = [
    "modality=video",
    "model=videomae_micro",
    "debug=smoke",
    "print_config=false",
    "logger=csv",
    "data.num_train=64",
    "data.num_val=32",
    "data.num_frames=8",
]
LAYOUT = Layout("grid", ("t", "h", "w"), (8, 14, 14))


# ------------------------------------------------------------------------------------------ masks
def test_tube_mask_is_one_spatial_mask_repeated_with_exact_count() -> None:
    mask = TubeMask(0.9)(LAYOUT, 6, torch.Generator().manual_seed(0)).view(6, 8, 14 * 14)
    assert torch.equal(mask, mask[:, :1].expand_as(mask))
    assert (mask.sum(-1) == int(0.9 * 196)).all()  # 176 hidden cells per slot, 160 visible tokens per clip
    assert not torch.equal(mask[0], mask[1])  # different clips, different masks
    again = TubeMask(0.9)(LAYOUT, 6, torch.Generator().manual_seed(0)).view(6, 8, -1)
    assert torch.equal(mask, again)


def official_running_cell(frames: int, h: int, w: int, ratio: float, phase: int) -> np.ndarray:
    """The V2 generator's rule written out step by step: a queue [drop]*k + [keep]*(4-k) whose
    pointer starts at ``phase`` and advances once *before* each slot is read."""
    k = int(4 * ratio)
    queue = np.array([1] * k + [0] * (4 - k))
    ptr, out = phase, []
    for _ in range(frames):
        ptr += 1
        cell = queue[(np.arange(4) + ptr) % 4].reshape(2, 2)
        out.append(np.tile(cell, (h // 2, w // 2)).flatten())
    return np.stack(out).astype(bool)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_running_cell_matches_the_official_rule_and_properties(ratio: float) -> None:
    layout = Layout("grid", ("t", "h", "w"), (9, 4, 6))
    mask = RunningCellMask(ratio)(layout, 64, torch.Generator().manual_seed(1)).view(64, 9, 4, 6)
    references = [torch.from_numpy(official_running_cell(9, 4, 6, ratio, p)).view(9, 4, 6) for p in range(4)]
    seen = set()
    for sample in mask:
        matches = [p for p, ref in enumerate(references) if torch.equal(sample, ref)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}  # every phase is drawn
    kept = ~mask
    assert (kept.flatten(2).sum(-1) == round(4 * 6 * (1 - int(4 * ratio) / 4))).all()  # exact per slot
    assert torch.equal(mask[:, 4:], mask[:, :-4])  # period 4 in time
    assert torch.equal(mask[:, :, 2:], mask[:, :, :-2]) and torch.equal(mask[:, :, :, 2:], mask[:, :, :, :-2])
    if ratio == 0.5:  # 50% kept, and every position kept in exactly 2 of any 4 consecutive slots
        assert kept.float().mean() == 0.5
        assert (kept[:, :4].sum(1) == 2).all()


def test_running_cell_config_errors() -> None:
    with pytest.raises(MaskConfigError, match="0.25"):
        RunningCellMask(0.1)
    with pytest.raises(MaskConfigError, match="even"):
        RunningCellMask(0.5).check(Layout("grid", ("t", "h", "w"), (8, 7, 7)))
    with pytest.raises(MaskConfigError, match="grid:h,w"):
        RunningCellMask(0.5).check(Layout("grid", ("h", "w"), (8, 8)))
    assert not RunningCellMask(0.0).enabled


def test_image_masks_on_video_fail_at_start_up_listing_those_that_fit(tmp_path) -> None:
    for mask in ("block", "colored_noise"):
        cfg = compose_cfg([*VIDEO_FAST, f"mask={mask}"], tmp_path / mask)
        with pytest.raises(ConfigError, match=r"grid:t,h,w.*fit this modality: \['random', 'tube'\]"):
            build(cfg)
    # The decoder mask is shared by every modality; the running cell needs a time axis.
    cfg = compose_cfg(["model=vit_micro", "decoder_mask=running_cell"], tmp_path / "image")
    with pytest.raises(ConfigError, match=r"RunningCellMask does not fit .*'grid:h,w'.*supports \['grid:t,h,w'\]"):
        build(cfg)


# ------------------------------------------------------------------------------------------ tokens and target
def small_model(**kwargs) -> VideoMAE:
    args = dict(
        encoder={"embed_dim": 32, "depth": 1, "num_heads": 2},
        decoder={"embed_dim": 16, "depth": 1, "num_heads": 2},
        mask={"_target_": "mae_zoo.masks.TubeMask", "ratio": 0.75},
        optim={"blr": 1e-3, "weight_decay": 0.05},
        num_frames=4,
        img_size=16,
        patch_size=4,
        tubelet_size=2,
        pixel_mean=[0.485, 0.456, 0.406],
        pixel_std=[0.229, 0.224, 0.225],
    )
    return VideoMAE(**{**args, **kwargs})


def test_tubelets_round_trip_and_channel_last_order() -> None:
    videos = torch.randn(2, 3, 4, 8, 12)
    tokens = tubeletify(videos, 2, 4)
    assert tokens.shape == (2, 2 * 2 * 3, 2 * 4 * 4 * 3)
    assert torch.equal(untubeletify(tokens, 2, 4, (2, 2, 3), 3), videos)
    # token (t=1, h=0, w=2), element (dt=1, dy=3, dx=0, c=2)
    assert tokens[1, 1 * 6 + 2, ((1 * 4 + 3) * 4 + 0) * 3 + 2] == videos[1, 2, 3, 3, 8]


def test_target_is_normalised_per_tube_and_per_channel() -> None:
    target = torch.rand(2, 5, 2 * 4 * 4 * 3) * torch.tensor([1.0, 0.2, 5.0]).repeat(32)
    norm = TubeNormalizedMSE(3).normalize(target).view(2, 5, 32, 3)
    assert norm.mean(2).abs().max() < 1e-5
    assert (norm.std(2) - 1).abs().max() < 1e-4  # unbiased std, eps outside the sqrt
    # A constant tube: (x - mean) / (0 + eps), no NaN (exactly 0 where the mean is exact in float32).
    assert TubeNormalizedMSE(3).normalize(torch.full((1, 1, 96), 0.5)).abs().max() == 0
    assert torch.isfinite(TubeNormalizedMSE(3).normalize(torch.full((1, 1, 96), 0.3))).all()


def test_decoder_reconstructs_only_what_it_is_asked_and_loss_covers_hidden_and_reconstructed() -> None:
    model = small_model(decoder_mask={"_target_": "mae_zoo.masks.running_cell.RunningCellMask", "ratio": 0.5}).eval()
    videos = torch.randn(3, 3, 4, 16, 16)
    out = model(videos, generator=torch.Generator().manual_seed(0))
    rec = out.predicted
    assert rec.float().mean() == 0.5 and (out.pred[~rec] == 0).all() and (out.pred[rec] != 0).any()
    per_token = (out.pred - out.target).pow(2).mean(-1)
    both = out.mask & rec
    assert torch.allclose(out.loss, per_token[both].mean())


def test_positions_are_interpolated_for_other_clip_sizes() -> None:
    table = sinusoid_table(2 * 4 * 4, 32)
    assert torch.equal(interpolate_table(table, (2, 4, 4), (2, 4, 4)), table)
    bigger = interpolate_table(table, (2, 4, 4), (4, 8, 8))
    assert bigger.shape == (256, 32)
    model = small_model().eval()
    with torch.no_grad():
        assert model.embed(torch.randn(2, 3, 4, 16, 16)).shape == (2, 32)
        assert model.embed(torch.randn(2, 3, 8, 32, 24)).shape == (2, 32)  # other frames and (non-square) size
        out = model(torch.randn(2, 3, 8, 32, 32), generator=torch.Generator().manual_seed(0))
    assert out.mask.shape == (2, 4 * 8 * 8) and torch.isfinite(out.loss)


def test_config_errors_name_valid_values() -> None:
    with pytest.raises(ConfigError, match="valid"):
        small_model(patch_size=5)
    with pytest.raises(ConfigError, match=r"tubelet_size=4 does not divide data.num_frames=6; valid: \[1, 2, 3, 6\]"):
        small_model(num_frames=6, tubelet_size=4)
    with pytest.raises(ConfigError, match="mean"):
        small_model(embed_pool="cls")


# ------------------------------------------------------------------------------------------ CLI smoke
@pytest.mark.parametrize("extra", [["mask=random"], ["decoder_mask=running_cell"]])
def test_train_smoke_in_process(tmp_path, extra: list[str]) -> None:
    metrics = train(compose_cfg(VIDEO_FAST + extra, tmp_path / "run"))
    assert (
        metrics["trainer/global_step"] == 4 and np.isfinite(metrics["train/loss"]) and np.isfinite(metrics["val/loss"])
    )
    expected_ratio = 0.75 if extra == ["mask=random"] else 0.875  # conf/mask/random: 0.75; tube: int(0.9*16)/16
    assert metrics["train/mask_ratio"] == pytest.approx(expected_ratio, abs=0.01)
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert ("RunningCellMask" in config) == (extra == ["decoder_mask=running_cell"])


def test_cli_headline_command(tmp_path) -> None:
    run = tmp_path / "cli"
    res = run_cli(*VIDEO_FAST, "mask=tube", f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["trainer/global_step"] == 4 and metrics["data/skipped_files"] == 0
    assert list((run / "pictures").glob("recon_val_final_*.png"))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["mae_zoo"]["class"].endswith("VideoMAE") and ckpt["mae_zoo"]["layout"] == "grid:t,h,w"
