"""CAE on the shared image path: the exact-count block mask, the regressor block against its formula
written out, the regressor seeing only visible patches, the stop-gradient of the alignment target,
the loss and its logged terms, start-up errors, the preset and a smoke run through the CLI."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Layout
from mae_zoo.masks import BlockMask
from mae_zoo.modalities.image import ImageMAE, unpatchify
from mae_zoo.nets.cae import CAEDecoder, RegressorBlock
from mae_zoo.train import train
from tests.conftest import compose_cfg

SIZES = {"img_size": 16, "in_chans": 3, "patch_size": 2, "optim": {"blr": 1e-3}}  # 8 x 8 tokens
ENCODER = {"embed_dim": 32, "depth": 2, "num_heads": 2}
# Width 16 != the encoder's 32: the official encoder-to-regressor Linear + LayerNorm is in the path.
CAE = {"kind": "cae", "embed_dim": 16, "depth": 1, "num_heads": 2, "regressor_depth": 2}
EXACT_BLOCK = {"_target_": "mae_zoo.masks.BlockMask", "ratio": 0.5, "min_block": 16, "exact": True}


def cae(**overrides: object) -> ImageMAE:
    torch.manual_seed(0)
    kwargs: dict = {"encoder": ENCODER, "decoder": CAE, **SIZES, "mask": EXACT_BLOCK, **overrides}
    return ImageMAE(**kwargs)


def test_exact_block_mask_hides_exactly_the_target_and_the_default_is_unchanged():
    layout = Layout("grid", ("h", "w"), (14, 14))
    mask = BlockMask(0.5, exact=True)(layout, 32, torch.Generator().manual_seed(0))
    assert mask.sum(dim=1).tolist() == [98] * 32  # CAE's num_mask_patches on 14 x 14
    loose = BlockMask(0.5)(layout, 32, torch.Generator().manual_seed(0))
    assert (loose.sum(dim=1) <= 98).all() and (loose.sum(dim=1) < 98).any()  # BEiT's count may stop short
    assert BlockMask(0.5, exact=True).exact_count and not BlockMask(0.5).exact_count


def test_regressor_block_matches_the_official_formula_written_out():
    torch.manual_seed(0)
    block = RegressorBlock(16, 2, layer_scale=0.1)
    with torch.no_grad():  # make the layer scales and norms non-trivial
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    q, kv = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    pos_q, pos_kv = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    a = block.cross_attn

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(2, x.shape[1], 2, 8).transpose(1, 2)

    qh = heads(F.linear(block.norm1_q(q + pos_q), a.q.weight, a.q.bias)) * 8**-0.5
    kh = heads(F.linear(block.norm1_k(kv + pos_kv), a.k.weight))
    vh = heads(F.linear(block.norm1_v(kv), a.v.weight, a.v.bias))
    attn = ((qh @ kh.transpose(-2, -1)).softmax(-1) @ vh).transpose(1, 2).reshape(2, 3, 16)
    x = block.norm2_cross(q + block.gamma_1_cross * a.proj(attn))
    expected = x + block.gamma_2_cross * block.mlp_cross(x)
    torch.testing.assert_close(block(q, kv, pos_q, pos_kv), expected, rtol=1e-5, atol=1e-5)


def test_predictions_of_hidden_patches_depend_only_on_the_visible_patches():
    model = cae()
    images = torch.randn(2, 3, 16, 16)
    tokens = model.tokenize(images)
    mask = model.mask_generator(model.layout, 2, torch.Generator().manual_seed(0))
    scrambled = torch.where(mask[..., None], torch.randn_like(tokens.inputs), tokens.inputs)
    decoder = model.decoder
    assert isinstance(decoder, CAEDecoder)
    latents, ids = decoder.regress(model.encoder(tokens.inputs, mask))
    latents_scrambled, _ = decoder.regress(model.encoder(scrambled, mask))
    assert latents.shape == (2, 32, 16) and torch.equal(ids.sort(dim=1).values, ids)
    assert torch.equal(torch.zeros(2, 64, dtype=torch.bool).scatter(1, ids, True), mask)
    torch.testing.assert_close(latents, latents_scrambled)
    out = model(images, mask=mask)
    torch.testing.assert_close(out.pred, model(unpatchify(scrambled, 2, model.grid, 3), mask=mask).pred)
    # The reconstruction is zero at visible positions and reads the predicted latents only.
    assert torch.equal(out.pred[~mask], torch.zeros_like(out.pred[~mask])) and out.pred[mask].abs().sum() > 0
    moved = torch.where(~mask[..., None], torch.randn_like(tokens.inputs), tokens.inputs)
    assert not torch.allclose(decoder.regress(model.encoder(moved, mask))[0], latents)  # visible ones do matter


def test_alignment_target_gives_no_gradient_through_the_target_branch():
    model = cae()
    images = torch.randn(2, 3, 16, 16)
    mask = model.mask_generator(model.layout, 2, torch.Generator().manual_seed(0))
    tokens = model.tokenize(images)
    decoder = model.decoder
    assert isinstance(decoder, CAEDecoder)
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        return [
            g if g is not None else torch.zeros_like(p)
            for p, g in zip(params, torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))
        ]

    out = model(images, mask=mask)
    from_model = grads(out.loss - model.objective(out.pred, tokens.target, mask)[0])  # the alignment term
    latents, _ = decoder.regress(model.encoder(tokens.inputs, mask))
    target = decoder.encoder_to_regressor(model.encoder(tokens.inputs, ~mask).tokens)
    stopped = grads(2.0 * F.mse_loss(latents, target.detach()))
    flowing = grads(2.0 * F.mse_loss(latents, target))
    for a, b in zip(from_model, stopped):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(stopped, flowing))  # the branch would matter


def test_loss_is_reconstruction_plus_twice_the_latent_mse_and_both_are_logged():
    model = cae()
    images = torch.randn(2, 3, 16, 16)
    mask = model.mask_generator(model.layout, 2, torch.Generator().manual_seed(1))
    out = model(images, mask=mask)
    decoder = model.decoder
    assert isinstance(decoder, CAEDecoder)
    tokens = model.tokenize(images)
    with torch.no_grad():
        latents, _ = decoder.regress(model.encoder(tokens.inputs, mask))
        target = decoder.encoder_to_regressor(model.encoder(tokens.inputs, ~mask).tokens)
        recon = model.objective(out.pred, tokens.target, mask)[0]
    torch.testing.assert_close(out.extras["loss_align"], 2.0 * F.mse_loss(latents, target))
    torch.testing.assert_close(out.extras["loss_recon"], recon)
    torch.testing.assert_close(out.loss.detach(), recon + out.extras["loss_align"])
    assert torch.equal(out.predicted, mask) and torch.equal(out.scored, mask)


def test_bad_combinations_fail_at_start_up():
    with pytest.raises(ConfigError, match="needs model.encoder.kind=dropping"):
        cae(encoder={**ENCODER, "kind": "masked"})
    with pytest.raises(ConfigError, match="mask=block mask.exact=true"):
        cae(mask={**EXACT_BLOCK, "exact": False})
    with pytest.raises(ConfigError, match="objective.positions must be 'hidden'"):
        cae(objective={"_target_": "mae_zoo.objectives.MaskedMSE", "positions": "visible"})
    with pytest.raises(ConfigError, match=r"model.decoder.kind one of \['cae', 'linear', 'mae'\]"):
        cae(decoder={**CAE, "kind": "cea"})


def test_preset_has_the_official_defaults():
    cfg = compose_cfg(["experiment=cae", "print_config=false"])
    decoder = cfg.model.decoder
    assert (decoder.kind, decoder.embed_dim, decoder.depth, decoder.regressor_depth) == ("cae", 768, 4, 4)
    assert (decoder.num_heads, decoder.align_weight, decoder.layer_scale) == (12, 2.0, 0.1)
    assert (cfg.mask.ratio, cfg.mask.exact, cfg.model.patch_size, cfg.data.image_size) == (0.5, True, 16, 224)
    batch = cfg.data.batch_size * cfg.trainer.devices
    assert batch == 2048 and cfg.optim.blr * batch / 256 == pytest.approx(1.5e-3)
    assert list(cfg.optim.betas) == [0.9, 0.999] and cfg.trainer.gradient_clip_val == 3.0


def test_cae_trains_through_the_cli_and_logs_its_terms(make_cfg):
    metrics = train(
        make_cfg(
            "model.decoder.kind=cae",
            "mask=block",
            "mask.ratio=0.5",
            "mask.exact=true",
            "callbacks.online_probe.enabled=false",
        )
    )
    assert metrics["trainer/global_step"] == 4 and metrics["train/loss_align"] > 0
    assert metrics["train/loss"] == pytest.approx(metrics["train/loss_recon"] + metrics["train/loss_align"], rel=1e-3)
