"""The daemon's segmentation (daemon/vad.py) hears a short spoken word alone in a stream or between silences,
and minutes of noise that is no speech open no more utterances than before the stream-end rule."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bench.segmentation import utterances
from intentd.daemon.resample import resample
from intentd.daemon.settings import VadSettings
from intentd.train import channel, nonspeech

VAD = VadSettings()
WORDS = ("yes", "no", "six", "stop", "go")


def _spoken(word: str, tmp_path: Path, rate: int) -> np.ndarray:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed")
    out = tmp_path / f"{word}.wav"
    subprocess.run([espeak, "-s", "190", "-w", str(out), word], check=True, capture_output=True)
    samples, native = sf.read(str(out), dtype="float32")
    # Cut tight as an endpointer cuts recordings (FSDD's shortest clips are cut so, some to 0.14 s).
    tight = channel.trim_edges(resample(samples, native, rate).astype(np.float64), rate, 15.0)
    return tight.astype(np.float32)


@pytest.mark.parametrize("rate", [8000, 16_000])
def test_a_short_word_alone_in_a_stream_is_one_utterance(tmp_path: Path, rate: int) -> None:
    for word in WORDS:
        clip = _spoken(word, tmp_path, rate)
        assert clip.size / rate < 0.5, word
        assert utterances(clip, rate, VAD) == 1, word


def test_a_short_word_between_silences_is_one_utterance(tmp_path: Path) -> None:
    rate = 16_000
    gap = np.zeros(rate, dtype=np.float32)
    floor = nonspeech.room(3.0, rate, np.random.default_rng(0)) * 0.05
    for word in WORDS:
        clip = _spoken(word, tmp_path, rate)
        stream = np.concatenate([gap, clip, gap])
        assert utterances(stream, rate, VAD) == 1, word
        noisy = (stream + floor[: stream.size]).astype(np.float32)
        assert utterances(noisy, rate, VAD) == 1, word


@pytest.mark.parametrize(("kind", "rate", "at_most"), [
    ("silence", 8000, 0), ("silence", 16_000, 0), ("room", 8000, 1), ("room", 16_000, 1),
    ("clicks", 8000, 0), ("clicks", 16_000, 3),
])
def test_a_minute_of_noise_opens_no_more_utterances_than_before(kind: str, rate: int, at_most: int) -> None:
    """Counts measured before the stream-end rule (bench/segmentation.py has the hour-long figures)."""
    noise = nonspeech.KINDS[kind](60.0, rate, np.random.default_rng(rate)).astype(np.float32)
    assert utterances(noise, rate, VAD) <= at_most
