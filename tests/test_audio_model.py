"""Audio-MAE model: spectrogram tokens and layout, the local (shifted-window) decoder's windows, shifts
and locality, the cls row kept out of it, pictures, and debug=smoke runs for every audio mask and both
decoders."""

import pytest
import torch

from mae_zoo.core.types import Encoded, Visible
from mae_zoo.modalities.audio import AudioMAE
from mae_zoo.nets.audio import LocalDecoder
from mae_zoo.nets.pos_embed import sincos_2d
from mae_zoo.train import train

ENC = {"embed_dim": 32, "depth": 1, "num_heads": 2}
DEC = {"embed_dim": 32, "depth": 2, "num_heads": 2}
OPTIM = {"blr": 1e-3, "weight_decay": 0.0}


def model(decoder_mode="local", target_length=128, mel=128, mask=None, **kw):
    torch.manual_seed(0)
    return AudioMAE(
        ENC,
        DEC,
        target_length=target_length,
        num_mel_bins=mel,
        decoder_mode=decoder_mode,
        mask=mask or {"_target_": "mae_zoo.masks.RandomMask", "ratio": 0.8},
        optim=OPTIM,
        **kw,
    ).eval()


def test_tokens_are_16x16_patches_time_major_on_a_t_f_grid():
    m = model(target_length=1024, mel=128, decoder_mode="global")
    assert m.layout.name == "grid:t,f" and m.layout.shape == (64, 8) and m.layout.num_tokens == 512
    spec = torch.arange(1024 * 128, dtype=torch.float32).view(1, 1, 1024, 128)
    tokens = m.tokenize(spec)
    assert tokens.inputs.shape == (1, 512, 256)
    # token 9 = time row 1, frequency column 1: frames 16..31, bins 16..31, row-major inside the patch
    assert torch.equal(tokens.inputs[0, 9], spec[0, 0, 16:32, 16:32].reshape(-1))
    table = sincos_2d(32, 64, 8, cls_token=True)
    assert torch.equal(m.encoder.pos_embed[0], table) and m.encoder.pos_embed.shape == (1, 513, 32)
    with pytest.raises(ValueError, match="expected log-mel maps"):
        m.tokenize(torch.zeros(1, 1, 1000, 128))


def test_local_decoder_windows_and_shifts():
    dec = LocalDecoder(32, sincos_2d(32, 64, 8, cls_token=True), 256, (64, 8), embed_dim=32, depth=4, num_heads=2)
    assert [tuple(b.window_size) for b in dec.blocks] == [(4, 4)] * 4
    assert [tuple(b.shift_size) for b in dec.blocks] == [(0, 0), (2, 0), (0, 0), (2, 0)]  # odd blocks shift time
    assert dec.blocks[0].attn_mask is None and dec.blocks[1].attn_mask.shape == (16 * 2, 16, 16)  # 16 x 2 windows
    x = torch.randn(2, 512, 32)
    out, hidden = dec.forward_blocks(x, keep=[0, 3])
    assert out.shape == (2, 512, 32) and [h.shape for h in hidden] == [(2, 512, 32)] * 2


def _changed(block, grid, row, col):
    """Grid cells whose output changes when the input token at (row, col) changes."""
    torch.manual_seed(1)
    x = torch.randn(1, *grid, 16)
    y = x.clone()
    y[0, row, col] += 3.0 * torch.randn(16)  # not a constant: LayerNorm would remove it
    with torch.no_grad():
        diff = (block(x) - block(y)).abs().amax(-1)[0]
    return {tuple(i) for i in (diff > 1e-5).nonzero().tolist()}


def _window(rows, cols):
    return {(r, c) for r in rows for c in cols}


