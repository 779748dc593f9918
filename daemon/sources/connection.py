"""What the INTD socket server and the Wyoming server share: the listener and each client connection's plumbing.

A `ConnectionServer` binds, takes connections up to `max_streams` (refusing the rest with a reason, counted),
stops accepting, and on close ends every connection with a reason and waits for them. A `ClientConnection` reads
in a task of its own that `stop()` interrupts, sends replies that never block the server on a client that does
not read, and fails one way: log once, end its stream with the reason, answer it, close. Each server keeps only
its wire format: how it reads, what an error reply looks like, and which errors mean what.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, Final, Generic, TypeVar

from intentd.daemon.counters import Counters
from intentd.daemon.errors import SourceError
from intentd.daemon.security import REFUSED_MAX_STREAMS
from intentd.daemon.sources.sink import StreamSink

READ_BYTES: Final = 64 * 1024
# A client that does not read its replies must not hold a connection (or shutdown) open.
REPLY_DRAIN_TIMEOUT_S: Final = 2.0
LISTEN_BACKLOG: Final = 128
SHUTDOWN_REASON: Final = "server shutting down"


def peer_name(writer: asyncio.StreamWriter) -> str:
    """`host:port` of a TCP peer, or a name for a Unix socket's."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "unix socket peer" if not peer else str(peer)


class ClientConnection(ABC):
    """One client: a read task that `stop()` interrupts, replies that cannot block, one way to fail.

    Subclasses read their wire format (`_read_until_end`), end their stream in the sink (`_end_stream`), encode an
    error (`_error_reply`), say what an exception means to the client (`_failed`) and finish a clean end
    (`_finish`). Log lines go to the subclass's module logger (`_log`).
    """

    _log: ClassVar[logging.Logger]
    SHUTDOWN_CODE: ClassVar[str | None] = None  # the error code a shutdown is answered with, where codes exist

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.peer = peer_name(writer)
        self._stop_reason: str | None = None
        self._read_task: asyncio.Task[bool] | None = None

    @abstractmethod
    def describe(self) -> str:
        """Who this is, for log lines: the stream and peer."""

    @abstractmethod
    async def _read_until_end(self) -> bool:
        """Read and dispatch until the client is done; what it returns goes to `_finish`."""

    @abstractmethod
    def _end_stream(self, reason: str | None) -> bool:
        """Close the stream in the sink if one is open (exactly once); False if the sink failed to."""

    @abstractmethod
    def _error_reply(self, reason: str, code: str | None) -> bytes:
        """The bytes that tell this client what went wrong."""

    async def _finish(self, ended: bool) -> None:
        """After `_read_until_end` returned: answer what is left and close."""
        await self.close_writer()

    def _interruptible(self) -> bool:
        """Whether stop() may cancel the read now (not while a request awaits the answer it must get)."""
        return True

    def stop(self, reason: str) -> None:
        """End the connection from outside (server shutdown): the stream is closed with `reason`."""
        self._stop_reason = reason
        if self._read_task is not None and self._interruptible():
            self._read_task.cancel()

    async def serve(self) -> None:
        """Run the connection to its end; never raises except CancelledError."""
        try:
            # Reading runs as its own task so stop() can interrupt it without cancelling this handler task
            # (asyncio logs a cancelled connection handler as an error).
            self._read_task = asyncio.create_task(self._read_until_end())
            if self._stop_reason is not None:
                self._read_task.cancel()
            ended = await self._read_task
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._stop_reason is None or (task is not None and task.cancelling()):
                if self._read_task is not None:
                    self._read_task.cancel()
                self._end_stream("connection cancelled")
                self._writer.close()
                raise
            await self._fail(self._stop_reason, self.SHUTDOWN_CODE, level=logging.INFO)
            return
        except Exception as err:  # noqa: BLE001 -- each is answered by _failed; a sink bug must not end the server
            await self._failed(err)
            return
        await self._finish(ended)

    async def _failed(self, err: Exception) -> None:
        """What an exception from the read means to the client; here, an internal error (a sink bug must not
        take the server down with it). Subclasses handle the errors their clients can cause, then call this."""
        self._log.error("%s: internal error", self.describe(), exc_info=err)
        await self._fail(f"internal error: {type(err).__name__}", None)

    async def _fail(self, reason: str, code: str | None, level: int = logging.WARNING) -> None:
        """Log once, end the stream with `reason`, tell the client, close."""
        self._log.log(level, "%s: %s; closing", self.describe(), reason)
        reply = self._error_reply(reason, code)  # before the stream ends: the reply names it
        self._end_stream(reason)
        await self._send(reply)
        await self.close_writer()

    async def refuse(self, reason: str, code: str | None = None) -> None:
        """Answer an error before any stream is open, and close."""
        await self._send(self._error_reply(reason, code))
        await self.close_writer()

    async def _send(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await asyncio.wait_for(self._writer.drain(), REPLY_DRAIN_TIMEOUT_S)
        except (ConnectionError, OSError, TimeoutError) as err:
            self._log.debug("%s: could not send: %s", self.describe(), err)

    async def close_writer(self) -> None:
        """Close the connection, waiting briefly for the bytes to leave."""
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), REPLY_DRAIN_TIMEOUT_S)


