"""An embedded multi-channel set that needs no download: synthetic "cell painting" images.

Five channels of 32x32 images, drawn deterministically from a seed, in the spirit of microscopy
stains: a nucleus stain, a cytoplasm stain, two marker stains of small spots, and a distractor
channel. The class is decided by how channels relate, never by one channel alone:

- factor ``a``: the spots of marker A (channel 2) sit on the nuclei (channel 0), or anywhere;
- factor ``b``: the spots of marker B (channel 3) sit on marker A's spots, or anywhere;
- class = 2 * a + b (4 balanced classes).

Every channel on its own has the same distribution in every class (cell centres and free spots are
both uniform over the same square), so a model must relate channels to tell classes apart: the
cross-channel learning that channel-aware MAEs are about. Channel 1 repeats channel 0's cells
(redundant information a reconstruction can use) and channel 4 is a smooth field unrelated to the
class (as real stacks carry channels irrelevant to a given question).
"""

from __future__ import annotations

import numpy as np
import torch

CHANNELS = ("nucleus", "cytoplasm", "marker_a", "marker_b", "distractor")
CLASSES = ("a0_b0", "a0_b1", "a1_b0", "a1_b1")  # a: marker A on nuclei; b: marker B on marker A
NUM_CELLS = 3


def _blobs(
    yy: np.ndarray, xx: np.ndarray, cy: np.ndarray, cx: np.ndarray, sigma: np.ndarray, amp: np.ndarray
) -> np.ndarray:
    """(N, S, S): the sum over k of ``amp * exp(-d^2 / 2 sigma^2)`` around (cy, cx), all (N, K)."""
    cy, cx, sigma, amp = (v.astype(np.float32) for v in (cy, cx, sigma, amp))
    d2 = (yy[None, None] - cy[..., None, None]) ** 2 + (xx[None, None] - cx[..., None, None]) ** 2
    return (amp[..., None, None] * np.exp(-d2 / (2 * sigma[..., None, None] ** 2))).sum(axis=1)


def _disks(
    yy: np.ndarray, xx: np.ndarray, cy: np.ndarray, cx: np.ndarray, r: np.ndarray, amp: np.ndarray
) -> np.ndarray:
    """(N, S, S): the brightest of soft-edged disks of radius r (one pixel of edge)."""
    cy, cx, r, amp = (v.astype(np.float32) for v in (cy, cx, r, amp))
    d = np.sqrt((yy[None, None] - cy[..., None, None]) ** 2 + (xx[None, None] - cx[..., None, None]) ** 2)
    return (amp[..., None, None] * np.clip(r[..., None, None] + 0.5 - d, 0, 1)).max(axis=1)


def make_cells(num: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` images (uint8, (N, 5, size, size)) and labels (int64, balanced over 4 classes)."""
    rng = np.random.default_rng(seed)
    label = rng.permutation(np.arange(num) % len(CLASSES))
    a, b = label // 2, label % 2
    k, scale = NUM_CELLS, size / 32.0
    lo, hi = 5 * scale, size - 5 * scale
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    def uniform_points() -> tuple[np.ndarray, np.ndarray]:
        return rng.uniform(lo, hi, (num, k)), rng.uniform(lo, hi, (num, k))

    def jitter() -> np.ndarray:
        return rng.uniform(-1.0, 1.0, (num, k)) * scale

    cy, cx = uniform_points()
    r_nuc = rng.uniform(2.5, 3.5, (num, k)) * scale
    nucleus = _disks(yy, xx, cy, cx, r_nuc, rng.uniform(0.6, 1.0, (num, k)))
    cytoplasm = _disks(yy, xx, cy, cx, r_nuc * rng.uniform(1.8, 2.2, (num, k)), rng.uniform(0.3, 0.6, (num, k)))
    # Marker A: on the nuclei (a = 1) or at free points drawn from the same uniform law (a = 0).
    fy, fx = uniform_points()
    on = a[:, None].astype(bool)
    ay, ax = np.where(on, cy + jitter(), fy), np.where(on, cx + jitter(), fx)
    spot = np.full((num, k), 1.6 * scale)
    marker_a = _blobs(yy, xx, ay, ax, spot, rng.uniform(0.6, 1.0, (num, k)))
    # Marker B: on marker A's spots (b = 1) or at free points (b = 0).
    fy, fx = uniform_points()
    on = b[:, None].astype(bool)
    by, bx = np.where(on, ay + jitter(), fy), np.where(on, ax + jitter(), fx)
    marker_b = _blobs(yy, xx, by, bx, spot, rng.uniform(0.6, 1.0, (num, k)))
    # Distractor: a few broad blobs anywhere, unrelated to cells and class.
    dy, dx = rng.uniform(0, size, (num, 4)), rng.uniform(0, size, (num, 4))
    distractor = _blobs(yy, xx, dy, dx, rng.uniform(3.0, 6.0, (num, 4)) * scale, rng.uniform(0.2, 0.5, (num, 4)))
    img = np.stack([nucleus, cytoplasm, marker_a, marker_b, distractor], axis=1).astype(np.float32)
    img += 0.05 * rng.standard_normal(img.shape, dtype=np.float32)
    img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return torch.from_numpy(img), torch.from_numpy(label.astype(np.int64))
