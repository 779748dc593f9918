"""Subscriber library and intentd-sub tests against a real Publisher on 127.0.0.1 (random ports)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
import zmq

from intentd.clients import live
from intentd.clients import sub as sub_cli
from intentd.clients.subscriber import Subscriber, SubscriberError
from intentd.daemon import events
from intentd.daemon.events import (
    DroppedEvent,
    ErrorEvent,
    IntentEvent,
    StatusEvent,
    VadEndEvent,
    VadStartEvent,
)
from intentd.daemon.protocol import (
    HELLO_BYTES,
    AudioFrame,
    EndFrame,
    StreamDecoder,
    StreamHeader,
    encode_reply,
)
from intentd.daemon.publisher import Publisher
from intentd.daemon.sources.socket_server import SocketServer
from intentd.daemon.sources.uri import TcpSpec
from tests.recording_sink import RecordingSink
from tests.test_publisher import _intent, probe, status

REPO = Path(__file__).resolve().parents[1]
SYNC_TIMEOUT_S = 10.0
RECV_TIMEOUT_S = 5.0
QUIET_S = 0.3  # how long "nothing more arrives" is checked for, after a sentinel proved delivery


@pytest.fixture
def publisher() -> Iterator[Publisher]:
    pub = Publisher("tcp://127.0.0.1:*")
    yield pub
    pub.close(linger_ms=0)


def _connected(publisher: Publisher, **kwargs: object) -> Subscriber:
    sub = Subscriber(publisher.endpoint, recv_timeout_s=RECV_TIMEOUT_S, **kwargs)  # type: ignore[arg-type]
    assert sub.wait_connected(SYNC_TIMEOUT_S, poke=lambda: probe(publisher))
    return sub


def _sentinel(publisher: Publisher, topic: str = "intent.zz-sentinel", stream: str = "s") -> int:
    """Publish a last message every test subscriber accepts, so 'it arrived' proves all before it did."""
    return publisher.publish(_intent(stream, 999, label=topic.removeprefix("intent.")))


def _drain_until(sub: Subscriber, seq: int) -> list[events.Event]:
    got = []
    while (event := sub.recv()) is not None:
        got.append(event)
        if event.seq == seq:
            return got
    raise AssertionError(f"sentinel seq {seq} never arrived; got {[e.topic for e in got]}")


def test_topic_prefix_filtering(publisher: Publisher) -> None:
    with _connected(publisher, topics=("intent.bal", "vad.")) as sub:
        publisher.publish(_intent("a", 0, label="balance"))
        publisher.publish(_intent("a", 1, label="transfer"))
        publisher.publish(VadStartEvent.at("a", 2, 16000, 16000, 0.0))
        publisher.publish(ErrorEvent(stream_id="a", message="x"))
        publisher.publish(status())
        last = publisher.publish(_intent("a", 3, label="balance-check"))
        got = _drain_until(sub, last)
    assert [e.topic for e in got] == ["intent.balance", "vad.start", "intent.balance-check"]
    assert isinstance(got[1], VadStartEvent)
    assert sub.missed == 0  # gaps are not counted under a topic filter: they are other topics


def test_stream_filter_keeps_stream_and_streamless_events(publisher: Publisher) -> None:
    with _connected(publisher, stream_id="b") as sub:
        publisher.publish(_intent("a", 0))
        publisher.publish(_intent("b", 0))
        publisher.publish(ErrorEvent(stream_id="a", message="other stream's error"))
        publisher.publish(ErrorEvent(stream_id="b", message="my error"))
        publisher.publish(status())
        last = _sentinel(publisher, stream="b")
        got = _drain_until(sub, last)
    assert [(type(e), e.raw.get("stream_id")) for e in got] == [
        (IntentEvent, "b"),
        (ErrorEvent, "b"),
        (StatusEvent, None),
        (IntentEvent, "b"),
    ]
    assert sub.missed == 0  # the filtered-out messages are not gaps


def test_probes_are_not_yielded(publisher: Publisher) -> None:
    with _connected(publisher) as sub:
        last = _sentinel(publisher)
        got = _drain_until(sub, last)
    assert [e.seq for e in got] == [last]


def test_status_heartbeat_ends_wait_without_poke(publisher: Publisher) -> None:
    """Like the daemon's heartbeat thread: a status every few ms until the subscriber is in."""
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(0.02):
            publisher.publish(status())

    context = zmq.Context()
    thread = threading.Thread(target=heartbeat)
    thread.start()
    try:
        with Subscriber(publisher.endpoint, topics=("intent.",), context=context) as sub:
            assert sub.wait_connected(SYNC_TIMEOUT_S)
            assert isinstance(sub.last_status, StatusEvent)
    finally:
        stop.set()
        thread.join()
        context.term()


