"""Point-cloud readers on small files written in each official layout, the embedded shapes, the
training augmentation, and unreadable files (skipped and counted, never fatal)."""

import json

import h5py
import numpy as np
import pytest
import torch
import trimesh

from mae_zoo.data.point import PointDataModule, read_point_file, scale_and_translate
from mae_zoo.data.point_shapes import CLASSES, make_point_shapes
from mae_zoo.modalities.point import PointMAE
from mae_zoo.train import train
from tests.conftest import compose_cfg, needs_shared
from tests.test_point_model import MICRO, TINY

RNG = np.random.default_rng(0)


def _cloud(n=100, normals=False):
    x = RNG.normal(size=(n, 3)).astype(np.float32) * [1.0, 2.0, 0.5] + 3.0
    return np.concatenate([x, RNG.normal(size=(n, 3)).astype(np.float32)], 1) if normals else x


def write_meshes(root, corrupt=True):
    for cls, mesh in (("box", trimesh.creation.box()), ("ball", trimesh.creation.icosphere(2))):
        (root / cls).mkdir(parents=True)
        mesh.export(root / cls / f"{cls}.obj")
        mesh.export(root / cls / f"{cls}.off")
    if corrupt:
        (root / "ball" / "broken.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 99\nend_header\n1 2\n")


def write_modelnet_resampled(root):
    """modelnet40_normal_resampled: <class>/<id>.txt (x,y,z,nx,ny,nz), id lists and shape names."""
    names = ["airplane", "chair"]
    root.mkdir(parents=True)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(names) + "\n")
    train, test = [], []
    for c in names:
        (root / c).mkdir(parents=True)
        for i in range(1, 4):
            ident = f"{c}_{i:04d}"
            np.savetxt(root / c / f"{ident}.txt", _cloud(120, normals=True), fmt="%.6f", delimiter=",")
            (train if i < 3 else test).append(ident)
    (root / "modelnet40_train.txt").write_text("\n".join(train) + "\n")
    (root / "modelnet40_test.txt").write_text("\n".join(test) + "\n")


def write_point_folder(root):
    """No id lists: train/ and test/ folders, .npy and space-separated .xyz without normals, one corrupt .npy."""
    for c in ("a", "b"):
        for split in ("train", "test"):
            (root / c / split).mkdir(parents=True)
            np.save(root / c / split / "x.npy", _cloud(90))
            np.savetxt(root / c / split / "y.xyz", _cloud(90), fmt="%.5f")
    (root / "a" / "train" / "bad.npy").write_bytes(b"\x93NUMPY garbage")


def write_modelnet_h5(root):
    root.mkdir(parents=True, exist_ok=True)
    (root / "shape_names.txt").write_text("\n".join(f"c{i}" for i in range(40)) + "\n")
    for name, n in (("ply_data_train0.h5", 12), ("ply_data_test0.h5", 6)):
        with h5py.File(root / name, "w") as f:
            f["data"] = RNG.normal(size=(n, 2048, 3)).astype(np.float32)
            f["label"] = (np.arange(n) % 3).astype(np.uint8)[:, None]
    (root / "ply_data_train1.h5").write_bytes(b"not an hdf5 file")


def write_shapenet55(root):
    (root / "ShapeNet-55").mkdir(parents=True)
    (root / "shapenet_pc").mkdir()
    names = {"train": [], "test": []}
    for synset in ("02691156", "03001627", "04379243"):
        for j in range(3):
            name = f"{synset}-model{j}.npy"
            np.save(root / "shapenet_pc" / name, _cloud(200))
            names["train" if j < 2 else "test"].append(name)
    for split, files in names.items():
        (root / "ShapeNet-55" / f"{split}.txt").write_text("\n".join(files) + "\n")


def write_scanobjectnn(root):
    (root / "main_split").mkdir(parents=True)
    for name, n in (
        ("training_objectdataset_augmentedrot_scale75.h5", 10),
        ("test_objectdataset_augmentedrot_scale75.h5", 5),
    ):
        with h5py.File(root / "main_split" / name, "w") as f:
            f["data"] = RNG.normal(size=(n, 2048, 3)).astype(np.float32)
            f["label"] = (np.arange(n) % 15).astype(np.int64)


LAYOUTS = {
    "mesh_folder": (write_meshes, {"train_views": 2, "val_views": 1}, 2, 1),
    "point_folder": (write_modelnet_resampled, {}, 2, 0),
    "modelnet40_h5": (write_modelnet_h5, {}, 40, 1),
    "shapenet55": (write_shapenet55, {}, 3, 0),
    "scanobjectnn": (write_scanobjectnn, {"variant": "hardest"}, 15, 0),
}


