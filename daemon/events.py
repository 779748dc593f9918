"""The event wire format (docs/events.md): builders for the daemon, typed parsing for clients.

Every message is a two-frame ZeroMQ message `[topic, json]`. The topic comes first so subscribers filter by
prefix (`intent.` for every intent); the JSON object always carries `schema`, `seq`, `type` and
`published_wall`. Clients import this module, so it must stay free of numpy, torch and anything that pulls
them in (daemon.frames types are only named for type checking).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from daemon.errors import IntentdError

if TYPE_CHECKING:
    from daemon.frames import Classified, Utterance

SCHEMA_VERSION: Final = 1

TOPIC_INTENT_PREFIX: Final = "intent."
UNKNOWN_LABEL: Final = "unknown"
TOPIC_UNKNOWN: Final = TOPIC_INTENT_PREFIX + UNKNOWN_LABEL
TOPIC_DROPPED: Final = "utterance.dropped"
TOPIC_ERROR: Final = "utterance.error"
TOPIC_VAD_START: Final = "vad.start"
TOPIC_VAD_END: Final = "vad.end"
TOPIC_STATUS: Final = "status"

# `type` in the JSON: the topic, except that every intent.<label> topic has type "intent".
TYPE_INTENT: Final = "intent"
TYPE_DROPPED: Final = TOPIC_DROPPED
TYPE_ERROR: Final = TOPIC_ERROR
TYPE_VAD_START: Final = TOPIC_VAD_START
TYPE_VAD_END: Final = TOPIC_VAD_END
TYPE_STATUS: Final = TOPIC_STATUS

ENVELOPE_FRAMES: Final = 2  # [topic, json]
MS_PER_S: Final = 1000.0
# Rounding keeps messages short and readable; far below any timing we can measure.
TIME_DECIMALS: Final = 6
MS_DECIMALS: Final = 3
SCORE_DECIMALS: Final = 6

Message = tuple[str, dict[str, Any]]  # (topic, payload without seq/published_wall) as builders return it


class EventError(IntentdError):
    """A message on the event socket is not a valid envelope (wrong frame count, bad JSON, missing field)."""


# --------------------------------------------------------------------------------------------- encoding


def intent_topic(label: str) -> str:
    """The topic an intent with `label` is published on: `intent.<label>` (`intent.unknown` below threshold)."""
    return TOPIC_INTENT_PREFIX + label


def encode(topic: str, payload: Mapping[str, Any], seq: int, published_wall: float) -> list[bytes]:
    """The two frames for one message; `seq` and `published_wall` are stamped by the publisher."""
    body = {
        "schema": SCHEMA_VERSION,
        "seq": seq,
        **payload,
        "published_wall": round(published_wall, TIME_DECIMALS),
    }
    # allow_nan=False: NaN is not JSON, and a client in another language would choke on it.
    text = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return [topic.encode("utf-8"), text.encode("utf-8")]


def _stream_times(u: Utterance) -> dict[str, Any]:
    """Stream and wall-clock times of an utterance, shared by intent and dropped events."""
    start_s = u.start_sample / u.sample_rate
    end_s = u.end_sample / u.sample_rate
    return {
        "stream_id": u.stream_id,
        "utterance": u.index,
        "start_s": round(start_s, TIME_DECIMALS),
        "end_s": round(end_s, TIME_DECIMALS),
        "start_wall": round(u.stream_origin_wall + start_s, TIME_DECIMALS),
        "end_wall": round(u.stream_origin_wall + end_s, TIME_DECIMALS),
        "duration_s": round(u.duration_s, TIME_DECIMALS),
        "truncated": u.truncated,
    }


def intent_message(c: Classified, now_monotonic: float | None = None) -> Message:
    """An intent event for a classified utterance; call it right before publishing (it measures processing)."""
    u = c.utterance
    now = time.monotonic() if now_monotonic is None else now_monotonic
    processing_ms = (now - u.closed_monotonic) * MS_PER_S
    hangover_ms = u.hangover_samples / u.sample_rate * MS_PER_S
    p = c.prediction
    payload = {
        "type": TYPE_INTENT,
        **_stream_times(u),
        "label": p.label,
        "score": round(p.score, SCORE_DECIMALS),
        "top_k": [{"label": label, "score": round(score, SCORE_DECIMALS)} for label, score in p.top_k],
        "model_id": c.model_id,
        "latency_ms": {
            "queue_wait": round(c.queue_wait_ms, MS_DECIMALS),
            "inference": round(c.inference_ms, MS_DECIMALS),
            "processing": round(processing_ms, MS_DECIMALS),
            "end_of_speech": round(processing_ms + hangover_ms, MS_DECIMALS),
        },
        "batch_size": c.batch_size,
    }
    return intent_topic(p.label), payload


def dropped_message(u: Utterance, reason: str) -> Message:
    """An utterance that will not be classified (queue full, stream closed...), with the reason."""
    return TOPIC_DROPPED, {"type": TYPE_DROPPED, **_stream_times(u), "reason": reason}


def error_message(stream_id: str, message: str, error: str = "", utterance: int | None = None) -> Message:
    """A stream or utterance that failed: `error` is the exception class name, `message` its one line."""
    return TOPIC_ERROR, {
        "type": TYPE_ERROR,
        "stream_id": stream_id,
        "utterance": utterance,
        "error": error,
        "message": message,
    }


def vad_message(
    started: bool, stream_id: str, utterance: int, at_sample: int, sample_rate: int, stream_origin_wall: float,
    discarded: bool = False,
) -> Message:
    """vad.start (speech onset, pre-roll excluded) or vad.end (last voiced sample) for one stream.

    A vad.end with `discarded` closes speech shorter than the minimum: no intent event follows it."""
    at_s = at_sample / sample_rate
    topic = TOPIC_VAD_START if started else TOPIC_VAD_END
    return topic, {
        "type": topic,
        "stream_id": stream_id,
        "utterance": utterance,
        "at_s": round(at_s, TIME_DECIMALS),
        "at_wall": round(stream_origin_wall + at_s, TIME_DECIMALS),
        **({} if started else {"discarded": discarded}),
    }


def status_message(
    state: str,
    model_id: str,
    uptime_s: float,
    streams: Sequence[str] = (),
    queue_depth: int = 0,
    counters: Mapping[str, int] | None = None,
) -> Message:
    """A heartbeat: lifecycle state (starting, ready, reloading, draining, stopping) and load."""
    return TOPIC_STATUS, {
        "type": TYPE_STATUS,
        "state": state,
        "model_id": model_id,
        "uptime_s": round(uptime_s, MS_DECIMALS),
        "streams": list(streams),
        "queue_depth": queue_depth,
        "counters": dict(counters or {}),
    }


# --------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class Event:
    """Any event; unknown types arrive as this, with every field in `raw`, so old clients survive new topics."""

    topic: str
    type: str
    schema: int
    seq: int
    published_wall: float
    raw: Mapping[str, Any] = field(repr=False, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class Latency:
    """Latencies in milliseconds; see docs/events.md for where each one starts and stops."""

    queue_wait: float
    inference: float
    processing: float
    end_of_speech: float


@dataclass(frozen=True, slots=True)
class IntentEvent(Event):
    """A classified utterance: `label` is `unknown` when the top score fell below the daemon's threshold."""

    stream_id: str
    utterance: int
    start_s: float
    end_s: float
    start_wall: float
    end_wall: float
    duration_s: float
    truncated: bool
    label: str
    score: float
    top_k: tuple[tuple[str, float], ...]
    model_id: str
    latency_ms: Latency
    batch_size: int


