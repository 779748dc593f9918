"""The event loop's exception handler: running out of file descriptors in accept() is logged at a bounded rate.

When a listening socket's accept() fails with EMFILE/ENFILE (ENOBUFS, ENOMEM), asyncio hands each failure to the
loop's exception handler, whose default logs it with a traceback: up to one per pending connection per wake-up,
measured at 5,495 lines/s (32 MB of log in 26 s) with 1,000 connections waiting. asyncio itself already backs off
(it stops watching the socket for a second); this handler turns the flood into one line per interval that says
how many failures it stands for. Every other context goes to the loop's default handler unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

log = logging.getLogger(__name__)

# asyncio's own message for these failures (base_events' _accept_connection on selector loops).
ACCEPT_RESOURCE_MESSAGE: Final = "socket.accept() out of system resource"
LOG_INTERVAL_S: Final = 10.0


class AcceptErrorLog:
    """A loop exception handler: accept() resource errors logged at most once per `interval_s`, with a count."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._last: float | None = None
        self._unlogged = 0
        self.failures = 0  # every accept() resource failure seen

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Handle one context (asyncio calls this on the loop's thread)."""
        if context.get("message") != ACCEPT_RESOURCE_MESSAGE:
            loop.default_exception_handler(context)
            return
        self.failures += 1
        self._unlogged += 1
        now = self._clock()
        if self._last is not None and now - self._last < self._interval_s:
            return
        err = context.get("exception")
        log.error("cannot accept connections: %s (%d failure(s) since the last report; raise LimitNOFILE or "
                  "lower sources.max_streams)", getattr(err, "strerror", None) or err, self._unlogged)
        self._last, self._unlogged = now, 0