def test_tokens_attend_only_within_their_window():
    dec = LocalDecoder(16, sincos_2d(16, 8, 8, cls_token=True), 4, (8, 8), embed_dim=16, depth=2, num_heads=2)
    plain, shifted = dec.blocks[0], dec.blocks[1]
    # unshifted: a token reaches exactly its own (4, 4) window
    assert _changed(plain, (8, 8), 1, 5) == _window(range(0, 4), range(4, 8))
    assert _changed(plain, (8, 8), 6, 2) == _window(range(4, 8), range(0, 4))
    # shifted by (2, 0): windows cover time rows 2-5 and 6-1 (cyclic); the wrapped-around window is split
    # by the attention mask, so rows 6-7 and rows 0-1 do not see each other
    assert _changed(shifted, (8, 8), 3, 1) == _window(range(2, 6), range(0, 4))
    assert _changed(shifted, (8, 8), 0, 6) == _window(range(0, 2), range(4, 8))
    assert _changed(shifted, (8, 8), 7, 6) == _window(range(6, 8), range(4, 8))


def _encoded(m, batch=2):
    mask = m.mask_generator(m.layout, batch, torch.Generator().manual_seed(0))
    tokens = m.tokenize(torch.randn(batch, 1, 128, 128))
    enc = m.encode(tokens, mask)
    assert isinstance(enc.visible, Visible)
    return enc


@pytest.mark.parametrize("mode", ["local", "global"])
def test_cls_row_never_enters_the_local_decoder(mode):
    m = model(decoder_mode=mode)
    enc = _encoded(m)
    other = enc.latent.clone()
    other[:, 0] += 3.0  # change only the cls row
    with torch.no_grad():
        a = m.decoder(enc).pred
        b = m.decoder(Encoded(other, enc.visible, enc.num_prefix)).pred
    assert a.shape == (2, 64, 256)
    assert torch.equal(a, b) == (mode == "local")  # the global decoder attends to cls


def test_forward_loss_is_norm_pix_mse_on_hidden_patches_and_pictures():
    m = model()
    batch = (torch.randn(3, 1, 128, 128), torch.tensor([0, 1, 2]))
    out = m(batch, generator=torch.Generator().manual_seed(0))
    assert out.mask.sum(1).eq(64 - int(64 * 0.2)).all()
    target = m.tokenize(batch).target
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    expected = ((out.pred - normed) ** 2).mean(-1)[out.mask].mean()
    assert torch.allclose(out.loss, expected, atol=1e-5)
    pics = m.visualize(batch, torch.Generator().manual_seed(0))
    assert pics.shape == (3, 3, 1, 128, 128) and pics.min() >= 0 and pics.max() <= 1
    # the input view is the spectrogram scaled to [0, 1], time left to right, low bins at the bottom
    spec = batch[0][0, 0]
    assert torch.allclose(pics[0, 0, 0], ((spec - spec.min()) / (spec.max() - spec.min())).T.flip(0))
    # the masked view is grey on the hidden patches (52 of 64, 256 pixels each)
    assert int((pics[1, 0] == 0.5).sum()) == int(out.mask[0].sum()) * 256
    embed = m.embed(batch)
    assert embed.shape == (3, 32)


@pytest.mark.parametrize(
    "overrides",
    [
        ["mask=random", "mask.ratio=0.8"],  # local decoder (the default)
        ["mask=time", "model.decoder_mode=global", "callbacks=none"],
        ["mask=frequency", "callbacks=none"],
        ["mask=time_frequency", "callbacks=none"],
    ],
    ids=lambda o: o[0],
)
def test_audio_smoke_for_every_mask_and_both_decoders(overrides, make_cfg, tmp_path):
    cfg = make_cfg(
        "modality=audio",
        "model=audiomae_micro",
        "data.num_train=64",
        "data.num_val=32",
        "data.tones_seconds=1.5",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.precision=32-true",
        *overrides,
    )
    metrics = train(cfg)
    assert metrics["trainer/global_step"] == 2 and metrics["train/loss"] > 0 and metrics["val/loss"] > 0
    if "callbacks=none" not in overrides:
        from pathlib import Path

        assert list((Path(cfg.paths.run_dir) / "pictures").glob("recon_val_final_*.png"))
