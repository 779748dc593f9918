"""Socket ingest: an asyncio TCP or Unix server, one audio stream per connection, fed to a StreamSink.

A recorded stream (header `live: false`) is read no faster than the sink takes it: before each audio frame the
connection awaits `sink.wait_room`, and while it waits nothing is read from its socket, so the kernel's buffers
fill and the client's sends block (TCP backpressure). The idle timeout counts only time spent waiting for audio:
empty audio frames do not reset it, so a connection cannot hold a stream slot by sending nothing.

With `[security]` set (docs/security.md), a tcp:// connection first completes a TLS handshake, and a stream opens
only if its header carries a known token: a refused client gets one `error` reply (`unauthorized: ...`), one log
line and one count, and its audio never reaches the sink. While clients must authenticate, the header must arrive
within the idle timeout of the connection, so a client without credentials holds a slot for that long at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import stat
import time
from pathlib import Path
from typing import Any, Final

from daemon.counters import Counters
from daemon.errors import AuthError, IntentdError, SourceError
from daemon.frames import AudioChunk
from daemon.protocol import (
    REPLY_ACCEPT,
    REPLY_ERROR,
    REPLY_FINAL,
    UNAUTHORIZED,
    AudioFrame,
    EndFrame,
    PcmDecoder,
    StreamDecoder,
    StreamHeader,
    encode_reply,
)
from daemon.security import (
    REFUSED_MAX_STREAMS,
    REFUSED_TLS,
    REFUSED_TOKEN,
    IngestSecurity,
    client_name_from_certificate,
)
from daemon.settings import DEFAULTS
from daemon.sources.sink import StreamSink
from daemon.sources.uri import TcpSpec, UnixSpec

log = logging.getLogger(__name__)

UNIX_SOCKET_MODE: Final = 0o660
READ_BYTES: Final = 64 * 1024
# A client that does not read its replies must not hold a connection (or shutdown) open.
REPLY_DRAIN_TIMEOUT_S: Final = 2.0
LISTEN_BACKLOG: Final = 128
SHUTDOWN_REASON: Final = "server shutting down"


class SocketServer:
    """Accepts audio streams on one tcp:// or unix:// address and feeds each to the sink."""

    def __init__(
        self,
        spec: TcpSpec | UnixSpec,
        sink: StreamSink,
        *,
        idle_timeout_s: float = DEFAULTS.sources.idle_timeout_s,
        unix_mode: int = UNIX_SOCKET_MODE,
        max_streams: int | None = None,
        security: IngestSecurity | None = None,
        counters: Counters | None = None,
    ) -> None:
        if idle_timeout_s <= 0:
            raise SourceError(f"{spec.uri()}: idle_timeout_s must be > 0, got {idle_timeout_s}")
        self._spec = spec
        self._sink = sink
        self._idle_timeout_s = idle_timeout_s
        self._unix_mode = unix_mode
        self._max_streams = max_streams
        self._security = security or IngestSecurity()
        # TLS is for tcp:// only: a Unix socket is local, guarded by its file mode.
        self._tls = self._security.tls if isinstance(spec, TcpSpec) else None
        self._counters = counters if counters is not None else Counters()
        self._server: asyncio.Server | None = None
        self._unix_inode: tuple[int, int] | None = None
        self._connections: dict[_Connection, asyncio.Task[None]] = {}
        self._shutdown_reason: str | None = None
        self._bound_uri: str | None = None

    @property
    def bound_uri(self) -> str:
        """The address actually bound (a tcp:// port 0 becomes the real port); valid after start()."""
        if self._bound_uri is None:
            raise SourceError(f"{self._spec.uri()}: server not started")
        return self._bound_uri

    @property
    def open_streams(self) -> list[str]:
        """Ids of the streams currently open."""
        return [c.open_stream_id for c in self._connections if c.open_stream_id is not None]

    async def start(self) -> str:
        """Bind and start accepting connections; return the bound URI. SourceError if the address is unusable."""
        if isinstance(self._spec, TcpSpec):
            try:
                if self._tls is None:
                    self._server = await asyncio.start_server(
                        self._on_connection, self._spec.host, self._spec.port, backlog=LISTEN_BACKLOG
                    )
                else:
                    loop = asyncio.get_running_loop()
                    self._server = await loop.create_server(
                        lambda: _PausedProtocol(asyncio.StreamReader(), self._on_connection),
                        self._spec.host, self._spec.port, backlog=LISTEN_BACKLOG,
                    )
            except OSError as err:
                raise SourceError(f"cannot listen on {self._spec.uri()}: {err.strerror or err}") from err
            host, port = self._server.sockets[0].getsockname()[:2]
            self._bound_uri = TcpSpec(host, port).uri()
        else:
            sock = self._bind_unix(self._spec.path)
            self._server = await asyncio.start_unix_server(self._on_connection, sock=sock)
            self._bound_uri = self._spec.uri()
        guards = []
        if self._tls is not None:
            guards.append("TLS, client certificates" if self._security.requires_client_certificate else "TLS")
        if self._security.tokens is not None:
            guards.append(f"tokens of {len(self._security.tokens.names)} client(s)")
        log.info("listening for audio streams on %s%s", self._bound_uri,
                 f" ({', '.join(guards)})" if guards else "")
        return self._bound_uri

    def _bind_unix(self, path: Path) -> socket.socket:
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            # chmod before listen(): nobody can connect with the umask's looser or tighter mode meanwhile.
            os.chmod(path, self._unix_mode)
            sock.listen(LISTEN_BACKLOG)
            st = os.stat(path)
        except OSError as err:
            sock.close()
            raise SourceError(f"cannot listen on {self._spec.uri()}: {err.strerror or err}") from err
        self._unix_inode = (st.st_dev, st.st_ino)
        sock.setblocking(False)
        return sock

    def stop_accepting(self) -> None:
        """Stop taking new connections; streams already open keep going."""
        if self._server is not None and self._server.is_serving():
            self._server.close()
            log.info("stopped accepting audio streams on %s", self._bound_uri)
        self._unlink_own_socket()

    async def close(self, reason: str = SHUTDOWN_REASON) -> None:
        """Stop accepting, end every open stream with `reason` (the sink still closes each) and wait for them."""
        self.stop_accepting()
        self._shutdown_reason = reason
        tasks = list(self._connections.values())
        for conn in list(self._connections):
            conn.stop(reason)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _unlink_own_socket(self) -> None:
        if not isinstance(self._spec, UnixSpec) or self._unix_inode is None:
            return
        # Only remove the file we created; another daemon may have replaced it since.
        with contextlib.suppress(OSError):
            st = os.stat(self._spec.path)
            if (st.st_dev, st.st_ino) == self._unix_inode:
                os.unlink(self._spec.path)
        self._unix_inode = None

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._shutdown_reason is not None:
            writer.close()
            return
        # Connections count before their header, so idle half-open clients cannot exceed the limit either.
        conn = _Connection(self, reader, writer)
        if self._max_streams is not None and len(self._connections) >= self._max_streams:
            reason = f"too many streams: this server takes at most {self._max_streams} at once"
            log.warning("connection from %s refused: %s", _peer_name(writer), reason)
            self._counters.refused(REFUSED_MAX_STREAMS)
            # A TLS client can read the reason only through TLS; a short handshake, or none.
            if self._tls is None or await conn.start_tls(self._tls, REPLY_DRAIN_TIMEOUT_S, quiet=True):
                await conn.refuse(reason)
            return
        self._connections[conn] = task
        try:
            if self._tls is None or await conn.start_tls(self._tls, self._idle_timeout_s):
                await conn.serve()
        finally:
            self._connections.pop(conn, None)

    def _authenticate(self, conn: _Connection, header: StreamHeader) -> None:
        """Check the header's token when tokens are required; AuthError (no secret in it) when it is wrong."""
        tokens = self._security.tokens
        if tokens is None:
            return
        if header.token is None:
            raise AuthError(f"{UNAUTHORIZED}: this server requires a token", REFUSED_TOKEN)
        name = tokens.check(header.token)
        if name is None:
            raise AuthError(f"{UNAUTHORIZED}: invalid token", REFUSED_TOKEN)
        conn.client = name


