"""Reading clips out of video files with PyAV: which frames a clip takes, and decoding just those.

Kept apart from the DataModule so the sampling rule and the decoder can be tested (and
benchmarked) on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch


class UnreadableVideo(RuntimeError):
    """A file that cannot be opened or decoded, or that ends before its header says it does."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int  # display width: coded width x sample aspect ratio (anamorphic files are common)
    height: int

    def output_size(self, short_side: int | None) -> tuple[int, int] | None:
        """(width, height) to decode to: display aspect, short side ``short_side`` (None: as displayed)."""
        if short_side is None:
            return self.width, self.height
        scale = short_side / min(self.width, self.height)
        return max(1, round(self.width * scale)), max(1, round(self.height * scale))


def clip_indices(num_frames: int, clip_len: int, sampling_rate: int, rng: np.random.Generator | None) -> np.ndarray:
    """Frame indices of one clip: ``clip_len`` frames ``sampling_rate`` apart.

    Training (``rng`` given): a uniformly random start among those that fit, as the official
    VideoMAE loader; evaluation (``rng=None``): the centred clip. A video shorter than the clip
    span repeats its last frame (indices are clamped), as the official loader does.
    """
    span = (clip_len - 1) * sampling_rate + 1
    room = max(num_frames - span, 0)
    start = int(rng.integers(0, room + 1)) if rng is not None else room // 2
    return np.minimum(start + np.arange(clip_len) * sampling_rate, num_frames - 1)


def probe(path: str) -> VideoInfo:
    """Frame count and rate from the container header (no decoding)."""
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            frames = stream.frames
            width, height = stream.codec_context.width, stream.codec_context.height
            sar = stream.sample_aspect_ratio
            if sar and sar > 0:
                width = max(1, round(width * float(sar)))
            if not frames and stream.duration is not None and fps:
                frames = round(float(stream.duration * stream.time_base) * fps)
    except (av.FFmpegError, IndexError, OSError) as err:
        raise UnreadableVideo(f"{path}: {type(err).__name__}: {err}") from None
    if not frames or not fps or not width or not height:
        raise UnreadableVideo(f"{path}: header gives no frame count, rate or size")
    return VideoInfo(int(frames), fps, int(width), int(height))


def decode_frames(path: str, indices: np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Decode the frames at ``indices`` (sorted, may repeat) as uint8 (T, H, W, 3) RGB.

    ``size`` = (width, height) rescales in FFmpeg's swscale while converting to RGB (area filter),
    which is much cheaper than resizing full frames afterwards; None keeps the coded size.

    Seeks to the keyframe before the first wanted frame and decodes forward only as far as the
    last one, so a clip costs (keyframe distance + clip span) decoded frames, not the whole file.
    Frame numbers come from timestamps, so a seek that lands early is harmless.
    """
    import av

    wanted = sorted(set(int(i) for i in indices))
    resize = {"width": size[0], "height": size[1], "interpolation": "AREA"} if size is not None else {}
    frames: dict[int, np.ndarray] = {}
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame + slice threads inside FFmpeg
            rate = stream.average_rate or stream.guessed_rate
            base = stream.time_base
            start_pts = stream.start_time or 0
            if wanted[0] > 0:
                target = start_pts + int(Fraction(wanted[0]) / Fraction(rate) / base)
                container.seek(target, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                index = round(float((frame.pts - start_pts) * base * rate))
                if index > wanted[-1]:
                    break
                if index in wanted:
                    frames[index] = frame.to_ndarray(format="rgb24", **resize)
                    if len(frames) == len(wanted):
                        break
    except (av.FFmpegError, OSError, ValueError) as err:
        raise UnreadableVideo(f"{path}: {type(err).__name__}: {err}") from None
    missing = [i for i in wanted if i not in frames]
    if missing:  # the header promised frames that the stream does not hold: truncated or corrupt
        raise UnreadableVideo(f"{path}: could not decode frames {missing[:5]}{'...' if len(missing) > 5 else ''}")
    return torch.from_numpy(np.stack([frames[int(i)] for i in indices]))
