"""Weights in and out: HF directories, official MAE ``.pth`` files and timm exports.

Every test perturbs the weights away from MAE's structured init (zero biases, unit norms), so a
mapping that swapped or dropped a tensor cannot pass by accident, and compares outputs for the
same explicit mask.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

import mae_zoo
from mae_zoo.core.errors import ConfigError
from mae_zoo.masks import RandomMask
from mae_zoo.modalities.image import ImageMAE
from mae_zoo.objectives import MaskedMSE
from mae_zoo.weights.hf_vitmae import StateDictMismatchError, export_hf
from mae_zoo.weights.official_mae import infer_architecture, mae_zoo_to_official
from mae_zoo.weights.timm_export import export_timm, timm_spec

ROOT = Path(__file__).resolve().parents[1]
IMG, PATCH, CHANS = 32, 4, 3
L = (IMG // PATCH) ** 2
ENC = {"embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 4.0, "qkv_bias": True}
DEC = {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 4.0}
MASK = {"_target_": "mae_zoo.masks.RandomMask", "ratio": 0.75}
OPTIM = {"blr": 1.5e-4, "weight_decay": 0.05}


@torch.no_grad()
def perturb(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(1000 + seed)
    for p in module.parameters():
        if p.requires_grad:
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def make_model(seed: int = 0, norm_pix_loss: bool = True, **overrides) -> ImageMAE:
    torch.manual_seed(seed)
    kwargs = dict(
        encoder=dict(ENC),
        decoder=dict(DEC),
        mask=dict(MASK),
        optim=dict(OPTIM),
        img_size=IMG,
        in_chans=CHANS,
        patch_size=PATCH,
        objective=MaskedMSE.spec(norm_pix_loss=norm_pix_loss),
    )
    model = ImageMAE(**{**kwargs, **overrides})
    perturb(model, seed)
    return model.eval()


def inputs(seed: int, size: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, HF-style noise and the mask that noise gives (official argsort rule)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(size, CHANS, IMG, IMG, generator=gen)
    noise = torch.rand(size, L, generator=gen)
    return images, noise, RandomMask(0.75).from_noise(noise)


def assert_same_outputs(a: ImageMAE, b: ImageMAE, seed: int) -> None:
    images, _, mask = inputs(seed)
    with torch.no_grad():
        out_a, out_b = a(images, mask=mask), b(images, mask=mask)
    assert torch.equal(out_a.mask, out_b.mask)
    assert torch.equal(out_a.pred, out_b.pred)
    assert torch.equal(out_a.loss, out_b.loss)
    assert out_a.pred.abs().max() > 1e-2  # not trivially equal


# ------------------------------------------------------------------------------ official layout
# The official names, written out here independently of mae_zoo.weights.official_mae: the same
# names as ours, without the "encoder." prefix, and "decoder_" instead of "decoder." (blocks and
# norm); the decoder's own tensors keep their official names.
OURS_TO_OFFICIAL_TOP = {
    "encoder.cls_token": "cls_token",
    "encoder.pos_embed": "pos_embed",
    "encoder.patch_embed.proj.weight": "patch_embed.proj.weight",
    "encoder.patch_embed.proj.bias": "patch_embed.proj.bias",
    "encoder.norm.weight": "norm.weight",
    "encoder.norm.bias": "norm.bias",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_embed.weight": "decoder_embed.weight",
    "decoder.decoder_embed.bias": "decoder_embed.bias",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
    "decoder.norm.weight": "decoder_norm.weight",
    "decoder.norm.bias": "decoder_norm.bias",
    "decoder.decoder_pred.weight": "decoder_pred.weight",
    "decoder.decoder_pred.bias": "decoder_pred.bias",
}
OURS_TO_OFFICIAL_PREFIX = {"encoder.blocks.": "blocks.", "decoder.blocks.": "decoder_blocks."}


def official_state_dict(model: ImageMAE, encoder_only: bool = False) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in model.state_dict().items():
        if encoder_only and key.startswith("decoder."):
            continue
        if key in OURS_TO_OFFICIAL_TOP:
            out[OURS_TO_OFFICIAL_TOP[key]] = value.clone()
            continue
        prefix = next(p for p in OURS_TO_OFFICIAL_PREFIX if key.startswith(p))
        out[OURS_TO_OFFICIAL_PREFIX[prefix] + key[len(prefix) :]] = value.clone()
    return out


def finetuned_state_dict(model: ImageMAE, num_classes: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """models_vit.VisionTransformer(global_pool=True): encoder, fc_norm instead of norm, head."""
    gen = torch.Generator().manual_seed(seed)
    sd = official_state_dict(model, encoder_only=True)
    del sd["norm.weight"], sd["norm.bias"]
    dim = ENC["embed_dim"]
    sd["fc_norm.weight"] = 1 + 0.1 * torch.randn(dim, generator=gen)
    sd["fc_norm.bias"] = 0.1 * torch.randn(dim, generator=gen)
    sd["head.weight"] = torch.randn(num_classes, dim, generator=gen)
    sd["head.bias"] = torch.randn(num_classes, generator=gen)
    return sd


def official_args(**values) -> argparse.Namespace:
    """What main_pretrain.py / main_finetune.py store next to the weights."""
    return argparse.Namespace(**{"batch_size": 64, "blr": 1.5e-4, "output_dir": "./output_dir", **values})


def test_official_mapping_matches_the_independent_one() -> None:
    model = make_model()
    ours = mae_zoo_to_official(model.state_dict())
    ref = official_state_dict(model)
    assert set(ours) == set(ref) and all(torch.equal(ours[k], ref[k]) for k in ref)


def test_official_pretrain_pth_loads_with_weights_only(tmp_path: Path) -> None:
    model = make_model(norm_pix_loss=False)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "checkpoint-799.pth"
    torch.save(
        {
            "model": official_state_dict(model),
            "optimizer": sgd.state_dict(),
            "epoch": 799,
            "args": official_args(norm_pix_loss=False, mask_ratio=0.75),
        },
        path,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing to warn about: every choice was given or recorded
        loaded = mae_zoo.load(path, num_heads=4, decoder_num_heads=2)
    info = loaded.load_info
    assert (info.format, info.kind, info.not_in_file, info.extra) == ("official_mae", "pretrain", [], {})
    assert loaded.objective.norm_pix_loss is False  # from the file's args
    assert any("norm_pix_loss=False (from the checkpoint's args)" in c for c in info.choices)
    assert (loaded.grid, loaded.patch_size, loaded.encoder.blocks[0].attn.num_heads) == ((8, 8), PATCH, 4)
    assert_same_outputs(model, loaded, seed=1)

    # weights_only=True really is in force: an arbitrary pickled object is refused.
    evil = tmp_path / "evil.pth"
    torch.save({"model": official_state_dict(model), "payload": Payload()}, evil)
    with pytest.raises(ConfigError, match="cannot be loaded as a checkpoint.*Unsupported global"):
        mae_zoo.load(evil, num_heads=4, decoder_num_heads=2)


class Payload:
    """Stands for any non-tensor object that weights_only loading must refuse."""


def test_official_heads_inference() -> None:
    meta = lambda *shape: torch.empty(*shape, device="meta")  # noqa: E731 - shapes only
    sd = {
        "cls_token": meta(1, 1, 768),
        "pos_embed": meta(1, 197, 768),
        "patch_embed.proj.weight": meta(768, 3, 16, 16),
        "blocks.0.mlp.fc1.weight": meta(3072, 768),
        "blocks.0.attn.qkv.bias": meta(2304),
    }
    arch = infer_architecture(sd)
    assert arch.kwargs["encoder"]["num_heads"] == 12 and arch.kwargs["img_size"] == 224
    assert arch.kwargs["decoder"] == {
        "embed_dim": 512,
        "depth": 8,
        "num_heads": 16,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "norm_eps": 1e-6,
    }
    assert "encoder num_heads=12 (standard width 768)" in arch.choices
    arch = infer_architecture(sd, args=official_args(model="mae_vit_base_patch16"))
    assert "encoder num_heads=12 (model name 'mae_vit_base_patch16' in the checkpoint's args)" in arch.choices
    assert infer_architecture(sd, num_heads=6).kwargs["encoder"]["num_heads"] == 6
    with pytest.raises(ValueError, match="width 1024"):
        infer_architecture(sd, args=official_args(model="vit_large_patch16"))
    with pytest.raises(ConfigError, match="does not divide"):
        infer_architecture(sd, num_heads=7)
    narrow = {
        **sd,
        "cls_token": meta(1, 1, 96),
        "pos_embed": meta(1, 197, 96),
        "patch_embed.proj.weight": meta(96, 3, 16, 16),
        "blocks.0.mlp.fc1.weight": meta(384, 96),
    }
    with pytest.raises(ConfigError, match="pass num_heads"):
        infer_architecture(narrow)


def test_official_finetuned_pth_keeps_head_and_leaves_decoder_fresh(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    model = make_model(seed=2)
    sd = finetuned_state_dict(model)
    path = tmp_path / "mae_finetuned.pth"
    torch.save({"model": sd, "args": official_args(model="vit_custom", global_pool=True)}, path)
    with pytest.warns(UserWarning, match="fine-tuned") as record:
        loaded = mae_zoo.load(path, num_heads=4)
    assert "model.load_info.not_in_file" in str(record[0].message)
    info = loaded.load_info
    decoder_keys = sorted(k for k in loaded.state_dict() if k.startswith("decoder."))
    assert info.kind == "finetune"
    assert info.not_in_file == sorted([*decoder_keys, "encoder.norm.bias", "encoder.norm.weight"])
    assert sorted(info.extra) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert all(torch.equal(info.extra[k], sd[k]) for k in info.extra)
    # Encoder filled, decoder the official default shape (512 wide, 8 blocks, 16 heads), fresh.
    ours, src = loaded.state_dict(), model.state_dict()
    for key in src:
        if key.startswith("encoder.") and not key.startswith("encoder.norm."):
            assert torch.equal(ours[key], src[key]), key
    assert loaded.decoder.decoder_embed.out_features == 512 and len(loaded.decoder.blocks) == 8
    assert loaded.decoder.blocks[0].attn.num_heads == 16

    # The kept head works: our encoder blocks + the file's fc_norm/head give the logits of the
    # official fine-tuned architecture (timm ViT, global average pool, fc_norm), loaded directly.
    reference = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        img_size=IMG,
        patch_size=PATCH,
        embed_dim=64,
        depth=2,
        num_heads=4,
        global_pool="avg",
        num_classes=5,
    ).eval()
    reference.load_state_dict(sd, strict=True)
    images, _, _ = inputs(3)
    enc = loaded.encoder
    with torch.no_grad():
        x = enc.patch_embed(loaded.tokenize(images).inputs) + enc.pos_embed[:, 1:]
        x = torch.cat([(enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
        for block in enc.blocks:
            x = block(x)
        pooled = F.layer_norm(x[:, 1:].mean(1), (64,), info.extra["fc_norm.weight"], info.extra["fc_norm.bias"], 1e-6)
        logits = F.linear(pooled, info.extra["head.weight"], info.extra["head.bias"])
        torch.testing.assert_close(logits, reference(images), atol=1e-5, rtol=1e-5)


def test_official_encoder_only_pth(tmp_path: Path) -> None:
    model = make_model(seed=4)
    path = tmp_path / "mae_pretrain_vit.pth"
    torch.save({"model": official_state_dict(model, encoder_only=True)}, path)
    with pytest.warns(UserWarning, match="encoder-only"):
        loaded = mae_zoo.load(path, num_heads=4)
    assert loaded.load_info.kind == "encoder" and loaded.load_info.extra == {}
    assert loaded.load_info.not_in_file == sorted(k for k in loaded.state_dict() if k.startswith("decoder."))
    images = inputs(5)[0]
    torch.testing.assert_close(loaded.embed(images), model.embed(images), atol=0, rtol=0)


def test_official_wrong_or_extra_keys_raise_with_exact_lists(tmp_path: Path) -> None:
    model = make_model()
    good = official_state_dict(model)

    def load(sd: dict) -> None:
        torch.save({"model": sd}, tmp_path / "x.pth")
        mae_zoo.load(tmp_path / "x.pth", num_heads=4, decoder_num_heads=2)

    with pytest.raises(StateDictMismatchError) as err:
        load({**good, "blocks.0.ls1.gamma": torch.ones(64), "dist_token": torch.zeros(1, 1, 64)})
    assert err.value.unexpected == ["blocks.0.ls1.gamma", "dist_token"]
    with pytest.raises(StateDictMismatchError) as err:
        load({k: v for k, v in good.items() if k not in ("blocks.1.norm2.bias", "decoder_blocks.0.mlp.fc2.weight")})
    assert err.value.missing == ["decoder.blocks.0.mlp.fc2.weight", "encoder.blocks.1.norm2.bias"]
    assert err.value.unexpected == []
    with pytest.raises(StateDictMismatchError) as err:  # a partial decoder is not an encoder-only file
        load({k: v for k, v in good.items() if k != "decoder_norm.weight"})
    assert err.value.missing == ["decoder.norm.weight"]
    with pytest.raises(StateDictMismatchError) as err:
        load({**good, "mask_token": torch.zeros(1, 1, 16)})
    assert err.value.shape_mismatch == ["decoder.mask_token: got (1, 1, 16), expected (1, 1, 32)"]
    with pytest.raises(ValueError, match="not an mae_zoo checkpoint"):
        torch.save({"state": good}, tmp_path / "y.pth")
        mae_zoo.load(tmp_path / "y.pth")


# ------------------------------------------------------------------------------ Hugging Face
try:
    import transformers
except ImportError:  # pragma: no cover - a dev extra; CI has it
    transformers = None
needs_hf = pytest.mark.skipif(transformers is None, reason="transformers is not installed")


@needs_hf
def test_mae_zoo_to_hf_dir_and_back_is_identical(tmp_path: Path) -> None:
    model = make_model(seed=6)
    files = export_hf(model, tmp_path / "hf")
    assert "config.json" in files and any(f.endswith(".safetensors") for f in files)
    loaded = mae_zoo.load(tmp_path / "hf")
    assert loaded.load_info.format == "hf_vitmae" and loaded.load_info.not_in_file == []
    back, src = loaded.state_dict(), model.state_dict()
    assert set(back) == set(src) and all(torch.equal(back[k], src[k]) for k in src)
    assert loaded.hparams["encoder"]["num_heads"] == 4 and loaded.hparams["decoder"]["num_heads"] == 2
    assert_same_outputs(model, loaded, seed=7)


def _hf_model(seed: int, norm_pix_loss: bool = True) -> transformers.ViTMAEForPreTraining:
    torch.manual_seed(seed)
    config = transformers.ViTMAEConfig(
        image_size=IMG,
        patch_size=PATCH,
        num_channels=CHANS,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=96,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=128,
        layer_norm_eps=1e-6,
        mask_ratio=0.75,
        norm_pix_loss=norm_pix_loss,
    )
    hf = transformers.ViTMAEForPreTraining(config).eval()
    with torch.no_grad():
        # Built from a config, HF leaves these zero: set them explicitly (random, not sin-cos, so
        # that a loader keeping its own tables would be caught).
        for table in (hf.vit.embeddings.position_embeddings, hf.decoder.decoder_pos_embed, hf.decoder.mask_token):
            table.copy_(torch.randn_like(table))
    perturb(hf, seed)
    return hf


@needs_hf
@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_hf_save_pretrained_dir_loads_with_same_loss(tmp_path: Path, norm_pix_loss: bool) -> None:
    hf = _hf_model(8, norm_pix_loss)
    hf.save_pretrained(str(tmp_path / "hf"))
    loaded = mae_zoo.load(tmp_path / "hf")
    assert loaded.objective.norm_pix_loss is norm_pix_loss
    assert (loaded.encoder.blocks[0].attn.num_heads, loaded.decoder.blocks[0].attn.num_heads) == (3, 4)
    images, noise, mask = inputs(9)
    with torch.no_grad():
        ref = hf(pixel_values=images, noise=noise)
        out = loaded(images, mask=mask)
    assert torch.equal(ref.mask.bool(), out.mask)
    assert (ref.logits - out.pred).abs().max() <= 1e-5
    assert abs(ref.loss.item() - out.loss.item()) <= 1e-6 * abs(ref.loss.item())
    with pytest.raises(ConfigError, match="contradicts"):
        mae_zoo.load(tmp_path / "hf", num_heads=4)


@needs_hf
def test_hf_dir_wrong_or_extra_keys_raise(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    hf = _hf_model(10)
    hf.save_pretrained(str(tmp_path / "hf"))
    weights = tmp_path / "hf" / "model.safetensors"
    on_disk = load_file(str(weights))
    dropped = next(k for k in sorted(on_disk) if k.endswith("decoder_pred.bias"))

    save_file({**on_disk, "vit.embeddings.extra_token": torch.zeros(1, 1, 48)}, str(weights), metadata={"format": "pt"})
    with pytest.raises(StateDictMismatchError) as err:
        mae_zoo.load(tmp_path / "hf")
    assert "extra_token" in str(err.value) and len(err.value.unexpected) == 1

    save_file({k: v for k, v in on_disk.items() if k != dropped}, str(weights), metadata={"format": "pt"})
    with pytest.raises(StateDictMismatchError) as err:
        mae_zoo.load(tmp_path / "hf")
    assert err.value.missing == ["decoder.decoder_pred.bias"] and err.value.unexpected == []


# ------------------------------------------------------------------------------ timm
def test_timm_export_rebuilds_with_strict_load_and_same_features(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    model = make_model(seed=11)
    export_timm(model, tmp_path)
    spec = json.loads((tmp_path / "model.json").read_text())
    assert set(spec) == {"model_name", "model_args"} and spec["model_args"]["num_classes"] == 0
    vit = timm.create_model(spec["model_name"], pretrained=False, **spec["model_args"]).eval()
    from safetensors.torch import load_file

    result = vit.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert {m.eps for m in vit.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-6}
    images = inputs(12)[0]
    with torch.no_grad():
        theirs = vit.forward_features(images)
        ours = model.encoder(model.tokenize(images).inputs, mask=None).latent
    assert theirs.shape == ours.shape == (3, 1 + L, 64)
    assert (theirs - ours).abs().max() <= 1e-5
    with torch.no_grad():  # and the pooled (cls) feature timm's forward gives is our embed()
        torch.testing.assert_close(vit(images), model.embed(images), atol=1e-5, rtol=1e-5)


def test_timm_names_for_standard_sizes() -> None:
    model = ImageMAE(
        encoder={"embed_dim": 192, "depth": 12, "num_heads": 3},
        decoder=dict(DEC),
        mask=dict(MASK),
        optim=dict(OPTIM),
        img_size=32,
        patch_size=16,
    )
    spec = timm_spec(model)
    assert spec["model_name"] == "vit_tiny_patch16_224" and spec["model_args"]["img_size"] == 32
    assert timm_spec(make_model())["model_name"] == "vit_base_patch16_224"  # template + explicit sizes
    with pytest.raises(ValueError, match="eps"):
        timm_spec(make_model(encoder={**ENC, "norm_eps": 1e-5}))


# ------------------------------------------------------------------------------ CLI
def _mae_zoo_ckpt(tmp_path: Path, model: ImageMAE) -> Path:
    path = tmp_path / "model.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "mae_zoo": {"class": "mae_zoo.modalities.image.ImageMAE"},
        },
        path,
    )
    return path


def _export_cfg(run_dir: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("export", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.run_dir = str(run_dir)
    return cfg


@needs_hf
def test_export_function_hf_from_official_pth(tmp_path: Path) -> None:
    from mae_zoo.export import export

    model = make_model(seed=13)
    torch.save({"model": official_state_dict(model)}, tmp_path / "official.pth")
    cfg = _export_cfg(
        tmp_path / "run", f"ckpt={tmp_path / 'official.pth'}", "format=hf", "num_heads=4", "decoder_num_heads=2"
    )
    manifest = export(cfg)
    assert manifest["source_format"] == "official_mae" and manifest["not_in_source"] == []
    assert json.loads((tmp_path / "run" / "export.json").read_text())["format"] == "hf"
    assert_same_outputs(model, mae_zoo.load(tmp_path / "run"), seed=14)
    with pytest.raises(ConfigError, match="pass num_heads"):
        export(_export_cfg(tmp_path / "run2", f"ckpt={tmp_path / 'official.pth'}", "format=hf"))


def test_export_cli_timm(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    model = make_model(seed=15)
    ckpt = _mae_zoo_ckpt(tmp_path, model)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
    run = subprocess.run(
        [sys.executable, "-m", "mae_zoo.export", f"ckpt={ckpt}", "format=timm", f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    run_dir = Path(run.stdout.strip().splitlines()[-1])
    assert run_dir == (tmp_path / "out").resolve()
    assert {"model.safetensors", "model.json", "export.json", "config.yaml", "git_revision.txt"} <= {
        p.name for p in run_dir.iterdir()
    }
    from mae_zoo.weights.timm_export import load_timm

    vit = load_timm(run_dir)  # strict=True inside
    images = inputs(16)[0]
    with torch.no_grad():
        diff = vit.forward_features(images) - model.encoder(model.tokenize(images).inputs).latent
    assert diff.abs().max() <= 1e-5

    bad = subprocess.run(
        [sys.executable, "-m", "mae_zoo.export", f"ckpt={ckpt}", "format=onnx", f"hydra.run.dir={tmp_path / 'bad'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert bad.returncode == 2
    assert (
        bad.stderr.strip().splitlines()[-1]
        == "mae_zoo: configuration error: format=onnx is unknown; valid: ['timm', 'hf']"
    )
