"""Read audio files into mono float32 arrays at a chosen rate; every failure names the file.

Mixdown, clip checks and resampling are the daemon's core (daemon/audio.py, daemon/resample.py), so a file read
here becomes exactly the samples the daemon would hand the model for the same recording.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from intentd.daemon.audio import SAMPLE_RATE, to_mono
from intentd.daemon.audio import check_clip as core_check_clip
from intentd.daemon.errors import AudioError
from intentd.train.errors import TrainError

# soundfile (libsndfile) reads these without ffmpeg; anything else goes through torchaudio/torchcodec.
SOUNDFILE_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".aiff", ".aif", ".au"})


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


def check_clip(samples: np.ndarray, where: str) -> np.ndarray:
    """The clip, if a classifier can learn from it (not empty, finite, not digital silence); else a TrainError."""
    try:
        return core_check_clip(samples, where)
    except AudioError as err:
        raise TrainError(str(err)) from err


def read_audio(path: str | Path, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A checked mono float32 clip at `rate` (default the models' 16 kHz) from any readable audio file."""
    from intentd.daemon.resample import resample

    samples, native_rate = read_native(path)
    return resample(check_clip(samples, str(path)), native_rate, rate)
