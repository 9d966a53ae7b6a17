"""SparK: sparse convolution emulated on a dense timm ConvNet (oracle: the official emulation written out
layer by layer), the densify + UNet decoder path and SparK's loss, the timm export, start-up errors, the
LAMB step against its formula, and one smoke run of the preset."""

from __future__ import annotations

import copy
import json
import math

import pytest
import timm
import torch
import torch.nn as nn

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Tokens
from mae_zoo.masks import MaskConfigError
from mae_zoo.modalities.image import patchify
from mae_zoo.modalities.spark import SparK, export_timm_convnet, timm_convnet_spec
from mae_zoo.nets.sparse_cnn import SparseBatchNorm2d, SparseMask, sparsify
from mae_zoo.train import train

MICRO = {
    "name": "resnet18",
    "args": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8, "output_stride": 8},
}
RANDOM = {"_target_": "mae_zoo.masks.RandomMask", "ratio": 0.6}


def spark(encoder: dict = MICRO, ratio: int = 8, img_size: int = 32, norm: str = "bn", **kw: object) -> SparK:
    torch.manual_seed(0)
    return SparK(
        encoder=encoder,
        decoder={"width": 32},
        downsample_ratio=ratio,
        densify_norm=norm,
        img_size=img_size,
        in_chans=3,
        **{"mask": RANDOM, "optim": {"blr": 1e-3}, **kw},
    )


def up(active: torch.Tensor, size: int) -> torch.Tensor:
    """The official per-scale mask: the grid map repeated to a size x size map, as float."""
    r = size // active.shape[-1]
    return active.repeat_interleave(r, 2).repeat_interleave(r, 3).float()


def official_bn(bn: nn.BatchNorm2d, x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """SparK's sp_bn_forward: gather the visible positions into (N, C), BatchNorm1d, scatter into zeros."""
    bn1d = nn.BatchNorm1d(bn.num_features, eps=bn.eps, momentum=bn.momentum)
    bn1d.load_state_dict(bn.state_dict())
    bn1d.train(bn.training)
    rows = up(active, x.shape[-1])[:, 0].bool()
    bhwc = x.permute(0, 2, 3, 1)
    out = torch.zeros_like(bhwc)
    out[rows] = bn1d(bhwc[rows])
    object.__setattr__(bn, "official_bn1d", bn1d)  # not a submodule: read back by the test for its statistics
    return out.permute(0, 3, 1, 2)


def test_sparse_stack_equals_the_official_emulation_and_hides_nothing():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.BatchNorm2d(6),
        nn.AvgPool2d(2),
    )
    ref = copy.deepcopy(net)
    sparse = SparseMask()
    sparsify(net, sparse)
    assert isinstance(net[1], SparseBatchNorm2d) and net.state_dict().keys() == ref.state_dict().keys()
    seen: list[torch.Tensor] = []
    for layer in net:
        layer.register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(3, 3, 16, 16)
    active = torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(1)) > 0.5  # grid 2 x 2, 8 px cells
    active[:, :, 0, 0] = True
    with sparse.using(active):
        got = net(x * up(active, 16))  # SparK zeroes the hidden pixels before the network (SparK.encode)
    # The official emulation written out: mask after every conv/pool, BatchNorm on the visible set.
    y = ref[0](x * up(active, 16)) * up(active, 16)
    y = ref[2](official_bn(ref[1], y, active))
    y = ref[3](y) * up(active, 8)
    y = ref[4](y) * up(active, 4)
    y = official_bn(ref[5], y, active)
    expected = ref[6](y) * up(active, 2)
    torch.testing.assert_close(got, expected)
    for bn, bn_ref in ((net[1], ref[1]), (net[5], ref[5])):  # running statistics from the visible positions only
        torch.testing.assert_close(bn.running_mean, bn_ref.official_bn1d.running_mean)
        torch.testing.assert_close(bn.running_var, bn_ref.official_bn1d.running_var)
    for out in seen:  # every layer's output is exactly zero at hidden positions, at its own scale
        hidden = up(active, out.shape[-1]) == 0
        assert out.masked_select(hidden.expand_as(out)).abs().max() == 0
    assert sparse.active is None  # dense again afterwards: without a mask, the plain network
    ref.load_state_dict(net.state_dict())
    net.eval(), ref.eval()
    torch.testing.assert_close(net(x), ref(x))