def test_wait_connected_times_out_without_publisher() -> None:
    with Subscriber("tcp://127.0.0.1:1", recv_timeout_s=0.1) as sub:
        assert sub.wait_connected(0.2) is False
        assert sub.recv() is None
        assert list(sub) == []  # iteration ends at the receive timeout


def test_gaps_are_counted_as_missed(publisher: Publisher) -> None:
    with _connected(publisher) as sub:
        publisher.publish(_intent("a", 0))
        # Messages the subscriber never sees: sequence numbers it will find missing.
        publisher._seq += 3  # stands in for three messages dropped at a full HWM
        last = _sentinel(publisher)
        _drain_until(sub, last)
    assert sub.missed == 3


def test_reconnects_after_publisher_restart() -> None:
    first = Publisher("tcp://127.0.0.1:*")
    endpoint = first.endpoint
    with Subscriber(endpoint, recv_timeout_s=RECV_TIMEOUT_S) as sub:
        assert sub.wait_connected(SYNC_TIMEOUT_S, poke=lambda: probe(first))
        for i in range(5):
            first.publish(_intent("a", i))
        assert [sub.recv().raw["utterance"] for _ in range(5)] == list(range(5))  # type: ignore[union-attr]
        first.close(linger_ms=0)
        second = Publisher(endpoint)  # same port, fresh seq
        try:
            # The SUB reconnects by itself; probes go out until one gets through.
            got: list[events.Event] = []
            stop = threading.Event()

            def keep_probing() -> None:
                while not stop.wait(0.05):
                    second.publish(_intent("a", 100))

            prober = threading.Thread(target=keep_probing)
            prober.start()
            try:
                event = sub.recv(timeout_s=SYNC_TIMEOUT_S)
            finally:
                stop.set()
                prober.join()
            assert event is not None
            got.append(event)
        finally:
            second.close(linger_ms=0)
    assert got[0].raw["utterance"] == 100
    assert sub.restarts == 1


def test_malformed_messages_are_skipped_not_fatal() -> None:
    context = zmq.Context()
    raw_pub = context.socket(zmq.PUB)
    port = raw_pub.bind_to_random_port("tcp://127.0.0.1")
    probes = iter(range(1, 1_000_000))

    def raw_probe() -> int:
        seq = next(probes)
        raw_pub.send_multipart(events.encode(status(), seq=seq, published_wall=1.0))
        return seq

    try:
        with Subscriber(f"tcp://127.0.0.1:{port}", recv_timeout_s=RECV_TIMEOUT_S, context=context) as sub:
            assert sub.wait_connected(SYNC_TIMEOUT_S, poke=raw_probe)
            raw_pub.send_multipart([b"status", b"{broken"])
            raw_pub.send_multipart([b"status"])
            good = events.encode(_intent("a", 0), seq=1_000_000, published_wall=1.0)
            raw_pub.send_multipart(good)
            event = sub.recv()
        assert isinstance(event, IntentEvent) and event.seq == 1_000_000
        assert sub.malformed == 2
    finally:
        raw_pub.close(linger=0)
        context.term()


def _drain_sentinels(sub: Subscriber, *publishers: Publisher) -> list[events.Event]:
    """Publish a sentinel on each publisher and receive until every one has arrived; what arrived."""
    ends = {p.instance: _sentinel(p, stream="end") for p in publishers}
    got: list[events.Event] = []
    while ends:
        event = sub.recv()
        assert event is not None, f"sentinels {ends} never arrived"
        got.append(event)
        if event.raw.get("stream_id") == "end" and ends.get(event.instance) == event.seq:
            del ends[event.instance]
    return got


@pytest.fixture
def two_publishers() -> Iterator[tuple[Publisher, Publisher]]:
    """Two daemons' publishers, named as `publisher.instance_id` would name them."""
    a, b = Publisher("tcp://127.0.0.1:*", instance="host-a:1"), Publisher("tcp://127.0.0.1:*", instance="host-b:1")
    yield a, b
    a.close(linger_ms=0)
    b.close(linger_ms=0)


