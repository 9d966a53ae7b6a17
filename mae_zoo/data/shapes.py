"""An embedded, labelled image dataset that needs no download: procedurally drawn shapes.

Ten classes of coloured shapes on noisy coloured backgrounds, with random position, size and
colours, drawn deterministically from a seed. Small enough to generate in about a second, hard
enough that a linear probe on raw pixels is far from perfect.
"""

from __future__ import annotations

import numpy as np
import torch

CLASSES = ("disk", "square", "triangle", "ring", "plus", "cross", "diamond", "h_stripes", "v_stripes", "checker")


def _class_mask(k: int, dy: np.ndarray, dx: np.ndarray, yy: np.ndarray, xx: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean (n, S, S) foreground of class ``k`` for n samples (offsets dy, dx from the centre)."""
    rr = r[:, None, None]
    ady, adx = np.abs(dy), np.abs(dx)
    thick = np.maximum(1.2, rr * 0.3)
    period = np.maximum(2, np.round(rr / 2))
    box = (ady <= rr) & (adx <= rr)
    d2 = dy**2 + dx**2
    if k == 0:
        return d2 <= rr**2
    if k == 1:
        return box
    if k == 2:
        return (dy <= rr * 0.8) & (dy >= -rr) & (adx <= (dy + rr) * 0.6)
    if k == 3:
        return (d2 <= rr**2) & (d2 >= (rr * 0.55) ** 2)
    if k == 4:
        return box & ((ady <= thick) | (adx <= thick))
    if k == 5:
        return box & ((np.abs(dy - dx) <= thick) | (np.abs(dy + dx) <= thick))
    if k == 6:
        return ady + adx <= rr
    rows, cols = (yy[None] // period) % 2, (xx[None] // period) % 2
    if k == 7:
        return box & (rows == 0)
    if k == 8:
        return box & (cols == 0)
    return box & ((rows + cols) % 2 == 0)


def _shape_masks(
    label: np.ndarray, yy: np.ndarray, xx: np.ndarray, cy: np.ndarray, cx: np.ndarray, r: np.ndarray
) -> np.ndarray:
    out = np.zeros((len(label), *yy.shape), dtype=bool)
    for k in range(len(CLASSES)):
        sel = np.flatnonzero(label == k)
        dy = yy[None] - cy[sel, None, None]
        dx = xx[None] - cx[sel, None, None]
        out[sel] = _class_mask(k, dy, dx, yy, xx, r[sel])
    return out


def make_shapes(num: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` RGB images (uint8, (N, 3, size, size)) and labels (int64, balanced over 10 classes)."""
    rng = np.random.default_rng(seed)
    label = rng.permutation(np.arange(num) % len(CLASSES))
    r = rng.uniform(0.18, 0.38, num) * size
    cy = rng.uniform(r, size - r)
    cx = rng.uniform(r, size - r)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    fg = _shape_masks(label, yy, xx, cy, cx, r)
    fg_color = rng.uniform(0.35, 1.0, (num, 3, 1, 1)).astype(np.float32)
    bg_color = rng.uniform(0.0, 0.45, (num, 3, 1, 1)).astype(np.float32)
    # Smooth background gradient + pixel noise, so pixels alone do not give the class away.
    ramp = (
        rng.uniform(-0.15, 0.15, (num, 1, 1, 1)).astype(np.float32) * (yy / size)[None, None]
        + rng.uniform(-0.15, 0.15, (num, 1, 1, 1)).astype(np.float32) * (xx / size)[None, None]
    )
    img = np.where(fg[:, None], fg_color, bg_color + ramp)
    img += 0.04 * rng.standard_normal(img.shape, dtype=np.float32)
    img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return torch.from_numpy(img), torch.from_numpy(label.astype(np.int64))
