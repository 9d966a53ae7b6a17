"""Point-MAE / Point-CMAE: the model against the official shapes and counts, masks, start-up errors,
smoke runs for each mask and for Point-CMAE, pictures and the point evaluators."""

import json

import pytest
import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Layout
from mae_zoo.masks import PointBlockMask, RandomMask
from mae_zoo.modalities.point import PointCMAE, PointMAE, render_points
from mae_zoo.nets.point import MiniPointNet
from mae_zoo.nets.point_ops import group_points
from mae_zoo.objectives import ChamferLoss
from mae_zoo.train import build, train
from tests.conftest import compose_cfg

TINY = [
    "modality=point",
    "model=pointmae_micro",
    "debug=smoke",
    "print_config=false",
    "logger=csv",
    "data.num_points=256",
    "data.num_train=64",
    "data.num_val=32",
    "data.batch_size=8",
    "callbacks.online_probe=null",
]
MICRO = dict(
    encoder={"embed_dim": 32, "depth": 1, "num_heads": 2, "pointnet_widths": [16, 32, 64]},
    decoder={"embed_dim": 32, "depth": 1, "num_heads": 2},
    num_groups=8,
    group_size=4,
    mask={"_target_": "mae_zoo.masks.RandomMask", "ratio": 0.6},
    optim={"lr": 1e-3, "weight_decay": 0.05},
)

# Counted on the official models/Point_MAE.py (Pang-Yatian/Point-MAE), built out of tree with cfgs/pretrain.yaml
# (trans_dim 384, depth 12, heads 6, decoder depth 4, 64 groups of 32; knn_cuda and the Chamfer extension stubbed).
OFFICIAL_ENCODER_EMBED = 494_464  # MaskTransformer.encoder (the mini-PointNet, BN included)
OFFICIAL_POINT_MAE = 29_006_432  # Point_MAE, every parameter


def _official_size_model() -> PointMAE:
    return PointMAE(
        encoder={"embed_dim": 384, "depth": 12, "num_heads": 6, "drop_path": 0.1},
        decoder={"embed_dim": 384, "depth": 4, "num_heads": 6, "drop_path": 0.1},
        mask={"_target_": "mae_zoo.masks.RandomMask", "ratio": 0.6},
        optim={"lr": 1e-3, "weight_decay": 0.05},
    )


def test_parameter_counts_match_the_official_constructor():
    assert sum(p.numel() for p in MiniPointNet(384).parameters()) == OFFICIAL_ENCODER_EMBED
    model = _official_size_model()
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_POINT_MAE
    names = dict(model.named_parameters())
    assert (
        names["encoder.blocks.0.attn.qkv.weight"].shape == (1152, 384) and "encoder.blocks.0.attn.qkv.bias" not in names
    )
    assert names["decoder.increase_dim.0.weight"].shape == (96, 384, 1)
    assert names["encoder.pos_embed.0.weight"].shape == (128, 3) and names["decoder.pos_embed.2.weight"].shape == (
        384,
        128,
    )
    assert len(model.decoder.blocks) == 4 and model.encoder.num_prefix == 0


def test_forward_shapes_loss_and_position_mlp_before_every_block():
    model = PointMAE(**MICRO).eval()
    points = torch.rand(3, 64, 3)
    out = model((points, torch.zeros(3)), generator=torch.Generator().manual_seed(0))
    assert out.pred.shape == (3, 8, 12) and out.mask.sum(1).tolist() == [4, 4, 4]  # int(0.6 * 8) hidden
    groups, centers = group_points(points, 8, 4)
    assert torch.allclose(out.target, groups.flatten(2))
    pred = out.pred[out.mask].unflatten(-1, (4, 3))
    expected = ChamferLoss().per_group(pred.flatten(1), groups[out.mask].flatten(1)).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # the centre MLP enters every block: zeroing the block-1 input changes nothing only if it is re-added
    calls = []
    hook = model.encoder.blocks[0].register_forward_pre_hook(lambda m, args: calls.append(args[0].clone()))
    model.embed((points, torch.zeros(3)))
    hook.remove()
    tokens = model.encoder.encoder(groups)
    assert torch.allclose(calls[0], tokens + model.encoder.pos_embed(centers), atol=1e-5)


def test_visible_tokens_only_change_with_visible_groups():
    """Token dropping: the encoder output must not depend on hidden groups' points (BatchNorm in eval)."""
    model = PointMAE(**MICRO).eval()
    points = torch.rand(1, 64, 3)
    tokens = model.tokenize(points)
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, :5] = True
    a = model.encode(tokens, mask).latent
    changed = tokens.inputs.clone()
    changed[0, :5] += 0.5
    tokens.inputs.copy_(changed)
    b = model.encode(tokens, mask).latent
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("cls", [RandomMask, PointBlockMask])
def test_point_masks_exact_count_and_seeded(cls):
    centers = torch.rand(4, 64, 3)
    layout = Layout("points", shape=(64,), extra={"centers": centers})
    gen = cls(ratio=0.6)
    gen.check(layout)
    a = gen(layout, 4, torch.Generator().manual_seed(1))
    b = gen(layout, 4, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and (a.sum(1) == 38).all()  # int(0.6 * 64)


def test_point_block_hides_the_nearest_centres():
    centers = torch.rand(3, 32, 3, generator=torch.Generator().manual_seed(2))
    mask = PointBlockMask(0.5)(Layout("points", shape=(32,), extra={"centers": centers}), 3, torch.Generator())
    for b in range(3):
        hidden, shown = centers[b][mask[b]], centers[b][~mask[b]]
        # some hidden centre is the seed: every hidden centre is nearer to it than every visible one
        ok = False
        for seed in hidden:
            d_hidden = (hidden - seed).norm(dim=1).max()
            d_shown = (shown - seed).norm(dim=1).min()
            ok |= bool(d_hidden <= d_shown)
        assert ok


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["modality=point", "mask=block"], "Masks that fit this modality: ['point_block', 'random']"),
        (["modality=point", "mask=tube"], "Masks that fit this modality: ['point_block', 'random']"),
        (
            ["mask=point_block"],
            "Masks that fit this modality: ['block', 'colored_noise', 'mixing', 'random', 'simmim']",
        ),
        (["modality=point", "model=pointmae_micro", "model.decoder.embed_dim=32"], "decoder has the encoder width"),
        (["modality=point", "data=mesh_folder", "data.root=null"], "reads files: set data.root"),
    ],
)
def test_bad_pairs_fail_at_start_up(overrides, message, tmp_path):
    cfg = compose_cfg([*overrides, "print_config=false"], tmp_path)
    with pytest.raises(ConfigError) as info:
        build(cfg)
    assert message in str(info.value)


