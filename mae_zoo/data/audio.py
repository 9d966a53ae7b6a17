"""Audio data: Audio-MAE's kaldi filterbank front end, the embedded ``tones`` set, and real files (a
class-per-subfolder tree, a CSV list, the Free Spoken Digit layout) read with soundfile.

Every clip becomes a float (1, target_length, num_mel_bins) log-mel map (time rows, frequency
columns: Audio-MAE's ``(1, 1024, 128)``). Training clips are a random crop of ``clip_seconds`` (and
optionally Audio-MAE's roll + magnitude augmentation); evaluation clips the centred crop. Unreadable,
empty or truncated files are skipped, logged and counted once per distinct file (``num_skipped``,
``skipped_paths()``), as for video; a split in which no file is readable fails the run.

``python -m mae_zoo.data.audio stats data=fsdd`` prints the mean and std of the training set's
un-normalised log-mel features (AST/Audio-MAE convention: over every value of the fixed-length maps).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate

from mae_zoo.core.errors import ConfigError
from mae_zoo.data.base import MAEDataModule, SkippedFiles, count_skipped

log = logging.getLogger(__name__)

DATASETS = ("tones", "folder", "list", "fsdd")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
AUDIOSET_MEAN, AUDIOSET_STD = -4.2677393, 4.5689974
TONE_CLASSES = ("low_tone", "high_tone", "up_chirp", "down_chirp", "am_tone", "fm_tone", "noise_bursts", "clicks")
FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
FSDD_SPLITS = ("standard", "speaker", "disjoint")


# ----------------------------------------------------------------------------------- front end
def log_mel(
    waveform: torch.Tensor,
    sample_rate: int,
    num_mel_bins: int = 128,
    target_length: int = 1024,
    mean: float | None = AUDIOSET_MEAN,
    std: float | None = AUDIOSET_STD,
) -> torch.Tensor:
    """Audio-MAE's input, (target_length, num_mel_bins): kaldi fbank of the mono waveform with the DC
    removed (htk_compat, hanning window, no energy, dither 0, 25 ms frames every 10 ms), zero-padded
    or cut to ``target_length`` frames in log-mel space, then ``(x - mean) / (2 * std)``. ``mean``
    and ``std`` None: the un-normalised log-mel (for computing the statistics).

    Computed in the waveform's precision: float32 (as the official code; other dtypes are cast to
    it) or float64 (given a double waveform), which matches kaldi/numpy references to ~1e-5 where
    float32 FFT round-off moves weak bins by up to ~5e-4."""
    import torchaudio.compliance.kaldi as kaldi

    wav = waveform.reshape(1, -1)
    wav = wav if wav.dtype == torch.float64 else wav.float()
    wav = wav - wav.mean()
    fbank = kaldi.fbank(
        wav,
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_shift=10,
    )
    pad = target_length - fbank.shape[0]
    if pad > 0:
        fbank = F.pad(fbank, (0, 0, 0, pad))
    elif pad < 0:
        fbank = fbank[:target_length]
    if mean is None or std is None:
        return fbank
    return (fbank - mean) / (2 * std)


def min_samples(sample_rate: int) -> int:
    """kaldi needs one 25 ms frame."""
    return int(sample_rate * 0.025)


# ----------------------------------------------------------------------------------- embedded tones
def make_tones(num: int, sample_rate: int, seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``num`` deterministic labelled sounds, float32 (num, samples), label = index in ``TONE_CLASSES``
    (balanced, in turn): steady low/high tones, rising/falling chirps, amplitude- and
    frequency-modulated tones, noise bursts, click trains. Pitch, rates, phase, level and a little
    background noise are drawn per clip from ``seed``."""
    rng = np.random.default_rng(seed)
    n = round(sample_rate * seconds)
    t = np.arange(n) / sample_rate
    nyq = sample_rate / 2
    waves = np.zeros((num, n), dtype=np.float32)
    labels = np.arange(num) % len(TONE_CLASSES)
    for i, label in enumerate(labels):
        name = TONE_CLASSES[label]
        phase = rng.uniform(0, 2 * np.pi)
        if name == "low_tone":
            x = np.sin(2 * np.pi * rng.uniform(150, 500) * t + phase)
        elif name == "high_tone":
            x = np.sin(2 * np.pi * rng.uniform(1500, min(4000, 0.8 * nyq)) * t + phase)
        elif name in ("up_chirp", "down_chirp"):
            lo, hi = rng.uniform(200, 600), rng.uniform(2000, min(5000, 0.8 * nyq))
            f0, f1 = (lo, hi) if name == "up_chirp" else (hi, lo)
            period = rng.uniform(0.4, 0.8)  # repeated sweeps, so that any crop holds one
            tau = (t + rng.uniform(0, period)) % period
            k = (f1 - f0) / period
            x = np.sin(2 * np.pi * (f0 * tau + 0.5 * k * tau**2) + phase)
        elif name == "am_tone":
            carrier = rng.uniform(400, 2000)
            x = (0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(4, 12) * t)) * np.sin(2 * np.pi * carrier * t + phase)
        elif name == "fm_tone":
            carrier, depth, rate = rng.uniform(600, 2000), rng.uniform(150, 400), rng.uniform(3, 8)
            x = np.sin(2 * np.pi * carrier * t + (depth / rate) * np.sin(2 * np.pi * rate * t) + phase)
        elif name == "noise_bursts":
            gate = (((t + rng.uniform(0, 1)) * rng.uniform(3, 6)) % 1.0) < rng.uniform(0.2, 0.4)
            x = rng.standard_normal(n) * gate * 0.6
        else:  # clicks
            x = np.zeros(n)
            step = int(sample_rate / rng.uniform(8, 20))
            for start in range(int(rng.integers(0, step)), n, step):
                x[start : start + 8] = rng.choice([-1.0, 1.0]) * np.exp(-np.arange(len(x[start : start + 8])) / 2.0)
        level = rng.uniform(0.3, 0.9)
        waves[i] = (level * x + 0.01 * rng.standard_normal(n)).astype(np.float32)
    return waves, labels.astype(np.int64)


