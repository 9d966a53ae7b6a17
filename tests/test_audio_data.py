"""Audio data: the kaldi front end against transformers' ASTFeatureExtractor, the embedded tones, the
file layouts (folder, CSV list with folds and multi-label, FSDD on ../shared/data), corrupt files."""

import numpy as np
import pytest
import soundfile as sf
import torch

from mae_zoo.core.errors import ConfigError
from mae_zoo.data.audio import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    TONE_CLASSES,
    AudioDataModule,
    feature_stats,
    log_mel,
    make_tones,
    read_audio,
)
from tests.conftest import needs_shared

SR = 16000


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(int(1.5 * SR)) / SR
    return {
        "tone": 0.5 * np.sin(2 * np.pi * 440 * t),
        "chirp": 0.3 * np.sin(2 * np.pi * (200 * t + 1500 * t**2)),
        "noise_dc": 0.2 * rng.standard_normal(len(t)) + 0.1,  # DC offset: removed by both
        "am": (0.5 + 0.5 * np.sin(2 * np.pi * 5 * t)) * np.sin(2 * np.pi * 1000 * t) * 0.4,
    }


def _ast_extractor(max_length: int):
    """transformers' ASTFeatureExtractor on its numpy path (no torchaudio inside the oracle)."""
    import transformers.models.audio_spectrogram_transformer.feature_extraction_audio_spectrogram_transformer as ast

    original = ast.is_speech_available
    ast.is_speech_available = lambda: False
    try:
        return ast.ASTFeatureExtractor(
            num_mel_bins=128, max_length=max_length, mean=AUDIOSET_MEAN, std=AUDIOSET_STD, do_normalize=True
        ), ast
    finally:
        ast.is_speech_available = original


@pytest.mark.parametrize("max_length", [1024, 100])  # 1.5 s: padded to 1024 frames, or cut to 100
def test_log_mel_equals_ast_feature_extractor(max_length, monkeypatch):
    extractor, ast = _ast_extractor(max_length)
    monkeypatch.setattr(ast, "is_speech_available", lambda: False)
    for name, wave in _signals().items():
        wave = wave.astype(np.float32)
        expected = extractor(wave, sampling_rate=SR, return_tensors="np")["input_values"][0]
        # float64 waveform: the same arithmetic as the numpy oracle
        ours = log_mel(torch.from_numpy(wave).double(), SR, num_mel_bins=128, target_length=max_length)
        assert ours.shape == (max_length, 128) == expected.shape
        np.testing.assert_allclose(ours.numpy(), expected, atol=1e-4, err_msg=name)
        # float32 (the official code's and the loaders' precision): FFT round-off in weak bins only
        ours32 = log_mel(torch.from_numpy(wave), SR, num_mel_bins=128, target_length=max_length)
        assert ours32.dtype == torch.float32
        np.testing.assert_allclose(ours32.numpy(), expected, atol=1e-3, err_msg=name)
        assert np.mean(np.abs(ours32.numpy() - expected) > 1e-4) < 0.01


def test_padding_happens_in_log_mel_space_before_normalisation():
    wave = torch.from_numpy(_signals()["tone"].astype(np.float32))
    x = log_mel(wave, SR, target_length=1024)
    frames = 1 + (len(wave) - 400) // 160  # kaldi snip_edges: 148 real frames
    pad = x[frames:]
    assert torch.allclose(pad, torch.full_like(pad, -AUDIOSET_MEAN / (2 * AUDIOSET_STD)))  # +0.467, not 0
    assert pad.abs().min() > 0.4
    raw = log_mel(wave, SR, target_length=1024, mean=None, std=None)
    assert torch.equal(raw[frames:], torch.zeros_like(raw[frames:]))
    assert torch.allclose(x, (raw - AUDIOSET_MEAN) / (2 * AUDIOSET_STD))


def test_tones_are_deterministic_balanced_and_distinct():
    a, la = make_tones(16, SR, 1.0, seed=3)
    b, lb = make_tones(16, SR, 1.0, seed=3)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, make_tones(16, SR, 1.0, seed=4)[0])
    assert np.bincount(la).tolist() == [2] * len(TONE_CLASSES)
    assert a.dtype == np.float32 and np.isfinite(a).all() and np.abs(a).max() < 2


def test_tones_datamodule_crops_and_shapes():
    dm = AudioDataModule(num_train=16, num_val=8, batch_size=8, num_workers=0, clip_seconds=0.64, target_length=64)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 64, 128) and y.dtype == torch.int64
    assert dm.num_classes == len(TONE_CLASSES)
    val = dm.val_set
    assert torch.equal(val[0][0], val[0][0])  # the evaluation crop is deterministic (centred)
    train = dm.train_set
    torch.manual_seed(0)
    crops = {tuple(train[0][0][0, :, 5].tolist()) for _ in range(3)}
    assert len(crops) > 1  # training crops are random


