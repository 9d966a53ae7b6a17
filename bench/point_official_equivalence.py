"""Out-of-tree oracle: the official Point-MAE forward against mae_zoo's PointMAE (run on demand, not in CI).

    PYTHONPATH=. python bench/point_official_equivalence.py /path/to/Pang-Yatian/Point-MAE

Builds the official ``models/Point_MAE.Point_MAE`` (cfgs/pretrain.yaml sizes) with its CUDA imports
(knn_cuda, the Chamfer extension) and its repo utilities stubbed, gives its BatchNorms non-trivial
statistics, maps its weights with ``mae_zoo.weights.official_pointmae``, feeds both the same groups
(mae_zoo's FPS + kNN, since the official ones are CUDA-only) and the same mask, and prints the largest
difference of the encoder outputs and the two Chamfer-L2 losses (official kernel replaced by
``chamfer_l2``). Also checks the parameter counts recorded in tests/test_point_model.py.
Last run (2 vCPU, torch CPU): 29,006,432 parameters, 209 state entries, mini-PointNet 494,464;
encoder max abs diff 3.0e-06; losses 0.728455126 (official) and 0.728455126 (ours).
"""

import os
import sys
import tempfile
from types import SimpleNamespace as NS

import torch

STUBS = {
    "models/__init__.py": "",
    "models/build.py": "class _R:\n    def register_module(self, *a, **k):\n        return lambda c: c\nMODELS = _R()\n",
    "utils/__init__.py": "",
    "utils/misc.py": "def fps(*a):\n    raise NotImplementedError\n",
    "utils/checkpoint.py": "def get_missing_parameters_message(*a):\n    return ''\n"
    "def get_unexpected_parameters_message(*a):\n    return ''\n",
    "utils/logger.py": "def print_log(*a, **k):\n    pass\n",
    "knn_cuda/__init__.py": "class KNN:\n    def __init__(self, *a, **k):\n        pass\n",
    "extensions/__init__.py": "",
    "extensions/chamfer_dist/__init__.py": "class ChamferDistanceL1:\n    def cuda(self):\n        return self\n"
    "class ChamferDistanceL2(ChamferDistanceL1):\n    pass\n",
}


def main(repo: str) -> None:
    scratch = tempfile.mkdtemp()
    for name, text in STUBS.items():
        os.makedirs(os.path.dirname(os.path.join(scratch, name)), exist_ok=True)
        with open(os.path.join(scratch, name), "w") as f:
            f.write(text)
    with (
        open(os.path.join(repo, "models", "Point_MAE.py")) as src,
        open(os.path.join(scratch, "models", "Point_MAE.py"), "w") as dst,
    ):
        dst.write(src.read())
    sys.path.insert(0, scratch)
    from models.Point_MAE import Encoder, Point_MAE

    from mae_zoo.nets.point_ops import chamfer_l2, group_points
    from mae_zoo.weights.official_pointmae import load_official_pointmae

    torch.manual_seed(0)
    tc = NS(
        mask_ratio=0.6,
        mask_type="rand",
        trans_dim=384,
        encoder_dims=384,
        depth=12,
        drop_path_rate=0.1,
        num_heads=6,
        decoder_depth=4,
        decoder_num_heads=6,
    )
    off = Point_MAE(NS(group_size=32, num_group=64, loss="cdl2", transformer_config=tc))
    print(
        "official parameters",
        sum(p.numel() for p in off.parameters()),
        "mini-PointNet",
        sum(p.numel() for p in Encoder(384).parameters()),
        "state entries",
        len(off.state_dict()),
    )
    for m in off.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    off.eval()
    ours = load_official_pointmae(off.state_dict()).model.eval()
    pts = torch.rand(4, 1024, 3) * 2 - 1
    neighborhood, center = group_points(pts, 64, 32)
    mask = torch.zeros(4, 64, dtype=torch.bool)
    for b in range(4):
        mask[b, torch.randperm(64)[:38]] = True
    off.group_divider.forward = lambda p: (neighborhood, center)
    off.MAE_encoder._mask_center_rand = lambda c, noaug=False: mask
    off.loss_func = chamfer_l2
    with torch.no_grad():
        x_vis, _ = off.MAE_encoder(neighborhood, center)
        loss_off = off(pts)
        out = ours((pts, torch.zeros(4)), mask=mask)
        enc = ours.encode(ours.tokenize(pts), mask).latent
    print("encoder max abs diff", (x_vis - enc).abs().max().item())
    print("loss official", loss_off.item(), "ours", out.loss.item())


if __name__ == "__main__":
    main(sys.argv[1])