class _Connection:
    """One client connection: decode, feed the sink, answer, and always close the stream once."""

    def __init__(
        self,
        server: SocketServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._server = server
        self._stop_reason: str | None = None
        self._read_task: asyncio.Task[bool] | None = None
        self.open_stream_id: str | None = None  # set while the sink holds the stream open
        self._reader = reader
        self._writer = writer
        self._peer = _peer_name(writer)
        self._decoder = StreamDecoder()
        self._pcm: PcmDecoder | None = None
        self._header: StreamHeader | None = None
        self._next_sample = 0
        self.client: str | None = None  # who the token or the client certificate says this is
        self._asked_stream_id: str | None = None  # from the header, before the stream is opened
        self._connected_monotonic = time.monotonic()

    async def start_tls(self, ctx: ssl.SSLContext, timeout_s: float, *, quiet: bool = False) -> bool:
        """Run the server's TLS handshake; False (logged and counted unless `quiet`, connection closed) if it fails."""
        try:
            await self._writer.start_tls(ctx, ssl_handshake_timeout=timeout_s)
        except (ssl.SSLError, OSError, TimeoutError) as err:
            if not quiet:
                why = getattr(err, "reason", None) or str(err) or type(err).__name__
                log.warning("connection from %s refused: TLS handshake failed: %s", self._peer, why)
                self._server._counters.refused(REFUSED_TLS)
            self._writer.transport.abort()
            return False
        if self._server._security.requires_client_certificate:
            self.client = client_name_from_certificate(self._writer.get_extra_info("peercert"))
        return True

    def stop(self, reason: str) -> None:
        """End the connection from outside (server shutdown): the stream is closed with `reason`."""
        self._stop_reason = reason
        if self._read_task is not None:
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
                self._finish_stream("connection cancelled")
                self._writer.close()
                raise
            await self._fail(self._stop_reason, level=logging.INFO)
            return
        except AuthError as err:  # nothing was opened: one line, one count, one reply
            self._server._counters.refused(err.kind)
            log.warning("%s refused: %s (stream %r)", self._describe(), err, self._asked_stream_id)
            await self.refuse(str(err))
            return
        except IntentdError as err:
            await self._fail(str(err))
            return
        except (ConnectionError, OSError) as err:
            await self._fail(f"connection lost: {err}")
            return
        except Exception as err:  # a sink bug must not take the server down with it
            log.exception("%s: internal error", self._describe())
            await self._fail(f"internal error: {type(err).__name__}")
            return
        if not ended:
            # A plain close at a frame boundary is a normal end (docs/protocol.md); nobody reads a final frame.
            # The StreamTable logs every stream's open and end once, for all sources; the details go to DEBUG.
            log.debug("%s: ended by close without end marker after %d samples", self._describe(), self._next_sample)
            if self._finish_stream(None):
                await self._close_writer()
            return
        sid = self._stream_id
        if self._finish_stream(None):
            log.debug("%s: ended after %d samples", self._describe(), self._next_sample)
            await self._send(encode_reply(REPLY_FINAL, stream_id=sid, samples=self._next_sample))
        else:
            await self._send(encode_reply(REPLY_ERROR, reason="internal error closing the stream", stream_id=sid))
        await self._close_writer()

    async def refuse(self, reason: str) -> None:
        """Answer an error before any header is read, and close."""
        await self._send(encode_reply(REPLY_ERROR, reason=reason, stream_id=None))
        await self._close_writer()

    @property
    def _stream_id(self) -> str | None:
        return self._header.stream_id if self._header is not None else None

    def _describe(self) -> str:
        sid = self._stream_id
        who = f"{self._peer} (client {self.client!r})" if self.client is not None else self._peer
        return f"stream {sid!r} from {who}" if sid is not None else f"connection from {who}"

    async def _read_until_end(self) -> bool:
        """Read and dispatch frames; True after an end marker, False on a clean close at a frame boundary."""
        idle = self._server._idle_timeout_s
        # Clients that must authenticate get the idle timeout for the whole header, not per byte.
        header_by = self._connected_monotonic + idle if self._server._security.authenticates else None
        # Only the header and audio move the idle clock. Bytes that carry no samples (empty audio frames, a
        # trickle that never completes a frame) would otherwise let a client hold a stream slot forever while
        # sending nothing to classify: 512 such clients once kept every real one out.
        heard = time.monotonic()
        while True:
            now = time.monotonic()
            wait_s = max(0.0, heard + idle - now)
            if header_by is not None and self._header is None:
                wait_s = max(0.0, min(wait_s, header_by - now))
            try:
                data = await asyncio.wait_for(self._reader.read(READ_BYTES), wait_s)
            except TimeoutError:
                if header_by is not None and self._header is None:
                    raise IntentdError(f"header timeout: no complete header within {idle:g} s") from None
                raise IntentdError(f"idle timeout: no audio for {idle:g} s") from None
            if self._stop_reason is not None:
                # Python 3.11's wait_for can swallow a cancellation that lands as the read completes: without
                # this, a stream the server is closing would run on until its client went quiet.
                raise asyncio.CancelledError
            if not data:
                self._decoder.finish()
                if self._pcm is not None:
                    self._pcm.finish()
                return False
            self._decoder.append(data)
            for frame in self._decoder.frames():
                if isinstance(frame, StreamHeader):
                    self._asked_stream_id = frame.stream_id
                    self._server._authenticate(self, frame)
                    await self._open(frame)
                    heard = time.monotonic()
                elif isinstance(frame, AudioFrame):
                    assert self._header is not None  # the decoder yields the header first
                    if not self._header.live:
                        # Nothing more is read from this socket meanwhile: the sender is slowed, not dropped.
                        await self._server._sink.wait_room(self._header.stream_id)
                    if frame.pcm:
                        heard = time.monotonic()  # after any wait for room: that time is not the client's
                    self._push(frame.pcm)
                elif isinstance(frame, EndFrame):
                    assert self._pcm is not None
                    self._pcm.finish()
                    return True

    async def _open(self, header: StreamHeader) -> None:
        # May raise IntentdError (e.g. duplicate id): the client is told why and nothing was opened.
        self._server._sink.open_stream(header.stream_id, header.sample_rate, time.time(), live=header.live)
        self._header = header
        self.open_stream_id = header.stream_id
        self._pcm = PcmDecoder(header.sample_format, header.channels)
        log.debug(  # the StreamTable logs the open at INFO
            "%s: opened at %d Hz, %s, %d channel(s), %s",
            self._describe(),
            header.sample_rate,
            header.sample_format,
            header.channels,
            "live" if header.live else "recorded",
        )
        await self._send(
            encode_reply(
                REPLY_ACCEPT,
                stream_id=header.stream_id,
                sample_rate=header.sample_rate,
                format=header.sample_format,
                channels=header.channels,
                live=header.live,
            )
        )

    def _push(self, pcm: bytes) -> None:
        assert self._pcm is not None and self._header is not None
        samples = self._pcm.decode(pcm)
        if samples.size == 0:
            return
        chunk = AudioChunk(
            stream_id=self._header.stream_id,
            samples=samples,
            sample_rate=self._header.sample_rate,
            start_sample=self._next_sample,
            arrival_monotonic=time.monotonic(),
        )
        self._next_sample += samples.size
        self._server._sink.push(chunk)

    def _finish_stream(self, reason: str | None) -> bool:
        """Close the stream in the sink if it was opened (exactly once); False if the sink failed to."""
        if self._header is None:
            return True
        sid = self._header.stream_id
        self.open_stream_id = None
        try:
            self._server._sink.close_stream(sid, reason)
        except Exception:
            log.exception("%s: sink failed to close the stream", self._describe())
            self._header = None
            return False
        return True

    async def _fail(self, reason: str, level: int = logging.WARNING) -> None:
        log.log(level, "%s: %s; closing", self._describe(), reason)
        sid = self._stream_id
        self._finish_stream(reason)
        await self._send(encode_reply(REPLY_ERROR, reason=reason, stream_id=sid))
        await self._close_writer()

    async def _send(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await asyncio.wait_for(self._writer.drain(), REPLY_DRAIN_TIMEOUT_S)
        except (ConnectionError, OSError, TimeoutError) as err:
            log.debug("%s: could not send reply: %s", self._describe(), err)

    async def _close_writer(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), REPLY_DRAIN_TIMEOUT_S)


class _PausedProtocol(asyncio.StreamReaderProtocol):
    """A server connection that reads nothing until its handler runs StreamWriter.start_tls.

    Without the pause, the client's first TLS bytes could land in the plain StreamReader before the handshake
    starts, and the handshake would wait for bytes already taken.
    """

    def connection_made(self, transport: Any) -> None:
        transport.pause_reading()
        super().connection_made(transport)


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "unix socket peer" if not peer else str(peer)


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket file left by a dead process; SourceError if it is live or not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise SourceError(f"unix://{path}: {err.strerror or err}") from err
    if not stat.S_ISSOCK(st.st_mode):
        raise SourceError(f"unix://{path}: exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        log.info("removing stale socket %s", path)
        os.unlink(path)
        return
    except OSError as err:
        raise SourceError(f"unix://{path}: cannot probe existing socket: {err.strerror or err}") from err
    finally:
        probe.close()
    raise SourceError(f"unix://{path}: another process is already listening there")
