"""Video data: PyAV clip decoding on the shared Blender clips, sampling and augmentation rules,
list files, repeated sampling, the embedded moving shapes, and skipping unreadable files (also
end to end in a training run)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mae_zoo.core.errors import ConfigError
from mae_zoo.data.moving_shapes import make_moving_shapes
from mae_zoo.data.video import VideoDataModule, collate_clips, multi_scale_crop_box, read_list
from mae_zoo.data.video_io import UnreadableVideo, clip_indices, decode_frames, probe
from mae_zoo.train import train
from tests.conftest import compose_cfg, needs_shared

av = pytest.importorskip("av")
CLIPS = ("video", "blender_open_movies")


def test_clip_indices_train_random_eval_centred_and_clamped() -> None:
    rng = np.random.default_rng(0)
    starts = {int(clip_indices(96, 16, 4, rng)[0]) for _ in range(200)}
    assert min(starts) == 0 and max(starts) == 96 - (15 * 4 + 1)
    idx = clip_indices(96, 16, 4, None)
    assert np.array_equal(np.diff(idx), np.full(15, 4)) and idx[0] == (96 - 61) // 2
    short = clip_indices(10, 8, 2, None)  # span 15 > 10 frames: the last frame repeats
    assert short.tolist() == [0, 2, 4, 6, 8, 9, 9, 9]


def test_multi_scale_crop_boxes_follow_the_official_rule() -> None:
    rng = np.random.default_rng(0)
    allowed = [int(288 * s) for s in (1, 0.875, 0.75, 0.66)]
    for _ in range(300):
        top, left, h, w = multi_scale_crop_box(288, 512, 224, (1, 0.875, 0.75, 0.66), rng)
        h = 252 if h == 252 else h
        assert h in allowed and w in allowed and abs(allowed.index(h) - allowed.index(w)) <= 1
        assert top % ((288 - h) // 4 or 1) == 0 and left % ((512 - w) // 4 or 1) == 0
        assert top + h <= 288 and left + w <= 512


def test_decode_matches_a_full_decode_and_reads_display_size() -> None:
    path = str(needs_shared(*CLIPS, "bbb_004.mp4"))
    with av.open(path) as container:
        every = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    info = probe(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (len(every), 24.0, 512, 288)
    for indices in (np.array([0, 4, 8, 12]), np.array([50, 53, 56, 95, 95])):
        clip = decode_frames(path, indices)
        assert all(np.array_equal(clip[k].numpy(), every[i]) for k, i in enumerate(indices))
    # Anamorphic Tears of Steel clips (512x120 coded, sample aspect 9:16) decode at display aspect.
    tos = probe(str(needs_shared(*CLIPS, "tos_003.mp4")))
    assert (tos.width, tos.height) == (288, 120) and tos.output_size(60) == (144, 60)
    assert decode_frames(str(needs_shared(*CLIPS, "tos_003.mp4")), np.arange(2), (144, 60)).shape == (2, 60, 144, 3)


def make_broken_files(folder) -> None:
    (folder / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    data = needs_shared(*CLIPS, "bbb_001.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])


def test_unreadable_and_truncated_files_are_refused(tmp_path) -> None:
    make_broken_files(tmp_path)
    for name in ("corrupt.mp4", "truncated.mp4"):
        with pytest.raises(UnreadableVideo):
            info = probe(str(tmp_path / name))
            decode_frames(str(tmp_path / name), clip_indices(info.num_frames, 8, 4, None))


def test_folder_datamodule_repeated_sampling_and_skipping(tmp_path) -> None:
    for name in ("bbb_000.mp4", "bbb_002.mp4", "tos_004.mp4"):
        shutil.copy(needs_shared(*CLIPS, name), tmp_path / name)
    make_broken_files(tmp_path)
    dm = VideoDataModule(
        dataset="folder",
        root=str(tmp_path),
        val_fraction=0.0,
        num_frames=4,
        sampling_rate=3,
        image_size=32,
        short_side=40,
        num_sample=2,
        batch_size=5,
        num_workers=0,
    )
    dm.setup("fit")
    clips, labels = next(iter(dm.train_dataloader()))
    # 5 files per batch, 2 unreadable -> 3 decoded videos x 2 clips each.
    assert clips.shape == (6, 3, 4, 32, 32) and labels.tolist() == [0] * 6 and dm.num_skipped == 2
    assert not torch.equal(clips[0], clips[1]) or not torch.equal(clips[2], clips[3])  # independent crops
    assert clips.mean().abs() < 2 and clips.std() > 0.2  # ImageNet-normalised pixels


def test_list_files_and_class_folders(tmp_path) -> None:
    for cls, name in (("a", "bbb_000.mp4"), ("b", "tos_002.mp4")):
        (tmp_path / "vids" / cls).mkdir(parents=True)
        shutil.copy(needs_shared(*CLIPS, name), tmp_path / "vids" / cls / name)
    (tmp_path / "train.txt").write_text("a/bbb_000.mp4 0\nb/tos_002.mp4 1\n\n")
    (tmp_path / "val.csv").write_text("path,label\nb/tos_002.mp4,1\n")
    assert read_list(tmp_path / "train.txt", tmp_path / "vids")[1] == (str(tmp_path / "vids/b/tos_002.mp4"), 1)
    dm = VideoDataModule(
        dataset="list",
        root=str(tmp_path / "vids"),
        train_list=str(tmp_path / "train.txt"),
        val_list=str(tmp_path / "val.csv"),
        num_frames=2,
        sampling_rate=2,
        image_size=16,
        short_side=20,
        batch_size=2,
        num_workers=0,
    )
    dm.setup("fit")
    clips, labels = next(iter(dm.val_dataloader()))
    assert clips.shape == (1, 3, 2, 16, 16) and labels.tolist() == [1]
    folder = VideoDataModule(
        dataset="folder", root=str(tmp_path / "vids"), val_fraction=0.5, image_size=16, num_workers=0
    )
    folder.setup("fit")
    assert folder.num_classes == 2 and folder.classes == ["a", "b"]
    with pytest.raises(ConfigError, match="train_list"):
        VideoDataModule(dataset="list", train_list=str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="valid"):
        VideoDataModule(dataset="kinetics")


def test_moving_shapes_are_deterministic_balanced_and_move() -> None:
    videos, labels = make_moving_shapes(16, frames=8, size=32, seed=3)
    again, _ = make_moving_shapes(16, frames=8, size=32, seed=3)
    assert torch.equal(videos, again) and videos.shape == (16, 3, 8, 32, 32) and videos.dtype == torch.uint8
    assert labels.bincount().tolist() == [2] * 8
    # The shape moves: first and last frames differ by more than the per-frame noise.
    motion = (videos[:, :, -1].float() - videos[:, :, 0].float()).abs().amax(dim=(1, 2, 3))
    assert (motion > 100).all()


def test_persistent_workers_draw_new_crops_every_epoch() -> None:
    """A persistent worker keeps its worker seed for life; the crops must still change per epoch."""
    torch.manual_seed(0)
    dm = VideoDataModule(num_train=8, num_val=4, num_frames=4, batch_size=4, num_workers=1)
    dm.setup("fit")
    loader = DataLoader(dm.train_set, batch_size=4, num_workers=1, persistent_workers=True, collate_fn=collate_clips)
    first, second = [clips for clips, _ in loader], [clips for clips, _ in loader]
    assert not any(torch.equal(a, b) for a, b in zip(first, second))
    torch.manual_seed(0)  # and a run repeats with its seed
    again = DataLoader(dm.train_set, batch_size=4, num_workers=1, collate_fn=collate_clips)
    assert all(torch.equal(a, b) for a, b in zip(first, [clips for clips, _ in again]))


@pytest.mark.parametrize("masks", [["mask=tube"], ["mask=random"], ["mask=tube", "decoder_mask=running_cell"]])
def test_training_run_on_shared_clips_skips_a_corrupt_file(tmp_path, masks: list[str]) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("bbb_000.mp4", "bbb_005.mp4", "tos_006.mp4", "tos_009.mp4"):
        shutil.copy(needs_shared(*CLIPS, name), folder / name)
    make_broken_files(folder)
    cfg = compose_cfg(
        [
            "modality=video",
            "model=videomae_micro",
            "debug=smoke",
            "print_config=false",
            "logger=csv",
            "data=video_folder",
            f"data.root={folder}",
            "data.image_size=32",
            "data.short_side=36",
            "data.num_frames=4",
            "data.sampling_rate=4",
            "data.num_sample=2",
            "data.batch_size=3",
            "data.val_fraction=0.5",  # every other file: a broken one in each split, and a readable one
            "data.num_workers=0",
            *masks,
        ],
        tmp_path / "run",
    )
    metrics = train(cfg)
    assert metrics["trainer/global_step"] >= 1 and np.isfinite(metrics["train/loss"])
    assert metrics["data/skipped_files"] == 2  # both broken files were met (train and/or val), each counted once
    assert (
        json.loads((tmp_path / "run" / "metrics.json").read_text())["data/skipped_files"]
        == metrics["data/skipped_files"]
    )
