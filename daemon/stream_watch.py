"""Hands a stream's events back to the source that opened it, for protocols that answer their client.

INTD clients read their outcomes from ZeroMQ; a Wyoming client (Home Assistant) waits on its own connection for
a transcript. The Outbox gives every event it publishes to `StreamWatchers.deliver` as well (on whichever thread
published it); an event of a watched stream is put on that watcher's asyncio queue, on the watcher's loop. Events
of streams nobody watches, and stream-less ones (status), cost one dictionary look-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

from intentd.daemon.errors import IntentdError
from intentd.daemon.events import Event


class StreamWatchers:
    """Stream id -> the queue its events go to; watch() and unwatch() on the loop, deliver() from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hands: dict[str, Callable[[Event], None]] = {}

    def watch(self, stream_id: str) -> asyncio.Queue[Event]:
        """Start receiving the stream's events (call before the stream opens, so none is missed)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def hand(event: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                loop.call_soon_threadsafe(queue.put_nowait, event)

        with self._lock:
            if stream_id in self._hands:
                raise IntentdError(f"stream id {stream_id!r} is already watched")
            self._hands[stream_id] = hand
        return queue

    def unwatch(self, stream_id: str) -> None:
        """Stop receiving the stream's events (later ones go to ZeroMQ only)."""
        with self._lock:
            self._hands.pop(stream_id, None)

    def deliver(self, event: Event) -> None:
        """Give a published event to its stream's watcher, if any; never raises into the publishing stage."""
        stream_id = getattr(event, "stream_id", None)
        if stream_id is None:
            return
        with self._lock:
            hand = self._hands.get(stream_id)
        if hand is not None:
            hand(event)
