"""intentd-send end to end: a real subprocess against the real ingest server."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from intentd.daemon.audio import SAMPLE_RATE, to_mono
from intentd.daemon.sources.socket_server import SocketServer
from intentd.daemon.sources.uri import TcpSpec, UnixSpec
from tests.recording_sink import RecordingSink

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 60.0
# Runs intentd-send's main() and reports whether torch got imported along the way.
_RUN_SEND = (
    "import sys; from intentd.clients.send import main; rc = main(sys.argv[1:]); "
    "print('TORCH-LOADED' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(rc)"
)


def _write(path: Path, rate: int, channels: int, seconds: float, subtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.uniform(-0.8, 0.8, size=(int(rate * seconds), channels)).astype(np.float32)
    sf.write(path, data, rate, subtype=subtype)
    frames = sf.read(path, dtype="float32", always_2d=True)[0]
    return to_mono(frames, channels_axis=1)


async def _send(*args: str) -> tuple[int, str, str, float]:
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _RUN_SEND,
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), time.monotonic() - t0


def test_files_stream_concurrently_bit_exact_without_torch(tmp_path: Path) -> None:
    files = {
        tmp_path / "a.wav": _write(tmp_path / "a.wav", SAMPLE_RATE, 1, 1.0, "PCM_16", 1),
        tmp_path / "b.flac": _write(tmp_path / "b.flac", 44100, 2, 0.7, "PCM_16", 2),
        tmp_path / "c.wav": _write(tmp_path / "c.wav", 22050, 1, 0.5, "FLOAT", 3),  # sent as f32le
    }
    sink = RecordingSink()

    async def run() -> tuple[int, str, str, float]:
        server = SocketServer(TcpSpec("127.0.0.1", 0), sink)
        uri = await server.start()
        try:
            return await _send("--to", uri, "--chunk-ms", "10", *map(str, files))
        finally:
            await server.close()

    rc, out, err, _ = asyncio.run(run())
    assert rc == 0, err
    assert "NO-TORCH" in out
    for path, expected in files.items():
        rec = sink.by_id(str(path))
        assert rec.closed and rec.reason is None
        assert rec.live is False  # files are recorded streams unless --realtime or --live
        np.testing.assert_array_equal(rec.samples, expected)
        assert f"{path}: {expected.size} samples accepted" in out


def test_realtime_sequential_over_unix_with_stream_id(tmp_path: Path) -> None:
    wav = tmp_path / "short.wav"
    expected = _write(wav, 8000, 1, 0.6, "PCM_16", 4)
    sink = RecordingSink()

    async def run() -> tuple[int, str, str, float]:
        server = SocketServer(UnixSpec(tmp_path / "in.sock"), sink)
        uri = await server.start()
        try:
            return await _send("--to", uri, "--realtime", "--sequential", "--stream-id", "kitchen", str(wav))
        finally:
            await server.close()

    rc, _, err, elapsed = asyncio.run(run())
    assert rc == 0, err
    np.testing.assert_array_equal(sink.by_id("kitchen").samples, expected)
    assert sink.by_id("kitchen").live is True
    assert elapsed >= 0.55, elapsed  # paced: cannot finish before the audio's duration


def test_a_recorded_file_waits_for_room_and_live_marks_files_live(tmp_path: Path) -> None:
    wav = tmp_path / "slow.wav"
    expected = _write(wav, SAMPLE_RATE, 1, 0.5, "PCM_16", 8)
    sink = RecordingSink()

    async def run(*args: str) -> tuple[int, str, str, float]:
        server = SocketServer(TcpSpec("127.0.0.1", 0), sink)
        uri = await server.start()
        try:
            sending = asyncio.create_task(_send("--to", uri, *args, str(wav)))
            if "--live" not in args:
                sink.has_room(False)  # the daemon's model is behind: the recorded file waits, loses nothing
                await asyncio.wait_for(sink.wait_until(lambda: sink.room_waits >= 1), TIMEOUT_S)
                assert not sending.done() and sink.by_id(str(wav)).chunks == []
                sink.has_room(True)
            return await sending
        finally:
            await server.close()

    rc, _, err, _ = asyncio.run(run())
    assert rc == 0, err
    assert sink.by_id(str(wav)).live is False
    np.testing.assert_array_equal(sink.by_id(str(wav)).samples, expected)
    sink.has_room(False)
    rc, _, err, _ = asyncio.run(run("--live"))  # never waits: no room is needed
    assert rc == 0, err
    assert sink.by_id(str(wav)).live is True and sink.room_waits == 1


def test_events_report_survives_a_daemon_that_never_sends_stream_end(tmp_path: Path) -> None:
    """--events against a publisher that only heartbeats (a daemon from before stream.end): the file is still
    sent, the report says what is missing, and the exit status is 0."""
    from intentd.daemon.events import StatusEvent
    from intentd.daemon.publisher import Publisher

    wav = tmp_path / "old.wav"
    _write(wav, SAMPLE_RATE, 1, 0.2, "PCM_16", 9)
    sink = RecordingSink()
    publisher = Publisher("tcp://127.0.0.1:*")
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(0.05):
            publisher.publish(StatusEvent(state="ready", model_id="old@0", uptime_s=1.0))

    beating = threading.Thread(target=heartbeat)
    beating.start()

    async def run() -> tuple[int, str, str, float]:
        server = SocketServer(TcpSpec("127.0.0.1", 0), sink)
        uri = await server.start()
        try:
            return await _send("--to", uri, "--events", publisher.endpoint, "--wait-s", "0.5", str(wav))
        finally:
            await server.close()

    try:
        rc, out, err, _ = asyncio.run(run())
    finally:
        stop.set()
        beating.join()
        publisher.close(linger_ms=0)
    assert rc == 0, err
    assert f"{wav}: no stream.end within 0.5 s" in out and "NO-TORCH" in out
    assert sink.by_id(str(wav)).closed


def test_refusal_exits_nonzero_with_the_servers_reason(tmp_path: Path) -> None:
    wav = tmp_path / "dup.wav"
    _write(wav, SAMPLE_RATE, 1, 0.2, "PCM_16", 5)
    sink = RecordingSink()

    async def run() -> tuple[int, str, str, float]:
        server = SocketServer(TcpSpec("127.0.0.1", 0), sink)
        uri = await server.start()
        sink.open_stream("taken", SAMPLE_RATE, 0.0)  # the id is already open: the server must refuse it
        try:
            return await _send("--to", uri, "--stream-id", "taken", str(wav))
        finally:
            sink.close_stream("taken", None)
            await server.close()

    rc, _, err, _ = asyncio.run(run())
    assert rc == 1
    assert "taken: server refused: stream 'taken' is already open" in err


def test_unreachable_server_and_bad_files_fail_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "missing.wav"
    hi_rate = tmp_path / "hi.wav"
    _write(hi_rate, 96000, 1, 0.1, "PCM_16", 6)

    async def run(*args: str) -> tuple[int, str, str, float]:
        return await _send(*args)

    rc, _, err, _ = asyncio.run(run("--to", f"unix://{tmp_path}/nobody.sock", str(hi_rate)))
    assert rc == 1 and "96000 Hz is outside" in err
    rc, _, err, _ = asyncio.run(run("--to", f"unix://{tmp_path}/nobody.sock", str(missing)))
    assert rc == 1 and "missing.wav does not exist" in err and "System error" not in err, err
    wav = tmp_path / "ok.wav"
    _write(wav, SAMPLE_RATE, 1, 0.1, "PCM_16", 7)
    rc, _, err, _ = asyncio.run(run("--to", f"unix://{tmp_path}/nobody.sock", str(wav)))
    assert rc == 1 and "cannot connect" in err
    rc, _, err, _ = asyncio.run(run("--to", "http://x", str(wav)))
    assert rc == 2 and "expected tcp://" in err
