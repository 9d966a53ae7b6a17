"""Patchify order, sin-cos tables and the norm-pix objective against independent references."""

import numpy as np
import torch

from mae_zoo.modalities.image import patchify, unpatchify
from mae_zoo.nets.pos_embed import sincos_2d
from mae_zoo.objectives import MaskedMSE, normalize_per_token


def test_patchify_channel_fastest_row_major():
    imgs = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    patches = patchify(imgs, 4)
    assert patches.shape == (2, 4, 48)
    # patch 1 = top-right block (row-major), its vector = pixels (y, x) then channel
    expected = imgs[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[0, 1], expected)
    assert torch.equal(patches[0, 2], imgs[0, :, 4:8, 0:4].permute(1, 2, 0).reshape(-1))
    assert torch.equal(unpatchify(patches, 4, (2, 2), 3), imgs)


def _official_sincos_2d(dim, grid_size):
    """Straight numpy transcription of the math in MAE's util/pos_embed.py (w coordinate first)."""
    gh = np.arange(grid_size, dtype=np.float32)
    gw = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(gw, gh)  # w goes first
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])

    def one_d(d, pos):
        omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


def test_sincos_matches_official_axis_order():
    ours = sincos_2d(64, 7, 7, cls_token=True).numpy()
    ref = _official_sincos_2d(64, 7)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert np.all(ours[0] == 0)
    # first half depends only on the column (w), second only on the row (h)
    table = ours[1:].reshape(7, 7, 64)
    assert np.allclose(table[0, :, :32], table[5, :, :32]) and not np.allclose(table[:, 0, :32], table[:, 5, :32])


def test_norm_pix_target_unbiased_eps_inside():
    x = torch.randn(3, 5, 12)
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).sum(-1, keepdim=True) / (12 - 1)
    torch.testing.assert_close(normalize_per_token(x), (x - mean) / torch.sqrt(var + 1e-6))


def test_masked_mse_only_counts_hidden_tokens():
    pred, target = torch.zeros(2, 4, 3), torch.ones(2, 4, 3)
    target[:, :2] = 5.0  # visible tokens: huge error that must be ignored
    mask = torch.tensor([[False, False, True, True]] * 2)
    loss, _ = MaskedMSE(norm_pix_loss=False)(pred, target, mask)
    assert loss.item() == 1.0
    loss, tgt = MaskedMSE(norm_pix_loss=True)(torch.randn(2, 4, 3), torch.randn(2, 4, 3), mask)
    assert torch.allclose(tgt.mean(-1), torch.zeros(2, 4), atol=1e-6)
