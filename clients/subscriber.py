"""Subscriber library: typed intentd events from a ZeroMQ SUB socket, with gap counting and synchronisation.

No torch, no numpy: only pyzmq and intentd.daemon.events.

    with Subscriber("tcp://127.0.0.1:5556", topics=("intent.",)) as sub:
        for event in sub:
            print(event.label, event.score, {name: slot.value for name, slot in event.slots.items()})

An intent event's `slots` ({slot: SlotValue(value, score)}) is {} unless the model has slot heads and the intent
took slots; events from a daemon without slots parse the same.

One socket takes several daemons at once (`Subscriber(["tcp://a:5556", "tcp://b:5556"])`, ZeroMQ connects to each
and interleaves their messages fairly), or one `intentd-proxy` in front of them. Each event names the daemon that
published it (`event.instance`) and `seq` counts per instance, so gaps and restarts are counted per instance too
(docs/deploy.md).

A daemon with CURVE keys (docs/security.md) admits only subscribers whose public key it allows: pass
`curve=load_curve_keys("kitchen.key_secret", "server.key")`. A refused handshake is logged once and counted in
`refused`; ZeroMQ keeps retrying, so a key allowed later starts receiving without a restart.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from intentd.daemon import events
from intentd.daemon.errors import IntentdError
from intentd.daemon.events import Event

log = logging.getLogger(__name__)

DEFAULT_CONNECT: Final = events.DEFAULT_EVENTS_URI
RECONNECT_IVL_MS: Final = 100  # first retry after the daemon goes away...
RECONNECT_IVL_MAX_MS: Final = 5000  # ...backing off to this
DEFAULT_RCVHWM: Final = 100_000
POLL_SLICE_S: Final = 0.1  # longest single wait, so Ctrl-C and pokes are handled promptly
POKE_INTERVAL_S: Final = 0.05
# Handshakes the publisher can refuse: a CURVE key it does not allow, or CURVE on one side only.
_HANDSHAKE_FAILURES: Final = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL


class SubscriberError(IntentdError):
    """The subscriber cannot connect (a malformed URI) or its keys cannot be read; the message names it."""


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """A subscriber's CURVE key pair and the publisher's public key, Z85-encoded."""

    public_key: bytes
    secret_key: bytes
    server_key: bytes

    def __repr__(self) -> str:  # never the secret
        return f"CurveKeys(public_key={self.public_key!r}, server_key={self.server_key!r})"


def load_curve_keys(key_file: str | Path, server_key_file: str | Path) -> CurveKeys:
    """This client's NAME.key_secret and the daemon's public .key, as `intentd keys` writes them."""
    try:
        public, secret = zmq.auth.load_certificate(key_file)
    except (OSError, ValueError) as err:
        raise SubscriberError(f"--curve-key {key_file}: not a readable key file: {err}") from err
    if not secret:
        raise SubscriberError(f"--curve-key {key_file}: holds no secret key (give the .key_secret file)")
    try:
        server, _ = zmq.auth.load_certificate(server_key_file)
    except (OSError, ValueError) as err:
        raise SubscriberError(f"--curve-server-key {server_key_file}: not a readable key file: {err}") from err
    return CurveKeys(public, secret, server)


class Subscriber:
    """Iterate typed events from one or more intentd publishers (or a proxy in front of several).

    `connect_uri` is one endpoint or a sequence of them. `topics` are prefixes (`""` = everything, `"intent."` = every intent). `stream_id` keeps only events about
    that stream (events about no stream, like `status`, still pass). `recv_timeout_s` ends iteration after that
    long without a matching event (None: wait forever). Sequence gaps are counted in `missed`, but only while
    subscribed to every topic: with a topic filter the gaps are other topics' messages. A `seq` that goes
    backwards means the daemon restarted; it is counted in `restarts`. Both are kept per daemon (`seq` is per
    instance: `missed_by_instance`, `restarts_by_instance`, `instances`) and summed. `curve` gives the keys a
    publisher with CURVE asks for (the same server key on every endpoint: one key pair per deployment, or one
    proxy); handshakes it refuses are counted in `refused`.
    """

    def __init__(
        self,
        connect_uri: str | Sequence[str] = DEFAULT_CONNECT,
        topics: Sequence[str] = ("",),
        stream_id: str | None = None,
        *,
        recv_timeout_s: float | None = None,
        rcvhwm: int = DEFAULT_RCVHWM,
        context: zmq.Context[Any] | None = None,
        curve: CurveKeys | None = None,
    ) -> None:
        self.connect_uris = (connect_uri,) if isinstance(connect_uri, str) else tuple(connect_uri)
        if not self.connect_uris:
            raise SubscriberError("no publisher to connect to: give at least one URI")
        self.connect_uri = ", ".join(self.connect_uris)  # for messages
        self.topics = tuple(topics) or ("",)
        self.stream_id = stream_id
        self.recv_timeout_s = recv_timeout_s
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, rcvhwm)
        self._socket.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        self._socket.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        if curve is not None:
            self._socket.curve_secretkey = curve.secret_key
            self._socket.curve_publickey = curve.public_key
            self._socket.curve_serverkey = curve.server_key
        self._curve = curve is not None
        self._monitor = self._socket.get_monitor_socket(_HANDSHAKE_FAILURES)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self.refused = 0  # handshakes the publisher refused
        for topic in self.topics:
            self._socket.setsockopt_string(zmq.SUBSCRIBE, topic)
        # Subscribed last, so the first status message proves every subscription above reached the publisher
        # (subscriptions travel in order on one pipe). Status events are yielded only if a topic asks for them.
        self._socket.setsockopt_string(zmq.SUBSCRIBE, events.TOPIC_STATUS)
        for uri in self.connect_uris:
            try:
                self._socket.connect(uri)
            except zmq.ZMQError as err:
                self.close()
                raise SubscriberError(f"cannot connect to {uri}: {err.strerror}") from err
        self._pending: deque[Event] = deque()
        self._last_probe_seq = 0
        self.connected = False
        self.last_seq: int | None = None  # of the last message, whichever daemon sent it
        # Per publishing daemon (the envelope's `instance`; "" for a daemon from before instances), in the
        # order first heard: the last seq, messages missed, restarts.
        self.last_seq_by_instance: dict[str, int] = {}
        self.missed_by_instance: dict[str, int] = {}
        self.restarts_by_instance: dict[str, int] = {}
        self.received = 0  # every well-formed message, before topic/stream filtering
        self.missed = 0  # summed over instances
        self.restarts = 0  # summed over instances
        self.malformed = 0
        self.last_status: events.StatusEvent | None = None

    # ------------------------------------------------------------------------------------------ receiving

    def recv(self, timeout_s: float | None = None) -> Event | None:
        """The next matching event, or None when `timeout_s` (default: recv_timeout_s) passes without one."""
        if self._pending:
            return self._pending.popleft()
        timeout = self.recv_timeout_s if timeout_s is None else timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            event = self._receive_one(deadline)
            if event is None:
                return None
            if self._wanted(event):
                return event

    def __iter__(self) -> Iterator[Event]:
        """Yield matching events until `recv_timeout_s` passes without one (forever when it is None)."""
        while (event := self.recv()) is not None:
            yield event

    @property
    def instances(self) -> tuple[str, ...]:
        """The daemons heard from so far (their `instance` ids), in the order first heard."""
        return tuple(self.last_seq_by_instance)

    def wait_connected(self, timeout_s: float, poke: Callable[[], int | None] | None = None,
                       instances: int | None = None) -> bool:
        """Block until messages from `instances` daemons (default: one per connected URI) have arrived (the
        slow-joiner handshake); False after `timeout_s`.

        A SUB socket misses everything published before its subscription reaches the publisher, and it reaches
        each publisher on its own. The daemon's `status` heartbeat ends this wait on its own; behind a proxy,
        pass how many daemons stand behind it. Tests and scripts that own the publisher pass `poke` (e.g.
        publish a status message), called every POKE_INTERVAL_S until something arrives. When `poke` returns the
        seq it published, those probes (including ones still in flight) are never yielded; any other message that
        ended the wait still is, if the topics ask for it.
        """
        wanted = len(self.connect_uris) if instances is None else instances
        deadline = time.monotonic() + timeout_s
        while not self.connected or len(self.last_seq_by_instance) < wanted:
            if poke is not None:
                probe_seq = poke()
                if isinstance(probe_seq, int):
                    self._last_probe_seq = max(self._last_probe_seq, probe_seq)
            now = time.monotonic()
            if now >= deadline:
                return False
            wait_until = min(deadline, now + POKE_INTERVAL_S) if poke is not None else deadline
            event = self._receive_one(wait_until)
            if event is not None and self._wanted(event):
                self._pending.append(event)
        return True

    def _receive_one(self, deadline: float | None) -> Event | None:
        """Receive and account for one well-formed message (any topic), or None at the deadline."""
        while True:
            wait_s = POLL_SLICE_S if deadline is None else min(POLL_SLICE_S, deadline - time.monotonic())
            if wait_s <= 0:
                return None
            ready = dict(self._poller.poll(int(wait_s * 1000) or 1))
            if self._monitor in ready:
                self._handshake_failed(recv_monitor_message(self._monitor, zmq.NOBLOCK))
            if self._socket not in ready:
                continue
            frames = self._socket.recv_multipart(zmq.NOBLOCK)
            try:
                event = events.decode(frames)
            except events.EventError as err:
                # Malformed input is counted and skipped, never taken for the end of the stream.
                self.malformed += 1
                log.warning("skipping a malformed event from %s: %s", self.connect_uri, err)
                continue
            self._account(event)
            return event

    def _handshake_failed(self, message: dict[str, Any]) -> None:
        self.refused += 1
        if self.refused > 1:
            return  # ZeroMQ retries every few seconds: say it once
        if message["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            why = "its CURVE allow-list (security.curve_clients) does not hold this subscriber's public key"
        elif self._curve:
            why = "the subscriber uses CURVE keys and the publisher does not (or the server key is wrong)"
        else:
            why = "it requires CURVE keys (--curve-key and --curve-server-key)"
        log.warning("the publisher at %s refused this subscriber: %s; retrying", self.connect_uri, why)

    def _account(self, event: Event) -> None:
        self.connected = True
        self.received += 1
        if isinstance(event, events.StatusEvent):
            self.last_status = event
        instance = event.instance
        last = self.last_seq_by_instance.get(instance)
        if last is not None:
            if event.seq <= last:
                self.restarts += 1
                self.restarts_by_instance[instance] = self.restarts_by_instance.get(instance, 0) + 1
                self._last_probe_seq = 0  # the new publisher's low seqs are not our probes
                log.info("event seq of %s went from %d to %d: the publisher restarted", instance or "the publisher",
                         last, event.seq)
            elif self.topics == ("",) and event.seq > last + 1:
                self.missed += event.seq - last - 1
                self.missed_by_instance[instance] = self.missed_by_instance.get(instance, 0) + event.seq - last - 1
        self.last_seq_by_instance[instance] = event.seq
        self.last_seq = event.seq

    def _wanted(self, event: Event) -> bool:
        if isinstance(event, events.StatusEvent) and event.seq <= self._last_probe_seq:
            return False  # a synchronisation probe from wait_connected
        if not event.topic.startswith(self.topics):
            return False  # a status message we subscribed to only for synchronisation
        if self.stream_id is None:
            return True
        stream = event.raw.get("stream_id")
        return stream is None or stream == self.stream_id

    # ------------------------------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the socket (and the context it made); safe to call twice."""
        if not self._socket.closed:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._socket.close(linger=0)
        if self._own_context and not self._context.closed:
            self._context.term()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