def test_one_subscriber_counts_seq_per_instance_across_two_publishers(
        two_publishers: tuple[Publisher, Publisher]) -> None:
    a, b = two_publishers
    with Subscriber([a.endpoint, b.endpoint], recv_timeout_s=RECV_TIMEOUT_S) as sub:
        # Both probe in step, so their seqs are equal and one number names every probe of either.
        assert sub.wait_connected(SYNC_TIMEOUT_S, poke=lambda: max(probe(a), probe(b)))
        assert sorted(sub.instances) == ["host-a:1", "host-b:1"]
        for i in range(20):  # interleaved seqs: one counter would see b's restart at every message
            a.publish(_intent("from-a", i))
            b.publish(_intent("from-b", i))
        b._seq += 2  # stands in for two of b's messages lost at a full HWM
        got = _drain_sentinels(sub, a, b)
    assert (sub.missed, sub.missed_by_instance, sub.restarts) == (2, {"host-b:1": 2}, 0)
    for stream, instance in (("from-a", "host-a:1"), ("from-b", "host-b:1")):
        mine = [e for e in got if e.raw.get("stream_id") == stream]
        assert [e.raw["utterance"] for e in mine] == list(range(20))  # each publisher's order is kept
        assert {e.instance for e in mine} == {instance}


def test_a_restart_of_one_instance_is_counted_for_it_alone(two_publishers: tuple[Publisher, Publisher]) -> None:
    a, b = two_publishers
    with Subscriber([a.endpoint, b.endpoint], recv_timeout_s=RECV_TIMEOUT_S) as sub:
        assert sub.wait_connected(SYNC_TIMEOUT_S, poke=lambda: max(probe(a), probe(b)))
        a._seq = 0  # a restarted: its seq begins again at 1
        _drain_sentinels(sub, a, b)
    assert (sub.restarts, sub.restarts_by_instance, sub.missed) == (1, {"host-a:1": 1}, 0)


def test_wait_connected_waits_for_every_endpoint(publisher: Publisher) -> None:
    silent = f"tcp://127.0.0.1:{_free_port()}"  # nobody publishes there
    with Subscriber([publisher.endpoint, silent], recv_timeout_s=RECV_TIMEOUT_S) as sub:
        assert sub.wait_connected(0.5, poke=lambda: probe(publisher)) is False
        assert sub.instances == (publisher.instance,)
        assert sub.wait_connected(SYNC_TIMEOUT_S, poke=lambda: probe(publisher), instances=1)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bad_connect_uri_raises() -> None:
    with pytest.raises(SubscriberError, match="at least one"):
        Subscriber([])
    with pytest.raises(SubscriberError, match="nope://x"):
        Subscriber("nope://x")