def test_mask_upsampling_is_one_cell_per_grid_position_and_refuses_fractional_scales():
    sparse = SparseMask()
    active = torch.tensor([[[[True, False], [False, True]]]])
    with sparse.using(active):
        a = sparse.at(8, 8)
        assert a is not None and torch.equal(
            a[0, 0], torch.kron(active[0, 0].int(), torch.ones(4, 4, dtype=torch.int)).bool()
        )
        with pytest.raises(ValueError, match="not a whole multiple of the 2x2 mask grid"):
            sparse.at(5, 5)


def test_resnet_levels_are_zero_at_hidden_cells_and_blind_to_hidden_pixels():
    model = spark()
    images = torch.randn(2, 3, 32, 32)
    mask = model.mask_generator(model.layout, 2, torch.Generator().manual_seed(0))
    tokens = model.tokenize(images)
    encoded = model.encode(tokens, mask)
    assert [f.shape[-1] for f in encoded.features] == [8, 4, 4, 4]  # output stride 8: layer1 at 4, then 8 px
    for feature in encoded.features:
        hidden = up(model.active_map(mask), feature.shape[-1]) == 0
        assert feature.masked_select(hidden.expand_as(feature)).abs().max() == 0
    scrambled = torch.where(mask[..., None], torch.randn_like(tokens.inputs), tokens.inputs)
    again = model.encode(Tokens(scrambled, scrambled, model.layout), mask)
    for a, b in zip(encoded.features, again.features):
        torch.testing.assert_close(a, b)


def test_convnext_runs_sparsely_with_layernorm_densify():
    model = spark({"name": "convnext_atto", "args": {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}}, 32, 64, "ln")
    mask = model.mask_generator(model.layout, 2, torch.Generator().manual_seed(0))
    encoded = model.encode(model.tokenize(torch.randn(2, 3, 64, 64)), mask)
    for feature in encoded.features:  # the residual branch is zeroed before the sum, so the blocks stay sparse
        hidden = up(model.active_map(mask), feature.shape[-1]) == 0
        assert feature.masked_select(hidden.expand_as(feature)).abs().max() == 0
    assert list(model.level_stage.values()) == [0, 1, 2, 3] and len(model.decoder.blocks) == 5


def test_loss_is_sparks_per_patch_normalised_mse_on_hidden_cells():
    model = spark()
    images = torch.randn(2, 3, 32, 32)
    out = model(images, generator=torch.Generator().manual_seed(0))
    inp = patchify(images, 8)
    inp = (inp - inp.mean(-1, keepdim=True)) / (inp.var(-1, keepdim=True) + 1e-6) ** 0.5
    per_patch = ((out.pred - inp) ** 2).mean(dim=2)
    hidden = out.mask.float()
    torch.testing.assert_close(out.loss, (per_patch * hidden).sum() / hidden.sum())
    assert out.mask.sum(1).tolist() == [10, 10]  # 16 cells, 6 visible
    # Densify: hidden positions of the grid-scale input of the decoder are the projected mask token.
    assert list(model.level_stage.items()) == [(3, 0), (0, 1)] and len(model.decoder.blocks) == 3
    out.loss.backward()
    assert all(d.mask_token.grad is not None and d.mask_token.grad.abs().sum() > 0 for d in model.densify)


def test_export_loads_strictly_into_timm_and_equals_the_dense_encoder(tmp_path):
    from safetensors.torch import load_file

    model = spark().eval()
    files = export_timm_convnet(model, tmp_path)
    spec = timm_convnet_spec(model)
    net = timm.create_model(spec["model_name"], pretrained=False, **spec["model_args"]).eval()
    net.load_state_dict(load_file(str(files[0])), strict=True)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(net(images).mean(dim=(2, 3)), model.embed(images))


