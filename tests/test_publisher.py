"""Publisher tests on real ZeroMQ sockets over 127.0.0.1 (random ports), synchronised, never sleep-and-hope."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from intentd.clients.subscriber import Subscriber
from intentd.daemon.errors import ConfigError
from intentd.daemon.events import ErrorEvent, IntentEvent, LabelScore, Latency, StatusEvent
from intentd.daemon.publisher import Publisher, PublisherError

SYNC_TIMEOUT_S = 10.0
RECV_TIMEOUT_S = 5.0


def probe(publisher: Publisher) -> int:
    """Publish one status heartbeat (what wait_connected pokes with)."""
    return publisher.publish(status())


def status(state: str = "ready", model_id: str = "test@00000000") -> StatusEvent:
    """A status heartbeat."""
    return StatusEvent(state=state, model_id=model_id, uptime_s=0.0)


def _intent(stream: str, index: int, label: str = "balance") -> IntentEvent:
    """A complete intent event as the daemon publishes it."""
    return IntentEvent(
        stream_id=stream, utterance=index, start_s=0.0, end_s=1.0, start_wall=1.0, end_wall=2.0, duration_s=1.0,
        truncated=False, label=label, score=0.9, top_k=(LabelScore(label, 0.9),), model_id="m@1",
        latency_ms=Latency(queue_wait=1, inference=2, processing=3, end_of_speech=303), batch_size=1,
    )  # fmt: skip


@pytest.fixture
def publisher() -> Iterator[Publisher]:
    pub = Publisher("tcp://127.0.0.1:*", sndhwm=1000)
    yield pub
    pub.close(linger_ms=0)


def test_binds_random_port_and_reports_endpoint(publisher: Publisher) -> None:
    assert publisher.endpoint.startswith("tcp://127.0.0.1:")
    assert int(publisher.endpoint.rsplit(":", 1)[1]) > 0


def test_seq_grows_by_one_and_order_is_kept(publisher: Publisher) -> None:
    with Subscriber(publisher.endpoint, recv_timeout_s=RECV_TIMEOUT_S) as sub:
        assert sub.wait_connected(SYNC_TIMEOUT_S, poke=lambda: probe(publisher))
        first = publisher.seq + 1
        sent = [publisher.publish(_intent("a", i)) for i in range(50)]
        sent.append(publisher.publish(ErrorEvent(stream_id="a", message="boom")))
        assert sent == list(range(first, first + 51))
        got = [sub.recv() for _ in range(51)]
    assert [e.seq for e in got if e is not None] == sent
    assert [e.raw.get("utterance") for e in got[:50] if e is not None] == list(range(50))
    assert got[-1] is not None and got[-1].type == "utterance.error"
    assert sub.missed == 0


def test_port_in_use_names_the_uri(publisher: Publisher) -> None:
    with pytest.raises(PublisherError, match=publisher.endpoint.replace(".", r"\.")) as caught:
        Publisher(publisher.endpoint)
    assert "in use" in str(caught.value)


@pytest.mark.parametrize(
    "uri", ["", "udp://127.0.0.1:5556", "tcp://127.0.0.1", "tcp://127.0.0.1:99999", "ipc://"]
)
def test_bad_uri_is_a_config_error_naming_it(uri: str) -> None:
    with pytest.raises(ConfigError, match="publisher.uri"):
        Publisher(uri)


def test_ipc_transport(tmp_path: Path) -> None:
    uri = f"ipc://{tmp_path / 'events.sock'}"
    with Publisher(uri) as pub, Subscriber(uri, recv_timeout_s=RECV_TIMEOUT_S) as sub:
        assert sub.wait_connected(SYNC_TIMEOUT_S, poke=lambda: probe(pub))
        seq = pub.publish(_intent("a", 0))
        event = sub.recv()
    assert event is not None and event.seq == seq


def test_publish_after_close_raises(publisher: Publisher) -> None:
    publisher.close()
    publisher.close()  # idempotent
    with pytest.raises(PublisherError, match="closed"):
        publisher.publish(_intent("a", 0))


def test_slow_subscriber_never_blocks_publish() -> None:
    """A subscriber that reads nothing, with a tiny HWM on both sides: 10k publishes still return at once."""
    count = 10_000
    with Publisher("tcp://127.0.0.1:*", sndhwm=5) as pub:
        context = zmq.Context()
        try:
            with Subscriber(pub.endpoint, rcvhwm=5, context=context) as sub:
                assert sub.wait_connected(SYNC_TIMEOUT_S, poke=lambda: probe(pub))
                start = time.perf_counter()
                seqs = [pub.publish(_intent("a", i)) for i in range(count)]
                elapsed = time.perf_counter() - start
                assert seqs == list(range(seqs[0], seqs[0] + count))
                assert pub.sent + pub.dropped >= count
                assert elapsed < 5.0, f"publishing {count} took {elapsed:.2f} s"
                # The subscriber now reads: it got some but not all, and counts what it missed as gaps.
                got = []
                while (event := sub.recv(timeout_s=0.5)) is not None:
                    got.append(event)
                assert 0 < len(got) < count
                assert sub.missed > 0
                # seq still identifies each message: what arrived is in order.
                assert [e.seq for e in got] == sorted(e.seq for e in got)
        finally:
            context.term()


def test_publish_is_thread_safe() -> None:
    threads_n, per_thread = 4, 500
    # The subscriber reads only after the threads finish: the HWM must hold everything (no drops here).
    with (
        Publisher("tcp://127.0.0.1:*", sndhwm=100_000) as publisher,
        Subscriber(publisher.endpoint, recv_timeout_s=RECV_TIMEOUT_S) as sub,
    ):
        assert sub.wait_connected(SYNC_TIMEOUT_S, poke=lambda: probe(publisher))
        base = publisher.seq
        seqs: list[list[int]] = [[] for _ in range(threads_n)]

        def work(n: int) -> None:
            for i in range(per_thread):
                seqs[n].append(publisher.publish(_intent(f"s{n}", i)))

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        got = [sub.recv() for _ in range(threads_n * per_thread)]
    all_seqs = sorted(s for chunk in seqs for s in chunk)
    assert all_seqs == list(range(base + 1, base + 1 + threads_n * per_thread))
    # On the wire, seq order is send order: the lock covers both.
    assert [e.seq for e in got if e is not None] == all_seqs
    for n in range(threads_n):  # each thread's own messages arrive in its order
        mine = [e.raw["utterance"] for e in got if e is not None and e.raw["stream_id"] == f"s{n}"]
        assert mine == list(range(per_thread))


def test_intent_events_arrive_typed(publisher: Publisher) -> None:
    with Subscriber(publisher.endpoint, topics=("intent.",), recv_timeout_s=RECV_TIMEOUT_S) as sub:
        assert sub.wait_connected(SYNC_TIMEOUT_S, poke=lambda: probe(publisher))
        publisher.publish(status(model_id="m@1"))
        publisher.publish(_intent("a", 0, label="stop"))
        event = sub.recv()
    assert isinstance(event, IntentEvent)
    assert (event.label, event.score, event.latency_ms.end_of_speech) == ("stop", 0.9, 303.0)
    assert isinstance(sub.last_status, StatusEvent)