ConnT = TypeVar("ConnT", bound=ClientConnection)


class ConnectionServer(ABC, Generic[ConnT]):
    """Accepts connections on one address, at most `max_streams` at once, and ends them all on close.

    Subclasses bind (`start`, usually through `_listen_tcp`), make a connection (`_connection`) and may run a
    step before serving it (`_admit`, e.g. a TLS handshake) or before refusing it (`_refuse`).
    """

    _log: ClassVar[logging.Logger]
    WHAT: ClassVar[str] = "connections"  # what it stops accepting, for the log line
    BUSY_CODE: ClassVar[str | None] = None  # the error code of a refusal for too many streams, where codes exist

    def __init__(self, uri: str, sink: StreamSink, *, idle_timeout_s: float, max_streams: int | None,
                 counters: Counters | None) -> None:
        if idle_timeout_s <= 0:
            raise SourceError(f"{uri}: idle_timeout_s must be > 0, got {idle_timeout_s}")
        self._uri = uri
        self._sink = sink
        self._idle_timeout_s = idle_timeout_s
        self._max_streams = max_streams
        self._counters = counters if counters is not None else Counters()
        self._server: asyncio.Server | None = None
        self._connections: dict[ConnT, asyncio.Task[None]] = {}
        self._shutdown_reason: str | None = None
        self._bound_uri: str | None = None

    @property
    def bound_uri(self) -> str:
        """The address actually bound (a tcp:// port 0 becomes the real port); valid after start()."""
        if self._bound_uri is None:
            raise SourceError(f"{self._uri}: server not started")
        return self._bound_uri

    @abstractmethod
    def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> ConnT:
        """A new connection object for an accepted client."""

    async def _admit(self, conn: ConnT) -> bool:
        """A step before serving a connection; False when it failed (and closed the connection)."""
        return True

    async def _refuse(self, conn: ConnT, reason: str) -> None:
        """Tell a connection over the limit why it is refused, and close it."""
        await conn.refuse(reason, self.BUSY_CODE)

    async def _listen_tcp(self, host: str, port: int,
                          protocol: Callable[[], asyncio.BaseProtocol] | None = None) -> tuple[str, int]:
        """Listen on a TCP address (with `protocol`'s connections, else asyncio streams); the bound host and port."""
        try:
            if protocol is None:
                self._server = await asyncio.start_server(self._on_connection, host, port, backlog=LISTEN_BACKLOG)
            else:
                loop = asyncio.get_running_loop()
                self._server = await loop.create_server(protocol, host, port, backlog=LISTEN_BACKLOG)
        except OSError as err:
            raise SourceError(f"cannot listen on {self._uri}: {err.strerror or err}") from err
        bound_host, bound_port = self._server.sockets[0].getsockname()[:2]
        return bound_host, bound_port

    def stop_accepting(self) -> None:
        """Stop taking new connections; those already open keep going."""
        if self._server is not None and self._server.is_serving():
            self._server.close()
            self._log.info("stopped accepting %s on %s", self.WHAT, self._bound_uri)

    async def close(self, reason: str = SHUTDOWN_REASON) -> None:
        """Stop accepting, end every open connection with `reason` (its stream still closes) and wait for them."""
        self.stop_accepting()
        self._shutdown_reason = reason
        tasks = list(self._connections.values())
        for conn in list(self._connections):
            conn.stop(reason)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._shutdown_reason is not None:
            writer.close()
            return
        # Connections count before their first byte, so idle half-open clients cannot exceed the limit either.
        conn = self._connection(reader, writer)
        if self._max_streams is not None and len(self._connections) >= self._max_streams:
            reason = f"too many streams: this server takes at most {self._max_streams} at once"
            self._log.warning("%s refused: %s", conn.describe(), reason)
            self._counters.refused(REFUSED_MAX_STREAMS)
            await self._refuse(conn, reason)
            return
        self._connections[conn] = task
        try:
            if await self._admit(conn):
                await conn.serve()
        finally:
            self._connections.pop(conn, None)