@dataclass(frozen=True, slots=True)
class DroppedEvent(Event):
    """An utterance the daemon heard but did not classify, and why."""

    stream_id: str
    utterance: int
    start_s: float
    end_s: float
    start_wall: float
    end_wall: float
    duration_s: float
    truncated: bool
    reason: str


@dataclass(frozen=True, slots=True)
class ErrorEvent(Event):
    """A stream or utterance that failed; `utterance` is None for stream-level errors."""

    stream_id: str
    utterance: int | None
    error: str
    message: str


@dataclass(frozen=True, slots=True)
class VadEvent(Event):
    """Speech started (`type` vad.start) or ended (vad.end) on a stream."""

    stream_id: str
    utterance: int
    at_s: float
    at_wall: float
    discarded: bool = False  # vad.end of speech too short to classify

    @property
    def started(self) -> bool:
        """True for vad.start, False for vad.end."""
        return self.type == TYPE_VAD_START


@dataclass(frozen=True, slots=True)
class StatusEvent(Event):
    """The daemon's heartbeat."""

    state: str
    model_id: str
    uptime_s: float
    streams: tuple[str, ...]
    queue_depth: int
    counters: Mapping[str, int] = field(compare=False, hash=False)


def _intent_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    latency = raw["latency_ms"]
    return {
        **_times_fields(raw),
        "label": str(raw["label"]),
        "score": float(raw["score"]),
        "top_k": tuple((str(item["label"]), float(item["score"])) for item in raw["top_k"]),
        "model_id": str(raw["model_id"]),
        "latency_ms": Latency(
            queue_wait=float(latency["queue_wait"]),
            inference=float(latency["inference"]),
            processing=float(latency["processing"]),
            end_of_speech=float(latency["end_of_speech"]),
        ),
        "batch_size": int(raw["batch_size"]),
    }


