"""Time masking of spectrogram tokens: whole time rows hidden (Audio-MAE's 2-D masking, time only)."""

from __future__ import annotations

from mae_zoo.masks.time_frequency import TimeFrequencyMask


class TimeMask(TimeFrequencyMask):
    """Exactly ``T - int(T * (1 - ratio))`` time rows hidden, every frequency column of them."""

    def __init__(self, ratio: float = 0.7) -> None:
        super().__init__(time_ratio=ratio, freq_ratio=0.0)

    def __repr__(self) -> str:
        return f"{self.name}(ratio={self.time_ratio})"