def test_clients_never_import_torch() -> None:
    code = (
        "import intentd.clients.sub, intentd.clients.subscriber, intentd.clients.live, sys; "
        "assert 'torch' not in sys.modules, 'torch'; assert 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ------------------------------------------------------------------------------------------ intentd-sub


def test_format_event_human_line() -> None:
    frames = events.encode(_intent("a.wav", 3), seq=1, published_wall=1_700_000_000.5)
    line = sub_cli.format_event(events.decode(frames))
    assert line.endswith(".500 stream=a.wav #3 balance 0.90 (0.00-1.00 s) 3 ms")


@pytest.mark.parametrize(("event", "summary"), [
    (DroppedEvent(stream_id="a", utterance=4, start_s=3.02, end_s=4.4, start_wall=1.0, end_wall=2.0, duration_s=1.38,
                  truncated=False, reason="queue_full"), "stream=a #4 dropped: queue_full (3.02-4.40 s)"),
    (ErrorEvent(stream_id="mic0", utterance=7, error="AudioError", message="NaN"), "stream=mic0 #7 error: AudioError: NaN"),
    (ErrorEvent(stream_id="mic0", message="device lost"), "stream=mic0 error: device lost"),
    (VadEndEvent.at("a", 3, 44800, 16000, 0.0), "stream=a #3 vad.end at 2.80 s"),
    (StatusEvent(state="ready", model_id="m@1", uptime_s=3600.25, streams=("a", "b")),
     "status ready model=m@1 streams=2 queue=0 up=3600 s"),
])  # fmt: skip
def test_format_event_says_every_type_in_one_line(event: events.Event, summary: str) -> None:
    line = sub_cli.format_event(events.decode(events.encode(event, seq=1, published_wall=1_700_000_000.5)))
    assert line.endswith(f".500 {summary}")


class _Lines:
    """Read a subprocess's stdout lines on a thread so the test can wait with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        self.thread = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _pump(self, stdout: IO[str]) -> None:
        for line in stdout:
            self.queue.put(line)

    def get(self, timeout_s: float = RECV_TIMEOUT_S) -> str:
        return self.queue.get(timeout=timeout_s)


def test_intentd_sub_prints_json_lines_and_exits_cleanly_on_ctrl_c(publisher: Publisher) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "intentd.clients.sub", "--connect", publisher.endpoint, "--json"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _Lines(proc)
        # Synchronise: heartbeat until intentd-sub prints one (status is subscribed to by default).
        first = None
        for _ in range(int(SYNC_TIMEOUT_S / 0.1)):
            probe(publisher)
            try:
                first = lines.get(timeout_s=0.1)
                break
            except queue.Empty:
                continue
        assert first is not None and json.loads(first)["topic"] == "status"
        sync_seq = publisher.seq
        sent = [publisher.publish(_intent("a.wav", i)) for i in range(3)]
        sent.append(publisher.publish(ErrorEvent(stream_id="a.wav", error="AudioError", message="boom")))
        printed: list[dict[str, Any]] = []
        while len(printed) < len(sent):
            record = json.loads(lines.get())
            if record["topic"] == "status" and record["seq"] <= sync_seq:
                continue  # a probe still in flight
            printed.append(record)
        assert [r["seq"] for r in printed] == sent
        assert [r["topic"] for r in printed] == ["intent.balance"] * 3 + ["utterance.error"]
        assert [r.get("utterance") for r in printed[:3]] == [0, 1, 2]
        assert printed[0]["label"] == "balance" and printed[0]["schema"] == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=RECV_TIMEOUT_S) == 0
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_intentd_sub_takes_several_publishers(two_publishers: tuple[Publisher, Publisher]) -> None:
    a, b = two_publishers
    proc = subprocess.Popen(
        [sys.executable, "-m", "intentd.clients.sub", "--connect", a.endpoint, "--connect", b.endpoint, "--json",
         "--topic", "status", "--topic", "intent."],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = _Lines(proc)
        heard: set[str] = set()
        for _ in range(int(SYNC_TIMEOUT_S / 0.1)):  # heartbeat both until intentd-sub prints one of each
            probe(a), probe(b)
            with contextlib.suppress(queue.Empty):
                while True:
                    heard.add(json.loads(lines.get(timeout_s=0.1))["instance"])
            if len(heard) == 2:
                break
        assert heard == {"host-a:1", "host-b:1"}
        a.publish(_intent("x", 0, label="left"))
        b.publish(_intent("y", 0, label="right"))
        intents: dict[str, str] = {}
        while len(intents) < 2:
            record = json.loads(lines.get())
            if record["topic"].startswith("intent."):
                intents[record["instance"]] = record["label"]
        assert intents == {"host-a:1": "left", "host-b:1": "right"}
    finally:
        proc.kill()
        proc.wait()


def test_intentd_sub_count_and_idle_timeout(publisher: Publisher, capsys: pytest.CaptureFixture[str]) -> None:
    assert sub_cli.main(["--connect", "tcp://127.0.0.1:1", "--idle-timeout", "0.2"]) == sub_cli.EXIT_IDLE
    # Exit 3 says why on stderr: nothing arrived, and from where.
    idle = capsys.readouterr().err.splitlines()
    assert len(idle) == 1 and idle[0].startswith("error: no event for 0.2 s") and "tcp://127.0.0.1:1" in idle[0], idle
    assert sub_cli.main(["--connect", "nope://x"]) == sub_cli.EXIT_USAGE
    assert "nope://x" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ intentd-live


def test_live_meter_and_level() -> None:
    assert live.meter(live.METER_FLOOR_DB) == "-" * live.METER_WIDTH
    assert live.meter(0.0) == "#" * live.METER_WIDTH
    assert live.meter(live.METER_FLOOR_DB / 2).count("#") == live.METER_WIDTH // 2
    assert live.level_dbfs(np.zeros(320, np.float32)) == live.METER_FLOOR_DB
    assert live.level_dbfs(np.full(320, 0.5, np.float32)) == pytest.approx(-6.02, abs=0.01)


def test_live_view_follows_vad_and_intents() -> None:
    view = live.LiveView("mic0", color=False)
    assert "vad ?" in view.status_line()

    def parsed(event: events.Event) -> events.Event:
        return events.decode(events.encode(event, seq=1, published_wall=1_700_000_000.0))

    assert view.on_event(parsed(VadStartEvent.at("mic0", 0, 16000, 16000, 0.0))) is None
    assert "SPEECH" in view.status_line()
    line = view.on_event(parsed(_intent("mic0", 0, label="stop")))
    assert line is not None and "#0 stop 0.90" in line and "303 ms after speech end" in line
    view.on_event(parsed(VadEndEvent.at("mic0", 0, 32000, 16000, 0.0)))
    view.on_level(-20.0)
    line = view.status_line()
    assert "silence" in line and "intents 1" in line and "last: stop 0.90" in line and "-20.0 dBFS" in line
    error = view.on_event(parsed(ErrorEvent(stream_id="mic0", error="AudioError", message="bad audio")))
    assert error is not None and "AudioError bad audio" in error
    assert view.on_event(parsed(status())) is None  # not about the stream: nothing to show


def test_live_view_shows_silence_once_the_daemon_confirms_vad_events_and_says_why_when_it_cannot() -> None:
    view = live.LiveView("mic0", color=False)
    assert "vad ?" in view.status_line()  # not accepted yet
    view.vad_confirmed()  # the accept reply said vad_events: speech edges will come, none yet
    assert "silence" in view.status_line()
    view.on_event(events.decode(events.encode(VadStartEvent.at("mic0", 0, 1600, 16000, 0.0), seq=1,
                                              published_wall=1.0)))
    view.vad_confirmed()  # a late confirmation does not undo what the events said
    assert "SPEECH" in view.status_line()

    old_daemon = live.LiveView("mic1", color=False)
    old_daemon.vad_unavailable("needs publisher.vad_events")
    old_daemon.on_event(events.decode(events.encode(_intent("mic1", 0, label="stop"), seq=2, published_wall=1.0)))
    assert "vad ? (needs publisher.vad_events)" in old_daemon.status_line()


# A daemon from before ingest revision 1.3: it takes `live` and `token`, and refuses any other header key the way
# every daemon refuses an unknown one (daemon.protocol); otherwise it accepts, reads to the end marker, says final.
_OLD_DAEMON_KEYS = {"stream_id", "sample_rate", "format", "channels", "live", "token"}


async def _old_daemon(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: list[dict[str, Any]],
                      ) -> None:
    hello = await reader.readexactly(HELLO_BYTES)
    body = await reader.readexactly(int.from_bytes(hello[-2:], "big"))
    fields = json.loads(body)
    headers.append(fields)
    if unknown := sorted(set(fields) - _OLD_DAEMON_KEYS):
        writer.write(encode_reply("error", reason=f"malformed header: unknown keys {unknown}", stream_id=None))
    else:
        writer.write(encode_reply("accept", stream_id=fields["stream_id"], live=True))
        decoder, samples, ended = StreamDecoder(), 0, False
        decoder.feed(hello + body)
        while not ended:
            for frame in decoder.feed(await reader.read(65536)):
                samples += len(frame.pcm) // 4 if isinstance(frame, AudioFrame) else 0  # f32le mono
                ended = ended or isinstance(frame, EndFrame)
        writer.write(encode_reply("final", stream_id=fields["stream_id"], samples=samples))
    await writer.drain()
    writer.close()


def test_live_asks_for_its_vad_events_and_an_older_daemon_gets_the_stream_again_without_the_key() -> None:
    pcm = np.linspace(-0.5, 0.5, 1600, dtype="<f4").tobytes()

    async def blocks() -> AsyncIterator[bytes]:
        yield pcm

    async def run() -> tuple[RecordingSink, live.LiveView, int, live.LiveView, int, list[str], list[dict[str, Any]]]:
        sink, view = RecordingSink(), live.LiveView("new", color=False)
        server = SocketServer(TcpSpec("127.0.0.1", 0), sink)
        try:
            samples = (await live.send_asking_vad_events(
                await server.start(), StreamHeader("new", 16000, "f32le", 1), blocks, view)).samples
        finally:
            await server.close()
        headers: list[dict[str, Any]] = []
        old = await asyncio.start_server(lambda r, w: _old_daemon(r, w, headers), "127.0.0.1", 0)
        host, port = old.sockets[0].getsockname()[:2]
        said: list[str] = []
        old_view = live.LiveView("old", color=False)
        async with old:
            old_samples = (await live.send_asking_vad_events(
                f"tcp://{host}:{port}", StreamHeader("old", 16000, "f32le", 1), blocks, old_view,
                say=said.append)).samples
        return sink, view, samples, old_view, old_samples, said, headers

    sink, view, samples, old_view, old_samples, said, headers = asyncio.run(run())
    # This daemon: the stream is opened with its vad events, and the accept's confirmation shows silence.
    assert sink.by_id("new").vad_events is True and samples == 1600
    assert "silence" in view.status_line()
    # An older daemon: refused once for the key, then the same audio again without it, and the view says why.
    assert [h.get("vad_events") for h in headers] == [True, None] and old_samples == 1600
    assert "vad ? (this daemon shows speech only with publisher.vad_events = true)" in old_view.status_line()
    assert len(said) == 1 and "predates per-stream vad events" in said[0]
