"""Arbitrary-size audio chunks -> exact fixed-size frames, with a leftover buffer carried between chunks."""

from __future__ import annotations

import numpy as np

from intentd.daemon.errors import AudioError

# What webrtcvad can take. It checks neither and returns garbage (or accepts any bytes), so we do.
VAD_SAMPLE_RATES: tuple[int, ...] = tuple(khz * 1000 for khz in (8, 16, 32, 48))
VAD_FRAME_MS: tuple[int, ...] = (10, 20, 30)
DEFAULT_FRAME_MS = 30
MS_PER_S = 1000


def frame_samples_for(sample_rate: int, frame_ms: int) -> int:
    """Samples in one frame of `frame_ms` at `sample_rate`, rounded half up (22.05 kHz x 30 ms -> 662)."""
    if sample_rate <= 0:
        raise AudioError(f"sample rate must be positive, got {sample_rate}")
    if frame_ms <= 0:
        raise AudioError(f"frame length must be positive, got {frame_ms} ms")
    return (sample_rate * frame_ms + MS_PER_S // 2) // MS_PER_S


def check_vad_frame(sample_rate: int, n_samples: int) -> int:
    """Raise AudioError unless webrtcvad accepts `n_samples` at `sample_rate`; return the frame length in ms."""
    if sample_rate not in VAD_SAMPLE_RATES:
        raise AudioError(f"webrtcvad takes {VAD_SAMPLE_RATES} Hz, not {sample_rate} Hz")
    for frame_ms in VAD_FRAME_MS:
        if sample_rate * frame_ms == n_samples * MS_PER_S:
            return frame_ms
    raise AudioError(
        f"webrtcvad takes frames of {VAD_FRAME_MS} ms, not {n_samples} samples at {sample_rate} Hz"
    )


class Reframer:
    """Cut a stream of float32 chunks into frames of exactly `frame_samples`; the remainder waits for more."""

    def __init__(self, frame_samples: int) -> None:
        if frame_samples <= 0:
            raise AudioError(f"frame size must be positive, got {frame_samples} samples")
        self.frame_samples = frame_samples
        self._leftover = np.zeros(0, dtype=np.float32)

    @classmethod
    def for_vad(cls, sample_rate: int, frame_ms: int) -> Reframer:
        """A reframer whose frames webrtcvad accepts as they are; AudioError for a rate/length it can't take."""
        n = frame_samples_for(sample_rate, frame_ms)
        check_vad_frame(sample_rate, n)
        return cls(n)

    @property
    def pending(self) -> int:
        """Samples held back because they do not yet fill a frame."""
        return int(self._leftover.size)

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        """Append `samples` (1-D float32) and return every complete frame, oldest first."""
        if not isinstance(samples, np.ndarray) or samples.ndim != 1:
            raise AudioError(f"audio must be a 1-D array, got shape {getattr(samples, 'shape', None)}")
        if samples.dtype != np.float32:
            raise AudioError(f"audio must be float32, got {samples.dtype}")
        data = np.concatenate((self._leftover, samples)) if self._leftover.size else samples
        n_frames = data.size // self.frame_samples
        cut = n_frames * self.frame_samples
        # Copies, so a frame never aliases the caller's buffer (which a socket reader may reuse).
        frames = [data[i : i + self.frame_samples].copy() for i in range(0, cut, self.frame_samples)]
        self._leftover = data[cut:].copy()
        return frames

    def reset(self) -> np.ndarray:
        """Drop and return the leftover samples (at stream end they are less than one frame)."""
        leftover, self._leftover = self._leftover, np.zeros(0, dtype=np.float32)
        return leftover
