"""MixedAE on the shared image path: the mixing (a partition of every position among the sources of a group,
balanced), mixing and unmixing in the encoder against the mixed image built by hand, homologous attention
(the same-source mask and top-k against a brute-force loop), the contrastive term's positives and negatives,
the loss terms, start-up errors and one smoke run through the CLI."""

from __future__ import annotations

import math

import pytest
import torch
from timm.layers.attention import Attention

from mae_zoo.core.errors import ConfigError
from mae_zoo.core.types import Layout, Visible
from mae_zoo.masks import MaskConfigError, MixingMask
from mae_zoo.masks.mixing import group_index, group_sizes, sources_from_mask
from mae_zoo.modalities.mixing import MixedImageMAE
from mae_zoo.nets.homologous import TopKAttention, topk_count
from mae_zoo.objectives.homologous import HomologousContrastive, homologous_logits
from mae_zoo.train import train

SIZES = {"img_size": 16, "in_chans": 1, "patch_size": 4, "optim": {"blr": 1e-3}}  # 4 x 4 = 16 tokens
MIXING = {"_target_": "mae_zoo.masks.MixingMask", "mixing_ratio": 0.25}


def mixedae(contrastive: dict | None = None, mask: dict = MIXING, **encoder: object) -> MixedImageMAE:
    torch.manual_seed(0)
    return MixedImageMAE(
        encoder={"kind": "homologous", "embed_dim": 32, "depth": 2, "num_heads": 2, **encoder},
        decoder={"embed_dim": 16, "depth": 1, "num_heads": 2},
        contrastive=contrastive,
        mask=mask,
        **SIZES,
    )


