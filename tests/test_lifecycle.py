"""Service lifecycle with real components: sd_notify, watchdog, SIGHUP reload, SIGTERM drain, metrics, logs."""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from intentd.clients.subscriber import Subscriber
from intentd.daemon import events
from intentd.daemon import settings as settings_mod
from intentd.daemon.audio import SAMPLE_RATE
from intentd.daemon.frames import Prediction, Utterance
from intentd.daemon.notify import Notifier
from intentd.daemon.protocol import StreamHeader, encode_audio, encode_end, encode_header, encode_pcm
from tests.daemon_proc import (
    NotifySocket,
    collect,
    free_port,
    running_daemon,
    serve_while,
    silence,
    speech_clips,
)
from tests.tiny_models import build_tiny_whisper

pytestmark = pytest.mark.slow

WATCHDOG_USEC = 400_000
EVENT_TIMEOUT_S = 60.0
LABELS_A = ("balance", "transfer", "stop")
LABELS_B = ("yes", "no")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("life")
    return build_tiny_whisper(root / "model-a", 0, LABELS_A), build_tiny_whisper(root / "model-b", 5, LABELS_B)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    return speech_clips(4, tmp_path_factory.mktemp("life-clips"), seed=5)


class Talker:
    """One open ingest stream on a plain socket (the test decides when each utterance is said)."""

    def __init__(self, uri: str, stream_id: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", int(uri.rsplit(":", 1)[1])), timeout=30)
        self.sock.sendall(encode_header(StreamHeader(stream_id, SAMPLE_RATE, "s16le", 1)))
        # The accept reply: u32 length + JSON.
        head = self.sock.recv(4, socket.MSG_WAITALL)
        body = self.sock.recv(int.from_bytes(head, "big"), socket.MSG_WAITALL)
        assert b'"accept"' in body, body

    def say(self, *parts: np.ndarray) -> None:
        self.sock.sendall(encode_audio(encode_pcm(np.concatenate(parts), "s16le")))

    def end(self) -> None:
        self.sock.sendall(encode_end())

    def close(self) -> None:
        self.sock.close()


def intents(sub: Subscriber, stream_id: str, n: int) -> list[events.IntentEvent]:
    got = collect(sub, lambda k: len(k) >= n, EVENT_TIMEOUT_S,
                  lambda e: isinstance(e, events.IntentEvent) and e.stream_id == stream_id)
    assert len(got) == n, got
    return got


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def metric(text: str, name: str, default: float | None = None, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (`default` if none: a labelled counter has
    no sample before its first increment)."""
    total, found = 0.0, False
    for line in text.splitlines():
        m = re.match(rf"{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
            found = True
    if not found and default is not None:
        return default
    assert found, f"no {name} {labels} in metrics"
    return total


def test_notify_watchdog_metrics_journald_logs_and_sigterm_drain(
    tmp_path: Path, models: tuple[Path, Path], clips: list[np.ndarray]
) -> None:
    env = {"WATCHDOG_USEC": str(WATCHDOG_USEC), "INVOCATION_ID": "0123456789abcdef"}
    with running_daemon(tmp_path, models[0], {"publisher": {"vad_events": True}}, env=env, metrics=True) as d:
        ready = d.notify.messages[-1]
        # READY=1 comes after every socket is bound: connecting right away must work.
        socket.create_connection(("127.0.0.1", int(d.audio_uri.rsplit(":", 1)[1])), timeout=5).close()
        assert "STATUS" in ready and "ready" in ready["STATUS"]
        assert d.metrics_port is not None
        before = scrape(d.metrics_port)
        assert 'intentd_model_info{model_id="model-a@' in before
        with Subscriber(d.events_uri, recv_timeout_s=EVENT_TIMEOUT_S) as sub:
            assert sub.wait_connected(30.0)
            for _ in range(3):
                d.notify.wait_for("WATCHDOG", "1", timeout_s=10.0)
            d.notify.wait_for("STATUS", timeout_s=10.0)

            # A notify reader that stops reading must not freeze the daemon: heartbeats keep coming.
            d.notify.pause()
            beats = collect(sub, lambda k: len(k) >= 20, 30.0, lambda e: isinstance(e, events.StatusEvent))
            assert len(beats) == 20
            d.notify.resume()
            d.notify.wait_for("WATCHDOG", "1", timeout_s=10.0)

            t = Talker(d.audio_uri, "metered")
            t.say(silence(0.3), clips[0], silence(1.0), clips[1], silence(1.0))
            got = intents(sub, "metered", 2)
            after = scrape(d.metrics_port)
            assert metric(after, "intentd_utterances_total") - metric(before, "intentd_utterances_total", 0.0) == 2
            for e in got:
                assert metric(after, "intentd_events_total", label=e.label) >= 1
            assert metric(after, "intentd_batch_size_count") >= 1
            assert metric(after, "intentd_batch_size_bucket", le="+Inf") >= 1
            # Per utterance...
            for name in ("intentd_processing_seconds", "intentd_queue_wait_seconds",
                         "intentd_end_of_speech_to_publish_seconds"):
                assert metric(after, f"{name}_count") == 2, name
                assert metric(after, f"{name}_sum") > 0.0, name
            # ...and per batch (both utterances may share one).
            batches = metric(after, "intentd_inference_seconds_count")
            assert 1 <= batches <= 2 and metric(after, "intentd_batch_size_sum") == 2

            # SIGHUP with an unchanged config: RELOADING=1 (with its monotonic time), then READY=1.
            d.signal(signal.SIGHUP)
            reloading = d.notify.wait_for("RELOADING", "1", timeout_s=30.0)
            assert int(reloading["MONOTONIC_USEC"]) > 0
            d.notify.wait_for("READY", "1", timeout_s=60.0)

            # The last utterance's final frame, no trailing silence: the VAD has not closed it when SIGTERM
            # arrives, yet its event is published before the process exits 0.
            t.say(clips[2])
            collect(sub, lambda k: len(k) >= 1, EVENT_TIMEOUT_S,
                    lambda e: isinstance(e, events.VadStartEvent) and e.stream_id == "metered"
                    and e.utterance != 0)
            d.signal(signal.SIGTERM)
            last = intents(sub, "metered", 1)[0]
            assert last.utterance == 2 and not last.truncated
            assert d.wait_exit() == 0
        d.notify.wait_for("STOPPING", "1", timeout_s=5.0)
        t.close()
    lines = [line for line in d.log_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert re.match(r"<[0-7]>", line), f"no journald priority prefix: {line!r}"
        assert not re.search(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d", line), f"timestamp under journald: {line!r}"
    assert any(line.startswith("<6>") for line in lines)


def test_sighup_swaps_models_mid_stream_without_losing_or_repeating_events(
    tmp_path: Path, models: tuple[Path, Path], clips: list[np.ndarray]
) -> None:
    model_a, model_b = models
    with running_daemon(tmp_path, model_a) as d:
        with Subscriber(d.events_uri, recv_timeout_s=EVENT_TIMEOUT_S) as sub:
            assert sub.wait_connected(30.0)
            t = Talker(d.audio_uri, "talker")
            seen: list[events.IntentEvent] = []
            t.say(silence(0.3), clips[0], silence(1.0), clips[1], silence(1.0))
            seen += intents(sub, "talker", 2)
            d.rewrite_config({"model": {"path": str(model_b)}})
            d.signal(signal.SIGHUP)
            # Talking on while the new model loads beside the old one.
            t.say(clips[2], silence(1.0))
            d.notify.wait_for("RELOADING", "1", timeout_s=30.0)
            d.notify.wait_for("READY", "1", timeout_s=60.0)
            t.say(clips[3], silence(1.0), clips[0], silence(1.0))
            seen += intents(sub, "talker", 3)

            # A reload to a broken folder keeps the running model.
            broken = tmp_path / "broken-model"
            broken.mkdir()
            (broken / "config.json").write_text("{ nope")
            d.rewrite_config({"model": {"path": str(broken)}})
            d.signal(signal.SIGHUP)
            d.notify.wait_for("RELOADING", "1", timeout_s=30.0)
            d.notify.wait_for("READY", "1", timeout_s=60.0)
            t.say(clips[1], silence(1.0))
            t.end()
            seen += intents(sub, "talker", 1)
            status = collect(sub, lambda k: len(k) >= 1, 10.0, lambda e: isinstance(e, events.StatusEvent))
            t.close()
        assert d.alive()
        log = d.log_text()
    assert [e.utterance for e in seen] == list(range(6)), "utterances missing or repeated"
    ids = [e.model_id for e in seen]
    a_id, b_id = ids[0], ids[-1]
    assert a_id.startswith("model-a@") and b_id.startswith("model-b@")
    assert ids[:2] == [a_id, a_id] and ids[3:] == [b_id] * 3
    # Utterance 2 was said during the reload: either model may have served it, but the switch happens once.
    assert ids == sorted(ids, key=lambda i: i != a_id)
    for e in seen:
        assert e.label in (LABELS_A if e.model_id == a_id else LABELS_B)
    assert status[0].model_id == b_id
    assert "reload failed" in log and "broken-model" in log


# --------------------------------------------------------------------------------------------- in-process


class BlockingModel:
    """A fake model whose classify waits on `release` while `block` is set."""

    model_id = "fake@0"

    def __init__(self) -> None:
        self.block = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()

    def classify(self, utterances: Sequence[Utterance]) -> list[Prediction]:
        if self.block.is_set():
            self.entered.set()
            self.release.wait(30.0)
        return [Prediction("a", 1.0, (("a", 1.0),)) for _ in utterances]


def test_watchdog_stops_while_a_batch_is_stuck_and_resumes_after(
    monkeypatch: pytest.MonkeyPatch, clips: list[np.ndarray]
) -> None:
    from intentd.daemon.service import Service

    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    events_port = free_port()
    settings = settings_mod.from_dict({
        "sources": {"listen": ["tcp://127.0.0.1:0"]},
        "publisher": {"uri": f"tcp://127.0.0.1:{events_port}", "status_interval_s": 0.2},
        "service": {"stall_s": 2.0},
    })
    model = BlockingModel()
    notify = NotifySocket()
    service = Service(settings, model_loader=lambda s: model, notifier=Notifier(notify.path))
    interval_s = WATCHDOG_USEC / 2e6

    def drive() -> None:
        notify.wait_for("READY", "1", timeout_s=30.0)
        with Subscriber(f"tcp://127.0.0.1:{events_port}", recv_timeout_s=EVENT_TIMEOUT_S) as sub:
            assert sub.wait_connected(10.0)
            notify.wait_for("WATCHDOG", "1", timeout_s=5.0)
            model.block.set()
            t = Talker(service.bound_sources[0], "stuck")
            t.say(clips[0], silence(1.0))
            assert model.entered.wait(30.0)
            deadline = time.monotonic() + 10.0
            while service.healthy():
                assert time.monotonic() < deadline, "a stuck batch never made the service unhealthy"
                model.release.wait(interval_s / 4)
            stopped_at = notify.count("WATCHDOG", "1")
            # Watch five health intervals: at most one ping that was already on its way.
            threading.Event().wait(5 * interval_s)
            assert notify.count("WATCHDOG", "1") <= stopped_at + 1
            model.block.clear()
            model.release.set()
            evs = intents(sub, "stuck", 1)
            assert evs[0].model_id == "fake@0"
            resumed = notify.count("WATCHDOG", "1")
            notify.wait_for("WATCHDOG", "1", timeout_s=5.0)  # an unread one from before is fine too...
            deadline = time.monotonic() + 5.0
            while notify.count("WATCHDOG", "1") < resumed + 2:  # ...so require two fresh ones
                assert time.monotonic() < deadline, "watchdog pings did not resume"
                model.release.wait(interval_s / 4)
            t.end()
            t.close()

    try:
        assert serve_while(service, drive) == 0  # signal handlers need the main thread
    finally:
        notify.close()


def test_status_and_prometheus_report_the_same_counts_from_the_first_heartbeat(clips: list[np.ndarray],
                                                                             tmp_path: Path) -> None:
    from intentd.daemon.service import Service

    events_port, metrics_port = free_port(), free_port()
    settings = settings_mod.from_dict({
        "sources": {"listen": ["tcp://127.0.0.1:0"]},
        "publisher": {"uri": f"tcp://127.0.0.1:{events_port}", "status_interval_s": 0.2},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        # No folder there (as on a clean clone, where models/default is not built): the injected model is all
        # the daemon has, and /metrics must still answer (it read the folder's labels and failed with 500).
        "model": {"path": str(tmp_path / "no-model-folder")},
    })
    notify = NotifySocket()
    service = Service(settings, model_loader=lambda s: BlockingModel(), notifier=Notifier(notify.path))

    def drive() -> None:
        notify.wait_for("READY", "1", timeout_s=30.0)
        with Subscriber(f"tcp://127.0.0.1:{events_port}", recv_timeout_s=EVENT_TIMEOUT_S) as sub:
            assert sub.wait_connected(10.0)
            first = collect(sub, lambda k: len(k) >= 1, 10.0, lambda e: isinstance(e, events.StatusEvent))[0]
            assert first.counters == {"utterances": 0, "events": 0, "dropped": 0, "errors": 0, "reloads": 0,
                                      "discarded": 0, "refused": 0}
            t = Talker(service.bound_sources[0], "counted")
            t.say(silence(0.3), clips[0], silence(1.0))
            intents(sub, "counted", 1)
            status = collect(sub, lambda k: len(k) >= 1, 10.0,
                             lambda e: isinstance(e, events.StatusEvent) and e.counters["events"] == 1)[0]
            assert status.counters == {"utterances": 1, "events": 1, "dropped": 0, "errors": 0, "reloads": 0,
                                      "discarded": 0, "refused": 0}
            text = scrape(metrics_port)
            assert metric(text, "intentd_utterances_total") == 1 and metric(text, "intentd_events_total") == 1
            assert metric(text, "intentd_model_info", model_id="fake@0") == 1
            t.end()
            t.close()

    try:
        assert serve_while(service, drive) == 0
    finally:
        notify.close()
