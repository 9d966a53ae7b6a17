"""SimMIM on the shared image path: the coarse-cell random mask, the [MASK]-token encoder (hidden
patches never reach the blocks), the linear pixel head, SimMIM's L1 written on images, start-up errors,
the timm export and a smoke run through the CLI."""

from __future__ import annotations

import math

import pytest
import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Layout
from mae_zoo.masks import MaskConfigError, MaskLayoutError, SimMIMMask
from mae_zoo.modalities.image import ImageMAE, unpatchify
from mae_zoo.nets.vit import ViTEncoder
from mae_zoo.train import train

SIZES = {"img_size": 16, "in_chans": 3, "patch_size": 2, "optim": {"blr": 1e-3}}
ENCODER = {"embed_dim": 32, "depth": 2, "num_heads": 2}
SIMMIM = {"_target_": "mae_zoo.masks.SimMIMMask", "ratio": 0.6, "cell": 2}


def simmim(**encoder: object) -> ImageMAE:
    torch.manual_seed(0)
    return ImageMAE(
        encoder={**ENCODER, "kind": "masked", **encoder},
        decoder={"kind": "linear", "embed_dim": 16},
        **SIZES,
        mask=SIMMIM,
        objective={"_target_": "mae_zoo.objectives.MaskedL1"},
    )


def test_simmim_mask_hides_ceil_of_the_cells_each_a_whole_cell_of_tokens():
    layout = Layout("grid", ("h", "w"), (14, 14))  # 224 px / 16 px patches; 32 px cells = 2 x 2 tokens
    mask = SimMIMMask(0.6, 2)(layout, 64, torch.Generator().manual_seed(0))
    assert mask.sum(dim=1).tolist() == [math.ceil(49 * 0.6) * 4] * 64  # 30 of 49 cells, as the official count
    cells = mask.view(64, 7, 2, 7, 2)
    assert torch.equal(cells.all(dim=(2, 4)), cells.any(dim=(2, 4)))  # a cell is hidden whole or not at all
    assert not torch.equal(mask, SimMIMMask(0.6, 2)(layout, 64, torch.Generator().manual_seed(1)))
    with pytest.raises(MaskConfigError, match=r"mask.cell=3 does not divide the token grid 14x14"):
        SimMIMMask(0.6, 3).check(layout)
    with pytest.raises(MaskLayoutError, match="grid:t,h,w"):
        SimMIMMask(0.6, 2).check(Layout("grid", ("t", "h", "w"), (4, 4, 4)))


def test_mask_token_encoder_never_sees_the_hidden_patches_and_equals_vit_without_a_mask():
    model = simmim()
    images = torch.randn(2, 3, 16, 16)
    tokens = model.tokenize(images)
    mask = model.mask_generator(model.layout, 2, torch.Generator().manual_seed(0))
    scrambled = torch.where(mask[..., None], torch.randn_like(tokens.inputs), tokens.inputs)
    encoder = model.encoder
    torch.testing.assert_close(encoder(tokens.inputs, mask).latent, encoder(scrambled, mask).latent)
    # The substitution, written out: the hidden rows' embeddings become the [MASK] embedding.
    x = encoder.patch_embed(tokens.inputs)
    x = torch.where(mask[..., None], encoder.mask_token.expand_as(x), x) + encoder.pos_embed[:, 1:]
    x = torch.cat([(encoder.cls_token + encoder.pos_embed[:, :1]).expand(2, -1, -1), x], dim=1)
    torch.testing.assert_close(encoder(tokens.inputs, mask).latent, encoder.forward_blocks(x)[0])
    plain = ViTEncoder(encoder.patch_embed, encoder.pos_embed[0], 32, depth=2, num_heads=2)
    plain.load_state_dict({k: v for k, v in encoder.state_dict().items() if k != "mask_token"})
    torch.testing.assert_close(encoder(tokens.inputs).latent, plain(tokens.inputs).latent)


def test_simmim_loss_is_l1_over_the_hidden_pixels_divided_by_channels():
    """microsoft/SimMIM: (|x - x_rec| * mask).sum() / (mask.sum() + 1e-5) / in_chans, mask at pixel level."""
    model = simmim()
    images = torch.randn(2, 3, 16, 16)
    out = model(images, generator=torch.Generator().manual_seed(0))
    x_rec = unpatchify(out.pred, 2, model.grid, 3)
    pixel_mask = out.mask.view(2, 8, 8).repeat_interleave(2, 1).repeat_interleave(2, 2)[:, None].float()
    expected = ((images - x_rec).abs() * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / 3
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


def test_bad_encoder_decoder_pairs_fail_at_start_up():
    with pytest.raises(ConfigError, match="needs model.encoder.kind=masked"):
        ImageMAE(encoder={**ENCODER}, decoder={"kind": "linear", "embed_dim": 16}, **SIZES, mask=SIMMIM)
    with pytest.raises(ConfigError, match=r"model.encoder.kind must be one of \['dropping', 'masked'\]"):
        ImageMAE(encoder={**ENCODER, "kind": "sparse"}, decoder={"embed_dim": 16}, **SIZES, mask=SIMMIM)


def test_a_mask_token_encoder_exports_to_timm_without_its_mask_token():
    from mae_zoo.weights.timm_export import build_timm, timm_spec, timm_state_dict

    model = simmim()
    net = build_timm(timm_spec(model)).eval()
    net.load_state_dict(timm_state_dict(model))  # strict: the [MASK] embedding is left out
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(net.forward_features(images), model.encode(model.tokenize(images), None).latent)


def test_simmim_trains_through_the_cli(make_cfg):
    metrics = train(
        make_cfg(
            "mask=simmim",
            "mask.cell=1",
            "objective=masked_l1",
            "model.encoder.kind=masked",
            "model.decoder.kind=linear",
            "callbacks.online_probe.enabled=false",
            "logger=none",
        )
    )
    assert metrics["trainer/global_step"] == 4 and metrics["train/loss"] > 0
