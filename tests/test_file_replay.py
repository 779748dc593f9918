"""File replay into a recording sink: fast, real-time paced, stopped early, unreadable files."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from intentd.daemon.audio import SAMPLE_RATE, to_mono
from intentd.daemon.errors import SourceError
from intentd.daemon.sources.file_replay import FileReplaySource
from tests.recording_sink import RecordingSink


def _write(path: Path, rate: int, channels: int, seconds: float, subtype: str) -> np.ndarray:
    rng = np.random.default_rng(3)
    data = rng.uniform(-0.8, 0.8, size=(int(rate * seconds), channels)).astype(np.float32)
    sf.write(path, data, rate, subtype=subtype)
    return sf.read(path, dtype="float32", always_2d=True)[0]


@pytest.mark.parametrize(
    ("name", "rate", "channels", "subtype"),
    [
        ("a.wav", SAMPLE_RATE, 1, "PCM_16"),
        ("b.flac", 44100, 2, "PCM_16"),
        ("c.wav", 8000, 3, "FLOAT"),
    ],
)
def test_fast_replay_delivers_the_file_as_mono_float32(
    tmp_path: Path, name: str, rate: int, channels: int, subtype: str
) -> None:
    path = tmp_path / name
    frames = _write(path, rate, channels, 1.3, subtype)
    sink = RecordingSink()
    src = FileReplaySource(path, sink, chunk_ms=20)
    pushed = asyncio.run(src.replay())
    rec = sink.by_id(str(path))
    assert rec.closed and rec.reason is None and rec.sample_rate == rate
    expected = to_mono(frames, channels_axis=1)
    np.testing.assert_array_equal(rec.samples, expected)
    assert pushed == len(frames)
    assert {c.samples.size for c in rec.chunks[:-1]} == {rate * 20 // 1000}


def test_realtime_replay_takes_about_the_audio_duration(tmp_path: Path) -> None:
    path = tmp_path / "rt.wav"
    _write(path, SAMPLE_RATE, 1, 0.5, "PCM_16")
    sink = RecordingSink()

    async def run() -> float:
        src = FileReplaySource(path, sink, chunk_ms=50, realtime=True, stream_id="rt")
        t0 = time.monotonic()
        await src.start()
        await src.wait()
        return time.monotonic() - t0

    elapsed = asyncio.run(run())
    # The last chunk is pushed at 0.45 s of audio clock; generous upper bound for a loaded 2-core machine.
    assert 0.4 <= elapsed < 1.5, elapsed
    assert sink.by_id("rt").samples.size == SAMPLE_RATE // 2


def test_close_mid_replay_closes_the_stream_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    _write(path, SAMPLE_RATE, 1, 5.0, "PCM_16")
    sink = RecordingSink()

    async def run() -> None:
        src = FileReplaySource(path, sink, chunk_ms=20, realtime=True, stream_id="long")
        await src.start()
        await sink.wait_until(lambda: any(r.chunks for r in sink.streams))
        await src.close()

    asyncio.run(run())
    rec = sink.by_id("long")
    assert rec.closed and rec.reason == "server shutting down"
    assert 0 < rec.samples.size < SAMPLE_RATE * 5


def test_unreadable_file_is_a_source_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "not-audio.wav"
    bad.write_bytes(b"this is not a wav file")
    sink = RecordingSink()
    for path in (bad, tmp_path / "missing.flac"):
        with pytest.raises(SourceError, match=str(path.name)):
            asyncio.run(FileReplaySource(path, sink).start())
        with pytest.raises(SourceError, match=str(path.name)):
            asyncio.run(FileReplaySource(path, sink).replay())
    assert sink.streams == []


def test_a_fast_replay_is_recorded_and_paced_by_the_sinks_room_a_realtime_one_is_live(tmp_path: Path) -> None:
    path = tmp_path / "paced.wav"
    frames = _write(path, SAMPLE_RATE, 1, 0.5, "PCM_16")
    sink = RecordingSink()
    sink.has_room(False)  # the model has fallen behind

    async def run() -> None:
        src = FileReplaySource(path, sink, chunk_ms=20, stream_id="paced")
        await src.start()
        await sink.wait_until(lambda: sink.room_waits >= 1)
        rec = sink.by_id("paced")
        assert rec.live is False and rec.chunks == []  # waits before its first chunk: nothing dropped, nothing sent
        sink.has_room(True)
        await src.wait()

    asyncio.run(run())
    rec = sink.by_id("paced")
    assert rec.closed and rec.reason is None
    np.testing.assert_array_equal(rec.samples, frames[:, 0])
    sink.has_room(False)
    live = FileReplaySource(path, sink, chunk_ms=20, realtime=True, stream_id="live")
    asyncio.run(live.replay())  # live never waits for room, even with none
    assert sink.by_id("live").live is True and sink.room_waits == 1
