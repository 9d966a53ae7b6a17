"""Oracle: our ImageMAE against ``transformers.ViTMAEForPreTraining`` with the same weights and noise.

HF's ViTMAE is an independent port of the official MAE code, so agreeing with it (mask, per-patch
predictions, loss, patchify, sin-cos tables) checks our model end to end. Weights are perturbed
away from MAE's init (zero biases, unit LayerNorms) so a mapping that swapped e.g. ``norm1`` and
``norm2`` or dropped a bias could not pass by accident.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from mae_zoo.masks import RandomMask  # noqa: E402
from mae_zoo.modalities.image import ImageMAE, patchify  # noqa: E402
from mae_zoo.nets.pos_embed import sincos_2d  # noqa: E402
from mae_zoo.objectives import MaskedMSE  # noqa: E402
from mae_zoo.weights.hf_vitmae import (  # noqa: E402
    StateDictMismatchError,
    hf_config_from_imagemae,
    hf_to_mae_zoo,
    imagemae_kwargs_from_hf_config,
    load_hf_into_imagemae,
    load_imagemae_into_hf,
    load_state_dict_exact,
    mae_zoo_to_hf,
)

IMG, PATCH, CHANS, RATIO = 32, 4, 3, 0.75
GRID = IMG // PATCH
NUM_PATCHES = GRID * GRID
ENCODER = {"embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 4.0, "qkv_bias": True}
DECODER = {"embed_dim": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 4.0}
MASK = {"_target_": "mae_zoo.masks.RandomMask", "ratio": RATIO}
OPTIM = {"blr": 1.5e-4, "weight_decay": 0.05}


def make_ours(norm_pix_loss: bool, seed: int = 0) -> ImageMAE:
    torch.manual_seed(seed)
    model = ImageMAE(
        encoder=dict(ENCODER),
        decoder=dict(DECODER),
        mask=dict(MASK),
        optim=dict(OPTIM),
        img_size=IMG,
        in_chans=CHANS,
        patch_size=PATCH,
        objective=MaskedMSE.spec(norm_pix_loss=norm_pix_loss),
    )
    perturb_trainable(model, seed)
    return model.eval()


@torch.no_grad()
def perturb_trainable(module: torch.nn.Module, seed: int) -> None:
    """Move every trainable tensor off its structured init (zeros/ones) so mapping bugs show."""
    gen = torch.Generator().manual_seed(1000 + seed)
    for p in module.parameters():
        if p.requires_grad:
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def make_hf(config: transformers.ViTMAEConfig) -> transformers.ViTMAEForPreTraining:
    return transformers.ViTMAEForPreTraining(config).eval()


def batch(seed: int, size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(size, CHANS, IMG, IMG, generator=gen)
    noise = torch.rand(size, NUM_PATCHES, generator=gen)
    return images, noise


@torch.no_grad()
def compare(ours: ImageMAE, hf: torch.nn.Module, seed: int) -> tuple[float, float]:
    """Run both on the same images and noise; assert the oracle facts; return (max |dpred|, rel dloss)."""
    images, noise = batch(seed)
    mask = RandomMask(RATIO).from_noise(noise)
    out = ours(images, mask=mask)
    ref = hf(pixel_values=images, noise=noise)

    assert ref.mask.shape == out.mask.shape
    assert torch.equal(ref.mask.bool(), out.mask), "HF and our masks differ for the same noise"
    assert int(out.mask.sum()) == images.shape[0] * (NUM_PATCHES - int(NUM_PATCHES * (1 - RATIO)))

    assert ref.logits.shape == out.pred.shape
    pred_diff = (ref.logits - out.pred).abs().max().item()
    rel_loss = abs(ref.loss.item() - out.loss.item()) / abs(ref.loss.item())
    print(f"max |pred diff| = {pred_diff:.3e}, relative loss diff = {rel_loss:.3e}, loss = {out.loss.item():.6f}")
    assert pred_diff <= 1e-5, f"max |HF logits - our pred| = {pred_diff}"
    assert rel_loss <= 1e-6, f"loss {out.loss.item()} vs HF {ref.loss.item()}"
    # A degenerate model (all-zero output) would agree trivially; make sure it did not.
    assert out.pred.abs().max() > 1e-2 and out.loss.item() > 1e-3
    return pred_diff, rel_loss


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_ours_to_hf_same_mask_pred_and_loss(norm_pix_loss: bool) -> None:
    ours = make_ours(norm_pix_loss)
    config = hf_config_from_imagemae(ours)
    assert config.layer_norm_eps == 1e-6 and config.norm_pix_loss == norm_pix_loss
    assert (config.intermediate_size, config.decoder_intermediate_size) == (256, 128)
    hf = make_hf(config)
    load_imagemae_into_hf(hf, ours.state_dict())

    # The trap: HF built from a config has zero position tables; ours must have been copied in.
    ours_sd, hf_sd = ours.state_dict(), hf.state_dict()
    for ours_key, hf_key in [
        ("encoder.pos_embed", "vit.embeddings.position_embeddings"),
        ("decoder.decoder_pos_embed", "decoder.decoder_pos_embed"),
        ("decoder.mask_token", "decoder.mask_token"),
    ]:
        assert hf_sd[hf_key].abs().max() > 0.1, f"{hf_key} was not copied"
        assert torch.equal(hf_sd[hf_key], ours_sd[ours_key])

    compare(ours, hf, seed=1)
    compare(ours, hf, seed=2)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_hf_to_ours_same_loss(norm_pix_loss: bool) -> None:
    torch.manual_seed(3)
    config = transformers.ViTMAEConfig(
        image_size=IMG,
        patch_size=PATCH,
        num_channels=CHANS,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=4,
        decoder_intermediate_size=128,
        layer_norm_eps=1e-6,
        mask_ratio=RATIO,
        norm_pix_loss=norm_pix_loss,
    )
    hf = make_hf(config)
    with torch.no_grad():
        # Random (not sin-cos) tables: if the mapping dropped them, ours would keep its own and differ.
        for table in (hf.vit.embeddings.position_embeddings, hf.decoder.decoder_pos_embed, hf.decoder.mask_token):
            table.copy_(torch.randn_like(table))
    perturb_trainable(hf, seed=3)

    kwargs = imagemae_kwargs_from_hf_config(config)
    assert kwargs["mask"] == MASK and kwargs["objective"] == MaskedMSE.spec(norm_pix_loss=norm_pix_loss)
    ours = ImageMAE(optim=dict(OPTIM), **kwargs).eval()
    load_hf_into_imagemae(ours, hf.state_dict())
    compare(ours, hf, seed=4)


def test_state_dict_round_trip_is_exact() -> None:
    ours = make_ours(norm_pix_loss=True)
    sd = ours.state_dict()
    hf_sd = mae_zoo_to_hf(sd)
    hf = make_hf(hf_config_from_imagemae(ours))
    assert set(hf_sd) == set(hf.state_dict())
    back = hf_to_mae_zoo(hf_sd)
    assert set(back) == set(sd)
    for key, value in sd.items():
        assert torch.equal(back[key], value), key
    # q/k/v are the three row blocks of timm's fused qkv, in that order.
    qkv = sd["encoder.blocks.1.attn.qkv.weight"]
    assert torch.equal(hf_sd["vit.layers.1.attention.k_proj.weight"], qkv[64:128])


def test_mapping_and_loading_refuse_unknown_missing_and_misshapen_keys() -> None:
    ours = make_ours(norm_pix_loss=True)
    sd = ours.state_dict()
    with pytest.raises(StateDictMismatchError, match="encoder.blocks.0.ls1.gamma"):
        mae_zoo_to_hf({**sd, "encoder.blocks.0.ls1.gamma": torch.ones(64)})
    hf_sd = mae_zoo_to_hf(sd)
    with pytest.raises(StateDictMismatchError, match="v_proj"):
        hf_to_mae_zoo({k: v for k, v in hf_sd.items() if k != "vit.layers.0.attention.v_proj.weight"})

    target = make_ours(norm_pix_loss=True, seed=5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    partial = {k: v for k, v in sd.items() if k != "decoder.mask_token"}
    with pytest.raises(StateDictMismatchError, match="decoder.mask_token") as err:
        load_state_dict_exact(target, partial)
    assert err.value.missing == ["decoder.mask_token"]
    load_state_dict_exact(target, partial, missing=["decoder.mask_token"])  # named, so allowed
    assert torch.equal(target.state_dict()["decoder.mask_token"], before["decoder.mask_token"])

    target = make_ours(norm_pix_loss=True, seed=5)
    bad = {**sd, "decoder.decoder_pred.bias": torch.zeros(7)}
    with pytest.raises(StateDictMismatchError, match="decoder.decoder_pred.bias"):
        load_state_dict_exact(target, bad)
    # Nothing may be copied when the check fails.
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_patchify_matches_hf() -> None:
    ours = make_ours(norm_pix_loss=True)
    hf = make_hf(hf_config_from_imagemae(ours))
    images = torch.randn(2, CHANS, IMG, IMG, generator=torch.Generator().manual_seed(6))
    assert torch.equal(patchify(images, PATCH), hf.patchify(images))


def test_sincos_table_matches_hf() -> None:
    from transformers.models.vit_mae import modeling_vit_mae as hf_mae

    # HF's own initialiser (which applies its h/w half swap) on a fresh decoder.
    ours = make_ours(norm_pix_loss=True)
    hf = make_hf(hf_config_from_imagemae(ours))
    hf.decoder.initialize_weights(NUM_PATCHES)
    table = hf.decoder.decoder_pos_embed[0].detach()
    assert table.abs().max() > 0.5
    assert (table - sincos_2d(DECODER["embed_dim"], GRID, GRID, cls_token=True)).abs().max() <= 1e-6

    # The builder itself, on non-square grids so a row/column transposition cannot hide.
    for dim, (h, w) in [(32, (8, 8)), (64, (3, 5)), (16, (6, 2))]:
        built = hf_mae.build_2d_sinusoidal_position_embedding(h, w, embed_dim=dim, cls_token=True)
        half = dim // 2  # HF stores [h | w] halves and swaps them to MAE's [w | h] layout.
        built = torch.cat([built[..., half:], built[..., :half]], dim=-1)
        assert (built - sincos_2d(dim, h, w, cls_token=True)).abs().max() <= 1e-6, (dim, h, w)


def test_config_round_trip_and_refusals() -> None:
    fields = [
        "image_size",
        "patch_size",
        "num_channels",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "decoder_hidden_size",
        "decoder_num_hidden_layers",
        "decoder_num_attention_heads",
        "decoder_intermediate_size",
        "layer_norm_eps",
        "qkv_bias",
        "mask_ratio",
        "norm_pix_loss",
        "hidden_act",
    ]
    config = transformers.ViTMAEConfig(
        image_size=24,
        patch_size=6,
        num_channels=1,
        hidden_size=48,
        num_hidden_layers=1,
        num_attention_heads=3,
        intermediate_size=96,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
        layer_norm_eps=1e-6,
        mask_ratio=0.5,
        norm_pix_loss=True,
    )
    model = ImageMAE(optim=dict(OPTIM), **imagemae_kwargs_from_hf_config(config))
    back = hf_config_from_imagemae(model)
    assert {f: getattr(back, f) for f in fields} == {f: getattr(config, f) for f in fields}

    with pytest.raises(ValueError, match="hidden_act"):
        imagemae_kwargs_from_hf_config(transformers.ViTMAEConfig(hidden_act="gelu_new"))
    with pytest.raises(ValueError, match="square"):
        imagemae_kwargs_from_hf_config(transformers.ViTMAEConfig(image_size=(224, 160)))
    with pytest.raises(ValueError, match="eps"):
        mixed = ImageMAE(
            encoder=dict(ENCODER),
            decoder={**DECODER, "norm_eps": 1e-5},
            mask=dict(MASK),
            optim=dict(OPTIM),
            img_size=IMG,
            in_chans=CHANS,
            patch_size=PATCH,
        )
        hf_config_from_imagemae(mixed)
