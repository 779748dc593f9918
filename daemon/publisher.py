"""Events -> ZeroMQ PUB. Sends never block: a slow or absent subscriber must not slow the pipeline.

With CURVE keys (`[security]`, docs/security.md) the socket is a CURVE server: traffic is encrypted, and a ZAP
handler on its own thread (pyzmq's ThreadAuthenticator) admits only subscribers whose public key is allowed.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import Any, Final, Self

import zmq

from intentd.daemon import events
from intentd.daemon.counters import Counters
from intentd.daemon.errors import ConfigError, UnavailableError
from intentd.daemon.security import REFUSED_CURVE, CurveAllowList, CurveServer
from intentd.daemon.settings import DEFAULTS

log = logging.getLogger(__name__)

DEFAULT_LINGER_MS: Final = 1000
SCHEMES: Final = ("tcp://", "ipc://")


class PublisherError(UnavailableError):
    """The event socket cannot be bound (address in use, no permission); the message names the URI."""


def check_uri(uri: str) -> None:
    """Refuse URIs the publisher cannot bind, before ZeroMQ gives a vaguer error."""
    if not uri.startswith(SCHEMES):
        raise ConfigError(f"publisher.uri {uri!r}: expected tcp://HOST:PORT or ipc:///PATH")
    rest = uri.split("://", 1)[1]
    if not rest:
        raise ConfigError(f"publisher.uri {uri!r}: nothing after the scheme")
    if uri.startswith("tcp://"):
        host, sep, port = rest.rpartition(":")
        if not sep or not host or not (port == "*" or port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(
                f"publisher.uri {uri!r}: expected tcp://HOST:PORT with a port in 1-65535 (or *)"
            )


class Publisher:
    """A PUB socket bound to `uri`; `publish` stamps a sequence number that grows by one per message, and this
    daemon's `instance` id (default HOSTNAME:PID), so subscribers to several daemons count `seq` per instance."""

    def __init__(
        self,
        uri: str = DEFAULTS.publisher.uri,
        sndhwm: int = DEFAULTS.publisher.sndhwm,
        context: zmq.Context[Any] | None = None,
        *,
        curve: CurveServer | None = None,
        counters: Counters | None = None,
        instance: str | None = None,
    ) -> None:
        check_uri(uri)
        self.instance = instance or events.default_instance()
        if sndhwm < 1:
            raise ConfigError(f"publisher.sndhwm must be at least 1, got {sndhwm}")
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket = self._context.socket(zmq.PUB)
        # Per subscriber: beyond this many queued messages libzmq drops for that subscriber only.
        self._socket.setsockopt(zmq.SNDHWM, sndhwm)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._authenticator: Any = None
        if curve is not None:
            self._authenticator = self._start_curve(curve, counters if counters is not None else Counters())
        try:
            self._socket.bind(uri)
        except zmq.ZMQError as err:
            self._socket.close(linger=0)
            self._stop_curve()
            if self._own_context:
                self._context.term()
            raise PublisherError(f"cannot bind the event publisher to {uri}: {err.strerror}") from err
        self.uri = uri
        # With port * (tests) this holds the port actually bound.
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._lock = threading.Lock()
        self._seq = 0
        self._closed = False
        self.sent = 0
        # Messages the socket refused outright. Per-subscriber HWM drops are invisible to a PUB socket;
        # subscribers see them as gaps in `seq` (clients.subscriber.Subscriber.missed).
        self.dropped = 0
        log.info("publishing events on %s as instance %s%s", self.endpoint, self.instance,
                 f" (CURVE, {len(curve.allowed)} allowed subscriber keys)" if curve is not None else "")

    def _start_curve(self, curve: CurveServer, counters: Counters) -> Any:
        """Make the socket a CURVE server whose ZAP handler admits only the allowed keys (before bind)."""
        from zmq.auth.thread import ThreadAuthenticator

        authenticator = ThreadAuthenticator(self._context, log=logging.getLogger(f"{__name__}.zap"))
        authenticator.start()
        authenticator.configure_curve_callback(
            "*", CurveAllowList(curve.allowed, on_refused=lambda: counters.refused(REFUSED_CURVE)))
        self._socket.curve_secretkey = curve.secret_key
        self._socket.curve_publickey = curve.public_key
        self._socket.curve_server = True
        return authenticator

    def _stop_curve(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None

    @property
    def seq(self) -> int:
        """The sequence number of the last message published (0 before the first)."""
        return self._seq

    def publish(self, event: events.Event) -> int:
        """Send one event without blocking, from any thread; returns the sequence number it carried."""
        with self._lock:
            if self._closed:
                raise PublisherError(f"publisher on {self.uri} is closed")
            self._seq += 1
            seq = self._seq
            frames = events.encode(event, seq=seq, published_wall=time.time(), instance=self.instance)
            try:
                self._socket.send_multipart(frames, flags=zmq.NOBLOCK)
            except zmq.Again:
                self.dropped += 1
                log.debug("event %d on %s dropped: socket would block", seq, event.topic)
            else:
                self.sent += 1
        return seq

    def close(self, linger_ms: int = DEFAULT_LINGER_MS) -> None:
        """Close the socket, giving queued messages up to `linger_ms` to leave; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._socket.close(linger=linger_ms)
        self._stop_curve()
        if self._own_context:
            self._context.term()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
