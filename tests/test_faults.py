"""Faults the daemon must survive, each against the real daemon subprocess over real sockets (issue 18; the numbers
come from bench/faults.py): SIGTERM with a full queue, SIGTERM while a reload loads, connections that hold slots
with empty frames, relative source paths, and running out of file descriptors."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from intentd.daemon import events
from intentd.daemon.audio import SAMPLE_RATE
from intentd.daemon.protocol import StreamHeader, encode_audio, encode_end, encode_header, encode_pcm
from tests.daemon_proc import (
    DaemonProc,
    EventCollector,
    free_port,
    silence,
    speech_clips,
    start_daemon,
    write_speech_wav,
)
from tests.tiny_models import build_tiny_whisper, build_whisper_tiny_size

pytestmark = pytest.mark.slow

EVENT_TIMEOUT_S = 60.0
ABORT_MARKS = ("terminate called", "Fatal Python error", "core dumped")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("faults") / "tiny")


@pytest.fixture(scope="module")
def whisper_size(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Forwards and loads that take as long as a real small model's: the queue fills, a load can be interrupted."""
    return build_whisper_tiny_size(tmp_path_factory.mktemp("faults") / "whisper-size")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    return speech_clips(4, tmp_path_factory.mktemp("faults-clips"), seed=3)


@pytest.fixture()
def daemons() -> Iterator[list[DaemonProc]]:
    """Daemons a test started: stopped (or reaped) after it, whatever happened."""
    started: list[DaemonProc] = []
    yield started
    for d in started:
        if d.alive():
            d.proc.kill()
            d.proc.wait()
        d._cleanup()