# ----------------------------------------------------------------------------------- reading files
class UnreadableAudio(Exception):
    """A file soundfile cannot decode, or one with no usable samples."""


def read_audio(path: str, sample_rate: int) -> torch.Tensor:
    """Mono float waveform of ``path`` at ``sample_rate`` (channels averaged, resampled with
    ``torchaudio.functional.resample``)."""
    import soundfile as sf
    import torchaudio.functional as AF

    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile raises RuntimeError subclasses; a missing file OSError
        raise UnreadableAudio(f"{path}: {err}") from None
    if data.size == 0 or data.shape[0] < 2:
        raise UnreadableAudio(f"{path}: no audio samples")
    if not np.isfinite(data).all():
        raise UnreadableAudio(f"{path}: non-finite samples")
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if sr != sample_rate:
        wav = AF.resample(wav, int(sr), int(sample_rate))
    if wav.numel() < min_samples(sample_rate):
        raise UnreadableAudio(f"{path}: shorter than one 25 ms frame")
    return wav


# ----------------------------------------------------------------------------------- transform
class ClipFeatures:
    """Waveform -> (1, target_length, num_mel_bins) normalised log-mel of a crop of ``clip_seconds``:
    random in training, centred otherwise; ``roll_mag``: Audio-MAE's roll + magnitude augmentation
    (training only)."""

    def __init__(
        self,
        sample_rate: int,
        clip_seconds: float,
        num_mel_bins: int,
        target_length: int,
        mean: float | None,
        std: float | None,
        train: bool,
        roll_mag: bool = False,
    ) -> None:
        self.sample_rate, self.num_mel_bins, self.target_length = sample_rate, num_mel_bins, target_length
        self.clip = round(clip_seconds * sample_rate)
        self.mean, self.std, self.train, self.roll_mag = mean, std, train, roll_mag

    def crop(self, wav: torch.Tensor) -> torch.Tensor:
        extra = wav.numel() - self.clip
        if extra <= 0:
            return wav
        start = int(torch.randint(0, extra + 1, (1,))) if self.train else extra // 2
        return wav[start : start + self.clip]

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        wav = self.crop(wav)
        if self.train and self.roll_mag:  # Audio-MAE _roll_mag_aug: roll by a random shift, scale by Beta(10,10)+0.5
            wav = torch.roll(wav, int(torch.randint(0, wav.numel(), (1,))))
            wav = wav * (torch.distributions.Beta(10.0, 10.0).sample() + 0.5)
        feats = log_mel(wav, self.sample_rate, self.num_mel_bins, self.target_length, self.mean, self.std)
        return feats[None]


# ----------------------------------------------------------------------------------- datasets
Label = int | torch.Tensor  # a class index, or a multi-hot float vector for multi-label data