@pytest.mark.parametrize("dataset", list(LAYOUTS))
def test_reader_on_official_layout(dataset, tmp_path):
    write, extra, classes, _ = LAYOUTS[dataset]
    root = tmp_path / "data"
    write(root)
    dm = PointDataModule(dataset, str(root), num_points=64, batch_size=4, num_workers=0, **extra)
    dm.setup("fit")
    assert dm.num_classes == classes
    train_x, train_y = next(iter(dm.train_dataloader()))
    val_x, val_y = next(iter(dm.feature_dataloaders()[1]))
    assert train_x.shape[1:] == (64, 3) and val_x.shape[1:] == (64, 3)
    radius = val_x.norm(dim=-1).max(dim=1).values  # evaluation clouds: centred, farthest point at 1
    torch.testing.assert_close(radius, torch.ones_like(radius))
    assert val_x.mean(dim=1).abs().max() < 1e-5
    assert int(train_y.max()) < classes and int(val_y.max()) < classes
    model = PointMAE(**{**MICRO, "num_groups": 16, "group_size": 8})
    out = model((train_x, train_y), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_readers_skip_and_count_unreadable_files(tmp_path):
    root = tmp_path / "pf"
    write_point_folder(root)
    dm = PointDataModule("point_folder", str(root), num_points=32, batch_size=8, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_set) == 5 and len(dm.val_set) == 4
    batches = list(dm.train_dataloader())
    assert sum(len(b[1]) for b in batches if b is not None) == 4  # the corrupt .npy is dropped
    assert dm.skipped_paths() == [str(root / "a" / "train" / "bad.npy")]
    h5 = tmp_path / "h5"
    write_modelnet_h5(h5)
    dm = PointDataModule("modelnet40_h5", str(h5), num_points=32, batch_size=4, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_set) == 12 and dm.num_skipped == 1  # ply_data_train1.h5 is not an HDF5 file


def test_point_files_with_and_without_normals(tmp_path):
    xyz = _cloud(10)
    np.savetxt(tmp_path / "a.txt", np.concatenate([xyz, xyz], 1), fmt="%.6f", delimiter=",")
    np.savetxt(tmp_path / "b.xyz", xyz, fmt="%.6f")
    np.save(tmp_path / "c.npy", xyz)
    for name in ("a.txt", "b.xyz", "c.npy"):
        np.testing.assert_allclose(read_point_file(str(tmp_path / name)), xyz, atol=1e-5)


def test_mesh_folder_smoke_run_counts_the_corrupt_mesh(tmp_path):
    root = tmp_path / "meshes"
    write_meshes(root)
    run = tmp_path / "run"
    tiny = [o for o in TINY if not o.startswith(("data.num_train", "data.num_val"))]
    overrides = [*tiny, "data=mesh_folder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"]
    overrides += ["data.num_points=64", "data.train_views=8", "data.val_views=2", "data.batch_size=4"]
    metrics = train(compose_cfg(overrides, run))
    assert metrics["trainer/global_step"] == 4 and metrics["data/skipped_files"] == 1
    assert json.loads((run / "metrics.json").read_text())["data/skipped_files"] == 1
    assert list((tmp_path / "cache").glob("*.npy"))  # the area samples are cached


def test_mesh_views_differ_between_splits_and_repeat():
    pytest.importorskip("trimesh")
    root = needs_shared("pointcloud", "odedstein_meshes")
    dm = PointDataModule("mesh_folder", str(root), num_points=128, train_views=2, val_views=2, num_workers=0)
    dm.setup("fit")
    assert dm.num_classes == 21 and len(dm.train_set) == 46  # 21 folders; human/ holds 3 meshes
    dm = PointDataModule("mesh_folder", str(root), num_points=128, train_views=2, val_views=2, label_by="file")
    dm.setup("fit")
    assert dm.num_classes == 23 and sorted(dm.train_set.labels) == sorted(list(range(23)) * 2)
    a, b = dm.unaugmented_train_set()[0][0], dm.val_set[0][0]
    assert not torch.allclose(a, b)
    assert torch.equal(dm.val_set[0][0], dm.val_set[0][0])


def test_embedded_shapes_are_deterministic_and_balanced():
    x1, y1 = make_point_shapes(20, 64, seed=3)
    x2, y2 = make_point_shapes(20, 64, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.bincount(y1, minlength=len(CLASSES)).tolist() == [2] * len(CLASSES)
    assert (x1.norm(dim=-1).max(dim=1).values < 1.1).all()


def test_training_augmentation_scales_and_translates():
    torch.manual_seed(0)
    pts = torch.randn(50, 3)
    out = scale_and_translate(pts, (2 / 3, 3 / 2), 0.2)
    scale = (out[1] - out[0]) / (pts[1] - pts[0])
    shift = out[0] - pts[0] * scale
    torch.testing.assert_close(out, pts * scale + shift)  # one per-axis scale and one shift for the cloud
    assert ((scale >= 2 / 3 - 1e-5) & (scale <= 1.5 + 1e-5)).all() and (shift.abs() <= 0.2 + 1e-5).all()
    dm = PointDataModule("shapes", num_points=64, num_train=10, num_val=10, batch_size=10, num_workers=0)
    dm.setup("fit")
    clean, _ = dm.unaugmented_train_set()[0]
    torch.testing.assert_close(clean.norm(dim=-1).max(), torch.tensor(1.0))
    torch.manual_seed(1)
    augmented, _ = dm.train_set[0]
    assert not torch.allclose(augmented.mean(0), torch.zeros(3), atol=1e-3)  # shifted off the centre


def test_shared_meshes_setup_reads_all_23(tmp_path):
    root = needs_shared("pointcloud", "odedstein_meshes")
    cfg = compose_cfg(["experiment=pointmae_meshes", "print_config=false"], tmp_path)
    assert cfg.data.root.endswith("pointcloud/odedstein_meshes") and root.is_dir()
