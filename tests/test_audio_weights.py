"""mae_zoo.load reads the official Audio-MAE pre-training checkpoint layout (models_mae.py names), built
here from a model's weights: local (Swin) and global decoders, with the buffers old timm saved."""

import warnings

import pytest
import torch

import mae_zoo
from mae_zoo.modalities.audio import AudioMAE
from mae_zoo.weights.official_audiomae import is_official_audiomae

# models_mae.MaskedAutoencoderViT names for everything outside the blocks
OFFICIAL = {
    "encoder.cls_token": "cls_token",
    "encoder.pos_embed": "pos_embed",
    "encoder.patch_embed.proj.weight": "patch_embed.proj.weight",
    "encoder.patch_embed.proj.bias": "patch_embed.proj.bias",
    "encoder.norm.weight": "norm.weight",
    "encoder.norm.bias": "norm.bias",
    "decoder.decoder_embed.weight": "decoder_embed.weight",
    "decoder.decoder_embed.bias": "decoder_embed.bias",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_pos_embed": "decoder_pos_embed",
    "decoder.norm.weight": "decoder_norm.weight",
    "decoder.norm.bias": "decoder_norm.bias",
    "decoder.decoder_pred.weight": "decoder_pred.weight",
    "decoder.decoder_pred.bias": "decoder_pred.bias",
}


def official_state_dict(model: AudioMAE, with_buffers: bool) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in model.state_dict().items():
        if key in OFFICIAL:
            out[OFFICIAL[key]] = value.clone()
        elif key.startswith("encoder.blocks."):
            out[key[len("encoder.") :]] = value.clone()
        elif key.startswith("decoder.blocks."):
            out["decoder_" + key[len("decoder.") :]] = value.clone()
        else:
            raise AssertionError(key)
    if with_buffers:  # timm 0.3.2 (the official environment) saved the Swin buffers
        for name, buf in model.decoder.named_buffers():
            if name.startswith("blocks.") and buf is not None:
                out["decoder_" + name] = buf.clone()
    return out


def _model(mode: str) -> AudioMAE:
    torch.manual_seed(0)
    return AudioMAE(
        {"embed_dim": 64, "depth": 2, "num_heads": 4},
        {"embed_dim": 32, "depth": 2, "num_heads": 2},
        target_length=256,
        num_mel_bins=128,
        decoder_mode=mode,
        mask={"_target_": "mae_zoo.masks.RandomMask", "ratio": 0.8},
        optim={"blr": 1e-3},
    ).eval()


@pytest.mark.parametrize("mode", ["local", "global"])
def test_load_reads_the_official_audiomae_layout(mode, tmp_path):
    src = _model(mode)
    sd = official_state_dict(src, with_buffers=mode == "local")
    assert "decoder_blocks.1.attn.relative_position_bias_table" in sd or mode == "global"
    if mode == "local":
        assert "decoder_blocks.1.attn_mask" in sd and "decoder_blocks.0.attn.relative_position_index" in sd
    assert sd["pos_embed"].shape == (1, 1 + 16 * 8, 64) and sd["patch_embed.proj.weight"].shape == (64, 1, 16, 16)
    assert is_official_audiomae(sd)
    path = tmp_path / "pretrained.pth"
    torch.save({"model": sd, "args": {"norm_pix_loss": True, "mask_ratio": 0.8}}, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = mae_zoo.load(path, num_heads=4, decoder_num_heads=None if mode == "local" else 2)
    assert any("official Audio-MAE" in str(w.message) for w in caught)
    assert isinstance(model, AudioMAE) and model.decoder_mode == mode and model.layout.shape == (16, 8)
    assert model.load_info.format == "official_audiomae"
    for key, value in src.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    batch = torch.randn(2, 1, 256, 128)
    mask = src.mask_generator(src.layout, 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(batch, mask=mask).pred, src(batch, mask=mask).pred)


def test_an_image_mae_checkpoint_is_not_taken_for_audio():
    sd = {
        "patch_embed.proj.weight": torch.zeros(64, 3, 16, 16),
        "pos_embed": torch.zeros(1, 197, 64),
        "decoder_pred.weight": torch.zeros(768, 32),
    }
    assert not is_official_audiomae(sd)
    sd["patch_embed.proj.weight"] = torch.zeros(64, 1, 16, 16)  # one channel, but a square 14 x 14 grid
    assert not is_official_audiomae(sd)


def test_unknown_official_keys_are_refused(tmp_path):
    sd = official_state_dict(_model("local"), with_buffers=False)
    sd["head.weight"] = torch.zeros(2, 64)
    path = tmp_path / "odd.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(KeyError, match="head.weight"):
        mae_zoo.load(path, num_heads=4)


def test_export_writes_the_encoder_as_a_timm_vit_on_the_spectrogram_grid(tmp_path):
    from mae_zoo.export import export
    from mae_zoo.weights.timm_export import load_timm
    from tests.conftest import compose_cfg

    src = _model("local")
    path = tmp_path / "pretrained.pth"
    torch.save({"model": official_state_dict(src, with_buffers=False)}, path)
    out = tmp_path / "export"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest = export(compose_cfg([f"ckpt={path}", "format=timm", "num_heads=4"], out, config_name="export"))
    assert sorted(manifest["files"]) == ["model.json", "model.safetensors"]
    vit = load_timm(out).eval()
    assert tuple(vit.patch_embed.img_size) == (256, 128)
    spec = torch.randn(2, 1, 256, 128)
    with torch.no_grad():
        ours = src.encoder(src.tokenize(spec).inputs).latent
        theirs = vit.forward_features(spec)
    assert torch.allclose(ours, theirs, atol=1e-5)