def _write(path, wave, sr=SR):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sr)


def test_reader_mixes_to_mono_and_resamples(tmp_path):
    t = np.arange(44100) / 44100
    left, right = np.sin(2 * np.pi * 300 * t), 0.5 * np.sin(2 * np.pi * 300 * t)
    _write(tmp_path / "stereo.flac", np.stack([left, right], 1).astype(np.float32), 44100)
    wav = read_audio(str(tmp_path / "stereo.flac"), SR)
    assert wav.dim() == 1 and wav.numel() == SR  # 1 s at 16 kHz
    assert wav.abs().max() == pytest.approx(0.75, abs=0.02)  # (1 + 0.5) / 2


def test_folder_skips_and_counts_corrupt_empty_and_truncated_files(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("dog", "rain"):
        for i in range(3):
            _write(tmp_path / cls / f"{i}.wav", (0.1 * rng.standard_normal(SR // 2)).astype(np.float32))
    (tmp_path / "dog" / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage" * 10)
    (tmp_path / "rain" / "empty.wav").write_bytes(b"")
    good = (tmp_path / "rain" / "0.wav").read_bytes()
    (tmp_path / "rain" / "truncated.wav").write_bytes(good[:44])  # header only: no samples
    dm = AudioDataModule(
        dataset="folder", root=str(tmp_path), val_fraction=0, batch_size=4, num_workers=0, target_length=64
    )
    dm.setup("fit")
    assert dm.classes == ["dog", "rain"] and len(dm.train_set) == 9
    seen = 0
    for batch in dm.val_dataloader():
        if batch is not None:
            seen += len(batch[1])
    assert seen == 6
    assert dm.num_skipped == 3
    assert sorted(p.rsplit("/", 1)[1] for p in dm.skipped_paths()) == ["corrupt.wav", "empty.wav", "truncated.wav"]


def test_list_with_folds_and_multi_label(tmp_path):
    for i in range(6):
        _write(tmp_path / "clips" / f"{i}.ogg", np.zeros(SR // 4, dtype=np.float32) + 0.01 * i)
    labels = ["bird", "dog", "bird;rain", "dog", "bird", "dog"]
    rows = ["filename,target,fold"] + [f"clips/{i}.ogg,{labels[i]},{i % 3 + 1}" for i in range(6)]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    dm = AudioDataModule(
        dataset="list",
        list_file=str(tmp_path / "list.csv"),
        path_column="filename",
        label_column="target",
        fold_column="fold",
        val_folds=[3],
        batch_size=2,
        num_workers=0,
        target_length=32,
    )
    dm.setup("fit")
    assert dm.multilabel and dm.classes == ["bird", "dog", "rain"]
    assert len(dm.train_set) == 4 and len(dm.val_set) == 2  # fold 3: rows 2 and 5
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 1, 32, 128)
    assert y.tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]  # row 2: bird;rain, row 5: dog
    with pytest.raises(ConfigError, match="no column 'label'"):
        AudioDataModule(
            dataset="list", list_file=str(tmp_path / "list.csv"), path_column="filename", label_column="label"
        ).setup()


def test_fsdd_standard_speaker_and_disjoint_splits():
    root = needs_shared("fsdd")
    sizes = {}
    for split in ("standard", "speaker", "disjoint"):
        dm = AudioDataModule(dataset="fsdd", root=str(root), split=split, batch_size=4, num_workers=0)
        dm.setup("fit")
        sizes[split] = (len(dm.train_set), len(dm.val_set))
        if split == "speaker":
            assert all("_theo_" in p for p, _ in dm.val_set.samples)
            assert not any("_theo_" in p for p, _ in dm.train_set.samples)
    assert sizes == {"standard": (2700, 300), "speaker": (2500, 500), "disjoint": (2250, 500)}
    x, y = dm.val_set[0]
    assert x.shape == (1, 128, 128) and 0 <= y <= 9 and dm.num_classes == 10


def test_feature_stats_of_the_training_split():
    dm = AudioDataModule(num_train=8, num_val=8, batch_size=4, num_workers=0, target_length=64, mean=None, std=None)
    stats = feature_stats(dm)
    values = torch.cat([dm.unaugmented_train_set()[i][0].flatten() for i in range(8)]).double()
    assert stats["mean"] == pytest.approx(float(values.mean()), rel=1e-6)
    assert stats["std"] == pytest.approx(float(values.std(unbiased=False)), rel=1e-5)


def test_bad_data_settings_fail_at_start_up(tmp_path):
    with pytest.raises(ConfigError, match="data.dataset='speech' is unknown"):
        AudioDataModule(dataset="speech")
    with pytest.raises(ConfigError, match="needs data.root"):
        AudioDataModule(dataset="fsdd", root=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="data.split='voices' is unknown"):
        AudioDataModule(split="voices")
