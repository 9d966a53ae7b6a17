"""The shared step contract: encoders that substitute a [MASK] token instead of dropping tokens,
variable mask counts, predicted vs scored positions as data, the target hook, teachers, objectives
from config and intermediate block features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
import torch.nn as nn

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.module import MaskedAutoencoder
from mae_zoo.core.types import Decoded, Encoded, Layout, Masks, Tokens
from mae_zoo.evaluation.knn import KNNEvaluator
from mae_zoo.modalities.image import ImageMAE
from mae_zoo.objectives import MaskedMSE
from mae_zoo.teachers import Teacher

RANDOM = {"_target_": "mae_zoo.masks.RandomMask", "ratio": 0.5}
OPTIM = {"blr": 1e-3, "weight_decay": 0.0}


class MaskTokenEncoder(nn.Module):
    """Sees every token; hidden ones are replaced by a learnable [MASK] embedding."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.mix = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None, keep: Sequence[int] = ()) -> Encoded:
        if mask is not None:
            tokens = torch.where(mask[..., None], self.mask_token.expand_as(tokens), tokens)
        x = tokens + tokens.mean(dim=1, keepdim=True)  # tokens exchange information, like message passing
        return Encoded(self.mix(x))


class ToyNodes(MaskedAutoencoder):
    """A substituting encoder and a re-masking decoder, through the public hooks only."""

    def __init__(self, dim: int = 8, **shared: Any) -> None:
        super().__init__(**shared)
        self.set_layout(Layout("points", (), (12,)))
        self.encoder, self.decoder = MaskTokenEncoder(dim), nn.Linear(dim, dim, bias=False)

    @classmethod
    def default_objective(cls, hparams: Any) -> dict:
        return MaskedMSE.spec(norm_pix_loss=False)

    def tokenize(self, batch: Any) -> Tokens:
        x = self.batch_inputs(batch)
        return Tokens(inputs=x, target=x, layout=self.layout)

    def decode(self, encoded: Encoded, tokens: Tokens, masks: Masks, keep: Sequence[int] = ()) -> Decoded:
        return Decoded(self.decoder(encoded.latent.masked_fill(masks.hidden[..., None], 0.0)))


def test_mask_substituting_encoder_through_the_shared_forward():
    model = ToyNodes(mask=RANDOM, optim=OPTIM)
    x = torch.randn(3, 12, 8)
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert out.mask.sum(1).eq(6).all() and out.pred.shape == (3, 12, 8)
    assert torch.equal(out.scored, out.mask) and torch.equal(out.predicted, out.mask)  # MAE's default
    # hidden inputs cannot leak: changing them leaves the prediction unchanged
    x2 = torch.where(out.mask[..., None], torch.randn_like(x), x)
    torch.testing.assert_close(model(x2, mask=out.mask).pred, out.pred)
    # a variable count per sample is fine for a substituting encoder
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[0, :2], mask[1, :7], mask[2, :11] = True, True, True
    assert model(x, mask=mask).loss.isfinite()
    out.loss.backward()
    assert model.encoder.mask_token.grad is not None and model.embed(x).shape == (3, 8)
    assert model.embed_tokens(x).shape == (3, 12, 8) and model.visualize(x) is None


@pytest.mark.parametrize("positions", ["hidden", "visible", "all"])
def test_scored_positions_come_from_the_objective_config(positions: str) -> None:
    model = ToyNodes(mask=RANDOM, optim=OPTIM, objective=MaskedMSE.spec(norm_pix_loss=False, positions=positions))
    x = torch.randn(2, 12, 8)
    out = model(x, generator=torch.Generator().manual_seed(1))
    expected = {"hidden": out.mask, "visible": ~out.mask, "all": torch.ones_like(out.mask)}[positions]
    assert torch.equal(out.scored, expected)
    per_token = (out.pred - x).pow(2).mean(-1)
    torch.testing.assert_close(out.loss, per_token[expected].mean())


def test_a_decoder_mask_narrows_what_is_predicted_and_scored():
    model = ToyNodes(mask=RANDOM, optim=OPTIM)
    x = torch.randn(2, 12, 8)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[:, :6] = True
    not_predicted = torch.zeros(2, 12, dtype=torch.bool)
    not_predicted[:, ::2] = True
    out = model(x, mask=mask, decoder_mask=not_predicted)
    assert torch.equal(out.predicted, ~not_predicted) and torch.equal(out.scored, mask & ~not_predicted)
    with pytest.raises(ValueError, match="decoder_mask shape"):
        model(x, mask=mask, decoder_mask=not_predicted[:, :5])


