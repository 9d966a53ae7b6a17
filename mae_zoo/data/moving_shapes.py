"""An embedded, labelled video dataset that needs no download: shapes moving across a canvas.

Every clip shows one shape (any of the ten classes of :mod:`mae_zoo.data.shapes`, random size and
colours) travelling in a straight line at constant speed over a noisy, graded background. The label
is the **direction of motion**, one of eight compass directions; the shape, its colours, speed and
start point are nuisances. So a single frame carries no information about the label: a probe has to
use motion, which is what a video model should capture.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mae_zoo.data.shapes import CLASSES as SHAPES
from mae_zoo.data.shapes import _shape_masks

DIRECTIONS = ("right", "down_right", "down", "down_left", "left", "up_left", "up", "up_right")


def make_moving_shapes(num: int, frames: int = 16, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` clips, uint8 (N, 3, frames, size, size), and direction labels (int64, balanced over 8)."""
    rng = np.random.default_rng(seed)
    label = rng.permutation(np.arange(num) % len(DIRECTIONS))
    shape = rng.integers(0, len(SHAPES), num)
    r = rng.uniform(0.12, 0.2, num) * size
    angle = label * (2 * math.pi / len(DIRECTIONS))  # image rows grow downwards: +y is "down"
    # Speed in pixels per frame, chosen so the whole path fits inside the canvas.
    travel_max = np.maximum(size - 2 * r - 2, 1.0)
    speed = rng.uniform(0.45, 1.0, num) * np.minimum(1.0, travel_max / max(frames - 1, 1))
    vy, vx = np.sin(angle) * speed, np.cos(angle) * speed
    span_y, span_x = vy * (frames - 1), vx * (frames - 1)
    cy0 = rng.uniform(r - np.minimum(span_y, 0), size - r - np.maximum(span_y, 0))
    cx0 = rng.uniform(r - np.minimum(span_x, 0), size - r - np.maximum(span_x, 0))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    fg_color = rng.uniform(0.35, 1.0, (num, 3, 1, 1)).astype(np.float32)
    bg_color = rng.uniform(0.0, 0.45, (num, 3, 1, 1)).astype(np.float32)
    ramp = (
        rng.uniform(-0.15, 0.15, (num, 1, 1, 1)).astype(np.float32) * (yy / size)[None, None]
        + rng.uniform(-0.15, 0.15, (num, 1, 1, 1)).astype(np.float32) * (xx / size)[None, None]
    )
    background = bg_color + ramp
    video = np.empty((num, 3, frames, size, size), dtype=np.uint8)
    for t in range(frames):
        fg = _shape_masks(shape, yy, xx, cy0 + vy * t, cx0 + vx * t, r)
        frame = np.where(fg[:, None], fg_color, background)
        frame += 0.04 * rng.standard_normal(frame.shape, dtype=np.float32)  # fresh noise every frame
        video[:, :, t] = (np.clip(frame, 0, 1) * 255 + 0.5).astype(np.uint8)
    return torch.from_numpy(video), torch.from_numpy(label.astype(np.int64))
