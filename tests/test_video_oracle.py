"""Oracle: our VideoMAE against ``transformers.VideoMAEForPreTraining`` with the same weights and
``bool_masked_pos`` (HF is an independent port of the official VideoMAE code).

Weights are perturbed away from the init (zero biases, unit LayerNorms) so a mapping that swapped
or dropped a tensor could not pass by accident. VideoMAE V2's dual masking has no HF class; it is
checked against a reference assembled from HF's own modules following the official V2 forward.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from mae_zoo.masks import RandomMask, TubeMask  # noqa: E402
from mae_zoo.masks.running_cell import RunningCellMask  # noqa: E402
from mae_zoo.modalities.video import VideoMAE  # noqa: E402
from mae_zoo.nets.pos_embed import sinusoid_table  # noqa: E402
from mae_zoo.objectives import TubeNormalizedMSE  # noqa: E402
from mae_zoo.weights.hf_videomae import (  # noqa: E402
    StateDictMismatchError,
    hf_config_from_videomae,
    hf_to_mae_zoo,
    load_hf_into_videomae,
    load_videomae_into_hf,
    mae_zoo_to_hf,
    mae_zoo_to_official,
    official_to_mae_zoo,
    videomae_kwargs_from_hf_config,
)

FRAMES, IMG, PATCH, TUBELET, CHANS = 4, 16, 4, 2, 3
GRID = (FRAMES // TUBELET, IMG // PATCH, IMG // PATCH)
L = GRID[0] * GRID[1] * GRID[2]
ENCODER = {"embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 4.0, "qkv_bias": True}
DECODER = {"embed_dim": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 4.0, "qkv_bias": True}
TUBE = {"_target_": "mae_zoo.masks.TubeMask", "ratio": 0.75}
OPTIM = {"blr": 1.5e-4, "weight_decay": 0.05}
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
TOL = 1e-5


@torch.no_grad()
def perturb(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(1000 + seed)
    for p in module.parameters():
        if p.requires_grad:
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


def make_ours(norm_pix_loss: bool = True, seed: int = 0, decoder_mask: dict | None = None) -> VideoMAE:
    torch.manual_seed(seed)
    model = VideoMAE(
        encoder=dict(ENCODER),
        decoder=dict(DECODER),
        mask=dict(TUBE),
        optim=dict(OPTIM),
        decoder_mask=decoder_mask,
        num_frames=FRAMES,
        img_size=IMG,
        in_chans=CHANS,
        patch_size=PATCH,
        tubelet_size=TUBELET,
        objective=TubeNormalizedMSE.spec(channels=CHANS, norm_pix_loss=norm_pix_loss),
        pixel_mean=IMAGENET[0],
        pixel_std=IMAGENET[1],
    )
    perturb(model, seed)
    return model.eval()


def clips(seed: int, size: int = 3) -> torch.Tensor:
    """(B, C, T, H, W) clips as a loader gives them: ImageNet-normalised pixels."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.rand(size, CHANS, FRAMES, IMG, IMG, generator=gen)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1, 1) for v in IMAGENET)
    return (pixels - mean) / std


def to_hf_layout(videos: torch.Tensor) -> torch.Tensor:
    return videos.permute(0, 2, 1, 3, 4)  # HF takes (B, T, C, H, W)


def masked_pred(out, mask: torch.Tensor) -> torch.Tensor:
    """Our predictions at the hidden tokens, in position order (HF's order for its logits)."""
    return out.pred[mask].reshape(mask.shape[0], -1, out.pred.shape[-1])