def _times_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "stream_id": str(raw["stream_id"]),
        "utterance": int(raw["utterance"]),
        "start_s": float(raw["start_s"]),
        "end_s": float(raw["end_s"]),
        "start_wall": float(raw["start_wall"]),
        "end_wall": float(raw["end_wall"]),
        "duration_s": float(raw["duration_s"]),
        "truncated": bool(raw["truncated"]),
    }


def _dropped_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {**_times_fields(raw), "reason": str(raw["reason"])}


def _error_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    utterance = raw.get("utterance")
    return {
        "stream_id": str(raw["stream_id"]),
        "utterance": None if utterance is None else int(utterance),
        "error": str(raw.get("error", "")),
        "message": str(raw["message"]),
    }


def _vad_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "stream_id": str(raw["stream_id"]),
        "utterance": int(raw["utterance"]),
        "at_s": float(raw["at_s"]),
        "at_wall": float(raw["at_wall"]),
        "discarded": bool(raw.get("discarded", False)),
    }


def _status_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "state": str(raw["state"]),
        "model_id": str(raw["model_id"]),
        "uptime_s": float(raw["uptime_s"]),
        "streams": tuple(str(s) for s in raw.get("streams", ())),
        "queue_depth": int(raw.get("queue_depth", 0)),
        "counters": {str(k): int(v) for k, v in dict(raw.get("counters") or {}).items()},
    }


_PARSERS: Final = {
    TYPE_INTENT: (IntentEvent, _intent_fields),
    TYPE_DROPPED: (DroppedEvent, _dropped_fields),
    TYPE_ERROR: (ErrorEvent, _error_fields),
    TYPE_VAD_START: (VadEvent, _vad_fields),
    TYPE_VAD_END: (VadEvent, _vad_fields),
    TYPE_STATUS: (StatusEvent, _status_fields),
}


def decode(frames: Sequence[bytes]) -> Event:
    """Parse one received `[topic, json]` message into its typed event (or a generic Event for unknown types)."""
    if len(frames) != ENVELOPE_FRAMES:
        raise EventError(f"expected {ENVELOPE_FRAMES} frames [topic, json], got {len(frames)}")
    try:
        topic = frames[0].decode("utf-8")
        raw = json.loads(frames[1].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EventError(f"message is not UTF-8 JSON: {err}") from err
    if not isinstance(raw, dict):
        raise EventError(f"topic {topic!r}: JSON body is a {type(raw).__name__}, not an object")
    return parse(topic, raw)


def parse(topic: str, raw: Mapping[str, Any]) -> Event:
    """Build the typed event for an already-decoded JSON object."""
    try:
        base: dict[str, Any] = {
            "topic": topic,
            "type": str(raw["type"]),
            "schema": int(raw["schema"]),
            "seq": int(raw["seq"]),
            "published_wall": float(raw["published_wall"]),
            "raw": raw,
        }
    except (KeyError, TypeError, ValueError) as err:
        raise EventError(f"topic {topic!r}: envelope field missing or invalid: {err!r}") from err
    known = _PARSERS.get(base["type"])
    if known is None:
        return Event(**base)
    cls, fields = known
    try:
        return cls(**base, **fields(raw))
    except (KeyError, TypeError, ValueError) as err:
        if base["schema"] > SCHEMA_VERSION:
            # A newer daemon may have reshaped this type; keep the message rather than fail the client.
            return Event(**base)
        raise EventError(f"topic {topic!r} type {base['type']!r}: field missing or invalid: {err!r}") from err
