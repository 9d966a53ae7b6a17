"""Property tests for every mask generator (REFERENCE-methods §7)."""

import pytest
import torch

from mae_zoo.core.module import mask_seed
from mae_zoo.core.types import Layout
from mae_zoo.masks import BlockMask, ColoredNoiseMask, MaskConfigError, MaskLayoutError, RandomMask, TubeMask
from mae_zoo.masks.colored_noise import COLORS

IMAGE = Layout("grid", ("h", "w"), (14, 14))
VIDEO = Layout("grid", ("t", "h", "w"), (8, 14, 14))


def gen(seed):
    return torch.Generator().manual_seed(seed)


ALL = [
    (RandomMask(0.75), IMAGE),
    (BlockMask(0.4), IMAGE),
    (ColoredNoiseMask(0.75, "green"), IMAGE),
    (TubeMask(0.9), VIDEO),
]


@pytest.mark.parametrize("mask,layout", ALL, ids=lambda x: repr(x))
def test_deterministic_under_seed_and_different_across_seeds(mask, layout):
    a, b = mask(layout, 16, gen(1)), mask(layout, 16, gen(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, mask(layout, 16, gen(2)))
    assert a.dtype == torch.bool and a.shape == (16, layout.num_tokens)
    # samples within a batch differ too
    assert len({tuple(row.tolist()) for row in a}) > 1


def test_seed_mixing_gives_each_rank_and_step_its_own_masks():
    seeds = {mask_seed(0, rank, "train", step) for rank in range(4) for step in range(50)}
    assert len(seeds) == 200
    assert mask_seed(3, 1, "train", 7, 0) == mask_seed(3, 1, "train", 7, 0)
    m = RandomMask(0.75)
    r0 = m(IMAGE, 8, gen(mask_seed(0, 0, "train", 5)))
    r1 = m(IMAGE, 8, gen(mask_seed(0, 1, "train", 5)))
    assert not torch.equal(r0, r1)


def test_random_exact_count_and_official_argsort_rule():
    m = RandomMask(0.75)
    mask = m(IMAGE, 32, gen(0))
    assert (~mask).sum(1).eq(int(196 * 0.25)).all()  # 49 kept
    noise = torch.rand(4, 196, generator=gen(3))
    mask = m.from_noise(noise)
    keep = torch.argsort(noise, dim=1)[:, :49]
    assert torch.equal((~mask).nonzero()[:, 1].view(4, 49).sort(1).values, keep.sort(1).values)


def test_block_count_never_above_target_and_blocks_are_rectangles():
    m = BlockMask(0.4)
    target = int(196 * 0.4)
    masks = m(IMAGE, 200, gen(0))
    counts = masks.sum(1)
    assert counts.le(target).all() and counts.ge(16).all()
    assert counts.float().mean() > 0.8 * target  # blocks fill most of the budget
    assert len(set(counts.tolist())) > 1  # variable count is the point of this mask
    # one block on an empty grid: a filled rectangle of about >= 16 cells, aspect in [0.3, 1/0.3]
    import random

    rng = random.Random(0)
    for _ in range(50):
        grid = torch.zeros(14, 14, dtype=torch.bool)
        added = m._place_block(grid, target, rng)
        assert added == grid.sum() >= 12  # area 16 drawn, rounding of h and w can trim a little
        rows, cols = grid.any(1).nonzero(), grid.any(0).nonzero()
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert grid.sum() == h * w  # filled rectangle
        assert 0.3 / 1.5 <= h / w <= 1.5 / 0.3


def _neighbour_agreement(mask):
    grid = mask.view(-1, 14, 14).float()
    return ((grid[:, 1:] == grid[:, :-1]).float().mean() + (grid[:, :, 1:] == grid[:, :, :-1]).float().mean()) / 2


@pytest.mark.parametrize("color", COLORS)
def test_colored_noise_is_topk_of_its_noise_with_exact_count(color):
    m = ColoredNoiseMask(0.75, color)
    mask = m(IMAGE, 8, gen(4))
    assert (~mask).sum(1).eq(49).all()
    field = m.noise(IMAGE, 8, gen(4)).flatten(1)
    kept_min = field.masked_fill(mask, float("inf")).min(1).values
    hidden_max = field.masked_fill(~mask, -float("inf")).max(1).values
    assert (kept_min >= hidden_max).all()


def test_colored_noise_spectra_differ_as_named():
    agree = {c: _neighbour_agreement(ColoredNoiseMask(0.75, c)(IMAGE, 64, gen(0))) for c in COLORS}
    white = _neighbour_agreement(RandomMask(0.75)(IMAGE, 64, gen(0)))
    # low-pass noise makes blobs (neighbours agree), high-pass noise scatters (they disagree)
    assert agree["red"] > agree["green"] > white > agree["blue"]


def test_tube_identical_over_time_with_exact_count():
    mask = TubeMask(0.9)(VIDEO, 6, gen(0)).view(6, 8, 196)
    assert (mask == mask[:, :1]).all()
    assert mask[:, 0].sum(1).eq(176).all()  # int(0.9 * 196) hidden per frame, as VideoMAE


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ratio_outside_open_interval_is_rejected(ratio):
    with pytest.raises(MaskConfigError, match=r"\(0, 1\)"):
        RandomMask(ratio)


def test_layout_checks():
    with pytest.raises(MaskLayoutError, match="grid:t,h,w"):
        TubeMask(0.9).check(IMAGE)
    with pytest.raises(MaskLayoutError):
        ColoredNoiseMask(0.75).check(VIDEO)
    with pytest.raises(MaskConfigError, match="grid larger"):
        BlockMask(0.4).check(Layout("grid", ("h", "w"), (4, 4)))
    RandomMask(0.75).check(VIDEO)
    BlockMask(0.4).check(IMAGE)
