"""mae_zoo.load reads the official Point-MAE pre-training checkpoint layout (names from models/Point_MAE.py)."""

import pytest
import torch

import mae_zoo
from mae_zoo.modalities.point import PointMAE

# 209 entries: the state-dict size of the official Point_MAE built with cfgs/pretrain.yaml (counted out of tree).
OFFICIAL_ENTRIES = 209


def official_state_dict(dim=384, depth=12, dec_depth=4, group_size=32, prefix="module.") -> dict[str, torch.Tensor]:
    """Keys and shapes as the official constructor makes them, written out by hand, random values."""
    g = torch.Generator().manual_seed(0)
    shapes: dict[str, tuple[int, ...]] = {"mask_token": (1, 1, dim)}

    def bn(name, c):
        shapes.update({f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,)})
        shapes.update({f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()})

    e = "MAE_encoder.encoder"
    shapes.update({f"{e}.first_conv.0.weight": (128, 3, 1), f"{e}.first_conv.0.bias": (128,)})
    bn(f"{e}.first_conv.1", 128)
    shapes.update({f"{e}.first_conv.3.weight": (256, 128, 1), f"{e}.first_conv.3.bias": (256,)})
    shapes.update({f"{e}.second_conv.0.weight": (512, 512, 1), f"{e}.second_conv.0.bias": (512,)})
    bn(f"{e}.second_conv.1", 512)
    shapes.update({f"{e}.second_conv.3.weight": (dim, 512, 1), f"{e}.second_conv.3.bias": (dim,)})
    for pe in ("MAE_encoder.pos_embed", "decoder_pos_embed"):
        shapes.update(
            {f"{pe}.0.weight": (128, 3), f"{pe}.0.bias": (128,), f"{pe}.2.weight": (dim, 128), f"{pe}.2.bias": (dim,)}
        )

    def block(name):
        for n in ("norm1", "norm2"):
            shapes.update({f"{name}.{n}.weight": (dim,), f"{name}.{n}.bias": (dim,)})
        shapes.update({f"{name}.attn.qkv.weight": (3 * dim, dim)})  # qkv_bias=False
        shapes.update({f"{name}.attn.proj.weight": (dim, dim), f"{name}.attn.proj.bias": (dim,)})
        shapes.update({f"{name}.mlp.fc1.weight": (4 * dim, dim), f"{name}.mlp.fc1.bias": (4 * dim,)})
        shapes.update({f"{name}.mlp.fc2.weight": (dim, 4 * dim), f"{name}.mlp.fc2.bias": (dim,)})

    for i in range(depth):
        block(f"MAE_encoder.blocks.blocks.{i}")
    for i in range(dec_depth):
        block(f"MAE_decoder.blocks.{i}")
    for n in ("MAE_encoder.norm", "MAE_decoder.norm"):
        shapes.update({f"{n}.weight": (dim,), f"{n}.bias": (dim,)})
    shapes.update({"increase_dim.0.weight": (3 * group_size, dim, 1), "increase_dim.0.bias": (3 * group_size,)})
    out = {}
    for k, s in shapes.items():
        t = torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g) * 0.02
        if k.endswith("running_var"):
            t = t.abs() + 0.5
        out[prefix + k] = t
    return out


def test_official_checkpoint_layout_loads(tmp_path):
    assert len(official_state_dict()) == OFFICIAL_ENTRIES  # the official pre-training size
    sd = official_state_dict(dim=128, depth=3, dec_depth=2, group_size=8)  # the same layout, smaller: CI time
    path = tmp_path / "pretrain.pth"
    torch.save({"base_model": sd, "epoch": 300}, path)
    with pytest.warns(UserWarning, match="official Point-MAE"):
        model = mae_zoo.load(path)
    assert isinstance(model, PointMAE) and model.load_info.format == "official_pointmae"
    assert len(model.encoder.blocks) == 3 and len(model.decoder.blocks) == 2 and model.group_size == 8
    pairs = {
        "encoder.blocks.2.attn.qkv.weight": "MAE_encoder.blocks.blocks.2.attn.qkv.weight",
        "encoder.encoder.second_conv.1.running_var": "MAE_encoder.encoder.second_conv.1.running_var",
        "decoder.mask_token": "mask_token",
        "decoder.pos_embed.2.weight": "decoder_pos_embed.2.weight",
        "decoder.blocks.1.mlp.fc2.bias": "MAE_decoder.blocks.1.mlp.fc2.bias",
        "decoder.increase_dim.0.weight": "increase_dim.0.weight",
    }
    ours = model.state_dict()
    for mine, theirs in pairs.items():
        assert torch.equal(ours[mine], sd["module." + theirs]), mine
    assert model.encoder.blocks[0].attn.num_heads == 2  # 128 / 64
    out = model((torch.rand(2, 256, 3), torch.zeros(2)), generator=torch.Generator().manual_seed(0))
    assert out.pred.shape == (2, 64, 24) and torch.isfinite(out.loss) and out.mask.sum(1).tolist() == [38, 38]


def test_a_wrong_layout_is_refused(tmp_path):
    sd = official_state_dict(dim=64, depth=1, dec_depth=1, group_size=8, prefix="")
    sd.pop("MAE_decoder.norm.weight")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save({"base_model": sd}, path)
    with pytest.raises(ValueError, match="unknown keys \\['extra.weight'\\]"):
        mae_zoo.load(path)
