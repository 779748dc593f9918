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

from intentd.daemon.counters import Counters
from intentd.daemon.errors import AuthError, IntentdError, SourceError
from intentd.daemon.frames import AudioChunk
from intentd.daemon.protocol import (
    KEY_VAD_EVENTS,
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
from intentd.daemon.security import (
    REFUSED_TLS,
    REFUSED_TOKEN,
    IngestSecurity,
    client_name_from_certificate,
)
from intentd.daemon.settings import DEFAULTS
from intentd.daemon.sources.connection import (
    LISTEN_BACKLOG,
    READ_BYTES,
    REPLY_DRAIN_TIMEOUT_S,
    ClientConnection,
    ConnectionServer,
)
from intentd.daemon.sources.sink import StreamSink
from intentd.daemon.sources.uri import TcpSpec, UnixSpec

log = logging.getLogger(__name__)

UNIX_SOCKET_MODE: Final = 0o660


class SocketServer(ConnectionServer["_Connection"]):
    """Accepts audio streams on one tcp:// or unix:// address and feeds each to the sink."""

    _log = log
    WHAT = "audio streams"

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
        super().__init__(spec.uri(), sink, idle_timeout_s=idle_timeout_s, max_streams=max_streams,
                         counters=counters)
        self._spec = spec
        self._unix_mode = unix_mode
        self._security = security or IngestSecurity()
        # TLS is for tcp:// only: a Unix socket is local, guarded by its file mode.
        self._tls = self._security.tls if isinstance(spec, TcpSpec) else None
        self._unix_inode: tuple[int, int] | None = None

    @property
    def open_streams(self) -> list[str]:
        """Ids of the streams currently open."""
        return [c.open_stream_id for c in self._connections if c.open_stream_id is not None]

    async def start(self) -> str:
        """Bind and start accepting connections; return the bound URI. SourceError if the address is unusable."""
        if isinstance(self._spec, TcpSpec):
            paused = None if self._tls is None else self._paused_protocol
            host, port = await self._listen_tcp(self._spec.host, self._spec.port, paused)
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

    def _paused_protocol(self) -> asyncio.BaseProtocol:
        return _PausedProtocol(asyncio.StreamReader(), self._on_connection)

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
        super().stop_accepting()
        self._unlink_own_socket()

    def _unlink_own_socket(self) -> None:
        if not isinstance(self._spec, UnixSpec) or self._unix_inode is None:
            return
        # Only remove the file we created; another daemon may have replaced it since.
        with contextlib.suppress(OSError):
            st = os.stat(self._spec.path)
            if (st.st_dev, st.st_ino) == self._unix_inode:
                os.unlink(self._spec.path)
        self._unix_inode = None

    def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Connection:
        return _Connection(self, reader, writer)

    async def _admit(self, conn: _Connection) -> bool:
        return self._tls is None or await conn.start_tls(self._tls, self._idle_timeout_s)

    async def _refuse(self, conn: _Connection, reason: str) -> None:
        # A TLS client can read the reason only through TLS; a short handshake, or none.
        if self._tls is None or await conn.start_tls(self._tls, REPLY_DRAIN_TIMEOUT_S, quiet=True):
            await conn.refuse(reason)

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


class _Connection(ClientConnection):
    """One client connection: decode, feed the sink, answer, and always close the stream once."""

    _log = log

    def __init__(
        self,
        server: SocketServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        super().__init__(reader, writer)
        self._server = server
        self.open_stream_id: str | None = None  # set while the sink holds the stream open
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
                log.warning("connection from %s refused: TLS handshake failed: %s", self.peer, why)
                self._server._counters.refused(REFUSED_TLS)
            self._writer.transport.abort()
            return False
        if self._server._security.requires_client_certificate:
            self.client = client_name_from_certificate(self._writer.get_extra_info("peercert"))
        return True

    async def _failed(self, err: Exception) -> None:
        if isinstance(err, AuthError):  # nothing was opened: one line, one count, one reply
            self._server._counters.refused(err.kind)
            log.warning("%s refused: %s (stream %r)", self.describe(), err, self._asked_stream_id)
            await self.refuse(str(err))
        elif isinstance(err, IntentdError):
            await self._fail(str(err), None)
        elif isinstance(err, ConnectionError | OSError):
            await self._fail(f"connection lost: {err}", None)
        else:
            await super()._failed(err)

    async def _finish(self, ended: bool) -> None:
        if not ended:
            # A plain close at a frame boundary is a normal end (docs/protocol.md); nobody reads a final frame.
            # The StreamTable logs every stream's open and end once, for all sources; the details go to DEBUG.
            log.debug("%s: ended by close without end marker after %d samples", self.describe(), self._next_sample)
            if self._end_stream(None):
                await self.close_writer()
            return
        sid = self._stream_id
        if self._end_stream(None):
            log.debug("%s: ended after %d samples", self.describe(), self._next_sample)
            await self._send(encode_reply(REPLY_FINAL, stream_id=sid, samples=self._next_sample))
        else:
            await self._send(encode_reply(REPLY_ERROR, reason="internal error closing the stream", stream_id=sid))
        await self.close_writer()

    def _error_reply(self, reason: str, code: str | None) -> bytes:
        return encode_reply(REPLY_ERROR, reason=reason, stream_id=self._stream_id)

    @property
    def _stream_id(self) -> str | None:
        return self._header.stream_id if self._header is not None else None

    def describe(self) -> str:
        """`stream 'kitchen' from 127.0.0.1:40312 (client 'kitchen')`, or `connection from ...` before the header."""
        sid = self._stream_id
        who = f"{self.peer} (client {self.client!r})" if self.client is not None else self.peer
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
        self._server._sink.open_stream(header.stream_id, header.sample_rate, time.time(), live=header.live,
                                       vad_events=header.vad_events)
        self._header = header
        self.open_stream_id = header.stream_id
        self._pcm = PcmDecoder(header.sample_format, header.channels)
        log.debug(  # the StreamTable logs the open at INFO
            "%s: opened at %d Hz, %s, %d channel(s), %s%s",
            self.describe(),
            header.sample_rate,
            header.sample_format,
            header.channels,
            "live" if header.live else "recorded",
            ", with its vad events" if header.vad_events else "",
        )
        if self.client is not None:
            # Who was let in is an operator's audit line, so it stays at INFO beside the StreamTable's open.
            log.info("stream %r from %s: authenticated as client %r", header.stream_id, self.peer, self.client)
        # `vad_events` is confirmed only when asked, so every other accept is what it was before the key existed.
        asked = {KEY_VAD_EVENTS: True} if header.vad_events else {}
        await self._send(
            encode_reply(
                REPLY_ACCEPT,
                stream_id=header.stream_id,
                sample_rate=header.sample_rate,
                format=header.sample_format,
                channels=header.channels,
                live=header.live,
                **asked,
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

    def _end_stream(self, reason: str | None) -> bool:
        """Close the stream in the sink if it was opened (exactly once); False if the sink failed to."""
        if self._header is None:
            return True
        sid = self._header.stream_id
        self.open_stream_id = None
        try:
            self._server._sink.close_stream(sid, reason)
        except Exception:
            log.exception("%s: sink failed to close the stream", self.describe())
            self._header = None
            return False
        return True


class _PausedProtocol(asyncio.StreamReaderProtocol):
    """A server connection that reads nothing until its handler runs StreamWriter.start_tls.

    Without the pause, the client's first TLS bytes could land in the plain StreamReader before the handshake
    starts, and the handshake would wait for bytes already taken.
    """

    def connection_made(self, transport: Any) -> None:
        transport.pause_reading()
        super().connection_made(transport)


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
