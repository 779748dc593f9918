"""The sink every source feeds: one VAD segmenter per open stream, each utterance handed on as it closes."""

from __future__ import annotations

import logging
from collections.abc import Callable

from daemon.counters import Counters
from daemon.errors import IntentdError
from daemon.events import Event, VadEndEvent, VadStartEvent
from daemon.frames import AudioChunk, Utterance
from daemon.settings import DEFAULTS, VadSettings
from daemon.vad import StreamSegmenter, UtteranceDiscarded, UtteranceStarted, VadEvent

log = logging.getLogger(__name__)


class StreamTable:
    """Implements daemon.sources.sink.StreamSink; every call happens on the event loop thread.

    Closed utterances go to `submit` (the batcher's queue) and are counted; with `vad_events`, speech edges go
    to `publish` (the outbox) as vad.start / vad.end events."""

    def __init__(
        self,
        vad: VadSettings,
        submit: Callable[[Utterance], object],
        publish: Callable[[Event], object],
        *,
        vad_events: bool = DEFAULTS.publisher.vad_events,
        counters: Counters | None = None,
    ) -> None:
        self._vad = vad
        self._segmenter_settings = vad.segmenter()
        self._submit = submit
        self._publish = publish
        self._vad_events = vad_events
        self._counters = counters if counters is not None else Counters()
        self._streams: dict[str, StreamSegmenter] = {}

    def configure(self, vad: VadSettings, vad_events: bool) -> None:
        """New VAD settings (after a reload) apply to streams opened from now on; open ones keep theirs."""
        self._vad = vad
        self._segmenter_settings = vad.segmenter()
        self._vad_events = vad_events

    @property
    def stream_ids(self) -> list[str]:
        """Streams open now."""
        return list(self._streams)

    def open_stream(self, stream_id: str, sample_rate: int, origin_wall: float) -> None:
        """Start segmenting a stream; a second stream with an open id is refused."""
        if stream_id in self._streams:
            raise IntentdError(f"stream id {stream_id!r} is already open")
        self._streams[stream_id] = StreamSegmenter(
            stream_id, sample_rate, self._segmenter_settings, self._vad.aggressiveness,
            stream_origin_wall=origin_wall,
        )
        log.info("stream %s opened at %d Hz", stream_id, sample_rate)

    def push(self, chunk: AudioChunk) -> None:
        """Segment a chunk; AudioError (NaN, wrong rate) propagates so the source closes the stream."""
        segmenter = self._streams.get(chunk.stream_id)
        if segmenter is None:
            raise IntentdError(f"stream {chunk.stream_id!r} sent audio but is not open")
        self._handle(segmenter.push(chunk))

    def close_stream(self, stream_id: str, reason: str | None) -> None:
        """End a stream; an utterance still open is closed as if speech ended and classified."""
        segmenter = self._streams.pop(stream_id, None)
        if segmenter is None:
            return
        self._handle(segmenter.flush())
        if reason:
            log.info("stream %s closed: %s", stream_id, reason)
        else:
            log.info("stream %s ended", stream_id)

    def _handle(self, vad_events: list[VadEvent]) -> None:
        for event in vad_events:
            if isinstance(event, Utterance):
                if self._vad_events:
                    self._publish(VadEndEvent.at(event.stream_id, event.index, event.end_sample, event.sample_rate,
                                                 event.stream_origin_wall))
                self._counters.utterance(event.truncated)
                self._submit(event)
            elif isinstance(event, UtteranceStarted) and self._vad_events:
                self._publish(VadStartEvent.at(event.stream_id, event.index, event.start_sample, event.sample_rate,
                                               event.stream_origin_wall))
            elif isinstance(event, UtteranceDiscarded):
                log.debug("stream %s: discarded a %d-sample blip", event.stream_id,
                          event.end_sample - event.start_sample)
                if self._vad_events:  # every vad.start gets its vad.end, so live views leave "speech"
                    self._publish(VadEndEvent.at(event.stream_id, event.index, event.end_sample,
                                                 event.sample_rate, event.stream_origin_wall, discarded=True))
