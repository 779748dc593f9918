"""The real asyncio ingest server on 127.0.0.1:0 and a tmp Unix socket, with good and bad clients at once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import socket
import stat
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from intentd.daemon.audio import SAMPLE_RATE
from intentd.daemon.errors import SourceError
from intentd.daemon.protocol import (
    MAX_CHUNK_BYTES,
    PcmDecoder,
    Reply,
    ReplyDecoder,
    SampleFormat,
    StreamHeader,
    encode_audio,
    encode_end,
    encode_header,
    encode_pcm,
)
from intentd.daemon.sources.socket_server import SocketServer
from intentd.daemon.sources.uri import TcpSpec, UnixSpec
from tests.recording_sink import RecordingSink

IDLE_S = 0.3
TIMEOUT_S = 10.0


def async_test(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body on a fresh event loop (no pytest-asyncio in the venv)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


def _audio(seconds: float, rate: int, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.9, 0.9, size=(int(seconds * rate), channels)).astype(np.float32)


def _expected(pcm: bytes, fmt: SampleFormat, channels: int) -> np.ndarray:
    dec = PcmDecoder(fmt, channels)
    out = dec.decode(pcm)
    dec.finish()
    return out


async def _connect(uri: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if uri.startswith("unix://"):
        return await asyncio.open_unix_connection(uri[len("unix://") :])
    host, port = uri[len("tcp://") :].rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def _replies(reader: asyncio.StreamReader) -> list[Reply]:
    """Read replies until the server closes the connection."""
    dec = ReplyDecoder()
    out: list[Reply] = []
    while True:
        try:
            data = await asyncio.wait_for(reader.read(4096), TIMEOUT_S)
        except ConnectionResetError:
            return out
        if not data:
            return out
        out.extend(dec.feed(data))


async def _read_reply(reader: asyncio.StreamReader, dec: ReplyDecoder) -> Reply:
    while True:
        data = await asyncio.wait_for(reader.read(4096), TIMEOUT_S)
        assert data, "server closed before replying"
        replies = dec.feed(data)
        if replies:
            assert len(replies) == 1
            return replies[0]


async def _send_stream(uri: str, header: StreamHeader, pcm: bytes, chunk_bytes: int) -> list[Reply]:
    reader, writer = await _connect(uri)
    writer.write(encode_header(header))
    for i in range(0, len(pcm), chunk_bytes):
        writer.write(encode_audio(pcm[i : i + chunk_bytes]))
        await writer.drain()
    writer.write(encode_end())
    await writer.drain()
    replies = await _replies(reader)
    writer.close()
    return replies


@contextlib.asynccontextmanager
async def serving(
    kind: str, tmp_path: Path, **kwargs: Any
) -> AsyncIterator[tuple[SocketServer, RecordingSink]]:
    """A started server on 127.0.0.1:0 or a tmp Unix socket, closed on exit."""
    sink = RecordingSink()
    spec: TcpSpec | UnixSpec = TcpSpec("127.0.0.1", 0) if kind == "tcp" else UnixSpec(tmp_path / "in.sock")
    server = SocketServer(spec, sink, idle_timeout_s=IDLE_S, **kwargs)
    await server.start()
    try:
        yield server, sink
    finally:
        await server.close()


KINDS = pytest.mark.parametrize("kind", ["tcp", "unix"])


@KINDS
@async_test
async def test_bound_address_and_unix_permissions(
    kind: str,
    tmp_path: Path,
) -> None:
    async with serving(kind, tmp_path) as (server, _sink):
        uri = server.bound_uri
        if uri.startswith("tcp://"):
            assert not uri.endswith(":0")
        else:
            path = Path(uri[len("unix://") :])
            assert stat.S_IMODE(path.stat().st_mode) == 0o660
            await server.close()
            assert not path.exists()


@KINDS
@async_test
async def test_concurrent_streams_arrive_complete_and_bit_exact(
    kind: str,
    tmp_path: Path,
) -> None:
    async with serving(kind, tmp_path) as (server, sink):
        cases: list[tuple[StreamHeader, bytes]] = []
        for i, (rate, fmt, channels) in enumerate(
            [
                (SAMPLE_RATE, "s16le", 1),
                (44100, "f32le", 2),
                (8000, "s16le", 8),
                (48000, "f32le", 1),
                (22050, "s16le", 2),
            ]
        ):
            pcm = encode_pcm(_audio(0.5, rate, channels, seed=i), fmt)  # type: ignore[arg-type]
            cases.append((StreamHeader(f"stream-{i}", rate, fmt, channels), pcm))  # type: ignore[arg-type]
        results = await asyncio.gather(*(_send_stream(server.bound_uri, h, pcm, 3001) for h, pcm in cases))
        for (header, pcm), replies in zip(cases, results, strict=True):
            assert [r.type for r in replies] == ["accept", "final"]
            assert replies[0].fields["stream_id"] == header.stream_id
            rec = sink.by_id(header.stream_id)
            assert rec.closed and rec.reason is None
            assert rec.sample_rate == header.sample_rate
            expected = _expected(pcm, header.sample_format, header.channels)
            assert replies[1].fields["samples"] == expected.size
            np.testing.assert_array_equal(rec.samples, expected)
            starts = [c.start_sample for c in rec.chunks]
            assert starts == list(np.cumsum([0] + [c.samples.size for c in rec.chunks])[:-1])
        assert server.open_streams == []


@KINDS
@async_test
async def test_chunk_size_does_not_change_what_arrives(
    kind: str,
    tmp_path: Path,
) -> None:
    async with serving(kind, tmp_path) as (server, sink):
        rate = SAMPLE_RATE
        pcm = encode_pcm(_audio(2.0, rate, 2, seed=7), "s16le")
        frame = 2 * 2
        for sid, chunk_ms in (("ten-ms", 10), ("one-s", 1000), ("odd-bytes", None)):
            size = 1001 if chunk_ms is None else rate * chunk_ms // 1000 * frame
            replies = await _send_stream(server.bound_uri, StreamHeader(sid, rate, "s16le", 2), pcm, size)
            assert [r.type for r in replies] == ["accept", "final"]
        a, b, c = (sink.by_id(s).samples for s in ("ten-ms", "one-s", "odd-bytes"))
        assert a.size == 2 * rate
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def _set_rst_on_close(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


GOOD = StreamHeader("good", SAMPLE_RATE, "s16le", 1)
CHUNK = encode_pcm(_audio(0.1, SAMPLE_RATE, 1, seed=1), "s16le")
SMALL = encode_pcm(_audio(0.01, SAMPLE_RATE, 1, seed=2), "s16le")


async def _bad_client(uri: str, case: str, sink: RecordingSink) -> tuple[list[Reply], str]:
    """Run one misbehaving client; return its replies and its stream id."""
    reader, writer = await _connect(uri)
    sid = f"bad-{case}"
    header = encode_header(StreamHeader(sid, SAMPLE_RATE, "s16le", 1))
    if case == "garbage header":
        writer.write(b"\x00garbage that is not a header at all\n")
    elif case == "truncated header":
        writer.write(header[:9])
        await writer.drain()
        writer.write_eof()
    elif case == "unsupported rate":
        writer.write(header.replace(str(SAMPLE_RATE).encode(), b"96000"))
    elif case == "oversized chunk":
        writer.write(header + struct.pack(">BI", 1, MAX_CHUNK_BYTES + 1) + b"\x00" * 64)
    elif case == "nan samples":
        writer.write(encode_header(StreamHeader(sid, SAMPLE_RATE, "f32le", 1)))
        writer.write(encode_audio(encode_pcm(np.array([0.1, np.nan], dtype=np.float32), "f32le")))
    elif case == "duplicate id":
        writer.write(encode_header(GOOD))
    elif case == "stall":
        writer.write(header + encode_audio(CHUNK))
    elif case == "vanish":
        writer.write(header + encode_audio(CHUNK))
        await writer.drain()
        await sink.wait_until(lambda: any(r.stream_id == sid and r.chunks for r in sink.streams))
        writer.write(encode_audio(CHUNK)[: len(CHUNK) // 2])
        await writer.drain()
        _set_rst_on_close(writer)
        writer.transport.abort()
        return [], sid
    await writer.drain()
    replies = await _replies(reader)
    writer.close()
    return replies, sid


BAD_CASES = {
    # case: (reason pattern, stream opened?)
    "garbage header": ("bad magic", False),
    "truncated header": ("truncated header", False),
    "unsupported rate": ("unsupported sample_rate 96000", False),
    "oversized chunk": ("oversized chunk", True),
    "nan samples": ("NaN or infinite", True),
    "duplicate id": ("already open", False),
    "stall": ("idle timeout", True),
    "vanish": ("truncated frame|connection lost", True),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
@KINDS
@async_test
async def test_bad_client_gets_reason_while_good_stream_completes(
    kind: str, tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(kind, tmp_path) as (server, sink):
        pattern, opens = BAD_CASES[case]
        good_reader, good_writer = await _connect(server.bound_uri)
        good_writer.write(encode_header(GOOD))
        dec = ReplyDecoder()
        assert (await _read_reply(good_reader, dec)).type == "accept"
        sent: list[bytes] = []
        stop = asyncio.Event()

        async def keep_talking() -> None:
            # 10 ms of audio every 20 ms, so the good stream is live (not idle) for the whole bad exchange.
            while not stop.is_set():
                sent.append(SMALL)
                good_writer.write(encode_audio(SMALL))
                await good_writer.drain()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.02)

        talker = asyncio.create_task(keep_talking())
        await sink.wait_until(lambda: sink.by_id("good").samples.size > 0)
        replies, sid = await _bad_client(server.bound_uri, case, sink)
        stop.set()
        await talker

        if case != "vanish":
            assert [r.type for r in replies] == ["accept"] * opens + ["error"], replies
            assert replies[-1].reason and re.search(pattern, replies[-1].reason)
        if opens:
            rec = await asyncio.wait_for(sink.wait_closed(sid), TIMEOUT_S)
            assert rec.reason is not None and re.search(pattern, rec.reason)
            if case in ("stall", "vanish"):
                np.testing.assert_array_equal(rec.samples, _expected(CHUNK, "s16le", 1))
        else:
            assert all(r.stream_id != sid for r in sink.streams)
        assert any(re.search(pattern, m) for m in caplog.messages), caplog.messages

        # The good stream is unaffected: every byte it sent arrives, then a normal end.
        good_writer.write(encode_end())
        await good_writer.drain()
        final = await _read_reply(good_reader, dec)
        expected = _expected(b"".join(sent), "s16le", 1)
        assert final.type == "final" and final.fields["samples"] == expected.size
        good = sink.by_id("good")
        assert good.closed and good.reason is None
        np.testing.assert_array_equal(good.samples, expected)
        good_writer.close()
        assert server.open_streams == []


@KINDS
@async_test
async def test_plain_close_is_a_normal_end(
    kind: str,
    tmp_path: Path,
) -> None:
    async with serving(kind, tmp_path) as (server, sink):
        reader, writer = await _connect(server.bound_uri)
        writer.write(encode_header(StreamHeader("closer", SAMPLE_RATE, "s16le", 1)) + encode_audio(CHUNK))
        await writer.drain()
        writer.write_eof()
        replies = await _replies(reader)
        assert [r.type for r in replies] == ["accept"]
        rec = await asyncio.wait_for(sink.wait_closed("closer"), TIMEOUT_S)
        assert rec.reason is None and rec.samples.size == len(CHUNK) // 2
        writer.close()


@KINDS
@async_test
async def test_stop_accepting_keeps_open_streams_and_close_ends_them(
    kind: str,
    tmp_path: Path,
) -> None:
    async with serving(kind, tmp_path) as (server, sink):
        reader, writer = await _connect(server.bound_uri)
        writer.write(encode_header(StreamHeader("open", SAMPLE_RATE, "s16le", 1)) + encode_audio(CHUNK))
        dec = ReplyDecoder()
        assert (await _read_reply(reader, dec)).type == "accept"
        server.stop_accepting()
        with pytest.raises(OSError):
            await _connect(server.bound_uri)
        writer.write(encode_audio(CHUNK))
        await writer.drain()
        await sink.wait_until(lambda: sink.by_id("open").samples.size == len(CHUNK))
        assert server.open_streams == ["open"]
        await server.close()
        rec = sink.by_id("open")
        assert rec.closed and rec.reason == "server shutting down"
        rest = dec.feed(await asyncio.wait_for(reader.read(4096), TIMEOUT_S))
        assert [r.reason for r in rest] == ["server shutting down"]
        writer.close()


@async_test
async def test_max_streams_refuses_with_reason() -> None:
    sink = RecordingSink()
    server = SocketServer(TcpSpec("127.0.0.1", 0), sink, idle_timeout_s=IDLE_S, max_streams=1)
    await server.start()
    try:
        reader, writer = await _connect(server.bound_uri)
        writer.write(encode_header(StreamHeader("one", SAMPLE_RATE, "s16le", 1)))
        assert (await _read_reply(reader, ReplyDecoder())).type == "accept"
        reader2, writer2 = await _connect(server.bound_uri)
        replies = await _replies(reader2)
        assert [r.type for r in replies] == ["error"] and "too many streams" in replies[0].reason
        writer.close()
        writer2.close()
    finally:
        await server.close()


@async_test
async def test_stale_unix_socket_replaced_live_or_regular_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # bound, never listening, owner gone: stale
    sink = RecordingSink()
    first = SocketServer(UnixSpec(path), sink)
    await first.start()
    try:
        with pytest.raises(SourceError, match="already listening"):
            await SocketServer(UnixSpec(path), sink).start()
    finally:
        await first.close()
    regular = tmp_path / "file.sock"
    regular.write_text("keep me")
    with pytest.raises(SourceError, match="not a socket"):
        await SocketServer(UnixSpec(regular), sink).start()
    assert regular.read_text() == "keep me"
    os.unlink(regular)


@async_test
async def test_tcp_bind_failure_is_a_source_error() -> None:
    sink = RecordingSink()
    first = SocketServer(TcpSpec("127.0.0.1", 0), sink)
    uri = await first.start()
    try:
        port = int(uri.rsplit(":", 1)[1])
        with pytest.raises(SourceError, match="cannot listen on tcp://127.0.0.1"):
            await SocketServer(TcpSpec("127.0.0.1", port), sink).start()
    finally:
        await first.close()


# --------------------------------------------------------------------------------------------- recorded streams

RECORDED_BYTES = 16 * MAX_CHUNK_BYTES  # far more than the kernel's socket buffers can hold for a stalled reader


@KINDS
@async_test
async def test_a_recorded_stream_is_read_only_while_the_sink_has_room(kind: str, tmp_path: Path) -> None:
    """TCP backpressure: while the sink has no room the recorded stream's socket is not read (its sender blocks,
    nothing is pushed), a live stream beside it goes on as ever, and with room again everything arrives."""
    async with serving(kind, tmp_path) as (server, sink):
        sink.has_room(False)
        rate = 48000
        pcm = encode_pcm(_audio(RECORDED_BYTES / 4 / rate, rate, 1, seed=5), "f32le")
        header = StreamHeader("file", rate, "f32le", 1, live=False)
        reader, writer = await _connect(server.bound_uri)
        drained = 0

        async def send() -> None:
            nonlocal drained
            writer.write(encode_header(header))
            for i in range(0, len(pcm), MAX_CHUNK_BYTES):
                writer.write(encode_audio(pcm[i : i + MAX_CHUNK_BYTES]))
                await writer.drain()
                drained = i + MAX_CHUNK_BYTES
            writer.write(encode_end())
            await writer.drain()

        sender = asyncio.create_task(send())
        dec = ReplyDecoder()
        accept = await _read_reply(reader, dec)
        assert accept.type == "accept" and accept.fields["live"] is False
        await asyncio.wait_for(sink.wait_until(lambda: sink.room_waits >= 1), TIMEOUT_S)
        rec = sink.by_id("file")
        assert rec.live is False and rec.chunks == []

        live_pcm = encode_pcm(_audio(0.5, SAMPLE_RATE, 1, seed=6), "s16le")
        replies = await _send_stream(server.bound_uri, StreamHeader("mic", SAMPLE_RATE, "s16le", 1), live_pcm, 3001)
        assert [r.type for r in replies] == ["accept", "final"] and replies[0].fields["live"] is True
        assert sink.by_id("mic").live is True and sink.by_id("mic").closed
        assert not sender.done() and drained < len(pcm) and sink.by_id("file").chunks == []

        sink.has_room(True)
        await asyncio.wait_for(sender, TIMEOUT_S)
        final = await _read_reply(reader, dec)
        expected = _expected(pcm, "f32le", 1)
        assert final.type == "final" and final.fields["samples"] == expected.size
        rec = await asyncio.wait_for(sink.wait_closed("file"), TIMEOUT_S)
        assert rec.reason is None
        np.testing.assert_array_equal(rec.samples, expected)
        writer.close()


@async_test
async def test_shutdown_ends_a_recorded_stream_that_waits_for_room(tmp_path: Path) -> None:
    async with serving("tcp", tmp_path) as (server, sink):
        sink.has_room(False)
        reader, writer = await _connect(server.bound_uri)
        writer.write(encode_header(StreamHeader("file", SAMPLE_RATE, "s16le", 1, live=False)) + encode_audio(CHUNK))
        await writer.drain()
        dec = ReplyDecoder()
        assert (await _read_reply(reader, dec)).type == "accept"
        await asyncio.wait_for(sink.wait_until(lambda: sink.room_waits >= 1), TIMEOUT_S)
        await server.close()
        rec = sink.by_id("file")
        assert rec.closed and rec.reason == "server shutting down" and rec.chunks == []
        assert (await _read_reply(reader, dec)).reason == "server shutting down"
        writer.close()