def test_bad_positions_and_objectives_fail_at_start_up():
    with pytest.raises(ConfigError, match=r"positions must be one of \['hidden', 'visible', 'all'\]"):
        MaskedMSE(positions="masked")
    with pytest.raises(ConfigError, match="must build an mae_zoo.objectives.Objective"):
        ToyNodes(mask=RANDOM, optim=OPTIM, objective={"_target_": "torch.nn.MSELoss"})


class ShiftTeacher(Teacher):
    """A frozen 'network' whose features are the tokens shifted by a learnable-looking constant."""

    def __init__(self, shift: float = 3.0) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.tensor(shift))

    def forward(self, batch: Any, tokens: Tokens) -> torch.Tensor:
        return tokens.target + self.shift


def test_a_teacher_replaces_the_target_and_stays_frozen():
    teacher = {"_target_": f"{__name__}.ShiftTeacher", "shift": 3.0}
    plain = ToyNodes(mask=RANDOM, optim=OPTIM)
    taught = ToyNodes(mask=RANDOM, optim=OPTIM, teacher=teacher)
    taught.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 12, 8)
    a = plain(x, generator=torch.Generator().manual_seed(0))
    b = taught(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(b.target, x + 3.0)
    assert not torch.allclose(a.loss, b.loss)
    taught.train()
    assert not taught.teacher.training and not taught.teacher.shift.requires_grad
    b.loss.backward()
    assert taught.teacher.shift.grad is None


class FeatureTarget(ToyNodes):
    """A feature target through the ``target`` hook: the tokens' sign pattern."""

    def target(self, batch: Any, tokens: Tokens, masks: Masks) -> torch.Tensor:
        return tokens.target.sign()


def test_the_target_hook_replaces_the_tokenizer_target():
    x = torch.randn(2, 12, 8)
    out = FeatureTarget(mask=RANDOM, optim=OPTIM)(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.target, x.sign())


def tiny_image(**kw: Any) -> ImageMAE:
    torch.manual_seed(0)
    return ImageMAE(
        encoder={"embed_dim": 32, "depth": 3, "num_heads": 2},
        decoder={"embed_dim": 16, "depth": 2, "num_heads": 2},
        mask={"_target_": "mae_zoo.masks.RandomMask", "ratio": 0.75},
        optim=OPTIM,
        img_size=16,
        in_chans=3,
        patch_size=4,
        **kw,
    ).eval()


def test_intermediate_features_of_chosen_blocks():
    model = tiny_image()
    images = torch.randn(2, 3, 16, 16)
    first, last = model.forward_intermediates(images, keep=[0, -1])
    assert first.shape == last.shape == (2, 1 + 16, 32)  # cls + every patch
    # the last block's output, normed, is the encoder's output
    torch.testing.assert_close(model.encoder.norm(last), model.encode(model.tokenize(images), None).latent)
    # with a mask: the visible tokens only
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 4:] = True
    (hidden,) = model.forward_intermediates(images, keep=[1], mask=mask)
    assert hidden.shape == (2, 1 + 4, 32)
    out = model(images, mask=mask, keep=[1], keep_decoder=[0, 1])
    torch.testing.assert_close(out.encoder_hidden[0], hidden)
    assert [h.shape for h in out.decoder_hidden] == [(2, 17, 16)] * 2
    with pytest.raises(ValueError, match="out of range for a stack of 3 blocks"):
        model.forward_intermediates(images, keep=[3])


def test_checkpoints_from_before_the_objective_group_still_load():
    """Older checkpoints kept norm_pix_loss (image, video) or alpha (graph) on the module."""
    hparams = dict(tiny_image().hparams)
    hparams.pop("objective")
    model = ImageMAE.from_hparams({**hparams, "norm_pix_loss": False})
    assert isinstance(model.objective, MaskedMSE) and model.objective.norm_pix_loss is False
    assert model.hparams["objective"] == MaskedMSE.spec(norm_pix_loss=False)


def test_probes_read_intermediate_blocks_through_embed():
    model = tiny_image(embed_pool="mean")
    images = torch.randn(2, 3, 16, 16)
    (last,) = model.forward_intermediates(images, keep=[-1])
    torch.testing.assert_close(model.embed(images, block=-1), last[:, 1:].mean(1))  # pre-norm, cls row dropped
    torch.testing.assert_close(model.embed(images), model.encoder.norm(last)[:, 1:].mean(1))
    with pytest.raises(ConfigError, match="needs eval.features=embed"):
        KNNEvaluator(features="pixels", block=0)
