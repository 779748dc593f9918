"""The sink every source feeds: one VAD segmenter per open stream, each utterance handed on as it closes.

It is also where recorded streams wait for room (`wait_room`): the batcher's worker thread says when it took
recorded utterances off its queue, and the waiting sources on the event loop look again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from intentd.daemon.batcher import StreamAccount
from intentd.daemon.counters import Counters
from intentd.daemon.errors import IntentdError
from intentd.daemon.events import DiscardedEvent, Event, VadEndEvent, VadStartEvent
from intentd.daemon.frames import AudioChunk, Utterance
from intentd.daemon.settings import DEFAULTS, VadSettings
from intentd.daemon.vad import StreamSegmenter, UtteranceDiscarded, UtteranceStarted, VadEvent

log = logging.getLogger(__name__)


class Intake(Protocol):
    """The next stage (daemon.batcher.MicroBatcher): takes utterances, accounts for each stream, has room or not."""

    def open_stream(self, stream_id: str, live: bool) -> StreamAccount: ...

    def submit(self, utterance: Utterance, account: StreamAccount | None = None) -> bool: ...

    def end_stream(self, account: StreamAccount, reason: str | None, *, duration_s: float,
                   discarded: int) -> None: ...

    def has_room(self) -> bool: ...

    def add_room_listener(self, listener: Callable[[], None]) -> None: ...


@dataclass(slots=True)
class _Stream:
    segmenter: StreamSegmenter
    account: StreamAccount
    vad_events: bool  # publish its speech edges: publisher.vad_events, or its client asked
    samples: int = 0  # received so far, at the stream's rate
    discarded: int = 0


class StreamTable:
    """Implements daemon.sources.sink.StreamSink; every call happens on the event loop thread.

    Closed utterances go to `intake` (the batcher) and are counted, and so does each stream's end; with
    `vad_events` (every stream's) or a stream opened with `vad_events` (its own), speech edges go to `publish`
    (the outbox) as vad.start / vad.end events, and with `blip_events` each discarded blip as
    utterance.discarded."""

    def __init__(
        self,
        vad: VadSettings,
        intake: Intake,
        publish: Callable[[Event], object],
        *,
        vad_events: bool = DEFAULTS.publisher.vad_events,
        blip_events: bool = DEFAULTS.publisher.blip_events,
        counters: Counters | None = None,
    ) -> None:
        self._intake = intake
        self._publish = publish
        self.configure(vad, vad_events, blip_events)
        self._counters = counters if counters is not None else Counters()
        self._streams: dict[str, _Stream] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # known once a recorded stream waits for room
        self._room = asyncio.Event()
        intake.add_room_listener(self._room_freed)

    def configure(self, vad: VadSettings, vad_events: bool,
                  blip_events: bool = DEFAULTS.publisher.blip_events) -> None:
        """New VAD settings (after a reload) apply to streams opened from now on; open ones keep theirs."""
        self._vad = vad
        self._segmenter_settings = vad.segmenter()
        self._vad_events = vad_events
        self._blip_events = blip_events

    @property
    def stream_ids(self) -> list[str]:
        """Streams open now."""
        return list(self._streams)

    def open_stream(self, stream_id: str, sample_rate: int, origin_wall: float, *, live: bool = True,
                    vad_events: bool = False) -> None:
        """Start segmenting a stream (`vad_events`: publish its speech edges whatever publisher.vad_events says);
        a second stream with an open id is refused."""
        if stream_id in self._streams:
            raise IntentdError(f"stream id {stream_id!r} is already open")
        segmenter = StreamSegmenter(stream_id, sample_rate, self._segmenter_settings, self._vad.aggressiveness,
                                    stream_origin_wall=origin_wall)
        self._streams[stream_id] = _Stream(segmenter, self._intake.open_stream(stream_id, live), vad_events)
        log.info("stream %s opened at %d Hz (%s)", stream_id, sample_rate, "live" if live else "recorded")

    def push(self, chunk: AudioChunk) -> None:
        """Segment a chunk; AudioError (NaN, wrong rate) propagates so the source closes the stream."""
        stream = self._streams.get(chunk.stream_id)
        if stream is None:
            raise IntentdError(f"stream {chunk.stream_id!r} sent audio but is not open")
        events = stream.segmenter.push(chunk)
        stream.samples = chunk.start_sample + chunk.samples.size
        self._handle(stream, events)

    async def wait_room(self, stream_id: str) -> None:
        """Return at once for a live stream; a recorded one waits until the model's queue has room for it."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.account.live:
            return
        self._loop = asyncio.get_running_loop()
        while True:
            # Cleared before looking: a wake-up from the worker after the look still ends the wait below.
            self._room.clear()
            if self._intake.has_room():
                return
            await self._room.wait()

    def close_stream(self, stream_id: str, reason: str | None) -> None:
        """End a stream; an utterance still open is closed as if speech ended and classified. Its stream.end
        follows the outcome of its last utterance."""
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._handle(stream, stream.segmenter.flush())
        self._intake.end_stream(stream.account, reason, duration_s=stream.samples / stream.segmenter.sample_rate,
                                discarded=stream.discarded)
        if reason:
            log.info("stream %s closed: %s", stream_id, reason)
        else:
            log.info("stream %s ended", stream_id)

    def _room_freed(self) -> None:
        """On the batcher's worker thread: wake the recorded streams waiting for room, on the loop."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                loop.call_soon_threadsafe(self._room.set)

    def _handle(self, stream: _Stream, vad_events: list[VadEvent]) -> None:
        # Read per call, not stored at open: a reload that turns publisher.vad_events on applies to open streams.
        edges = self._vad_events or stream.vad_events
        for event in vad_events:
            if isinstance(event, Utterance):
                if edges:
                    self._publish(VadEndEvent.at(event.stream_id, event.index, event.end_sample, event.sample_rate,
                                                 event.stream_origin_wall))
                self._counters.utterance(event.truncated)
                self._intake.submit(event, stream.account)
            elif isinstance(event, UtteranceStarted) and edges:
                self._publish(VadStartEvent.at(event.stream_id, event.index, event.start_sample, event.sample_rate,
                                               event.stream_origin_wall))
            elif isinstance(event, UtteranceDiscarded):
                log.debug("stream %s: discarded a %d-sample blip", event.stream_id,
                          event.end_sample - event.start_sample)
                stream.discarded += 1
                self._counters.discarded()
                if edges:  # every vad.start gets its vad.end, so live views leave "speech"
                    self._publish(VadEndEvent.at(event.stream_id, event.index, event.end_sample,
                                                 event.sample_rate, event.stream_origin_wall, discarded=True))
                if self._blip_events:
                    self._publish(DiscardedEvent.from_blip(event))
