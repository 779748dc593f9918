"""The interface every audio source feeds; the daemon's StreamTable implements it (tests record it with
tests/recording_sink.py)."""

from __future__ import annotations

from typing import Protocol

from daemon.frames import AudioChunk


class StreamSink(Protocol):
    """Receives streams from sources. Every call happens on the asyncio event loop thread."""

    def open_stream(self, stream_id: str, sample_rate: int, origin_wall: float) -> None:
        """Start a stream; raise IntentdError to refuse it (e.g. the id is already open)."""
        ...

    def push(self, chunk: AudioChunk) -> None:
        """Take mono float32 audio at the stream's rate; raise AudioError to reject the stream."""
        ...

    def close_stream(self, stream_id: str, reason: str | None) -> None:
        """End a stream: None for a normal end, else why. Called exactly once per opened stream."""
        ...
