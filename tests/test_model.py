"""The shared data path: variable mask counts, masks from outside, embed, optimisation rules, load()."""

import math

import pytest
import torch

import mae_zoo
from mae_zoo.core.optim import WarmupCosine, param_groups, scaled_lr
from mae_zoo.core.types import MAEOutput
from mae_zoo.modalities.image import ImageMAE

ENC = {"embed_dim": 64, "depth": 2, "num_heads": 4}
DEC = {"embed_dim": 32, "depth": 2, "num_heads": 4}
OPTIM = {"blr": 1.5e-4, "weight_decay": 0.05}


def small_mae(mask=None, **kw):
    torch.manual_seed(0)
    return ImageMAE(
        ENC,
        DEC,
        mask=mask or {"_target_": "mae_zoo.masks.RandomMask", "ratio": 0.75},
        optim=OPTIM,
        img_size=32,
        patch_size=4,
        **kw,
    ).eval()


def test_forward_returns_loss_pred_mask_target():
    model = small_mae()
    out = model(torch.randn(3, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    assert isinstance(out, MAEOutput)
    assert out.pred.shape == out.target.shape == (3, 64, 48)
    assert out.mask.dtype == torch.bool and out.mask.sum(1).eq(48).all()
    out.loss.backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None
    assert model.encoder.pos_embed.grad is None  # fixed table


def test_variable_mask_counts_equal_per_sample_forward():
    """Padding the visible set and masking it in attention must equal running each sample alone."""
    model = small_mae()
    x = torch.randn(4, 3, 32, 32)
    scores = torch.rand(4, 64, generator=torch.Generator().manual_seed(1))
    mask = scores.argsort(1).argsort(1) < torch.tensor([[30], [38], [45], [52]])  # 30..52 hidden
    assert mask.sum(1).tolist() == [30, 38, 45, 52]
    batched = model(x, mask=mask)
    for i in range(4):
        alone = model(x[i : i + 1], mask=mask[i : i + 1])
        torch.testing.assert_close(batched.pred[i : i + 1], alone.pred, atol=2e-5, rtol=1e-4)


def test_mask_from_outside_is_used_verbatim():
    model = small_mae()
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, ::2] = True
    out = model(x, mask=mask)
    assert torch.equal(out.mask, mask)
    # visible tokens never influence the loss: changing their prediction target changes nothing
    with pytest.raises(ValueError, match="mask shape"):
        model(x, mask=mask[:, :10])


def test_embed_uses_every_token_and_pool_options():
    x = torch.randn(2, 3, 32, 32)
    cls = small_mae().embed(x)
    mean = small_mae(embed_pool="mean").embed(x)
    assert cls.shape == mean.shape == (2, 64)
    assert not torch.allclose(cls, mean)
    x2 = x.clone()
    x2[:, :, :4, :4] += 1.0  # any patch changes the features: nothing is masked
    assert not torch.allclose(small_mae().embed(x2), cls)


def test_no_weight_decay_on_norms_biases_tokens():
    model = small_mae()
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert "encoder.cls_token" in no_decay_names and "decoder.mask_token" in no_decay_names
    assert any(n.endswith("norm1.weight") for n in no_decay_names)
    assert all(not n.endswith(".bias") for n in decay_names)
    assert "encoder.blocks.0.attn.qkv.weight" in decay_names
    assert "encoder.pos_embed" not in decay_names | no_decay_names  # frozen
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_lr_scaling_and_schedule():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)
    sched = WarmupCosine(warmup_steps=10, total_steps=110, min_factor=0.0)
    assert sched(0) == 0.0 and sched(5) == pytest.approx(0.5) and sched(10) == pytest.approx(1.0)
    assert sched(60) == pytest.approx(0.5) and sched(110) == pytest.approx(0.0, abs=1e-12)
    assert WarmupCosine(0, 100, 0.1)(100) == pytest.approx(0.1)


def test_official_init():
    model = small_mae()
    assert model.encoder.cls_token.std().item() == pytest.approx(0.02, rel=0.6)
    w = model.encoder.patch_embed.proj.weight
    bound = math.sqrt(6 / (w.shape[0] + w[0].numel()))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.all(model.encoder.blocks[0].attn.qkv.bias == 0)


def test_patch_projection_equals_conv():
    model = small_mae()
    x = torch.randn(2, 3, 32, 32)
    conv = model.encoder.patch_embed.proj(x).flatten(2).transpose(1, 2)
    lin = model.encoder.patch_embed(model.tokenize(x).inputs)
    torch.testing.assert_close(conv, lin, atol=1e-5, rtol=1e-5)


def test_load_round_trip(tmp_path):
    model = small_mae()
    ckpt = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "mae_zoo": {"class": "mae_zoo.modalities.image.ImageMAE"},
    }
    torch.save(ckpt, tmp_path / "m.ckpt")
    loaded = mae_zoo.load(tmp_path / "m.ckpt")
    x = torch.randn(2, 3, 32, 32)
    mask = torch.rand(2, 64).argsort(1) < 48
    torch.testing.assert_close(loaded(x, mask=mask).pred, model(x, mask=mask).pred)
    with pytest.raises(ValueError, match="not an mae_zoo checkpoint"):
        torch.save({"state_dict": {}}, tmp_path / "x.ckpt")
        mae_zoo.load(tmp_path / "x.ckpt")
