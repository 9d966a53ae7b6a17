"""Image data: embedded shapes, torchvision loaders on ../shared/data, corrupt files skipped and counted."""

import numpy as np
import pytest
import torch
from PIL import Image

from mae_zoo.core.errors import ConfigError
from mae_zoo.data.image import ImageDataModule
from mae_zoo.data.shapes import CLASSES, make_shapes
from tests.conftest import needs_shared


def test_shapes_deterministic_balanced_and_seed_dependent():
    x, y = make_shapes(200, seed=3)
    x2, y2 = make_shapes(200, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.bincount(y, minlength=len(CLASSES)).eq(20).all()
    assert not torch.equal(make_shapes(200, seed=4)[0], x)


def test_shapes_datamodule_batches_are_normalised():
    dm = ImageDataModule(num_train=64, num_val=32, batch_size=16, num_workers=0)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (16,)
    assert abs(x.mean().item()) < 0.5 and 0.5 < x.std().item() < 1.5
    xv, _ = next(iter(dm.val_dataloader()))
    xv2, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(xv, xv2)  # no random augmentation at evaluation


@pytest.mark.parametrize("name,folder,first_label", [("mnist", "MNIST", 5), ("fashion_mnist", "FashionMNIST", 9)])
def test_torchvision_loaders_on_shared_data(name, folder, first_label):
    root = needs_shared("vision", folder).parent
    dm = ImageDataModule(
        dataset=name, root=str(root), image_size=28, num_channels=1, mean=[0.2], std=[0.3], batch_size=8, num_workers=0
    )
    dm.setup("fit")
    assert len(dm.train_set) == 60000 and len(dm.val_set) == 10000
    assert dm.train_set[0][1] == first_label
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape == (8, 1, 28, 28)


def test_missing_root_and_unknown_dataset_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="data.root is required"):
        ImageDataModule(dataset="mnist", root=None, image_size=28, num_channels=1, mean=[0], std=[1])
    with pytest.raises(ConfigError, match="valid:"):
        ImageDataModule(dataset="imagenet")
    with pytest.raises(ConfigError, match="does not exist"):
        ImageDataModule(dataset="image_folder", root=str(tmp_path / "nope"))
    dm = ImageDataModule(dataset="mnist", root=str(tmp_path), image_size=28, num_channels=1, mean=[0], std=[1])
    with pytest.raises(ConfigError, match="MNIST/"):
        dm.setup("fit")


def test_image_folder_skips_and_counts_corrupt_files(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / f"{i}.png")
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    dm = ImageDataModule(dataset="image_folder", root=str(tmp_path), image_size=32, batch_size=7, num_workers=0)
    dm.setup("fit")
    loader = torch.utils.data.DataLoader(dm.train_set, batch_size=7, collate_fn=dm.train_dataloader().collate_fn)
    ((x, _y),) = list(loader)
    assert x.shape == (6, 3, 32, 32)  # 7 files, the broken one dropped
    assert dm.num_skipped == 1