class TensorAudio(Dataset):
    """The embedded waveforms, float32 (N, samples), transformed on access."""

    def __init__(self, waves: np.ndarray, labels: np.ndarray, transform: ClipFeatures) -> None:
        self.waves, self.labels, self.transform = waves, labels, transform

    def __len__(self) -> int:
        return len(self.waves)

    @property
    def targets(self) -> list[int]:
        return [int(x) for x in self.labels]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(torch.from_numpy(self.waves[i])), int(self.labels[i])


class AudioFiles(Dataset):
    """(path, label) pairs read with soundfile; an unreadable file gives None and is counted."""

    def __init__(
        self, samples: Sequence[tuple[str, Label]], transform: ClipFeatures, skipped: SkippedFiles | None
    ) -> None:
        self.samples, self.transform, self.skipped = list(samples), transform, skipped

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[Any]:
        return [label for _, label in self.samples]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Label] | None:
        path, label = self.samples[i]
        try:
            wav = read_audio(path, self.transform.sample_rate)
        except UnreadableAudio as err:  # corrupt, empty or truncated: skip it, never fail the run
            count_skipped(self.skipped, path)
            log.warning("skipping unreadable audio: %s", err)
            return None
        return self.transform(wav), label


def collate_audio(items: Sequence[tuple[torch.Tensor, Label] | None]) -> Any:
    """Batch the readable clips; None when every clip of the batch was unreadable (the steps skip it)."""
    kept = [item for item in items if item is not None]
    if not kept:
        log.warning("every audio file of a batch was unreadable; the batch is skipped")
        return None
    return default_collate(kept)