def test_start_up_errors_say_what_is_valid():
    fits = r"Masks that fit SparK: \['block', 'colored_noise', 'random'\]"
    with pytest.raises(MaskConfigError, match=r"SimMIMMask does not fit SparK: it counts its cells in ViT .*" + fits):
        spark(mask={"_target_": "mae_zoo.masks.SimMIMMask", "ratio": 0.6, "cell": 1})
    with pytest.raises(MaskConfigError, match=r"TubeMask does not fit SparK: it does not fit an image grid .*" + fits):
        spark(mask={"_target_": "mae_zoo.masks.TubeMask", "ratio": 0.6})
    with pytest.raises(ConfigError, match="data.image_size=28 is not a multiple of model.downsample_ratio=8"):
        spark(img_size=28)
    with pytest.raises(ConfigError, match=r"model.downsample_ratio=32, but resnet18 .* downsamples by 8"):
        spark(ratio=32, img_size=64)
    with pytest.raises(ConfigError, match=r"cannot run layer 'layer1.0.se' \(SEModule\)"):
        spark({"name": "seresnet18", "args": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}})


def test_lamb_step_matches_the_formula():
    from mae_zoo.core.optim import build_optimizer

    torch.manual_seed(0)
    w, b = torch.randn(4, 3, requires_grad=True), torch.randn(4, requires_grad=True)
    gw, gb = torch.randn(4, 3) * 4, torch.randn(4) * 4  # global norm > 5: clipped
    w.grad, b.grad = gw.clone(), gb.clone()
    w0, b0 = w.detach().clone(), b.detach().clone()
    lr, wd, (beta1, beta2), eps = 0.1, 0.04, (0.9, 0.95), 1e-6
    groups = [{"params": [w], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0}]
    build_optimizer("lamb", groups, lr, (beta1, beta2)).step()
    clip = max(1.0, math.sqrt(gw.pow(2).sum() + gb.pow(2).sum()) / 5.0)

    def update(p0: torch.Tensor, g: torch.Tensor, decay: float) -> torch.Tensor:
        g = g / clip
        m, v = (1 - beta1) * g / (1 - beta1), (1 - beta2) * g * g / (1 - beta2)  # bias-corrected first step
        u = m / (v.sqrt() + eps) + decay * p0
        trust = p0.norm() / u.norm() if decay else 1.0  # layer-wise adaptation only where decay applies
        return p0 - lr * trust * u

    torch.testing.assert_close(w.detach(), update(w0, gw, wd))
    torch.testing.assert_close(b.detach(), update(b0, gb, 0.0))


def test_spark_preset_smoke_runs_and_its_checkpoint_exports_to_timm(make_cfg, tmp_path):
    """experiment=spark (LAMB, mask 0.6, BatchNorm densify) on the micro net and 32 px shapes; then the CLI's
    export path: the checkpoint loads with mae_zoo.load and its ConvNet loads strictly into timm."""
    from safetensors.torch import load_file

    import mae_zoo
    from mae_zoo.export import export
    from tests.conftest import compose_cfg

    cfg = make_cfg(
        "experiment=spark",
        "debug=smoke",
        "data=shapes",
        "data.image_size=32",
        "data.batch_size=4",
        "data.num_train=16",
        "data.num_val=8",
        "model=spark_micro",
        "trainer=default",
        "trainer.devices=1",
        "trainer.precision=32-true",
        "callbacks.online_probe.enabled=false",
        "logger=none",
        "print_config=false",
        fast=False,
    )
    metrics = train(cfg)
    assert metrics["trainer/global_step"] == 4 and 0 < metrics["train/loss"] < 10
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert list((tmp_path / "run" / "pictures").glob("*.png"))  # reconstructions drawn
    model = mae_zoo.load(ckpt).eval()
    assert isinstance(model, SparK) and model.hparams["optim"]["name"] == "lamb"
    with pytest.raises(ConfigError, match="format=hf does not take SparK models"):
        export(compose_cfg([f"ckpt={ckpt}", "format=hf"], tmp_path / "hf", config_name="export"))
    export(compose_cfg([f"ckpt={ckpt}", "format=timm"], tmp_path / "timm", config_name="export"))
    spec = json.loads((tmp_path / "timm" / "model.json").read_text())
    net = timm.create_model(spec["model_name"], pretrained=False, **spec["model_args"]).eval()
    net.load_state_dict(load_file(str(tmp_path / "timm" / "model.safetensors")), strict=True)
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(net(images).mean(dim=(2, 3)), model.embed(images))
