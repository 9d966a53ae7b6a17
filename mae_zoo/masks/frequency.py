"""Frequency masking of spectrogram tokens: whole frequency columns hidden (Audio-MAE's 2-D masking,
frequency only)."""

from __future__ import annotations

from mae_zoo.masks.time_frequency import TimeFrequencyMask


class FrequencyMask(TimeFrequencyMask):
    """Exactly ``F - int(F * (1 - ratio))`` frequency columns hidden, over every time row."""

    def __init__(self, ratio: float = 0.5) -> None:
        super().__init__(time_ratio=0.0, freq_ratio=ratio)

    def __repr__(self) -> str:
        return f"{self.name}(ratio={self.freq_ratio})"