@torch.no_grad()
def compare(ours: VideoMAE, hf, videos: torch.Tensor, mask: torch.Tensor, tol: float = TOL) -> float:
    out = ours(videos, mask=mask)
    ref = hf(pixel_values=to_hf_layout(videos), bool_masked_pos=mask)
    pred = masked_pred(out, mask)
    assert pred.shape == ref.logits.shape
    diff = (pred - ref.logits).abs().max().item()
    loss_diff = abs(out.loss.item() - ref.loss.item())
    print(f"max |pred - HF logits| = {diff:.2e}, |loss diff| = {loss_diff:.2e} (loss {out.loss.item():.5f})")
    assert diff <= tol and loss_diff <= tol
    assert ref.logits.abs().max() > 1e-2 and out.loss.item() > 1e-3  # not trivially zero
    return diff


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_ours_to_hf_same_predictions_and_loss(norm_pix_loss: bool) -> None:
    ours = make_ours(norm_pix_loss)
    config = hf_config_from_videomae(ours)
    assert config.use_mean_pooling is False and config.layer_norm_eps == 1e-6 and config.qv_bias
    hf = transformers.VideoMAEForPreTraining(config).eval()
    load_videomae_into_hf(hf, ours.state_dict())
    assert hf.decoder.norm.eps == 1e-5  # HF hard-codes it; official and ours use 1e-6
    hf.decoder.norm.eps = 1e-6
    for seed in (1, 2):
        videos = clips(seed)
        compare(ours, hf, videos, TubeMask(0.75)(ours.layout, videos.shape[0], torch.Generator().manual_seed(seed)))
    # Per-token random masking (the VideoMAE ablation) goes through the same path.
    compare(ours, hf, videos, RandomMask(0.9)(ours.layout, videos.shape[0], torch.Generator().manual_seed(3)))


def test_decoder_norm_eps_is_the_only_gap() -> None:
    """With HF's own decoder eps (1e-5) the outputs still agree to ~1e-5 but no longer to ~1e-6."""
    ours = make_ours()
    hf = transformers.VideoMAEForPreTraining(hf_config_from_videomae(ours)).eval()
    load_videomae_into_hf(hf, ours.state_dict())
    videos = clips(4)
    mask = TubeMask(0.75)(ours.layout, 3, torch.Generator().manual_seed(4))
    with_hf_eps = compare(ours, hf, videos, mask, tol=1e-3)
    hf.decoder.norm.eps = 1e-6
    assert compare(ours, hf, videos, mask) < with_hf_eps


def test_hf_to_ours_same_predictions_and_loss() -> None:
    torch.manual_seed(5)
    config = transformers.VideoMAEConfig(
        image_size=IMG,
        patch_size=PATCH,
        num_channels=CHANS,
        num_frames=FRAMES,
        tubelet_size=TUBELET,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=96,
        decoder_hidden_size=24,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=48,
        layer_norm_eps=1e-6,
        use_mean_pooling=False,
        norm_pix_loss=True,
    )
    hf = transformers.VideoMAEForPreTraining(config).eval()
    perturb(hf, 5)
    hf.decoder.norm.eps = 1e-6
    kwargs = videomae_kwargs_from_hf_config(config)
    ours = VideoMAE(optim=dict(OPTIM), pixel_mean=IMAGENET[0], pixel_std=IMAGENET[1], **kwargs).eval()
    load_hf_into_videomae(ours, hf.state_dict())
    videos = clips(6)
    compare(ours, hf, videos, TubeMask(0.9)(ours.layout, 3, torch.Generator().manual_seed(6)))
    with pytest.raises(ValueError, match="use_mean_pooling"):
        videomae_kwargs_from_hf_config(transformers.VideoMAEConfig(use_mean_pooling=True))