# ----------------------------------------------------------------------------------- file layouts
def list_folder(root: Path, extensions: Sequence[str]) -> tuple[list[tuple[str, Label]], list[str]]:
    """Speech Commands style: ``root/<class>/*.wav`` (label = class index in sorted order); a flat
    folder gives label 0."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if subdirs:
        classes = [d.name for d in subdirs]
        samples: list[tuple[str, Label]] = [
            (str(f), k) for k, d in enumerate(subdirs) for f in sorted(d.rglob("*")) if f.suffix.lower() in extensions
        ]
        return samples, classes
    return [(str(f), 0) for f in sorted(root.iterdir()) if f.suffix.lower() in extensions], [root.name]


def read_audio_list(
    list_file: Path, root: Path | None, path_column: str, label_column: str, fold_column: str | None, separator: str
) -> tuple[list[tuple[str, list[str], str | None]], bool]:
    """ESC-50 / BirdSet / AudioSet style CSV with a header: (path, labels, fold) per row, and whether
    any row holds several labels (``separator``-separated). Relative paths are under ``root`` (else
    next to the list file)."""
    base = root if root is not None else list_file.parent
    rows: list[tuple[str, list[str], str | None]] = []
    with list_file.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        for name in (path_column, label_column) + ((fold_column,) if fold_column else ()):
            if name not in columns:
                raise ConfigError(f"{list_file}: no column '{name}' (columns: {columns})")
        for row in reader:
            path = Path(row[path_column])
            labels = [x.strip() for x in row[label_column].split(separator) if x.strip()]
            fold = row[fold_column].strip() if fold_column else None
            rows.append((str(path if path.is_absolute() else base / path), labels, fold))
    return rows, any(len(labels) != 1 for _, labels, _ in rows)


def _label_key(label: str) -> tuple[int, float, str]:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


def fsdd_samples(root: Path, split: str, val_speakers: Sequence[str]) -> tuple[list[tuple[str, Label]], ...]:
    """Free Spoken Digit Dataset (``root/recordings/{digit}_{speaker}_{index}.wav``). ``standard``:
    index 0-4 held out; ``speaker``: the ``val_speakers`` held out; ``disjoint`` (pre-training before
    probing both): train = index >= 5 of the other speakers, val = the held-out speakers."""
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    train: list[tuple[str, Label]] = []
    val: list[tuple[str, Label]] = []
    held = set(val_speakers)
    for f in sorted(folder.iterdir()):
        m = FSDD_NAME.match(f.name)
        if not m:
            continue
        digit, speaker, index = int(m.group(1)), m.group(2), int(m.group(3))
        if split == "standard":
            is_val = index < 5
        elif split == "speaker":
            is_val = speaker in held
        else:
            is_val = speaker in held
            if not is_val and index < 5:
                continue
        (val if is_val else train).append((str(f), digit))
    return train, val


# ----------------------------------------------------------------------------------- datamodule
class AudioDataModule(MAEDataModule):
    """Train/val log-mel loaders for Audio-MAE pre-training and probing."""

    collate_fn = staticmethod(collate_audio)

    def __init__(
        self,
        dataset: str = "tones",
        root: str | None = None,
        list_file: str | None = None,
        path_column: str = "path",
        label_column: str = "label",
        fold_column: str | None = None,
        val_folds: Sequence[Any] = (),
        label_separator: str = ";",
        split: str = "standard",
        val_speakers: Sequence[str] = ("theo",),
        val_fraction: float = 0.2,
        sample_rate: int = 16000,
        clip_seconds: float = 1.28,
        num_mel_bins: int = 128,
        target_length: int = 128,
        mean: float | None = AUDIOSET_MEAN,
        std: float | None = AUDIOSET_STD,
        roll_mag_aug: bool = False,
        batch_size: int = 32,
        num_workers: int = 2,
        num_train: int = 2000,
        num_val: int = 400,
        tones_seconds: float = 2.0,
        tones_seed: int = 0,
        extensions: Sequence[str] = AUDIO_EXTENSIONS,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers)
        if dataset not in DATASETS:
            raise ConfigError(f"data.dataset='{dataset}' is unknown; valid: {list(DATASETS)}")
        if dataset in ("folder", "fsdd") and not (root and os.path.isdir(root)):
            raise ConfigError(f"data.dataset={dataset} needs data.root, an existing folder of audio files; got {root}")
        if dataset == "list" and not (list_file and os.path.isfile(list_file)):
            raise ConfigError(f"data.dataset=list needs data.list_file, a CSV file with a header; got {list_file}")
        if split not in FSDD_SPLITS:
            raise ConfigError(f"data.split='{split}' is unknown; valid: {list(FSDD_SPLITS)}")
        if min(sample_rate, num_mel_bins, target_length, batch_size) < 1 or clip_seconds <= 0:
            raise ConfigError("data.sample_rate, num_mel_bins, target_length, batch_size and clip_seconds must be > 0")
        if (mean is None) != (std is None) or (std is not None and std <= 0):
            raise ConfigError(f"data.mean and data.std are both set (std > 0) or both null; got {mean}, {std}")
        self.save_hyperparameters()
        self.dataset, self.root, self.list_file = dataset, root, list_file
        self.path_column, self.label_column, self.fold_column = path_column, label_column, fold_column
        self.val_folds = [str(f) for f in val_folds]
        self.label_separator, self.split, self.val_speakers = label_separator, split, list(val_speakers)
        self.val_fraction, self.sample_rate, self.clip_seconds = val_fraction, sample_rate, clip_seconds
        self.num_mel_bins, self.target_length, self.mean, self.std = num_mel_bins, target_length, mean, std
        self.roll_mag_aug, self.extensions = roll_mag_aug, tuple(e.lower() for e in extensions)
        self.num_train, self.num_val, self.tones_seconds, self.tones_seed = (
            num_train,
            num_val,
            tones_seconds,
            tones_seed,
        )
        self.pin_memory = pin_memory
        self.multilabel = False
        self._samples: tuple[list[tuple[str, Label]], list[tuple[str, Label]]] = ([], [])
        self.classes: list[str] = list(TONE_CLASSES) if dataset == "tones" else []
        if dataset == "fsdd":
            self.classes = [str(d) for d in range(10)]

    def transform(self, train: bool) -> ClipFeatures:
        return ClipFeatures(
            self.sample_rate,
            self.clip_seconds,
            self.num_mel_bins,
            self.target_length,
            self.mean,
            self.std,
            train,
            self.roll_mag_aug,
        )

    def list_samples(self) -> tuple[list[tuple[str, Label]], list[tuple[str, Label]]]:
        assert self.list_file is not None
        rows, self.multilabel = read_audio_list(
            Path(self.list_file),
            Path(self.root) if self.root else None,
            self.path_column,
            self.label_column,
            self.fold_column,
            self.label_separator,
        )
        self.classes = sorted({x for _, labels, _ in rows for x in labels}, key=_label_key)
        index = {c: k for k, c in enumerate(self.classes)}

        def label_of(labels: list[str]) -> Label:
            if not self.multilabel:
                return index[labels[0]]
            hot = torch.zeros(len(self.classes))
            hot[[index[x] for x in labels]] = 1.0
            return hot

        samples = [(path, label_of(labels), fold) for path, labels, fold in rows]
        if self.fold_column:
            if not self.val_folds:
                raise ConfigError("data.fold_column is set: give data.val_folds, the folds held out for validation")
            val_set = set(self.val_folds)
            return [(p, y) for p, y, f in samples if f not in val_set], [(p, y) for p, y, f in samples if f in val_set]
        return self.hold_out([(p, y) for p, y, _ in samples])

    def hold_out(self, samples: list[tuple[str, Label]]) -> tuple[list[tuple[str, Label]], list[tuple[str, Label]]]:
        """No split on disk: every k-th file (sorted order) is held out; val_fraction 0: validate on train."""
        step = max(2, round(1 / self.val_fraction)) if self.val_fraction > 0 else 0
        if not step:
            return samples, samples
        val_idx = set(range(step - 1, len(samples), step))
        return [s for i, s in enumerate(samples) if i not in val_idx], [samples[i] for i in sorted(val_idx)]

    def file_samples(self) -> tuple[list[tuple[str, Label]], list[tuple[str, Label]]]:
        if self.dataset == "list":
            return self.list_samples()
        assert self.root is not None  # __init__ checked it
        root = Path(self.root)
        if self.dataset == "fsdd":
            train, val = fsdd_samples(root, self.split, self.val_speakers)
            return train, val
        if (root / "train").is_dir() and (root / "val").is_dir():
            (train, self.classes), (val, _) = (
                list_folder(root / "train", self.extensions),
                list_folder(root / "val", self.extensions),
            )
            return train, val
        samples, self.classes = list_folder(root, self.extensions)
        return self.hold_out(samples)

    def build(self, train_split: bool, augment: bool) -> Dataset:
        """The train or val split, with the random crop (and augmentation) or the centred crop."""
        if self.dataset == "tones":
            num, seed = (self.num_train, self.tones_seed) if train_split else (self.num_val, self.tones_seed + 1)
            waves, labels = make_tones(num, self.sample_rate, self.tones_seconds, seed)
            return TensorAudio(waves, labels, self.transform(augment))
        samples = self._samples[0 if train_split else 1]
        if not samples:
            raise ConfigError(
                f"no {'training' if train_split else 'validation'} audio files found ({self.data_source()})"
            )
        return AudioFiles(samples, self.transform(augment), self.skip_counter())

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.classes else None

    def setup(self, stage: str | None = None) -> None:
        self.skip_counter()
        if self.train_set is None:
            if self.dataset != "tones":
                self._samples = self.file_samples()
            self.train_set = self.build(True, augment=True)
            self.val_set = self.build(False, augment=False)

    def data_source(self) -> str:
        if self.dataset == "list":
            return f"data.dataset=list, data.list_file={self.list_file}, data.root={self.root}"
        if self.dataset in ("folder", "fsdd"):
            return f"data.dataset={self.dataset}, data.root={self.root}"
        return "data.dataset=tones"

    def unaugmented_train_set(self) -> Dataset:
        """The training clips as centred, unaugmented crops."""
        return self.build(True, augment=False)


# ----------------------------------------------------------------------------------- stats command
def feature_stats(datamodule: AudioDataModule, batch_size: int = 64) -> dict[str, float]:
    """Mean and std of the un-normalised log-mel maps of the training split (centred crops)."""
    if datamodule.mean is not None:
        raise ConfigError("feature_stats needs a datamodule built with data.mean=null data.std=null")
    datamodule.setup("fit")
    loader = datamodule.loader(datamodule.unaugmented_train_set(), False, batch_size, persistent=False)
    total, total_sq, count = 0.0, 0.0, 0
    for batch in loader:
        if batch is None:
            continue
        x = batch[0].double()
        total += float(x.sum())
        total_sq += float((x * x).sum())
        count += x.numel()
    if count == 0:
        raise ConfigError(f"no readable training clip ({datamodule.data_source()})")
    mean = total / count
    return {"mean": mean, "std": math.sqrt(max(total_sq / count - mean * mean, 0.0)), "values": float(count)}


def main(argv: Sequence[str]) -> None:
    """``python -m mae_zoo.data.audio stats data=<option> [data.key=value ...]``."""
    if not argv or argv[0] != "stats":
        raise SystemExit("usage: python -m mae_zoo.data.audio stats data=<option> [data.key=value ...]")
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from mae_zoo.utils.instantiate import CONF_DIR

    overrides = [*argv[1:], "modality=audio", "data.mean=null", "data.std=null"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    dm = instantiate(cfg.data)
    stats = feature_stats(dm)
    print(f"mean: {stats['mean']:.7g}\nstd: {stats['std']:.7g}  # over {int(stats['values'])} values")


if __name__ == "__main__":
    main(sys.argv[1:])