@pytest.mark.parametrize("mask", ["random", "point_block"])
def test_smoke_run_each_mask(mask, tmp_path):
    cfg = compose_cfg([*TINY, f"mask={mask}"], tmp_path / "run")
    metrics = train(cfg)
    assert metrics["trainer/global_step"] == 4 and 0 < metrics["train/loss"] < 10
    assert list((tmp_path / "run" / "pictures").glob("recon_*.png"))


def test_point_cmae_smoke_and_contrastive_term(tmp_path):
    tiny = [o for o in TINY if not o.startswith(("callbacks.", "logger="))]
    overrides = [*tiny, "experiment=point_cmae", "model=pointmae_micro", "data.num_points=256"]
    cfg = compose_cfg([*overrides, "callbacks=none", "logger=none"], tmp_path / "r")
    metrics = train(cfg)
    assert metrics["trainer/global_step"] == 4
    assert {"train/loss_recon1", "train/loss_recon2", "train/loss_contrast"} <= set(metrics)


def test_point_cmae_contrast_matrix_vs_matched():
    model = PointCMAE(**MICRO, contrast="matrix")
    h1, h2 = torch.randn(2, 8, 32), torch.randn(2, 8, 32)
    both = torch.zeros(2, 8, dtype=torch.bool)
    both[0, 1] = both[1, 3] = True
    z1, z2 = torch.nn.functional.normalize(h1, dim=-1), torch.nn.functional.normalize(h2, dim=-1)
    full = torch.stack([1 - z1[0, 1] @ z2[0].T, 1 - z1[1, 3] @ z2[1].T]).mean()  # every column of the co-hidden rows
    assert model.contrastive(h1, h2, both).item() == pytest.approx(full.item(), rel=1e-5)
    model.contrast = "matched"
    same = torch.stack([1 - z1[0, 1] @ z2[0, 1], 1 - z1[1, 3] @ z2[1, 3]]).mean()
    assert model.contrastive(h1, h2, both).item() == pytest.approx(same.item(), rel=1e-5)
    # two masks, one loss: the output has both branches' terms and the loss combines them
    out = model((torch.rand(2, 64, 3), torch.zeros(2)), generator=torch.Generator().manual_seed(0))
    rec = 1000 * (out.extras["loss_recon1"] + out.extras["loss_recon2"]) + out.extras["loss_contrast"]
    assert out.loss.item() == pytest.approx(rec.item(), rel=1e-5)


def test_render_points_draws_nearest_on_top():
    from mae_zoo.modalities.point import view_rotation

    # two points on the viewing axis: both land on the centre pixel, the nearer (red) one must win it
    q = torch.tensor([[0.0, -0.5, 0.0], [0.0, 0.5, 0.0]])  # view coordinates: y is depth, smaller is nearer
    points = q @ view_rotation()
    for order in ([0, 1], [1, 0]):
        colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])[order]
        img = render_points(points[order], colours, 33, dot=1)
        assert img.shape == (3, 33, 33)
        centre = img[:, 16, 16]
        assert centre[0] > 0.5 and centre[2] == 0  # red, shaded, not blue
        assert (img < 1).any(dim=0).sum() == 1  # one pixel drawn, the rest white


def test_svm_and_fewshot_on_a_point_checkpoint(tmp_path):
    from mae_zoo.eval import evaluate

    run = tmp_path / "run"
    train(compose_cfg([*TINY, "callbacks.model_checkpoint.every_n_train_steps=4"], run))
    ckpt = run / "checkpoints" / "last.ckpt"
    for ev, features in (("linear_svm", "embed"), ("fewshot", "d2")):  # both protocols, both feature kinds
        cfg = compose_cfg(
            [f"ckpt={ckpt}", f"eval={ev}", f"eval.features={features}", "print_config=false"]
            + (["eval.way=3", "eval.shot=2", "eval.queries=5", "eval.trials=3"] if ev == "fewshot" else []),
            tmp_path / f"{ev}_{features}",
            config_name="eval",
        )
        metrics = evaluate(cfg)
        key = "eval_svm/top1" if ev == "linear_svm" else "eval_fewshot/top1_mean"
        assert 0 <= metrics[key] <= 100
    assert json.loads((tmp_path / "fewshot_d2" / "metrics.json").read_text())["eval_fewshot/features"] == "d2"
    cfg = compose_cfg(
        [f"ckpt={ckpt}", "eval=point_finetune", "eval.epochs=1", "eval.warmup_epochs=0", "debug=smoke"],
        tmp_path / "ft",
        config_name="eval",
    )
    metrics = evaluate(cfg)
    assert metrics["eval_finetune/mode"] == "point" and metrics["eval_finetune/steps"] >= 1
