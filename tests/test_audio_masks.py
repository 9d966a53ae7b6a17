"""Spectrogram masks (Audio-MAE 2-D masking, REFERENCE-methods §3/§7): exact counts, row/column
structure, determinism, and the layout check at start-up."""

import pytest
import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Layout
from mae_zoo.masks import FrequencyMask, MaskConfigError, MaskLayoutError, RandomMask, TimeFrequencyMask, TimeMask
from mae_zoo.train import train

SPEC = Layout("grid", ("t", "f"), (64, 8))  # 1024 frames x 128 mel bins in 16x16 patches
IMAGE = Layout("grid", ("h", "w"), (14, 14))


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "mask,visible",
    [
        (RandomMask(0.8), int(512 * 0.2)),  # Audio-MAE pre-training: 102 visible
        (TimeMask(0.7), int(64 * 0.3) * 8),  # 19 rows x 8
        (FrequencyMask(0.5), 64 * 4),
        (TimeFrequencyMask(0.7, 0.3), int(64 * 0.3) * int(8 * 0.7)),  # 19 x 5 = 95, the official rule
    ],
    ids=repr,
)
def test_exact_visible_count_and_determinism(mask, visible):
    mask.check(SPEC)
    a = mask(SPEC, 32, gen(1))
    assert a.dtype == torch.bool and a.shape == (32, 512)
    assert (~a).sum(1).eq(visible).all()
    assert torch.equal(a, mask(SPEC, 32, gen(1)))
    assert not torch.equal(a, mask(SPEC, 32, gen(2)))
    assert len({tuple(row.tolist()) for row in a}) > 1  # samples differ within a batch


def test_time_frequency_visible_set_is_kept_rows_times_kept_columns():
    m = TimeFrequencyMask(0.5, 0.25)
    hidden = m(SPEC, 16, gen(0)).view(16, 64, 8)
    for grid in hidden:
        visible = ~grid
        rows, cols = visible.any(1), visible.any(0)
        assert rows.sum() == 32 and cols.sum() == 6
        assert torch.equal(visible, rows[:, None] & cols[None, :])  # a token is visible iff row and column are kept


def test_time_and_frequency_masks_hide_whole_lines():
    hidden = TimeMask(0.7)(SPEC, 8, gen(0)).view(8, 64, 8)
    assert (hidden.all(2) | (~hidden).all(2)).all()  # every time row hidden or kept as a whole
    assert hidden.all(2).sum(1).eq(64 - 19).all()
    hidden = FrequencyMask(0.5)(SPEC, 8, gen(0)).view(8, 64, 8)
    assert (hidden.all(1) | (~hidden).all(1)).all()
    assert hidden.all(1).sum(1).eq(4).all()


def test_kept_lines_follow_the_official_argsort_rule():
    # the time rows kept are the int(T*(1-p)) smallest of the first noise draw
    g = gen(5)
    noise_t = torch.rand(4, 64, generator=g)
    kept = torch.zeros(4, 64, dtype=torch.bool)
    kept.scatter_(1, noise_t.argsort(1)[:, :19], True)
    hidden = TimeMask(0.7)(SPEC, 4, gen(5)).view(4, 64, 8)
    assert torch.equal(~hidden[:, :, 0], kept)


def test_spectrogram_masks_refuse_other_layouts_and_bad_ratios():
    for m in (TimeMask(0.5), FrequencyMask(0.5), TimeFrequencyMask()):
        with pytest.raises(MaskLayoutError, match="grid:t,f"):
            m.check(IMAGE)
    with pytest.raises(MaskConfigError, match="both 0"):
        TimeFrequencyMask(0.0, 0.0)
    with pytest.raises(MaskConfigError, match=r"must be in \[0, 1\)"):
        TimeMask(1.0)
    with pytest.raises(MaskConfigError, match="no visible token"):
        FrequencyMask(0.9).check(Layout("grid", ("t", "f"), (8, 4)))  # int(4 * 0.1) = 0 columns
    RandomMask(0.8).check(SPEC)  # random fits any grid


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["mask=time"], "Masks that fit this modality: ['block', 'colored_noise', 'mixing', 'random', 'simmim']"),
        (
            ["modality=audio", "model=audiomae_micro", "mask=tube"],
            "['block', 'frequency', 'random', 'time', 'time_frequency']",
        ),
    ],
)
def test_bad_pairs_fail_at_start_up_naming_the_masks_that_fit(overrides, message, make_cfg):
    with pytest.raises(ConfigError) as info:
        train(make_cfg(*overrides))
    assert message in str(info.value)
