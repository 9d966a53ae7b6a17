"""Same seeds, same inputs: loss, pred and gradient norms of image MAE, VideoMAE V1/V2 and GraphMAE."""

import inspect
import json

import torch
from torch_geometric.data import Data

from mae_zoo.modalities.graph import GraphMAE
from mae_zoo.modalities.image import ImageMAE
from mae_zoo.modalities.video import VideoMAE

out = {}
OPT = {"blr": 1e-3, "weight_decay": 0.05}
torch.manual_seed(0)
kw = dict(
    encoder={"embed_dim": 64, "depth": 2, "num_heads": 4},
    decoder={"embed_dim": 32, "depth": 2, "num_heads": 4},
    mask={"_target_": "mae_zoo.masks.RandomMask", "ratio": 0.75},
    optim=OPT,
    img_size=16,
    in_chans=3,
    patch_size=4,
    pixel_mean=[0.5, 0.4, 0.3],
    pixel_std=[0.2, 0.25, 0.3],
)
m = ImageMAE(**kw)
x = torch.randn(4, 3, 16, 16)
o = m(x, generator=torch.Generator().manual_seed(1))
o.loss.backward()
out["image"] = [
    o.loss.item(),
    o.pred.sum().item(),
    sum(p.grad.norm().item() for p in m.parameters() if p.grad is not None),
    m.visualize(x, torch.Generator().manual_seed(2)).sum().item(),
]
for name, dm in (
    ("video_v1", None),
    ("video_v2", {"_target_": "mae_zoo.masks.running_cell.RunningCellMask", "ratio": 0.5}),
):
    torch.manual_seed(0)
    m = VideoMAE(
        encoder={"embed_dim": 64, "depth": 2, "num_heads": 4},
        decoder={"embed_dim": 32, "depth": 2, "num_heads": 4},
        mask={"_target_": "mae_zoo.masks.TubeMask", "ratio": 0.75},
        optim=OPT,
        decoder_mask=dm,
        num_frames=4,
        img_size=16,
        in_chans=3,
        patch_size=4,
        tubelet_size=2,
        pixel_mean=[0.485, 0.456, 0.406],
        pixel_std=[0.229, 0.224, 0.225],
    )
    v = torch.randn(2, 3, 4, 16, 16)
    o = m(v, generator=torch.Generator().manual_seed(3))
    o.loss.backward()
    out[name] = [
        o.loss.item(),
        o.pred.sum().item(),
        sum(p.grad.norm().item() for p in m.parameters() if p.grad is not None),
        m.visualize(v, torch.Generator().manual_seed(2)).sum().item(),
    ]
torch.manual_seed(0)
gkw = dict(
    encoder={"kind": "gat", "hidden": 32, "layers": 2, "heads": 2, "feat_drop": 0.0, "attn_drop": 0.0},
    decoder={"kind": "gat", "heads": 1},
    mask={"_target_": "mae_zoo.masks.node.NodeMask", "ratio": 0.5, "replace_rate": 0.2, "drop_edge_rate": 0.2},
    optim=OPT,
    in_dim=12,
)
if "alpha" in inspect.signature(GraphMAE.__init__).parameters:  # before: the SCE exponent was a module argument
    gkw["alpha"] = 3.0
else:
    gkw["objective"] = {"_target_": "mae_zoo.objectives.ScaledCosineError", "alpha": 3.0}
m = GraphMAE(**gkw)
n = 40
g = Data(x=torch.rand(n, 12), edge_index=torch.randint(0, n, (2, 160)))
o = m(g, generator=torch.Generator().manual_seed(4))
o.loss.backward()
out["graph"] = [
    o.loss.item(),
    o.pred.sum().item(),
    sum(p.grad.norm().item() for p in m.parameters() if p.grad is not None),
    m.embed(g).sum().item(),
]
print(json.dumps(out))