def test_mixing_gives_every_position_of_a_mixed_image_exactly_one_source_balanced():
    layout = Layout("grid", ("h", "w"), (7, 7))
    mask = MixingMask(0.25)(layout, 8, torch.Generator().manual_seed(0))
    visible = (~mask).view(2, 4, 49)  # two groups of four consecutive samples
    assert torch.equal(visible.sum(1), torch.ones(2, 49, dtype=torch.long))  # one source per position
    assert sorted(visible.sum(2).flatten().tolist()) == [12] * 6 + [13] * 2  # 49 = 13 + 12 + 12 + 12
    sources = sources_from_mask(mask, 4)
    assert torch.equal(mask, sources[torch.tensor([0] * 4 + [1] * 4)] != torch.arange(8).remainder(4)[:, None])
    again = MixingMask(0.25)(layout, 8, torch.Generator().manual_seed(0))
    assert torch.equal(mask, again) and not torch.equal(mask, MixingMask(0.25)(layout, 8, torch.Generator()))
    # A batch that the group does not divide: groups as even as possible, never a sample left unmixed.
    assert group_sizes(6, 4) == [3, 3] and group_sizes(5, 4) == [3, 2] and group_sizes(256, 4) == [4] * 64
    assert group_index(5, 4)[1].tolist() == [0, 1, 2, 0, 1]
    odd = MixingMask(0.25)(layout, 5, torch.Generator().manual_seed(1))
    assert torch.equal((~odd[:3]).sum(0), torch.ones(49, dtype=torch.long))
    with pytest.raises(ValueError, match="not a mixing mask"):
        sources_from_mask(torch.zeros(4, 49, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match="at least 2 samples"):
        group_sizes(1, 4)
    for bad in (0.3, 0.75, 1.0):
        with pytest.raises(MaskConfigError, match="mask.mixing_ratio must be 1/n"):
            MixingMask(bad)


def test_encoder_mixes_the_groups_visible_patches_and_unmixes_its_rows_per_source():
    """Oracle: the mixed images assembled by hand from the sources' patches, run unmixed through the same
    blocks, give exactly the rows the encoder hands each source (its group's cls row, its own positions)."""
    model = mixedae(segment_embed=False, attention="full")
    images = torch.randn(6, 1, 16, 16)
    tokens = model.tokenize(images).inputs
    mask = model.mask_generator(model.layout, 6, torch.Generator().manual_seed(0))  # groups [3, 3]
    gid, _ = group_index(6, 4)
    mixed = torch.zeros(2, 16, tokens.shape[-1])
    for i in range(6):
        mixed[gid[i], ~mask[i]] = tokens[i, ~mask[i]]
    reference = model.encoder(mixed, None).latent  # (2, 1 + 16, D)
    encoded = model.encoder(tokens, mask)
    vis = Visible.from_mask(mask)
    for i in range(6):
        rows = encoded.latent[i]
        torch.testing.assert_close(rows[0], reference[gid[i], 0])
        kept = vis.ids_keep[i][: int((~mask[i]).sum())]
        torch.testing.assert_close(rows[1 : 1 + len(kept)], reference[gid[i], 1 + kept])


def test_segment_embedding_marks_the_source_slot():
    model = mixedae(attention="full")
    with torch.no_grad():
        model.encoder.segment_embed.normal_()
    tokens = model.tokenize(torch.randn(4, 1, 16, 16)).inputs
    mask = model.mask_generator(model.layout, 4, torch.Generator().manual_seed(0))
    without = mixedae(attention="full", segment_embed=False)
    assert not torch.allclose(model.encoder(tokens, mask).latent, without.encoder(tokens, mask).latent)
    # Evaluation (no mask): one source, segment 0 on every token.
    torch.testing.assert_close(
        model.encoder(tokens, None).latent,
        model.encoder.run(
            model.encoder.with_cls(
                model.encoder.patch_embed(tokens) + model.encoder.pos_embed[:, 1:] + model.encoder.segment_embed[:, :1]
            ),
            None,
            None,
            (),
        )[0],
    )


def test_same_source_attention_keeps_each_sources_tokens_blind_to_the_others():
    model = mixedae(attention="same_source", depth=1)  # one block: no path through the cls row yet
    tokens = model.tokenize(torch.randn(4, 1, 16, 16)).inputs
    mask = model.mask_generator(model.layout, 4, torch.Generator().manual_seed(0))
    changed = tokens.clone()
    changed[1] = torch.randn_like(changed[1])  # source 1's patches
    before, after = model.encoder(tokens, mask), model.encoder(changed, mask)
    n = int((~mask[0]).sum())
    for i in (0, 2, 3):
        torch.testing.assert_close(before.latent[i, 1 : 1 + n], after.latent[i, 1 : 1 + n])
    assert not torch.allclose(before.latent[1, 1:], after.latent[1, 1:])
    full = mixedae(attention="full", depth=1)
    assert not torch.allclose(full.encoder(tokens, mask).latent[0, 1:], full.encoder(changed, mask).latent[0, 1:])


def test_topk_attention_equals_a_brute_force_loop_over_the_kept_keys():
    torch.manual_seed(0)
    attn = TopKAttention(8, num_heads=2, qkv_bias=True).eval()
    x = torch.randn(2, 1 + 6, 8)
    attn.num_keep = torch.tensor([2, 3])
    out = attn(x)
    q, k, v = attn.qkv(x).reshape(2, 7, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
    expected = torch.zeros(2, 2, 7, 4)
    for b in range(2):
        for h in range(2):
            for i in range(7):
                scores = (q[b, h, i] @ k[b, h].T) * attn.scale
                allowed = torch.ones(7, dtype=torch.bool)
                if i > 0:  # a token query: the cls key and its num_keep best token keys
                    best = scores[1:].topk(int(attn.num_keep[b])).indices + 1
                    allowed[1:] = False
                    allowed[best] = True
                expected[b, h, i] = scores.masked_fill(~allowed, -math.inf).softmax(-1) @ v[b, h]
    ref = attn.proj(expected.transpose(1, 2).reshape(2, 7, 8))
    torch.testing.assert_close(out, ref)
    attn.num_keep = torch.tensor([6, 6])  # every key kept: plain attention
    plain = Attention(8, num_heads=2, qkv_bias=True).eval()
    plain.load_state_dict(attn.state_dict())
    torch.testing.assert_close(attn(x), plain(x))
    assert topk_count(49, 4) == 13 and topk_count(16, 4) == 4


def test_contrastive_positive_is_the_own_source_and_negatives_only_its_mixed_images_sources():
    # Two mixed images of two sources each; tokens point exactly along their source's axis.
    e = torch.eye(4)
    z = torch.stack([e[0].expand(3, 4), e[1].expand(3, 4), e[0].expand(3, 4), e[1].expand(3, 4)]).clone()
    valid = torch.ones(4, 3, dtype=torch.bool)
    valid[3, 2] = False  # a padding row: not a token
    gid = torch.tensor([0, 0, 1, 1])
    logits, allowed, positive = homologous_logits(z, valid, gid, 0.5)
    assert positive.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 2
    assert allowed[0].tolist() == [True, True, False, False] and allowed[-1].tolist() == [False, False, True, True]
    loss = torch.nn.functional.cross_entropy(logits.masked_fill(~allowed, -math.inf), positive)
    torch.testing.assert_close(loss, torch.log1p(torch.exp(torch.tensor(-2.0))))  # log(1 + e^{(0 - 1) / 0.5})
    swapped = torch.nn.functional.cross_entropy(logits.masked_fill(~allowed, -math.inf), positive ^ 1)
    assert swapped > 2.0 > loss
    with pytest.raises(ConfigError, match="temperature > 0"):
        HomologousContrastive(4, temperature=0.0)


def test_loss_is_reconstruction_of_each_sources_hidden_patches_plus_the_weighted_contrastive_term():
    model = mixedae()
    images = torch.randn(8, 1, 16, 16)
    out = model(images, generator=torch.Generator().manual_seed(0))
    assert set(out.extras) == {"loss_recon", "loss_homologous"}
    torch.testing.assert_close(out.loss.detach(), out.extras["loss_recon"] + out.extras["loss_homologous"])
    assert torch.equal(out.scored, out.mask) and out.mask.float().mean() == 0.75
    off = mixedae(contrastive={"weight": 0.0})
    out_off = off(images, generator=torch.Generator().manual_seed(0))
    assert out_off.extras == {} and off.contrastive is None
    out.loss.backward()
    assert model.encoder.segment_embed.grad is not None and model.contrastive is not None
    assert model.contrastive.projector[0].weight.grad is not None
    assert model.embed(images).shape == (8, 32)  # evaluation: unmixed


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"mask": {"_target_": "mae_zoo.masks.RandomMask", "ratio": 0.75}}, "needs mask=mixing"),
        ({"kind": "dropping"}, "needs model.encoder.kind=homologous"),
        ({"attention": "sparse"}, "model.encoder.attention must be one of"),
    ],
)
def test_bad_combinations_fail_at_start_up(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        mixedae(**kwargs)


def test_mixedae_trains_through_the_cli(make_cfg):
    with pytest.raises(ConfigError, match="needs mask=mixing"):
        train(make_cfg("modality=mixing", "mask=random", "callbacks=none", "logger=none"))
    metrics = train(make_cfg("modality=mixing", "callbacks.online_probe.enabled=false", "logger=none"))
    assert metrics["trainer/global_step"] == 4 and metrics["train/loss_homologous"] > 0
    assert metrics["train/loss"] > metrics["train/loss_recon"] > 0
