"""StreamTable, the sink between sources and the batcher, driven directly with real speech and real webrtcvad."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from daemon import events
from daemon.audio import SAMPLE_RATE
from daemon.counters import Counters
from daemon.errors import IntentdError
from daemon.frames import AudioChunk, Utterance
from daemon.settings import VadSettings
from daemon.streams import StreamTable
from tests.daemon_proc import silence, speech_clips

CHUNK = SAMPLE_RATE // 50  # 20 ms


def _feed(table: StreamTable, stream_id: str, audio: np.ndarray) -> None:
    table.open_stream(stream_id, SAMPLE_RATE, time.time())
    for start in range(0, audio.size, CHUNK):
        table.push(AudioChunk(stream_id, audio[start:start + CHUNK], SAMPLE_RATE, start, time.monotonic()))
    table.close_stream(stream_id, None)


def test_every_vad_start_has_one_end_and_short_speech_is_flagged_discarded(tmp_path: Path) -> None:
    clip = speech_clips(1, tmp_path)[0]
    blip = clip[: int(0.35 * SAMPLE_RATE)]  # the first 350 ms of speech: voiced, but below the minimum
    audio = np.concatenate([silence(0.5), blip, silence(1.0), clip, silence(1.0)])
    submitted: list[Utterance] = []
    published: list[events.Event] = []
    counters = Counters()
    # A 700 ms voiced minimum makes the blip too short while the phrase (> 1 s) is kept.
    settings = VadSettings(min_utterance_ms=700)
    table = StreamTable(settings, submitted.append, published.append, vad_events=True, counters=counters)
    _feed(table, "s", audio)

    assert [u.index for u in submitted] == [0]
    assert counters.status()["utterances"] == 1  # the discarded blip is not an utterance
    kinds = [(e.topic, e.utterance, getattr(e, "discarded", None)) for e in published]  # type: ignore[attr-defined]
    assert kinds == [("vad.start", 0, None), ("vad.end", 0, True), ("vad.start", 0, None), ("vad.end", 0, False)]
    # vad.start comes before the voiced end of the same utterance, on the stream's wall clock.
    start, end = published[2], published[3]
    assert isinstance(start, events.VadStartEvent) and isinstance(end, events.VadEndEvent)
    assert start.at_s < end.at_s and start.at_wall < end.at_wall
    parsed = events.decode(events.encode(published[1], seq=1, published_wall=time.time()))
    assert isinstance(parsed, events.VadEndEvent) and parsed.discarded


def test_stream_ids_are_unique_while_open_and_close_flushes_open_speech(tmp_path: Path) -> None:
    clip = speech_clips(1, tmp_path)[0]
    submitted: list[Utterance] = []
    table = StreamTable(VadSettings(), submitted.append, lambda e: None)
    table.open_stream("a", SAMPLE_RATE, time.time())
    with pytest.raises(IntentdError, match="already open"):
        table.open_stream("a", SAMPLE_RATE, time.time())
    # Speech right up to the end: no trailing silence, so only close_stream can end it.
    audio = np.concatenate([silence(0.3), clip[: clip.size * 6 // 10]])  # cut mid-phrase
    for start in range(0, audio.size, CHUNK):
        table.push(AudioChunk("a", audio[start:start + CHUNK], SAMPLE_RATE, start, time.monotonic()))
    assert submitted == []
    assert table.stream_ids == ["a"]
    table.close_stream("a", "client vanished")
    assert len(submitted) == 1 and table.stream_ids == []
    with pytest.raises(IntentdError, match="not open"):
        table.push(AudioChunk("a", silence(0.02), SAMPLE_RATE, 0, time.monotonic()))
