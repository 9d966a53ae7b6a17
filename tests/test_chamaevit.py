"""ChA-MAEViT: the dynamic channel-patch mask (counts per strategy, the official rules), the per-channel
tokenizer, the networks and loss, the cells set and the .npy and TIFF stack reader, start-up errors, one smoke run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Layout
from mae_zoo.data.cells import make_cells
from mae_zoo.data.multichannel import MultiChannelDataModule
from mae_zoo.masks.base import MaskConfigError, MaskLayoutError
from mae_zoo.masks.channel_patch import ChannelPatchMask
from mae_zoo.modalities.multichannel import ChAMAEViT, patchify_channels, unpatchify_channels
from mae_zoo.objectives import MaskedMSE
from mae_zoo.objectives.fourier import MaskedMSEFourier
from mae_zoo.train import build, train
from tests.conftest import compose_cfg

LAYOUT = Layout("grid", ("c", "h", "w"), (5, 4, 4))  # 5 channels of 16 patches


def draw(mask: ChannelPatchMask, seed: int, batch: int = 3) -> torch.Tensor:
    return mask(LAYOUT, batch, torch.Generator().manual_seed(seed)).view(batch, 5, 16)


@pytest.mark.parametrize("ratio", [0.75, 0.7])
def test_patch_only_keeps_int_of_one_minus_ratio_per_channel(ratio):
    mask = ChannelPatchMask(ratio, p_patch=1.0, p_channel=0.0)
    keep = int((1 - ratio) * 16)  # official: 4 at 0.75, int(4.8) = 4 at 0.7
    for seed in range(5):
        m = draw(mask, seed)
        assert mask.last_strategy == "patch"
        assert ((~m).sum(-1) == keep).all()  # every sample, every channel
    assert not torch.equal(draw(mask, 0)[0], draw(mask, 0)[1])  # per sample, not shared


def test_channel_only_hides_whole_channels_shared_by_the_batch():
    mask = ChannelPatchMask(0.75, p_patch=0.0, p_channel=1.0)
    ks = Counter()
    for seed in range(120):
        m = draw(mask, seed)
        assert mask.last_strategy == "channel"
        per_channel = m.all(-1)
        assert torch.equal(m.any(-1), per_channel)  # a channel is all hidden or all visible
        assert (per_channel == per_channel[0]).all()  # the same channels for the whole batch
        ks[int(per_channel[0].sum())] += 1
    assert set(ks) == {0, 1, 2, 3, 4}  # k ~ U{0, ..., C-1}: never all five
    strict = ChannelPatchMask(0.75, p_patch=0.0, p_channel=1.0, at_least_one_channel=True)
    assert all(draw(strict, s).all(-1)[0].sum() >= 1 for s in range(30))


def test_both_is_the_union_of_channel_and_patch_masks():
    mask = ChannelPatchMask(0.25, p_patch=0.0, p_channel=0.0)  # the official "combination" setting
    keep = int(0.75 * 16)
    for seed in range(20):
        m = draw(mask, seed)
        assert mask.last_strategy == "both"
        hidden_channels = m.all(-1)[0]
        k = int(hidden_channels.sum())
        assert ((~m).sum(dim=(1, 2)) == (5 - k) * keep).all()
        assert ((~m[:, ~hidden_channels]).sum(-1) == keep).all()


def test_strategy_frequencies_and_determinism():
    mask = ChannelPatchMask(0.75, p_patch=0.3, p_channel=0.3)
    gen = torch.Generator().manual_seed(0)
    counts = Counter()
    for _ in range(600):
        mask(LAYOUT, 1, gen)
        counts[mask.last_strategy] += 1
    assert abs(counts["patch"] - 180) < 45 and abs(counts["channel"] - 180) < 45 and abs(counts["both"] - 240) < 50
    assert torch.equal(draw(mask, 7), draw(mask, 7))


def test_mask_fits_only_a_channel_layout_and_checks_its_parameters():
    with pytest.raises(MaskLayoutError, match="grid:c,h,w"):
        ChannelPatchMask().check(Layout("grid", ("h", "w"), (4, 4)))
    with pytest.raises(MaskConfigError, match="p_patch and mask.p_channel"):
        ChannelPatchMask(p_patch=0.7, p_channel=0.5)
    with pytest.raises(MaskConfigError, match="keeps no patch"):
        ChannelPatchMask(0.95).check(LAYOUT)


def test_channel_patch_on_image_modality_fails_at_startup(tmp_path):
    cfg = compose_cfg(["mask=channel_patch", "model=vit_micro", "print_config=false"], tmp_path)
    with pytest.raises(ConfigError, match="grid:c,h,w"):
        build(cfg)


SMALL = {
    "img_size": 8,
    "patch_size": 4,
    "encoder": {"embed_dim": 32, "depth": 1, "num_heads": 2},
    "decoder": {"embed_dim": 16, "depth": 1, "num_heads": 2},
    "mask": {"_target_": "mae_zoo.masks.channel_patch.ChannelPatchMask", "ratio": 0.75},
    "optim": {"blr": 1e-4, "weight_decay": 0.05},
}


def test_single_channel_needs_opting_in():
    with pytest.raises(ConfigError, match="allow_single_channel"):
        ChAMAEViT(in_chans=1, **SMALL)
    assert ChAMAEViT(in_chans=1, allow_single_channel=True, **SMALL).layout.shape == (1, 2, 2)


def test_per_channel_tokens_are_channel_outermost():
    images = torch.randn(2, 3, 8, 8)
    tokens = patchify_channels(images, 4)
    assert tokens.shape == (2, 12, 16)
    assert torch.equal(tokens[:, 2 * 4 + 1], images[:, 2, 0:4, 4:8].reshape(2, 16))  # channel 2, patch (0, 1)
    assert torch.equal(unpatchify_channels(tokens, 4, 3, (2, 2)), images)


def test_model_trains_every_piece_and_embeds():
    torch.manual_seed(0)
    model = ChAMAEViT(in_chans=3, num_memory_tokens=2, embed_pool="fused", **SMALL)
    batch = (torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    hide = torch.zeros(4, 3, 4, dtype=torch.bool)
    hide[:, 1] = True  # channel 1 entirely hidden: only its channel token tells the decoder what to predict
    hide[:, 0, :2] = True
    out = model(batch, mask=hide.view(4, 12))
    assert out.pred.shape == (4, 12, 16) and torch.isfinite(out.loss)
    out.loss.backward()
    enc = model.encoder
    for p in (enc.patch_embed.channel_tokens, enc.memory_tokens, enc.pos_embed, model.decoder.embedding_proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # the decoder's guesses for the hidden channel differ from channel 0's at the same positions
    assert not torch.allclose(out.pred[:, 4:6], out.pred[:, 0:2])
    assert model.embed(batch).shape == (4, 32)
    model.embed_pool = "mean"
    assert model.embed(batch).shape == (4, 32)
    pictures = model.visualize(batch, torch.Generator().manual_seed(0))
    assert pictures.shape == (3, 4, 3, 8, 8) and pictures.min() >= 0 and pictures.max() <= 1


def test_fourier_loss_matches_numpy_and_reduces_to_mse():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 6, 16), torch.randn(2, 6, 16)
    score = torch.rand(2, 6) < 0.5
    score[0, 0] = True
    plain = MaskedMSE(norm_pix_loss=False)(pred, target, score)[0]
    assert torch.allclose(MaskedMSEFourier(4, 0.0, norm_pix_loss=False)(pred, target, score)[0], plain)
    spectrum = lambda x: np.abs(np.fft.fft2(x.numpy().reshape(2, 6, 4, 4)))  # noqa: E731
    per_token = np.abs(spectrum(pred) - spectrum(target)).mean(axis=(-2, -1))
    expected = (per_token * score.numpy()).sum() / score.sum().item()
    got = MaskedMSEFourier(4, 1.0, norm_pix_loss=False)(pred, target, score)[0]
    assert abs(got.item() - expected) < 1e-4 * max(1.0, expected)


def test_cells_classes_need_two_channels():
    images, labels = make_cells(96, seed=3)
    again, _ = make_cells(96, seed=3)
    assert images.shape == (96, 5, 32, 32) and torch.equal(images, again)
    assert torch.equal(labels.bincount(), torch.full((4,), 24))
    x = images.float()

    def overlap(a: int, b: int) -> torch.Tensor:  # per image, how much of channel b's mass lies on channel a
        return (x[:, a] * x[:, b]).sum((1, 2)) / (x[:, a].sum((1, 2)) * x[:, b].sum((1, 2)) / 1024)

    a, b = labels // 2, labels % 2
    assert overlap(0, 2)[a == 1].mean() > 1.5 * overlap(0, 2)[a == 0].mean()  # marker A on the nuclei
    assert overlap(2, 3)[b == 1].mean() > 1.5 * overlap(2, 3)[b == 0].mean()  # marker B on marker A
    # one channel alone: its brightness does not tell the classes apart
    for c in range(5):
        means = [x[labels == k, c].mean().item() for k in range(4)]
        assert max(means) - min(means) < 0.15 * np.mean(means)


def test_stack_folder_reads_npy_and_skips_bad_files(tmp_path: Path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                np.save(folder / f"{i}.npy", rng.integers(0, 255, (3, 8, 8), dtype=np.uint8))
    (tmp_path / "train" / "a" / "corrupt.npy").write_bytes(b"not an array")
    np.save(tmp_path / "train" / "b" / "two_channels.npy", np.zeros((2, 8, 8), np.float32))
    dm = MultiChannelDataModule("stack_folder", str(tmp_path), image_size=4, num_channels=3, mean=[0.5] * 3,
                                std=[0.25] * 3, batch_size=8, num_workers=0)  # fmt: skip
    dm.setup()
    batches = list(dm.train_dataloader())
    assert batches[0][0].shape == (4, 3, 4, 4) and dm.num_classes == 2  # resized to 4 px; 2 of 6 skipped
    assert dm.num_skipped == 2


def test_stack_folder_reads_tiff_stacks_like_npy(tmp_path: Path):
    """A uint16 (C, H, W) TIFF gives the same tensor as the same array saved as .npy; a truncated TIFF is skipped."""
    stack = np.random.default_rng(1).integers(0, 65535, (3, 8, 8), dtype=np.uint16)
    for split in ("train", "val"):
        for fmt in ("tif", "npy"):
            folder = tmp_path / split / fmt
            folder.mkdir(parents=True)
            if fmt == "tif":
                tifffile.imwrite(folder / "s.tif", stack)
            else:
                np.save(folder / "s.npy", stack)
    (tmp_path / "train" / "tif" / "truncated.tiff").write_bytes(b"II*\x00")
    dm = MultiChannelDataModule("stack_folder", str(tmp_path), image_size=8, num_channels=3, mean=[0.5] * 3,
                                std=[0.25] * 3, batch_size=8, num_workers=0, flips=False)  # fmt: skip
    dm.setup()
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 3, 8, 8) and torch.equal(x[0], x[1]) and y.tolist() == [0, 1]  # classes: npy, tif
    expected = (torch.from_numpy(stack.astype(np.float32) / 65535.0) - 0.5) / 0.25
    torch.testing.assert_close(x[0], expected)
    list(dm.train_dataloader())
    assert dm.num_skipped == 1


def test_chamaevit_preset_smoke_run(tmp_path):
    cfg = compose_cfg(
        ["experiment=chamaevit", "debug=smoke", "model=vit_micro", "data.num_train=64", "data.num_val=32",
         "logger=none", "print_config=false"],
        tmp_path,
    )  # fmt: skip
    metrics = train(cfg)
    assert metrics["trainer/global_step"] == 4 and np.isfinite(metrics["val/loss"])


def test_pictures_of_five_channel_images_through_the_image_mae(tmp_path):
    """Plain MAE on 5-channel stacks (the record's baseline): the PNG shows the first three channels."""
    import contextlib
    from types import SimpleNamespace

    from mae_zoo.callbacks.reconstructions import ReconstructionPictures
    from mae_zoo.modalities.image import ImageMAE

    model = ImageMAE(in_chans=5, **{**SMALL, "mask": {"_target_": "mae_zoo.masks.RandomMask", "ratio": 0.75}})
    callback = ReconstructionPictures(str(tmp_path))
    callback.batch = (torch.randn(2, 5, 8, 8), torch.zeros(2, dtype=torch.long))
    plugin = SimpleNamespace(forward_context=contextlib.nullcontext)
    trainer = SimpleNamespace(strategy=None, is_global_zero=True, precision_plugin=plugin, global_step=0, loggers=[])
    path = callback.draw(trainer, model, "test")  # type: ignore[arg-type]
    assert path is not None and path.exists()
