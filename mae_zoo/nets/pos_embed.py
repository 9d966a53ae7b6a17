"""Fixed sin-cos position tables (computed in float64, stored in float32): MAE's 2-D table and
VideoMAE's 1-D table over flattened (t, h, w) positions, resampled for other grid sizes."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

Grid = tuple[int, int, int]  # (t, h, w)


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """MAE's 1-D table: [sin(p*w_k), cos(p*w_k)] with w_k = 10000^(-k/(dim/2)), k < dim/2."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding dim must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = False) -> torch.Tensor:
    """MAE's 2-D table, (h*w [+1], dim), rows in row-major (h outer, w inner) patch order.

    The official code meshes the grid with the *w* coordinate first, so the first half of the
    channels encodes the column and the second half the row: [sin_w, cos_w, sin_h, cos_h].
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding dim must be divisible by 4, got {dim}")
    hh, ww = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )
    table = torch.cat([sincos_1d(dim // 2, ww), sincos_1d(dim // 2, hh)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=torch.float64), table], dim=0)
    return table.float()


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """VideoMAE's 1-D table (num_positions, dim): angle = pos / 10000^(2*floor(j/2)/dim),
    sin on even channels j, cos on odd ones (interleaved, unlike MAE's [sin | cos] halves)."""
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


def interpolate_table(table: torch.Tensor, source: Grid, target: Grid) -> torch.Tensor:
    """Resample a (t*h*w, D) position table from one (t, h, w) grid to another (trilinear), so a
    model trained at one clip size keeps the positions it learned at another."""
    if tuple(source) == tuple(target):
        return table
    x = table.T.reshape(1, table.shape[1], *source)
    x = F.interpolate(x.double(), size=tuple(target), mode="trilinear", align_corners=False)
    return x.reshape(table.shape[1], -1).T.to(table.dtype).contiguous()


class PositionTable(nn.Module):
    table: torch.Tensor

    """The fixed table for the configured grid (a non-persistent buffer, as in the official code,
    so checkpoints load at any clip size), resampled for inputs of another size."""

    def __init__(self, grid: Grid, dim: int) -> None:
        super().__init__()
        self.grid: Grid = (grid[0], grid[1], grid[2])
        self.register_buffer("table", sinusoid_table(math.prod(grid), dim), persistent=False)

    def forward(self, grid: Grid) -> torch.Tensor:
        return interpolate_table(self.table, self.grid, grid)
