"""Read audio files into mono float32 arrays at a chosen rate; every failure names the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from train.errors import TrainError

# Every model this package trains listens at 16 kHz.
MODEL_SAMPLE_RATE = 16_000
# Peak below this (about -80 dBFS) counts as digital silence: nothing to classify.
SILENCE_PEAK = 1e-4
# soundfile (libsndfile) reads these without ffmpeg; anything else goes through torchaudio/torchcodec.
SOUNDFILE_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".aiff", ".aif", ".au"})


def to_mono(samples: np.ndarray, channels_axis: int = -1) -> np.ndarray:
    """Average the channels of a (frames, channels) or (channels, frames) array; 1-D passes through."""
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    if samples.ndim != 2:
        raise ValueError(f"audio has {samples.ndim} dimensions; expected 1 (mono) or 2 (multichannel)")
    return samples.mean(axis=channels_axis).astype(np.float32)


def resample(samples: np.ndarray, from_rate: int, to_rate: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """Resample mono audio with torchaudio's default sinc filter, the same one the HF pipeline uses."""
    if from_rate == to_rate:
        return samples.astype(np.float32, copy=False)
    import torch
    from torchaudio import functional as F

    return F.resample(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)), from_rate, to_rate).numpy()


def read_native(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the file's own rate: WAV/FLAC/OGG via soundfile, other formats via torchaudio."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"audio file {path} does not exist")
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        import soundfile as sf

        try:
            samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError) as err:
            raise TrainError(f"cannot read audio file {path}: {err}") from err
        return to_mono(samples, channels_axis=1), int(rate)
    return _read_with_torchaudio(path)


def _read_with_torchaudio(path: Path) -> tuple[np.ndarray, int]:
    """Decode through torchaudio (torchcodec + ffmpeg underneath): MP3, M4A, OPUS and the like."""
    try:
        import torchaudio
    except ImportError as err:  # pragma: no cover - torchaudio is a core dependency
        raise TrainError(f"cannot read {path}: torchaudio is not installed (pip install torchaudio)") from err
    try:
        waveform, rate = torchaudio.load(str(path))
    except Exception as err:  # torchaudio/torchcodec raise many unrelated types for one cause: undecodable
        raise TrainError(
            f"cannot read audio file {path} (unsupported or corrupt format {path.suffix or 'without suffix'}): {err}"
        ) from err
    return to_mono(waveform.numpy(), channels_axis=0), int(rate)


def check_clip(samples: np.ndarray, where: str) -> None:
    """Refuse clips a classifier cannot learn from: zero length, non-finite, or digital silence."""
    if samples.size == 0:
        raise TrainError(f"{where}: audio clip is empty (0 samples)")
    if not np.all(np.isfinite(samples)):
        raise TrainError(f"{where}: audio contains NaN or infinite samples")
    if float(np.max(np.abs(samples))) < SILENCE_PEAK:
        raise TrainError(f"{where}: audio is silent (peak below {SILENCE_PEAK:g})")


def read_audio(path: str | Path, rate: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """A checked mono float32 clip at `rate` (default 16 kHz) from any readable audio file."""
    samples, native_rate = read_native(path)
    check_clip(samples, str(path))
    return resample(samples, native_rate, rate)
