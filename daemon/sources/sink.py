"""The interface every audio source feeds; the daemon's StreamTable implements it (tests record it with
tests/recording_sink.py)."""

from __future__ import annotations

from typing import Protocol

from intentd.daemon.frames import AudioChunk


class StreamSink(Protocol):
    """Receives streams from sources. Every call happens on the asyncio event loop thread."""

    def open_stream(self, stream_id: str, sample_rate: int, origin_wall: float, *, live: bool = True,
                    vad_events: bool = False) -> None:
        """Start a stream; raise IntentdError to refuse it (e.g. the id is already open). `live`: audio paced by
        a clock (its utterances may be dropped under load); False: recorded audio, read no faster than the
        model takes it (the source awaits `wait_room` before each chunk). `vad_events`: publish this stream's
        speech edges even where publisher.vad_events is off (its client asked for them)."""
        ...

    async def wait_room(self, stream_id: str) -> None:
        """Return when a recorded stream may push its next chunk (at once for a live one): backpressure."""
        ...

    def push(self, chunk: AudioChunk) -> None:
        """Take mono float32 audio at the stream's rate; raise AudioError to reject the stream."""
        ...

    def close_stream(self, stream_id: str, reason: str | None) -> None:
        """End a stream: None for a normal end, else why. Called exactly once per opened stream."""
        ...
