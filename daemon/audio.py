"""Audio facts every stage shares: the models' sample rate, mono mixdown, clip checks. numpy only (clients import it).

Training, `intentd-train predict/eval`, the daemon and the tests all take these from here, so a clip is turned
into the model's input one way everywhere (resampling lives beside it in `daemon/resample.py`, which needs torch).
"""

from __future__ import annotations

import numpy as np

from intentd.daemon.errors import AudioError

# Every model intentd serves or trains listens at 16 kHz mono; this is the one place that says so.
SAMPLE_RATE = 16_000
# Peak below this (about -80 dBFS) counts as digital silence: nothing to learn from.
SILENCE_PEAK = 1e-4


def to_mono(samples: np.ndarray, channels_axis: int = -1) -> np.ndarray:
    """float32 mean of the channels of a (frames, channels) or (channels, frames) array; 1-D passes through.

    The mean, not FFmpeg's 1/sqrt(2) downmix: whatever reads audio (socket, file, microphone, training data)
    must hand the model the same samples for the same recording.
    """
    array = np.asarray(samples)
    if array.ndim == 1:
        return array.astype(np.float32, copy=False)
    if array.ndim != 2:
        raise AudioError(f"audio has {array.ndim} dimensions; expected 1 (mono) or 2 (multichannel)")
    if array.shape[channels_axis] == 1:
        return np.ascontiguousarray(np.take(array, 0, axis=channels_axis), dtype=np.float32)
    return array.mean(axis=channels_axis, dtype=np.float32)


def check_clip(samples: np.ndarray, where: str, *, allow_silence: bool = False) -> np.ndarray:
    """The clip as mono float32 if it can be classified; else an AudioError naming `where`.

    Refuses other shapes, zero length and NaN/inf; digital silence too unless `allow_silence` (a live stream
    may well hand over silence; a training file that is silent is a mistake).
    """
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim != 1:
        raise AudioError(f"{where}: expected mono 1-D samples, got shape {array.shape}")
    if array.size == 0:
        raise AudioError(f"{where}: audio clip is empty (0 samples)")
    if not np.isfinite(array).all():
        raise AudioError(f"{where}: audio contains NaN or infinite samples")
    if not allow_silence and float(np.max(np.abs(array))) < SILENCE_PEAK:
        raise AudioError(f"{where}: audio is silent (peak below {SILENCE_PEAK:g})")
    return array
