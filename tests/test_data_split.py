"""The validation split carved from the training set (data.val_from_train) and the class-balanced labelled
subset (data.train_subset): disjoint, deterministic, the same for every run, the right size, bad values refused."""

from __future__ import annotations

import pytest
import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.data.image import ImageDataModule, split_indices
from mae_zoo.eval import build_datamodule
from tests.conftest import compose_cfg

LABELS = torch.arange(1000) % 10  # 100 of each of 10 classes


def shapes(**kwargs) -> ImageDataModule:
    return ImageDataModule(num_train=200, num_val=40, batch_size=16, num_workers=0, **kwargs)


def test_carved_split_is_disjoint_deterministic_and_independent_of_the_run_seed():
    train, val = split_indices(LABELS, 300, None, seed=0)
    assert val is not None and len(val) == 300 and len(train) == 700
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1000))  # nothing lost
    train2, val2 = split_indices(LABELS, 300, None, seed=0)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    torch.manual_seed(123)  # the run's global seed plays no part
    assert torch.equal(split_indices(LABELS, 300, None, seed=0)[1], val)
    assert not torch.equal(split_indices(LABELS, 300, None, seed=1)[1], val)  # split_seed does
    _, frac = split_indices(LABELS, 0.25, None, seed=0)
    assert frac is not None and len(frac) == 250


def test_subset_is_class_balanced_of_the_right_size_and_outside_val():
    train, val = split_indices(LABELS, 300, 105, seed=0)
    assert val is not None and len(train) == 105
    assert set(train.tolist()).isdisjoint(val.tolist())
    counts = torch.bincount(LABELS[train], minlength=10)
    assert counts.sum() == 105 and counts.max() - counts.min() <= 1 and counts.min() == 10
    exact, _ = split_indices(LABELS, 300, 50, seed=0)
    assert torch.bincount(LABELS[exact], minlength=10).eq(5).all()
    assert set(exact.tolist()) <= set(train.tolist())  # nested: a smaller subset is part of a larger one
    only_subset, none = split_indices(LABELS, None, 20, seed=0)
    assert none is None and torch.bincount(LABELS[only_subset], minlength=10).eq(2).all()
    # a class too rare for its share fails and says so
    skewed = torch.cat([torch.zeros(95, dtype=torch.long), torch.ones(5, dtype=torch.long)])
    with pytest.raises(ConfigError, match="class 1"):
        split_indices(skewed, None, 20, seed=0)


@pytest.mark.parametrize(
    "val_from_train,train_subset,match",
    [
        (-5, None, r"count must be an int >= 1 below"),
        (0, None, r"count must be an int >= 1 below"),
        (1000, None, r"valid: a count in \[1, 999\]"),
        (5000, None, r"valid: a count in \[1, 999\]"),
        (0.0, None, r"fraction must lie in \(0, 1\)"),
        (1.0, None, r"fraction must lie in \(0, 1\)"),
        (1.5, None, r"fraction must lie in \(0, 1\)"),
        (True, None, r"a count \(int >= 1\) or a fraction in \(0, 1\)"),
        ("100", None, r"a count \(int >= 1\) or a fraction in \(0, 1\)"),
        (None, -1, r"train_subset must be null or a count"),
        (None, 0, r"train_subset must be null or a count"),
        (None, 1000, r"valid is a count in \[10, 999\]"),
        (300, 700, r"valid is a count in \[10, 699\].*after data.val_from_train"),
        (None, 5, r"valid is a count in \[10, 999\].*at least one image for each of the 10 classes"),
    ],
)
def test_bad_values_fail_with_what_is_valid(val_from_train, train_subset, match):
    with pytest.raises(ConfigError, match=match):
        split_indices(LABELS, val_from_train, train_subset, seed=0)


def test_datamodule_default_is_unchanged_and_bad_values_fail_at_construction():
    dm = shapes()
    dm.setup("fit")
    assert len(dm.train_set) == 200 and len(dm.val_set) == 40 and dm.test_set is None
    with pytest.raises(ConfigError, match="no test split"):
        dm.test_dataloader()
    with pytest.raises(ConfigError, match=r"fraction must lie in \(0, 1\)"):
        shapes(val_from_train=2.0)
    with pytest.raises(ConfigError, match="train_subset must be null or a count"):
        shapes(train_subset=-3)
    too_many = shapes(val_from_train=200)  # the size is known once the data is read
    with pytest.raises(ConfigError, match=r"valid: a count in \[1, 199\]"):
        too_many.setup("fit")


def test_datamodule_carves_val_from_train_keeps_test_apart_and_every_arm_gets_the_same_split():
    dm = shapes(val_from_train=50, train_subset=30)
    dm.setup("fit")
    assert len(dm.train_set) == 30 and len(dm.val_set) == 50 and len(dm.test_set) == 40
    assert dm.train_indices is not None and dm.val_indices is not None
    assert set(dm.train_indices.tolist()).isdisjoint(dm.val_indices.tolist())
    labels = torch.tensor([dm.train_set[i][1] for i in range(30)])
    assert torch.bincount(labels, minlength=10).eq(3).all()
    # val images are training images, unaugmented; the test split is the dataset's own
    full = shapes()
    full.setup("fit")
    first = int(dm.val_indices[0])
    assert torch.equal(dm.val_set[0][0], full.unaugmented_train_set()[first][0])
    assert torch.equal(dm.test_set[0][0], full.val_set[0][0])
    # frozen-feature probes see the training split only
    train_loader, val_loader = dm.feature_dataloaders(batch_size=64)
    assert len(train_loader.dataset) == 30 and len(val_loader.dataset) == 50
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape == (16, 3, 32, 32)
    # another arm (other run seed, other model) built from the same data settings: the same split
    torch.manual_seed(7)
    other = shapes(val_from_train=50, train_subset=30)
    other.setup("fit")
    assert torch.equal(other.train_indices, dm.train_indices) and torch.equal(other.val_indices, dm.val_indices)


def test_eval_data_overrides_reach_the_split():
    """``+data_overrides.val_from_train=...`` on a checkpoint's data settings builds the carved split."""
    cfg = compose_cfg(["ckpt=x", "+data_overrides.val_from_train=40", "+data_overrides.train_subset=20"], None, "eval")
    checkpoint = {
        "mae_zoo": {"datamodule": "mae_zoo.data.image.ImageDataModule"},
        "datamodule_hyper_parameters": {"num_train": 200, "num_val": 40, "num_workers": 0},
    }
    dm = build_datamodule(cfg, checkpoint, model=None)  # type: ignore[arg-type]
    assert isinstance(dm, ImageDataModule) and dm.val_from_train == 40 and dm.train_subset == 20
    with pytest.raises(ConfigError, match="val_from_train"):
        bad = compose_cfg(["ckpt=x", "+data_overrides.val_from_train=-1"], None, "eval")
        build_datamodule(bad, checkpoint, model=None)  # type: ignore[arg-type]