def until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `predicate` until it holds; fail naming `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def open_stream(d: DaemonProc, stream_id: str, live: bool = True) -> socket.socket:
    """A connected ingest stream whose header was accepted."""
    sock = socket.create_connection(d.audio_address, timeout=30)
    sock.sendall(encode_header(StreamHeader(stream_id, SAMPLE_RATE, "s16le", 1, live=live)))
    head = sock.recv(4, socket.MSG_WAITALL)
    body = sock.recv(int.from_bytes(head, "big"), socket.MSG_WAITALL)
    assert b'"accept"' in body, body
    return sock


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send, ignoring a daemon that has closed the stream (it is shutting down)."""
    try:
        sock.sendall(data)
    except OSError:
        pass


def records(collector: EventCollector) -> list[events.Event]:
    with collector._lock:
        return [e for _, e in collector.records]


def stopping_status(collector: EventCollector) -> events.StatusEvent | None:
    """The status the daemon publishes after its drain (ZeroMQ keeps order: everything before it has arrived)."""
    return next((e for e in records(collector) if isinstance(e, events.StatusEvent) and e.state == "stopping"), None)


def outcomes(found: list[events.Event]) -> Counter[str]:
    """Published outcomes of utterances: 'intent', or 'dropped:REASON'."""
    out: Counter[str] = Counter()
    for e in found:
        if isinstance(e, events.IntentEvent):
            out["intent"] += 1
        elif isinstance(e, events.DroppedEvent):
            out[f"dropped:{e.reason}"] += 1
        elif isinstance(e, events.ErrorEvent) and e.utterance is not None:
            out["error"] += 1
    return out


def test_sigterm_with_a_full_queue_publishes_an_outcome_for_every_utterance_heard(
    tmp_path: Path, whisper_size: Path, clips: list[np.ndarray], daemons: list[DaemonProc]
) -> None:
    # Each batch of the Whisper-size model takes longer than the whole drain: the deadline must come with work
    # queued and a forward running, which is what broke (utterances vanished, then the process aborted).
    d = start_daemon(tmp_path, whisper_size, {"service": {"drain_timeout_s": 0.3}})
    daemons.append(d)
    collector = EventCollector(d.events_uri)
    one = np.concatenate([part for clip in clips for part in (silence(0.3), clip, silence(0.7))])
    raw = encode_pcm(np.tile(one, 8), "s16le")
    step = SAMPLE_RATE * 2  # a second of audio per frame
    pcm = b"".join(encode_audio(raw[i:i + step]) for i in range(0, len(raw), step))
    socks = [open_stream(d, f"flood-{i}") for i in range(4)]
    senders = [threading.Thread(target=send_quietly, args=(s, pcm)) for s in socks]
    for t in senders:
        t.start()
    try:
        until(lambda: any(isinstance(e, events.StatusEvent) and e.queue_depth >= 24 for e in records(collector)),
              EVENT_TIMEOUT_S, "a queue 24 deep")
        d.signal(15)
        status = d.wait_exit(60.0)
        until(lambda: stopping_status(collector) is not None, 10.0, "the stopping status")
    finally:
        for s in socks:
            s.close()
        for t in senders:
            t.join()
        collector.close()
    log = d.log_text()
    assert status == 0, log[-3000:]
    assert not any(mark in log for mark in ABORT_MARKS), log[-3000:]
    final = stopping_status(collector)
    assert final is not None
    got = outcomes(records(collector))
    assert got["dropped:draining"] > 0, got  # the deadline came with work left: this is the path under test
    assert sum(got.values()) == final.counters["utterances"], (got, final.counters)
    assert collector.missed == 0
    ends = [e for e in records(collector) if isinstance(e, events.StreamEndEvent)]
    assert sorted(e.stream_id for e in ends) == [f"flood-{i}" for i in range(4)]


def test_sigterm_while_a_reload_is_loading_its_model_exits_cleanly(
    tmp_path: Path, tiny: Path, whisper_size: Path, clips: list[np.ndarray], daemons: list[DaemonProc]
) -> None:
    d = start_daemon(tmp_path, tiny)
    daemons.append(d)
    collector = EventCollector(d.events_uri)
    sock = open_stream(d, "talker")
    try:
        sock.sendall(encode_audio(encode_pcm(np.concatenate([silence(0.3), clips[0], silence(1.0)]), "s16le")))
        until(lambda: outcomes(records(collector))["intent"] == 1, EVENT_TIMEOUT_S, "the first intent")
        d.rewrite_config({"model": {"path": str(whisper_size)}})
        d.signal(1)  # SIGHUP: the new model loads on its own thread...
        d.notify.wait_for("RELOADING", "1", 30.0)
        d.signal(15)  # ...and SIGTERM arrives while it does
        status = d.wait_exit(60.0)
        until(lambda: stopping_status(collector) is not None, 10.0, "the stopping status")
    finally:
        sock.close()
        collector.close()
    log = d.log_text()
    assert status == 0, log[-3000:]
    assert not any(mark in log for mark in ABORT_MARKS), log[-3000:]
    final = stopping_status(collector)
    assert final is not None and final.counters["utterances"] == 1
    assert outcomes(records(collector)) == Counter(intent=1)
    assert "reloaded" not in log  # the interrupted reload swapped nothing in


def test_empty_frames_do_not_hold_a_stream_slot(
    tmp_path: Path, tiny: Path, clips: list[np.ndarray], daemons: list[DaemonProc]
) -> None:
    d = start_daemon(tmp_path, tiny, {"sources": {"max_streams": 2, "idle_timeout_s": 1.0}})
    daemons.append(d)
    hogs = [open_stream(d, f"hog-{i}") for i in range(2)]
    answers: list[bytes] = []

    def hog(sock: socket.socket) -> None:
        # An empty audio frame (5 bytes) five times per idle timeout, until the daemon answers.
        sock.settimeout(0.2)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            send_quietly(sock, encode_audio(b""))
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            answers.append(data)
            return

    with socket.create_connection(d.audio_address, timeout=30) as refused:
        refused.sendall(encode_header(StreamHeader("real", SAMPLE_RATE, "s16le", 1)))
        assert b"too many streams" in refused.recv(4096)  # the hogs hold both slots...
    threads = [threading.Thread(target=hog, args=(s,)) for s in hogs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in hogs:
        s.close()
    # ...until the idle timeout ends them: frames without samples are not audio.
    assert len(answers) == 2 and all(b"idle timeout" in a for a in answers), answers
    collector = EventCollector(d.events_uri)
    try:
        real = open_stream(d, "real")
        real.sendall(encode_audio(encode_pcm(np.concatenate([silence(0.3), clips[0], silence(1.0)]), "s16le")))
        real.sendall(encode_end())
        until(lambda: outcomes(records(collector))["intent"] == 1, EVENT_TIMEOUT_S, "the real client's intent")
        real.close()
    finally:
        collector.close()


def test_relative_file_and_unix_paths_resolve_against_the_config_folder(
    tmp_path: Path, tiny: Path, clips: list[np.ndarray], daemons: list[DaemonProc]
) -> None:
    conf, elsewhere = tmp_path / "conf", tmp_path / "elsewhere"
    conf.mkdir()
    elsewhere.mkdir()
    write_speech_wav(conf / "speech.wav", clips[:2])
    listen = [f"tcp://127.0.0.1:{free_port()}", "unix://ingest.sock", "file://speech.wav"]
    d = start_daemon(conf, tiny, {"sources": {"listen": listen}}, metrics=True, cwd=elsewhere)
    daemons.append(d)
    assert (conf / "ingest.sock").exists() and not (elsewhere / "ingest.sock").exists()
    assert d.metrics_port is not None
    # The file was found beside the config, replayed and classified (counted: it may finish before anyone
    # could subscribe).
    until(lambda: scrape_events(d.metrics_port) == 2, EVENT_TIMEOUT_S, "two intents from conf/speech.wav")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(conf / "ingest.sock"))
        sock.sendall(encode_header(StreamHeader("over-unix", SAMPLE_RATE, "s16le", 1)))
        sock.sendall(encode_audio(encode_pcm(np.concatenate([silence(0.3), clips[2], silence(1.0)]), "s16le")))
        sock.sendall(encode_end())
        until(lambda: scrape_events(d.metrics_port) == 3, EVENT_TIMEOUT_S, "the unix socket stream's intent")


def scrape_events(port: int | None) -> float:
    """intentd_events_total from /metrics, summed over labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("intentd_events_total"))


def hold_connections(d: DaemonProc, count: int) -> list[socket.socket]:
    """Open up to `count` plain TCP connections to the audio socket (connects the kernel cannot queue fail)."""
    held = []
    for _ in range(count):
        try:
            held.append(socket.create_connection(d.audio_address, timeout=2))
        except OSError:
            break
    return held


def test_the_soft_open_files_limit_is_raised_to_the_hard_one(
    tmp_path: Path, tiny: Path, daemons: list[DaemonProc]
) -> None:
    # systemd's default shape: soft 1024, hard far higher. Scaled down: 300 clients past a soft limit of 256.
    d = start_daemon(tmp_path, tiny, metrics=True, nofile=(256, 4096))
    daemons.append(d)
    held = hold_connections(d, 300)
    try:
        assert len(held) == 300
        until(lambda: len(psutil_fds(d)) >= 300, 30.0, "the daemon to accept 300 connections")
        scrape_events(d.metrics_port)  # still answers
    finally:
        for s in held:
            s.close()
    assert "out of system resource" not in d.log_text() and "cannot accept" not in d.log_text()


def psutil_fds(d: DaemonProc) -> list[str]:
    """The daemon's open file descriptors (from /proc)."""
    folder = Path(f"/proc/{d.proc.pid}/fd")
    return [p.name for p in folder.iterdir()]


def test_running_out_of_file_descriptors_logs_a_line_not_a_flood_and_recovers(
    tmp_path: Path, tiny: Path, clips: list[np.ndarray], daemons: list[DaemonProc]
) -> None:
    d = start_daemon(tmp_path, tiny, nofile=(256, 256))
    daemons.append(d)
    held = hold_connections(d, 400)  # past the limit: the kernel queues the rest, accept() fails on them
    try:
        until(lambda: "cannot accept connections" in d.log_text(), 30.0, "the accept error line")
        # The fault lasts: asyncio retries accept() every second, each time failing once per queued connection.
        time.sleep(3.0)
        log = d.log_text()
        assert d.alive()
    finally:
        for s in held:
            s.close()
    lines = [line for line in log.splitlines() if "accept" in line and ("ERROR" in line or "<3>" in line)]
    assert len(lines) == 1, lines[:5]
    assert "Traceback" not in log
    # With the connections gone the daemon serves again.
    collector = EventCollector(d.events_uri)
    try:
        sock = open_stream(d, "after")
        sock.sendall(encode_audio(encode_pcm(np.concatenate([silence(0.3), clips[1], silence(1.0)]), "s16le")))
        sock.sendall(encode_end())
        until(lambda: outcomes(records(collector))["intent"] == 1, EVENT_TIMEOUT_S, "an intent after the fault")
        sock.close()
    finally:
        collector.close()
