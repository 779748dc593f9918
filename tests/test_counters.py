"""One counter set: what the stages add, the status event and the Prometheus exposition both read; the Outbox
publishes and counts each outcome."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import generate_latest

from intentd.clients.subscriber import Subscriber
from intentd.daemon import events
from intentd.daemon.batcher import StreamSummary
from intentd.daemon.counters import STATUS_KEYS, Counters, Histogram
from intentd.daemon.frames import Classified, Prediction, Utterance
from intentd.daemon.metrics import CountersCollector, MetricsServer
from intentd.daemon.outbox import Outbox
from intentd.daemon.publisher import Publisher
from tests.test_publisher import probe

RATE = 16_000
SYNC_TIMEOUT_S = 10.0
RECV_TIMEOUT_S = 5.0


def _utterance(index: int = 0, truncated: bool = False) -> Utterance:
    return Utterance("s", index, np.zeros(RATE, np.float32), RATE, 0, RATE, truncated, RATE // 10, 10.0, 0.0)


def _exposition(counters: Counters) -> str:
    server = MetricsServer(CountersCollector(counters, queue_depth=lambda: 3, active_streams=lambda: 2,
                                             model_id=lambda: "m@1"))
    return generate_latest(server.registry).decode()


def test_status_holds_every_documented_key_from_the_start() -> None:
    assert Counters().status() == dict.fromkeys(STATUS_KEYS, 0)
    # docs/events.md, status
    assert STATUS_KEYS == ("utterances", "events", "dropped", "errors", "reloads", "discarded", "refused")


def test_status_and_prometheus_read_the_same_counts() -> None:
    c = Counters()
    c.utterance(truncated=False)
    c.utterance(truncated=True)
    c.submitted()
    c.batch(2, 0.02, [0.001, 0.004])
    c.intent("balance", 0.023, 0.323)
    c.intent("unknown", 0.03, 0.33)
    c.drop("queue_full")
    c.error("classify")
    c.reload(ok=True)
    c.reload(ok=False)
    c.model_loaded(1.5)
    c.discarded()
    c.discarded()
    c.refused("token")
    c.refused("token")
    c.refused("curve")
    assert c.status() == {"utterances": 2, "events": 2, "dropped": 1, "errors": 1, "reloads": 1, "discarded": 2,
                          "refused": 3}
    text = _exposition(c)
    for line in (
        'intentd_utterances_total{truncated="false"} 1.0', 'intentd_utterances_total{truncated="true"} 1.0',
        'intentd_events_total{label="balance"} 1.0', 'intentd_events_total{label="unknown"} 1.0',
        'intentd_drops_total{reason="queue_full"} 1.0', 'intentd_errors_total{kind="classify"} 1.0',
        'intentd_reloads_total{result="ok"} 1.0', 'intentd_reloads_total{result="failed"} 1.0',
        "intentd_queue_depth 3.0", "intentd_active_streams 2.0", 'intentd_model_info{model_id="m@1"} 1.0',
        "intentd_model_load_seconds 1.5", "intentd_discarded_total 2.0",
        'intentd_refused_total{reason="token"} 2.0', 'intentd_refused_total{reason="curve"} 1.0',
        'intentd_batch_size_bucket{le="2.0"} 1.0', "intentd_batch_size_sum 2.0", "intentd_batch_size_count 1.0",
        'intentd_queue_wait_seconds_bucket{le="0.005"} 2.0', "intentd_queue_wait_seconds_count 2.0",
        'intentd_inference_seconds_bucket{le="0.01"} 0.0', 'intentd_inference_seconds_bucket{le="0.02"} 1.0',
        'intentd_processing_seconds_bucket{le="+Inf"} 2.0', "intentd_end_of_speech_to_publish_seconds_count 2.0",
    ):  # fmt: skip
        assert line in text.splitlines(), line


def test_a_histogram_counts_a_value_on_its_bound_into_that_bucket() -> None:
    h = Histogram((1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 2.0, 7.0):
        h.observe(value)
    assert h.counts == [2, 2, 1] and h.count == 5 and h.total == 12.0


def test_counting_from_many_threads_loses_nothing() -> None:
    c = Counters()

    def work() -> None:
        for _ in range(2000):
            c.utterance(truncated=False)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.status()["utterances"] == 8000


@pytest.fixture
def publisher() -> Iterator[Publisher]:
    pub = Publisher("tcp://127.0.0.1:*")
    yield pub
    pub.close(linger_ms=0)


def test_the_outbox_publishes_and_counts_every_outcome(publisher: Publisher) -> None:
    counters = Counters()
    outbox = Outbox(publisher, counters, clock=lambda: 10.025)
    prediction = Prediction("balance", 0.9, (("balance", 0.9),))
    with Subscriber(publisher.endpoint, recv_timeout_s=RECV_TIMEOUT_S) as sub:
        assert sub.wait_connected(SYNC_TIMEOUT_S, poke=lambda: probe(publisher))
        outbox.classified(Classified(_utterance(0), prediction, "m@1", 1.0, 20.0, 1))
        outbox.dropped(_utterance(1), "queue_full")
        outbox.failed(_utterance(2), "ValueError: bad clip")
        outbox.stream_ended(StreamSummary("s", "idle timeout", False, 4.2, discarded=1, classified=1, dropped=1,
                                          failed=1))
        got = [sub.recv() for _ in range(4)]
    intent, dropped, error, end = got
    assert isinstance(intent, events.IntentEvent) and intent.topic == "intent.balance"
    assert intent.latency_ms.processing == pytest.approx(25.0)
    assert isinstance(dropped, events.DroppedEvent) and dropped.reason == "queue_full"
    assert isinstance(error, events.ErrorEvent) and (error.utterance, error.error) == (2, "ClassifyError")
    assert isinstance(end, events.StreamEndEvent) and end.topic == "stream.end"
    assert (end.stream_id, end.reason, end.live, end.duration_s) == ("s", "idle timeout", False, 4.2)
    assert (end.utterances, end.classified, end.dropped, end.failed, end.discarded) == (3, 1, 1, 1, 1)
    assert counters.status() == {"utterances": 0, "events": 1, "dropped": 1, "errors": 1, "reloads": 0,
                                 "discarded": 0, "refused": 0}
    assert counters.snapshot().processing_s.total == pytest.approx(0.025)
    assert outbox.failure is None


def test_a_failed_publish_is_kept_for_the_watchdog_not_raised(publisher: Publisher) -> None:
    outbox = Outbox(publisher, Counters())
    publisher.close()
    outbox.publish(events.StatusEvent(state="ready", model_id="m", uptime_s=0.0))
    assert outbox.failure is not None and "closed" in outbox.failure


def test_healthz_says_what_the_health_check_says_beside_the_metrics() -> None:
    import urllib.error
    import urllib.request

    state = {"ok": True, "why": "ready"}
    server = MetricsServer(CountersCollector(Counters(), queue_depth=lambda: 0, active_streams=lambda: 0,
                                             model_id=lambda: "m@1"),
                           health=lambda: (bool(state["ok"]), str(state["why"])))
    host, port = server.serve("127.0.0.1:0")
    try:
        def get(path: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as err:
                return err.code, err.read().decode()

        assert get("/healthz") == (200, "ready\n")
        state.update(ok=False, why="draining")
        assert get("/healthz") == (503, "draining\n")
        status, text = get("/metrics")
        assert status == 200 and 'intentd_model_info{model_id="m@1"} 1.0' in text
    finally:
        server.close()


def test_every_known_label_value_is_exported_at_zero_with_build_and_process_metrics() -> None:
    from intentd.daemon.version import version

    server = MetricsServer(CountersCollector(Counters(), queue_depth=lambda: 0, active_streams=lambda: 0,
                                             model_id=lambda: "m@1", labels=lambda: ("balance", "unknown")))
    lines = generate_latest(server.registry).decode().splitlines()
    for line in (
        'intentd_utterances_total{truncated="false"} 0.0', 'intentd_utterances_total{truncated="true"} 0.0',
        'intentd_events_total{label="balance"} 0.0', 'intentd_events_total{label="unknown"} 0.0',
        'intentd_drops_total{reason="queue_full"} 0.0', 'intentd_drops_total{reason="draining"} 0.0',
        'intentd_errors_total{kind="classify"} 0.0',
        'intentd_reloads_total{result="ok"} 0.0', 'intentd_reloads_total{result="failed"} 0.0',
        'intentd_refused_total{reason="token"} 0.0', 'intentd_refused_total{reason="tls"} 0.0',
        'intentd_refused_total{reason="curve"} 0.0', 'intentd_refused_total{reason="max_streams"} 0.0',
    ):  # fmt: skip
        assert line in lines, line
    build = [line for line in lines if line.startswith("intentd_build_info{")]
    assert len(build) == 1 and f'version="{version()}"' in build[0] and 'torch="' in build[0], build
    for prefix in ("process_open_fds ", "process_max_fds ", "process_resident_memory_bytes ", "python_info{"):
        assert any(line.startswith(prefix) for line in lines), prefix
