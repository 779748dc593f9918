"""A StreamSink that records everything a source gives it: the test double every source test feeds.

It checks what the runtime's StreamTable relies on (open before push, contiguous mono float32 chunks at the
stream's rate, one close per open), so a source that breaks the contract fails its own tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from intentd.daemon.errors import AudioError, IntentdError
from intentd.daemon.frames import AudioChunk


@dataclass(slots=True)
class RecordedStream:
    """Everything a RecordingSink saw of one stream."""

    stream_id: str
    sample_rate: int
    origin_wall: float
    live: bool = True
    vad_events: bool = False
    chunks: list[AudioChunk] = field(default_factory=list)
    closed: bool = False
    reason: str | None = None

    @property
    def samples(self) -> np.ndarray:
        """All pushed samples joined."""
        if not self.chunks:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([c.samples for c in self.chunks])


class RecordingSink:
    """A StreamSink that keeps everything it is given, refuses duplicate open ids and checks contiguity."""

    def __init__(self) -> None:
        self.streams: list[RecordedStream] = []
        self._open: dict[str, RecordedStream] = {}
        self._waiters: list[asyncio.Future[None]] = []
        # While False, recorded streams wait in wait_room (a model that has fallen behind); set it with has_room.
        self._room = True
        self.room_waits = 0  # wait_room calls that had to wait

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once predicate() holds; it is rechecked after every sink call (all on the loop thread)."""
        while not predicate():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    async def wait_closed(self, stream_id: str) -> RecordedStream:
        """Return the stream with this id once it has been closed."""
        await self.wait_until(lambda: any(r.stream_id == stream_id and r.closed for r in self.streams))
        return self.by_id(stream_id)

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def open_stream(self, stream_id: str, sample_rate: int, origin_wall: float, *, live: bool = True,
                    vad_events: bool = False) -> None:
        """Record a new stream; IntentdError if the id is already open."""
        if stream_id in self._open:
            raise IntentdError(f"stream {stream_id!r} is already open")
        rec = RecordedStream(stream_id, sample_rate, origin_wall, live, vad_events)
        self.streams.append(rec)
        self._open[stream_id] = rec
        self._notify()

    def push(self, chunk: AudioChunk) -> None:
        """Record a chunk; AudioError if it is not contiguous, mono float32 at the stream's rate."""
        rec = self._open.get(chunk.stream_id)
        if rec is None:
            raise AudioError(f"stream {chunk.stream_id!r}: push before open")
        expected = sum(len(c.samples) for c in rec.chunks)
        if chunk.start_sample != expected or chunk.sample_rate != rec.sample_rate:
            raise AudioError(
                f"stream {chunk.stream_id!r}: chunk at {chunk.start_sample} @ {chunk.sample_rate} Hz, "
                f"expected {expected} @ {rec.sample_rate} Hz"
            )
        if chunk.samples.dtype != np.float32 or chunk.samples.ndim != 1:
            raise AudioError(f"stream {chunk.stream_id!r}: samples must be 1-D float32")
        rec.chunks.append(chunk)
        self._notify()

    def has_room(self, room: bool) -> None:
        """Let recorded streams push (True) or hold them in wait_room (False)."""
        self._room = room
        self._notify()

    async def wait_room(self, stream_id: str) -> None:
        """Return at once for a live stream or while there is room; else wait until has_room(True)."""
        rec = self._open.get(stream_id)
        if rec is None:
            raise AudioError(f"stream {stream_id!r}: waits for room but is not open")
        if rec.live or self._room:
            return
        self.room_waits += 1
        self._notify()
        await self.wait_until(lambda: self._room)

    def close_stream(self, stream_id: str, reason: str | None) -> None:
        """Record the end of a stream; AudioError if it was not open (a source bug)."""
        rec = self._open.pop(stream_id, None)
        if rec is None:
            raise AudioError(f"stream {stream_id!r}: closed but not open")
        rec.closed = True
        rec.reason = reason
        self._notify()

    def by_id(self, stream_id: str) -> RecordedStream:
        """The most recent closed (else open) stream with this id; KeyError if none."""
        matches = [rec for rec in self.streams if rec.stream_id == stream_id]
        if not matches:
            raise KeyError(stream_id)
        closed = [rec for rec in matches if rec.closed]
        return (closed or matches)[-1]
