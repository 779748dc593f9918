"""Event envelope tests: every type round-trips build -> frames -> parse; malformed input is rejected."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from daemon import events
from daemon.events import (
    DroppedEvent,
    ErrorEvent,
    Event,
    EventError,
    IntentEvent,
    StatusEvent,
    VadEvent,
)
from daemon.frames import Classified, Prediction, Utterance

RATE = 16_000
ORIGIN_WALL = 1_700_000_000.0
CLOSED_AT = 100.0


def _utterance(index: int = 3, truncated: bool = False) -> Utterance:
    start, end = int(1.21 * RATE), int(2.80 * RATE)
    return Utterance(
        stream_id="a.wav",
        index=index,
        samples=np.zeros(end - start, np.float32),
        sample_rate=RATE,
        start_sample=start,
        end_sample=end,
        truncated=truncated,
        hangover_samples=int(0.3 * RATE),
        closed_monotonic=CLOSED_AT,
        stream_origin_wall=ORIGIN_WALL,
    )


def _classified(label: str = "balance", score: float = 0.97) -> Classified:
    prediction = Prediction(label, score, ((label, score), ("transfer", 0.02), ("stop", 0.01)))
    return Classified(
        _utterance(), prediction, "tiny@0123abcd", queue_wait_ms=1.5, inference_ms=12.25, batch_size=4
    )


def _round_trip(message: events.Message, seq: int = 7) -> Event:
    topic, payload = message
    frames = events.encode(topic, payload, seq=seq, published_wall=ORIGIN_WALL + 5)
    assert all(isinstance(f, bytes) for f in frames)
    assert frames[0] == topic.encode()
    return events.decode(frames)


def test_intent_round_trip() -> None:
    message = events.intent_message(_classified(), now_monotonic=CLOSED_AT + 0.023)
    assert message[0] == "intent.balance"
    event = _round_trip(message)
    assert isinstance(event, IntentEvent)
    assert (event.topic, event.type, event.schema, event.seq) == ("intent.balance", "intent", 1, 7)
    assert (event.stream_id, event.utterance, event.label) == ("a.wav", 3, "balance")
    assert event.score == pytest.approx(0.97)
    assert event.top_k == (("balance", 0.97), ("transfer", 0.02), ("stop", 0.01))
    assert (event.start_s, event.end_s) == pytest.approx((1.21, 2.80))
    assert event.start_wall == pytest.approx(ORIGIN_WALL + 1.21)
    assert event.end_wall == pytest.approx(ORIGIN_WALL + 2.80)
    assert event.duration_s == pytest.approx(1.59)
    assert event.truncated is False
    assert event.model_id == "tiny@0123abcd"
    assert event.batch_size == 4
    assert event.latency_ms.queue_wait == pytest.approx(1.5)
    assert event.latency_ms.inference == pytest.approx(12.25)
    assert event.latency_ms.processing == pytest.approx(23.0)
    assert event.latency_ms.end_of_speech == pytest.approx(323.0)  # processing + 300 ms hangover
    assert event.published_wall == pytest.approx(ORIGIN_WALL + 5)
    assert event.raw["latency_ms"]["processing"] == pytest.approx(23.0)


def test_unknown_intent_topic() -> None:
    classified = _classified(label=events.UNKNOWN_LABEL, score=0.4)
    topic, _ = events.intent_message(classified)
    assert topic == events.TOPIC_UNKNOWN == "intent.unknown"
    assert isinstance(_round_trip(events.intent_message(classified)), IntentEvent)


def test_dropped_round_trip() -> None:
    event = _round_trip(events.dropped_message(_utterance(index=5, truncated=True), reason="queue_full"))
    assert isinstance(event, DroppedEvent)
    assert (event.topic, event.type, event.reason) == ("utterance.dropped", "utterance.dropped", "queue_full")
    assert (event.stream_id, event.utterance, event.truncated) == ("a.wav", 5, True)
    assert event.start_s == pytest.approx(1.21)


def test_error_round_trip() -> None:
    event = _round_trip(events.error_message("mic0", "NaN samples", error="AudioError", utterance=2))
    assert isinstance(event, ErrorEvent)
    assert (event.topic, event.stream_id, event.utterance) == ("utterance.error", "mic0", 2)
    assert (event.error, event.message) == ("AudioError", "NaN samples")
    stream_level = _round_trip(events.error_message("mic0", "device lost"))
    assert isinstance(stream_level, ErrorEvent) and stream_level.utterance is None


@pytest.mark.parametrize("started", [True, False])
def test_vad_round_trip(started: bool) -> None:
    event = _round_trip(
        events.vad_message(
            started, "mic0", 4, at_sample=RATE * 2, sample_rate=RATE, stream_origin_wall=ORIGIN_WALL
        )
    )
    assert isinstance(event, VadEvent)
    assert event.topic == ("vad.start" if started else "vad.end")
    assert event.started is started
    assert (event.stream_id, event.utterance, event.at_s) == ("mic0", 4, 2.0)
    assert event.at_wall == pytest.approx(ORIGIN_WALL + 2.0)


def test_status_round_trip() -> None:
    message = events.status_message(
        "ready",
        "tiny@0123abcd",
        12.5,
        streams=("a", "b"),
        queue_depth=2,
        counters={"utterances": 10, "dropped": 1},
    )
    event = _round_trip(message)
    assert isinstance(event, StatusEvent)
    assert (event.topic, event.state, event.model_id) == ("status", "ready", "tiny@0123abcd")
    assert (event.uptime_s, event.streams, event.queue_depth) == (12.5, ("a", "b"), 2)
    assert event.counters == {"utterances": 10, "dropped": 1}


def test_unknown_type_kept_as_generic_event() -> None:
    frames = events.encode("weather.rain", {"type": "weather.rain", "mm": 3}, seq=9, published_wall=1.0)
    event = events.decode(frames)
    assert type(event) is Event
    assert (event.topic, event.type, event.seq, event.raw["mm"]) == ("weather.rain", "weather.rain", 9, 3)


def test_newer_schema_with_reshaped_type_degrades_to_generic() -> None:
    body = {"schema": 2, "seq": 1, "type": "intent", "published_wall": 1.0, "labels": ["a"]}
    event = events.decode([b"intent.a", json.dumps(body).encode()])
    assert type(event) is Event and event.schema == 2


@pytest.mark.parametrize(
    "frames, match",
    [
        ([b"status"], "2 frames"),
        ([b"status", b"{", b"x"], "2 frames"),
        ([b"status", b"{not json"], "JSON"),
        ([b"status", b"\xff\xfe"], "JSON"),
        ([b"status", b"[1, 2]"], "not an object"),
        ([b"status", b'{"type": "status", "schema": 1}'], "envelope"),
        ([b"intent.x", b'{"type": "intent", "schema": 1, "seq": 1, "published_wall": 1.0}'], "intent"),
    ],
)
def test_malformed_messages_raise(frames: list[bytes], match: str) -> None:
    with pytest.raises(EventError, match=match):
        events.decode(frames)


def test_nan_is_never_put_on_the_wire() -> None:
    with pytest.raises(ValueError):
        events.encode("status", {"type": "status", "x": float("nan")}, seq=1, published_wall=1.0)


def test_events_module_stays_light() -> None:
    code = "import daemon.events, sys; assert 'numpy' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
