"""StreamTable, the sink between sources and the batcher, driven directly with real speech and real webrtcvad."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from intentd.daemon import events
from intentd.daemon.audio import SAMPLE_RATE
from intentd.daemon.batcher import MicroBatcher, StreamAccount
from intentd.daemon.counters import Counters
from intentd.daemon.errors import IntentdError
from intentd.daemon.frames import AudioChunk, Utterance
from intentd.daemon.settings import BatcherSettings, VadSettings
from intentd.daemon.streams import StreamTable
from tests.daemon_proc import silence, speech_clips
from tests.test_batcher import WAIT_S, FakeModel, Sink, utt

CHUNK = SAMPLE_RATE // 50  # 20 ms


class Intake:
    """The batcher's side of daemon.streams.Intake, recording what the table hands it."""

    def __init__(self) -> None:
        self.submitted: list[Utterance] = []
        self.ends: list[tuple[str, bool, str | None, float, int]] = []
        self.room_listeners: list[Callable[[], None]] = []

    def open_stream(self, stream_id: str, live: bool) -> StreamAccount:
        return StreamAccount(stream_id, live)

    def submit(self, utterance: Utterance, account: StreamAccount | None = None) -> bool:
        assert account is not None and account.stream_id == utterance.stream_id
        self.submitted.append(utterance)
        return True

    def end_stream(self, account: StreamAccount, reason: str | None, *, duration_s: float, discarded: int) -> None:
        self.ends.append((account.stream_id, account.live, reason, duration_s, discarded))

    def has_room(self) -> bool:
        return True

    def add_room_listener(self, listener: Callable[[], None]) -> None:
        self.room_listeners.append(listener)


def _feed(table: StreamTable, stream_id: str, audio: np.ndarray, vad_events: bool = False) -> None:
    table.open_stream(stream_id, SAMPLE_RATE, time.time(), live=False, vad_events=vad_events)
    for start in range(0, audio.size, CHUNK):
        table.push(AudioChunk(stream_id, audio[start:start + CHUNK], SAMPLE_RATE, start, time.monotonic()))
    table.close_stream(stream_id, None)


def test_every_vad_start_has_one_end_and_short_speech_is_flagged_discarded(tmp_path: Path) -> None:
    clip = speech_clips(1, tmp_path)[0]
    blip = clip[: int(0.35 * SAMPLE_RATE)]  # the first 350 ms of speech: voiced, but below the minimum
    audio = np.concatenate([silence(0.5), blip, silence(1.0), clip, silence(1.0)])
    intake = Intake()
    published: list[events.Event] = []
    counters = Counters()
    # A 700 ms voiced minimum makes the blip too short while the phrase (> 1 s) is kept.
    settings = VadSettings(min_utterance_ms=700)
    table = StreamTable(settings, intake, published.append, vad_events=True, counters=counters)
    _feed(table, "s", audio)

    assert [u.index for u in intake.submitted] == [0]
    assert counters.status()["utterances"] == 1  # the discarded blip is not an utterance...
    assert counters.status()["discarded"] == 1  # ...but it is counted
    assert intake.ends == [("s", False, None, audio.size / SAMPLE_RATE, 1)]  # and its stream's end says so
    kinds = [(e.topic, e.utterance, getattr(e, "discarded", None)) for e in published]  # type: ignore[attr-defined]
    assert kinds == [("vad.start", 0, None), ("vad.end", 0, True), ("vad.start", 0, None), ("vad.end", 0, False)]
    # vad.start comes before the voiced end of the same utterance, on the stream's wall clock.
    start, end = published[2], published[3]
    assert isinstance(start, events.VadStartEvent) and isinstance(end, events.VadEndEvent)
    assert start.at_s < end.at_s and start.at_wall < end.at_wall
    parsed = events.decode(events.encode(published[1], seq=1, published_wall=time.time()))
    assert isinstance(parsed, events.VadEndEvent) and parsed.discarded


def test_a_stream_that_asks_for_its_vad_events_gets_them_with_publisher_vad_events_off(tmp_path: Path) -> None:
    clip = speech_clips(1, tmp_path)[0]
    audio = np.concatenate([silence(0.5), clip, silence(1.0)])
    published: list[events.Event] = []
    table = StreamTable(VadSettings(), Intake(), published.append)  # publisher.vad_events: the default, off
    _feed(table, "quiet", audio)
    _feed(table, "asked", audio, vad_events=True)  # e.g. intentd-live's header
    assert [(e.topic, e.stream_id) for e in published] == [  # type: ignore[attr-defined]
        ("vad.start", "asked"), ("vad.end", "asked")]


def test_stream_ids_are_unique_while_open_and_close_flushes_open_speech(tmp_path: Path) -> None:
    clip = speech_clips(1, tmp_path)[0]
    intake = Intake()
    submitted = intake.submitted
    table = StreamTable(VadSettings(), intake, lambda e: None)
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
    assert intake.ends == [("a", True, "client vanished", audio.size / SAMPLE_RATE, 0)]
    with pytest.raises(IntentdError, match="not open"):
        table.push(AudioChunk("a", silence(0.02), SAMPLE_RATE, 0, time.monotonic()))


def test_blip_events_publish_each_discarded_blip_and_only_when_asked(tmp_path: Path) -> None:
    clip = speech_clips(1, tmp_path)[0]
    audio = np.concatenate([silence(0.5), clip[: int(0.35 * SAMPLE_RATE)], silence(1.0)])
    for blip_events in (False, True):
        intake, published = Intake(), []  # type: ignore[var-annotated]
        table = StreamTable(VadSettings(min_utterance_ms=700), intake, published.append, blip_events=blip_events)
        _feed(table, "s", audio)
        assert intake.submitted == [] and intake.ends[0][-1] == 1
        if not blip_events:
            assert published == []
            continue
        (blip,) = published
        assert isinstance(blip, events.DiscardedEvent) and (blip.stream_id, blip.utterance) == ("s", 0)
        # Within the blip, give or take the 300 ms pre-roll before it and the hangover after it.
        assert 0.5 - 0.3 <= blip.start_s < blip.end_s <= 0.5 + 0.35 + 0.3
        assert blip.duration_s == pytest.approx(blip.end_s - blip.start_s)


def test_recorded_streams_wait_for_room_woken_from_the_worker_thread_and_live_ones_never_wait() -> None:
    model, sink = FakeModel(gated=True), Sink()
    batcher = MicroBatcher(model, sink, BatcherSettings(max_batch=4, max_wait_ms=0.0, recorded_high_water=2))
    batcher.start()
    table = StreamTable(VadSettings(), batcher, lambda e: None)

    async def run() -> None:
        table.open_stream("file", SAMPLE_RATE, time.time(), live=False)
        table.open_stream("mic", SAMPLE_RATE, time.time())
        other = batcher.open_stream("other-file", live=False)
        batcher.submit(utt("other-file", 0), other)
        assert await asyncio.to_thread(model.entered.wait, WAIT_S)
        batcher.submit(utt("other-file", 1), other)
        await table.wait_room("file")  # one recorded utterance waits: room for one more
        batcher.submit(utt("other-file", 2), other)
        waiting = asyncio.create_task(table.wait_room("file"))
        await table.wait_room("mic")  # live: never held back
        await table.wait_room("closed-or-unknown")
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting.done() and not batcher.has_room()
        model.gate.set()  # the worker takes both waiting utterances and wakes the table from its thread
        await asyncio.wait_for(waiting, WAIT_S)
        assert batcher.has_room()

    try:
        asyncio.run(run())
    finally:
        model.gate.set()
        assert batcher.drain(WAIT_S)
