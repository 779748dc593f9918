"""Event envelope tests: every type round-trips build -> frames -> parse; malformed input is rejected."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from intentd.daemon import events
from intentd.daemon.batcher import StreamSummary
from intentd.daemon.events import (
    DroppedEvent,
    ErrorEvent,
    Event,
    EventError,
    IntentEvent,
    StatusEvent,
    StreamEndEvent,
    UnknownEvent,
    VadEndEvent,
    VadStartEvent,
)
from intentd.daemon.frames import Classified, Prediction, Utterance
from intentd.daemon.vad import UtteranceDiscarded

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


def _round_trip(sent: Event, seq: int = 7) -> Event:
    frames = events.encode(sent, seq=seq, published_wall=ORIGIN_WALL + 5)
    assert all(isinstance(f, bytes) for f in frames)
    assert frames[0] == sent.topic.encode()
    received = events.decode(frames)
    # The same event, now stamped by the publisher.
    assert received == dataclasses.replace(sent, seq=seq, published_wall=round(ORIGIN_WALL + 5, 6))
    assert type(received) is type(sent)
    return received


def test_intent_round_trip() -> None:
    sent = IntentEvent.from_classified(_classified(), now_monotonic=CLOSED_AT + 0.023)
    assert sent.topic == "intent.balance"
    event = _round_trip(sent)
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
    sent = IntentEvent.from_classified(_classified(label=events.UNKNOWN_LABEL, score=0.4))
    assert sent.topic == events.TOPIC_UNKNOWN == "intent.unknown"
    assert isinstance(_round_trip(sent), IntentEvent)


def test_dropped_round_trip() -> None:
    event = _round_trip(DroppedEvent.from_utterance(_utterance(index=5, truncated=True), reason="queue_full"))
    assert isinstance(event, DroppedEvent)
    assert (event.topic, event.type, event.reason) == ("utterance.dropped", "utterance.dropped", "queue_full")
    assert (event.stream_id, event.utterance, event.truncated) == ("a.wav", 5, True)
    assert event.start_s == pytest.approx(1.21)


def test_error_round_trip() -> None:
    event = _round_trip(ErrorEvent(stream_id="mic0", utterance=2, error="AudioError", message="NaN samples"))
    assert isinstance(event, ErrorEvent)
    assert (event.topic, event.stream_id, event.utterance) == ("utterance.error", "mic0", 2)
    assert (event.error, event.message) == ("AudioError", "NaN samples")
    stream_level = _round_trip(ErrorEvent(stream_id="mic0", message="device lost"))
    assert isinstance(stream_level, ErrorEvent) and stream_level.utterance is None


@pytest.mark.parametrize("cls", [VadStartEvent, VadEndEvent])
def test_vad_round_trip(cls: type[VadStartEvent | VadEndEvent]) -> None:
    event = _round_trip(cls.at("mic0", 4, at_sample=RATE * 2, sample_rate=RATE, stream_origin_wall=ORIGIN_WALL))
    assert event.topic == event.type == ("vad.start" if cls is VadStartEvent else "vad.end")
    assert (event.stream_id, event.utterance, event.at_s) == ("mic0", 4, 2.0)
    assert event.at_wall == pytest.approx(ORIGIN_WALL + 2.0)


def test_vad_end_says_when_speech_was_discarded_and_vad_start_never_does() -> None:
    end = _round_trip(VadEndEvent.at("mic0", 0, RATE, RATE, ORIGIN_WALL, discarded=True))
    assert isinstance(end, VadEndEvent) and end.discarded
    assert "discarded" not in VadStartEvent.at("mic0", 0, RATE, RATE, ORIGIN_WALL).data()


def test_stream_end_round_trip_in_wire_order() -> None:
    summary = StreamSummary("a.wav", None, False, 4.2000004, discarded=1, classified=2, dropped=1, failed=0)
    event = _round_trip(StreamEndEvent.of(summary))
    assert isinstance(event, StreamEndEvent)
    assert (event.topic, event.type, event.stream_id, event.reason, event.live) == (
        "stream.end", "stream.end", "a.wav", None, False)
    assert (event.utterances, event.classified, event.dropped, event.failed, event.discarded) == (3, 2, 1, 0, 1)
    assert list(event.raw)[3:] == ["stream_id", "reason", "live", "duration_s", "utterances", "classified",
                                   "dropped", "failed", "discarded", "published_wall"]
    assert event.duration_s == 4.2
    assert event.summary() == ("stream=a.wav ended: 3 utterances (2 classified, 1 dropped, 0 failed), "
                               "1 blips discarded, 4.20 s")
    silent = _round_trip(StreamEndEvent.of(StreamSummary("mic0", "idle timeout: no bytes for 10 s", True, 10.0,
                                                         0, 0, 0, 0)))
    assert isinstance(silent, StreamEndEvent) and silent.reason == "idle timeout: no bytes for 10 s"
    assert silent.summary().startswith("stream=mic0 ended (idle timeout: no bytes for 10 s): no speech")


def test_discarded_blip_round_trip() -> None:
    blip = UtteranceDiscarded("a.wav", int(3.0 * RATE), int(3.12 * RATE), RATE, 2, ORIGIN_WALL)
    event = _round_trip(events.DiscardedEvent.from_blip(blip))
    assert isinstance(event, events.DiscardedEvent)
    assert (event.topic, event.stream_id, event.utterance) == ("utterance.discarded", "a.wav", 2)
    assert (event.start_s, event.end_s, event.duration_s) == pytest.approx((3.0, 3.12, 0.12))
    assert event.end_wall == pytest.approx(ORIGIN_WALL + 3.12)
    assert event.summary() == "stream=a.wav #2 discarded a 0.12 s blip (3.00-3.12 s)"


def test_status_round_trip() -> None:
    sent = StatusEvent(state="ready", model_id="tiny@0123abcd", uptime_s=12.5, streams=("a", "b"), queue_depth=2,
                       counters={"utterances": 10, "dropped": 1})
    event = _round_trip(sent)
    assert isinstance(event, StatusEvent)
    assert (event.topic, event.state, event.model_id) == ("status", "ready", "tiny@0123abcd")
    assert (event.uptime_s, event.streams, event.queue_depth) == (12.5, ("a", "b"), 2)
    assert event.counters == {"utterances": 10, "dropped": 1}


def test_the_wire_format_is_the_documented_one_byte_for_byte() -> None:
    """Field order, rounding and separators as docs/events.md shows them (and as every schema-1 client reads)."""
    frames = events.encode(IntentEvent.from_classified(_classified(), now_monotonic=CLOSED_AT + 0.0231234),
                           seq=412, published_wall=ORIGIN_WALL + 2.8271234)
    assert frames == [b"intent.balance", (
        b'{"schema":1,"seq":412,"type":"intent","stream_id":"a.wav","utterance":3,"start_s":1.21,"end_s":2.8,'
        b'"start_wall":1700000001.21,"end_wall":1700000002.8,"duration_s":1.59,"truncated":false,'
        b'"label":"balance","score":0.97,"top_k":[{"label":"balance","score":0.97},'
        b'{"label":"transfer","score":0.02},{"label":"stop","score":0.01}],"model_id":"tiny@0123abcd",'
        b'"latency_ms":{"queue_wait":1.5,"inference":12.25,"processing":23.123,"end_of_speech":323.123},'
        b'"batch_size":4,"published_wall":1700000002.827123}')]
    frames = events.encode(StatusEvent(state="ready", model_id="m", uptime_s=1.0), seq=1, published_wall=2.0)
    assert frames[1] == (b'{"schema":1,"seq":1,"type":"status","state":"ready","model_id":"m","uptime_s":1.0,'
                         b'"streams":[],"queue_depth":0,"counters":{},"published_wall":2.0}')


def test_the_instance_follows_seq_on_the_wire_and_is_absent_when_empty() -> None:
    """Several daemons on one bus (docs/deploy.md): each message names its publisher right after its seq."""
    status = StatusEvent(state="ready", model_id="m", uptime_s=1.0)
    frames = events.encode(status, seq=7, published_wall=2.0, instance="host-a:41")
    assert frames[1].startswith(b'{"schema":1,"seq":7,"instance":"host-a:41","type":"status",')
    parsed = events.decode(frames)
    assert (parsed.instance, parsed.seq, parsed.type) == ("host-a:41", 7, "status")
    assert parsed.data() == status.data()  # the envelope's keys stay out of an event's own fields
    # A daemon from before instances wrote none: the message still parses, with instance "".
    old = events.decode(events.encode(status, seq=7, published_wall=2.0))
    assert b'"instance"' not in events.encode(status, seq=7, published_wall=2.0)[1] and old.instance == ""
    with pytest.raises(TypeError, match="instance"):
        @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
        class Clash(Event):  # an event field may not shadow the envelope's
            TYPE: ClassVar[str] = "test.clash"
            instance: str


def test_the_default_instance_is_host_and_pid() -> None:
    import os
    import socket

    assert events.default_instance() == f"{socket.gethostname()}:{os.getpid()}"


def test_unknown_type_kept_as_generic_event() -> None:
    sent = UnknownEvent(wire_topic="weather.rain", wire_type="weather.rain", raw={"mm": 3})
    event = events.decode(events.encode(sent, seq=9, published_wall=1.0))
    assert type(event) is UnknownEvent
    assert (event.topic, event.type, event.seq, event.raw["mm"]) == ("weather.rain", "weather.rain", 9, 3)
    assert "weather.rain" in event.summary() and '"mm": 3' in event.summary()


def test_newer_schema_with_reshaped_type_degrades_to_generic() -> None:
    body = {"schema": 2, "seq": 1, "type": "intent", "published_wall": 1.0, "labels": ["a"]}
    event = events.decode([b"intent.a", json.dumps(body).encode()])
    assert type(event) is UnknownEvent and event.schema == 2 and event.topic == "intent.a"


def test_a_new_event_type_is_one_class() -> None:
    """Declaring the dataclass registers it: it encodes, parses back typed, and summarises itself."""
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class BargeInEvent(Event):
        TYPE: ClassVar[str] = "test.barge_in"

        stream_id: str
        at_s: float
        voices: tuple[str, ...] = ()

    try:
        sent = BargeInEvent(stream_id="mic0", at_s=1.5, voices=("a", "b"))
        frames = events.encode(sent, seq=3, published_wall=1.0)
        assert frames[0] == b"test.barge_in"
        assert json.loads(frames[1])["voices"] == ["a", "b"]
        event = events.decode(frames)
        assert type(event) is BargeInEvent and event.voices == ("a", "b") and event.seq == 3
        assert event.summary().startswith("test.barge_in {")
    finally:
        events._TYPES.pop("test.barge_in", None)


def test_an_event_type_cannot_take_an_envelope_key_or_another_type() -> None:
    with pytest.raises(TypeError, match="envelope"):
        @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
        class Bad(Event):
            TYPE: ClassVar[str] = "test.bad"

            published_wall: str
    with pytest.raises(TypeError, match="already"):
        @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
        class Twin(Event):
            TYPE: ClassVar[str] = "status"
    assert events._TYPES["status"] is StatusEvent


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
        events.encode(StatusEvent(state="ready", model_id="m", uptime_s=float("nan")), seq=1, published_wall=1.0)


def test_events_module_stays_light() -> None:
    code = "import intentd.daemon.events, sys; assert 'numpy' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