def hf_v2_reference(
    hf, videos: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """VideoMAE V2's forward and loss (official ``modeling_pretrain`` / ``engine_for_pretraining``)
    assembled from HF's modules: mask tokens at every decoder-kept position, loss averaged over
    kept positions that are also encoder-hidden."""
    b = videos.shape[0]
    x = hf.encoder_to_decoder(hf.videomae(to_hf_layout(videos), bool_masked_pos=mask).last_hidden_state)
    pos = hf.position_embeddings.expand(b, -1, -1).to(x.dtype)
    d = x.shape[-1]
    full = torch.cat([x + pos[~mask].reshape(b, -1, d), hf.mask_token + pos[keep].reshape(b, -1, d)], dim=1)
    logits = hf.decoder(full, int(keep[0].sum())).logits
    # Targets exactly as HF builds them: un-normalise, split into tubes, per-channel normalise.
    mean, std = (torch.tensor(v).view(1, 1, -1, 1, 1) for v in IMAGENET)
    frames = to_hf_layout(videos) * std + mean
    t, h, w = GRID
    frames = frames.view(b, t, TUBELET, CHANS, h, PATCH, w, PATCH).permute(0, 1, 4, 6, 2, 5, 7, 3)
    frames = frames.reshape(b, L, TUBELET * PATCH * PATCH, CHANS)
    frames = (frames - frames.mean(-2, keepdim=True)) / (frames.var(-2, keepdim=True).sqrt() + 1e-6)
    labels = frames.reshape(b, L, -1)[keep].reshape(b, -1, logits.shape[-1])
    per_token = (logits - labels).pow(2).mean(-1)
    weight = mask[keep].reshape(b, -1).float()
    return logits, (per_token * weight).sum() / weight.sum()


@torch.no_grad()
def test_v2_running_cell_matches_official_formula_on_hf_modules() -> None:
    ours = make_ours(decoder_mask={"_target_": "mae_zoo.masks.running_cell.RunningCellMask", "ratio": 0.5})
    hf = transformers.VideoMAEForPreTraining(hf_config_from_videomae(ours)).eval()
    load_videomae_into_hf(hf, ours.state_dict())
    hf.decoder.norm.eps = 1e-6
    videos = clips(7)
    gen = torch.Generator().manual_seed(7)
    mask = TubeMask(0.75)(ours.layout, 3, gen)
    decoder_mask = RunningCellMask(0.5)(ours.layout, 3, gen)
    keep = ~decoder_mask
    out = ours(videos, mask=mask, decoder_mask=decoder_mask)
    logits, loss = hf_v2_reference(hf, videos, mask, keep)
    pred = out.pred[keep].reshape(3, -1, logits.shape[-1])
    assert (pred - logits).abs().max().item() <= TOL
    assert abs(out.loss.item() - loss.item()) <= TOL
    assert torch.equal(out.scored, mask & keep)
    # Dual masking really changed the computation: the decoder saw other tokens than in V1.
    v1 = ours(videos, mask=mask, decoder_mask=~mask)
    assert abs(v1.loss.item() - out.loss.item()) > 1e-4


@torch.no_grad()
def test_decoder_ratio_zero_is_v1_equal_to_hf() -> None:
    ours = make_ours(decoder_mask={"_target_": "mae_zoo.masks.running_cell.RunningCellMask", "ratio": 0.0})
    assert ours.decoder_mask_generator is None
    hf = transformers.VideoMAEForPreTraining(hf_config_from_videomae(ours)).eval()
    load_videomae_into_hf(hf, ours.state_dict())
    hf.decoder.norm.eps = 1e-6
    videos = clips(8)
    gen = torch.Generator().manual_seed(8)
    compare(ours, hf, videos, TubeMask(0.75)(ours.layout, 3, gen))
    # And through the generator path, with the same mask drawn from the same seed.
    mask = TubeMask(0.75)(ours.layout, 3, torch.Generator().manual_seed(9))
    out = ours(videos, generator=torch.Generator().manual_seed(9))
    assert torch.equal(out.mask, mask)
    ref = hf(pixel_values=to_hf_layout(videos), bool_masked_pos=mask)
    assert abs(out.loss.item() - ref.loss.item()) <= TOL


def test_sinusoid_table_matches_hf() -> None:
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

    for n, d in [(32, 64), (7, 10), (1568, 384)]:
        assert (sinusoid_table(n, d) - get_sinusoid_encoding_table(n, d)[0]).abs().max() <= 1e-6


def test_state_dict_round_trips_and_refusals() -> None:
    ours = make_ours()
    sd = ours.state_dict()
    hf_sd = mae_zoo_to_hf(sd)
    hf = transformers.VideoMAEForPreTraining(hf_config_from_videomae(ours))
    assert set(hf_sd) == set(hf.state_dict())
    back = hf_to_mae_zoo(hf_sd)
    assert set(back) == set(sd) and all(torch.equal(back[k], v) for k, v in sd.items())
    official = mae_zoo_to_official(sd)
    assert "encoder_to_decoder.weight" in official and "encoder.blocks.0.attn.q_bias" in official
    back = official_to_mae_zoo(official)
    assert set(back) == set(sd) and all(torch.equal(back[k], v) for k, v in sd.items())
    with pytest.raises(StateDictMismatchError, match="key.bias"):
        hf_to_mae_zoo({**hf_sd, "videomae.encoder.layer.0.attention.attention.key.bias": torch.zeros(64)})
    with pytest.raises(StateDictMismatchError, match="cls_token"):
        official_to_mae_zoo({**official, "cls_token": torch.zeros(1, 1, 64)})
