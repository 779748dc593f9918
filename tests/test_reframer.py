"""Re-framing arbitrary chunks into exact frames, and the frame sizes webrtcvad accepts."""

from __future__ import annotations

import numpy as np
import pytest

from intentd.daemon.errors import AudioError
from intentd.daemon.reframer import Reframer, check_vad_frame, frame_samples_for


def test_frames_are_exact_and_the_rest_waits() -> None:
    r = Reframer(160)
    audio = np.arange(1000, dtype=np.float32)
    assert r.push(audio[:100]) == []
    assert r.pending == 100
    frames = r.push(audio[100:700])
    assert [f.size for f in frames] == [160] * 4
    np.testing.assert_array_equal(np.concatenate(frames), audio[:640])
    assert r.pending == 60
    np.testing.assert_array_equal(r.reset(), audio[640:700])
    assert r.pending == 0


def test_any_chunking_gives_the_same_frames() -> None:
    rng = np.random.default_rng(3)
    audio = rng.standard_normal(48_000).astype(np.float32)
    whole = np.concatenate(Reframer(480).push(audio))
    r = Reframer(480)
    pieces: list[np.ndarray] = []
    pos = 0
    while pos < audio.size:
        size = int(rng.integers(1, 2000))
        pieces += r.push(audio[pos : pos + size])
        pos += size
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    assert whole.size == 48_000


def test_frames_do_not_alias_the_callers_buffer() -> None:
    r = Reframer(4)
    buf = np.ones(8, dtype=np.float32)
    frames = r.push(buf)
    buf[:] = 0
    assert all(f.sum() == 4 for f in frames)


@pytest.mark.parametrize("rate", [8000, 16000, 32000, 48000])
@pytest.mark.parametrize("ms", [10, 20, 30])
def test_vad_frames_webrtcvad_takes(rate: int, ms: int) -> None:
    assert Reframer.for_vad(rate, ms).frame_samples == rate * ms // 1000
    assert check_vad_frame(rate, rate * ms // 1000) == ms


@pytest.mark.parametrize(("rate", "ms"), [(44100, 30), (16000, 25), (16000, 40), (22050, 20), (8000, 5)])
def test_vad_frames_webrtcvad_cannot_take_raise(rate: int, ms: int) -> None:
    with pytest.raises(AudioError, match=str(rate) if rate not in (8000, 16000) else "ms"):
        Reframer.for_vad(rate, ms)


def test_check_vad_frame_rejects_a_wrong_length_at_a_good_rate() -> None:
    with pytest.raises(AudioError, match="161 samples at 16000 Hz"):
        check_vad_frame(16000, 161)


def test_frame_samples_round_half_up() -> None:
    assert frame_samples_for(22050, 30) == 662
    assert frame_samples_for(11025, 30) == 331
    assert frame_samples_for(44100, 30) == 1323


@pytest.mark.parametrize(
    "bad",
    [np.zeros(10, dtype=np.float64), np.zeros((10, 2), dtype=np.float32), np.zeros(10, dtype=np.int16)],
)
def test_wrong_audio_raises(bad: np.ndarray) -> None:
    with pytest.raises(AudioError):
        Reframer(4).push(bad)


def test_nonpositive_frame_size_raises() -> None:
    with pytest.raises(AudioError):
        Reframer(0)
