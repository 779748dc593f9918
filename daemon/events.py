"""The event wire format (docs/events.md): one envelope, and typed events converted to and from it generically.

Every message is a two-frame ZeroMQ message `[topic, json]`. The topic comes first so subscribers filter by
prefix (`intent.` for every intent). The JSON object is the envelope: it starts with `schema`, `seq`, the
publishing daemon's `instance` and `type`, ends with `published_wall`, and holds one event's own fields in between, in the order its dataclass declares
them. An event type is one frozen dataclass below: its `TYPE` registers it, its `topic` is derived, its fields
are its JSON, and `summary()` says it in one line. `encode` and `decode` are generic over those dataclasses, so
adding a type is adding one class (see "Adding an event type" in docs/events.md).

Clients import this module, so it must stay free of numpy, torch and anything that pulls them in (daemon.frames
types are only named for type checking).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Final,
    NamedTuple,
    Self,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

from intentd.daemon.errors import IntentdError

if TYPE_CHECKING:
    from intentd.daemon.batcher import StreamSummary
    from intentd.daemon.frames import Classified, Utterance
    from intentd.daemon.vad import UtteranceDiscarded

SCHEMA_VERSION: Final = 1
ENVELOPE_FRAMES: Final = 2  # [topic, json]

TOPIC_INTENT_PREFIX: Final = "intent."
# Where the daemon publishes unless config.toml says otherwise (publisher.uri), and where clients subscribe.
DEFAULT_EVENTS_URI: Final = "tcp://127.0.0.1:5556"
UNKNOWN_LABEL: Final = "unknown"
TOPIC_UNKNOWN: Final = TOPIC_INTENT_PREFIX + UNKNOWN_LABEL
TOPIC_STATUS: Final = "status"

MS_PER_S: Final = 1000.0
# Rounding keeps messages short and readable; far below any timing we can measure.
TIME_DECIMALS: Final = 6
MS_DECIMALS: Final = 3
SCORE_DECIMALS: Final = 6

# Field metadata key: the field is left out of the JSON while its value is empty (a field added within a schema
# version that most events never fill, e.g. an intent's `slots`, so events without it stay as they were).
OMIT_EMPTY: Final = "omit_empty"
# The envelope's own keys; no event field may take one of these names.
_ENVELOPE_KEYS: Final = frozenset({"schema", "seq", "instance", "type", "published_wall"})
# Registered event types by their `type`: filled by Event.__init_subclass__.
_TYPES: dict[str, type[Event]] = {}


class EventError(IntentdError):
    """A message on the event socket is not a valid envelope (wrong frame count, bad JSON, missing field)."""


def default_instance() -> str:
    """This process's name on the event bus when publisher.instance_id is empty: `HOSTNAME:PID`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def intent_topic(label: str) -> str:
    """The topic an intent with `label` is published on: `intent.<label>` (`intent.unknown` below threshold)."""
    return TOPIC_INTENT_PREFIX + label


# --------------------------------------------------------------------------------------------- the envelope


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Any event. The daemon makes typed events with seq 0; the publisher stamps `seq`, its `instance` and
    `published_wall` on the wire, and a parsed event carries them, with the whole JSON object in `raw`.
    `instance` is "" for a message that carried none (a daemon from before instances, or a test's encode)."""

    # The `type` field on the wire; a subclass that sets it is registered for parsing under it.
    TYPE: ClassVar[str] = ""

    seq: int = 0
    published_wall: float = 0.0
    schema: int = SCHEMA_VERSION
    instance: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # No zero-argument super() here: @dataclass(slots=True) rebuilds the class, which breaks its __class__
        # cell. That rebuild runs this hook again, so the slotted class is the one left registered.
        if "TYPE" in cls.__dict__:
            taken = _TYPES.get(cls.TYPE)
            # By name: the rebuilt class gets its __qualname__ only after this hook has run.
            if taken is not None and (taken.__module__, taken.__name__) != (cls.__module__, cls.__name__):
                raise TypeError(f"event type {cls.TYPE!r} is already {taken.__qualname__}")
            reserved = _ENVELOPE_KEYS & set(getattr(cls, "__annotations__", {}))
            if reserved:
                raise TypeError(f"{cls.__qualname__}: {sorted(reserved)} belong to the envelope")
            _TYPES[cls.TYPE] = cls

    @property
    def type(self) -> str:
        """The event's kind: the topic, except that every `intent.<label>` topic has type `intent`."""
        return self.TYPE

    def data(self) -> dict[str, Any]:
        """The event's own fields as JSON values, in declaration order (the envelope's keys excluded; an empty
        OMIT_EMPTY field left out)."""
        omit = _omit_empty(type(self))
        values = ((name, getattr(self, name)) for name, _hint, _required in _shape(type(self)))
        return {name: _to_json(value) for name, value in values if value or name not in omit}

    @property
    def topic(self) -> str:
        """The topic it is published on."""
        return self.TYPE

    def summary(self) -> str:
        """One human-readable line (what intentd-sub prints after the time of day)."""
        return f"{self.topic} {json.dumps(self.data(), ensure_ascii=False)}"


def encode(event: Event, seq: int, published_wall: float, instance: str = "") -> list[bytes]:
    """The two frames for one message; `seq`, `instance` and `published_wall` are stamped by the publisher (an
    empty `instance` is left out, as a daemon from before instances wrote it)."""
    body = {
        "schema": SCHEMA_VERSION,
        "seq": seq,
        **({"instance": instance} if instance else {}),
        "type": event.type,
        **event.data(),
        "published_wall": round(published_wall, TIME_DECIMALS),
    }
    # allow_nan=False: NaN is not JSON, and a client in another language would choke on it.
    text = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return [event.topic.encode("utf-8"), text.encode("utf-8")]


def decode(frames: Sequence[bytes]) -> Event:
    """Parse one received `[topic, json]` message into its typed event (an UnknownEvent for unknown types)."""
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
        kind = str(raw["type"])
        envelope: dict[str, Any] = {
            "schema": int(raw["schema"]),
            "seq": int(raw["seq"]),
            "instance": str(raw.get("instance", "")),
            "published_wall": float(raw["published_wall"]),
            "raw": raw,
        }
    except (KeyError, TypeError, ValueError) as err:
        raise EventError(f"topic {topic!r}: envelope field missing or invalid: {err!r}") from err
    cls = _TYPES.get(kind)
    if cls is None:
        return UnknownEvent(wire_topic=topic, wire_type=kind, **envelope)
    try:
        return cls(**envelope, **_fields_from_json(cls, raw))
    except (KeyError, TypeError, ValueError) as err:
        if envelope["schema"] > SCHEMA_VERSION:
            # A newer daemon may have reshaped this type; keep the message rather than fail the client.
            return UnknownEvent(wire_topic=topic, wire_type=kind, **envelope)
        raise EventError(f"topic {topic!r} type {kind!r}: field missing or invalid: {err!r}") from err


# --------------------------------------------------------------------------------------------- typed events


class LabelScore(NamedTuple):
    """One (label, score) pair of an intent's top-k; `{"label": ..., "score": ...}` on the wire."""

    label: str
    score: float


class SlotValue(NamedTuple):
    """A slot's canonical value and its score; `{"value": ..., "score": ...}` on the wire."""

    value: str
    score: float


@dataclass(frozen=True, slots=True)
class Latency:
    """Latencies in milliseconds; see docs/events.md for where each one starts and stops."""

    queue_wait: float
    inference: float
    processing: float
    end_of_speech: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SpanEvent(Event):
    """A stretch of one stream's audio and its times: an utterance, or a blip too short to be one (no type)."""

    stream_id: str
    utterance: int
    start_s: float
    end_s: float
    start_wall: float
    end_wall: float
    duration_s: float

    @staticmethod
    def span_of(u: Utterance | UtteranceDiscarded) -> dict[str, Any]:
        """Stream id, index and times of a span of one stream, rounded as they go on the wire."""
        start_s = u.start_sample / u.sample_rate
        end_s = u.end_sample / u.sample_rate
        return {
            "stream_id": u.stream_id,
            "utterance": u.index,
            "start_s": round(start_s, TIME_DECIMALS),
            "end_s": round(end_s, TIME_DECIMALS),
            "start_wall": round(u.stream_origin_wall + start_s, TIME_DECIMALS),
            "end_wall": round(u.stream_origin_wall + end_s, TIME_DECIMALS),
            "duration_s": round(end_s - start_s, TIME_DECIMALS),
        }

    def said(self, what: str) -> str:
        """`stream=a.wav #3 <what> (1.21-2.80 s)`: the start of every span's summary."""
        return f"stream={self.stream_id} #{self.utterance} {what} ({self.start_s:.2f}-{self.end_s:.2f} s)"


@dataclass(frozen=True, slots=True, kw_only=True)
class UtteranceEvent(SpanEvent):
    """The stream and wall-clock times of one utterance, shared by intent and dropped events (no type)."""

    truncated: bool

    @classmethod
    def times_of(cls, u: Utterance) -> dict[str, Any]:
        """The time fields for an utterance, rounded as they go on the wire."""
        return {**cls.span_of(u), "truncated": u.truncated}


@dataclass(frozen=True, slots=True, kw_only=True)
class IntentEvent(UtteranceEvent):
    """A classified utterance: `label` is `unknown` when the top score fell below the daemon's threshold."""

    TYPE: ClassVar[str] = "intent"

    label: str
    score: float
    top_k: tuple[LabelScore, ...]
    # The command's slots as the model heard them, {slot: {value, score}}; absent from the JSON (and {} here) for
    # a model without slot heads, an intent without slots and `unknown`. Added within schema 1.
    slots: Mapping[str, SlotValue] = field(default_factory=dict, hash=False, metadata={OMIT_EMPTY: True})
    # The command sentence a grammar model heard, as its grammar spells it ("can i get a large latte"); absent
    # from the JSON ("" here) for other models and `unknown`. Added within schema 1.
    text: str = field(default="", metadata={OMIT_EMPTY: True})
    model_id: str
    latency_ms: Latency
    batch_size: int

    @property
    def topic(self) -> str:
        """`intent.<label>`, so subscribers pick labels by prefix."""
        return intent_topic(self.label)

    @classmethod
    def from_classified(cls, c: Classified, now_monotonic: float | None = None) -> IntentEvent:
        """The event for a classified utterance; make it right before publishing (it measures processing)."""
        u = c.utterance
        now = time.monotonic() if now_monotonic is None else now_monotonic
        processing_ms = (now - u.closed_monotonic) * MS_PER_S
        hangover_ms = u.hangover_samples / u.sample_rate * MS_PER_S
        p = c.prediction
        return cls(
            **cls.times_of(u),
            label=p.label,
            score=round(p.score, SCORE_DECIMALS),
            top_k=tuple(LabelScore(label, round(score, SCORE_DECIMALS)) for label, score in p.top_k),
            slots={name: SlotValue(value, round(score, SCORE_DECIMALS)) for name, (value, score) in p.slots.items()},
            text=p.text or "",
            model_id=c.model_id,
            latency_ms=Latency(
                queue_wait=round(c.queue_wait_ms, MS_DECIMALS),
                inference=round(c.inference_ms, MS_DECIMALS),
                processing=round(processing_ms, MS_DECIMALS),
                end_of_speech=round(processing_ms + hangover_ms, MS_DECIMALS),
            ),
            batch_size=c.batch_size,
        )

    def summary(self) -> str:
        """`stream=a.wav #3 balance 0.97 (1.21-2.80 s) 23 ms`: the last number is the processing latency; a
        command's slots follow its label: `order 0.97 size=large milk=oat`."""
        return (self.said(f"{self.label} {self.score:.2f}{self.slots_text()}") + f" {self.latency_ms.processing:.0f} ms"
                + (" truncated" if self.truncated else ""))

    def slots_text(self) -> str:
        """` size=large milk=oat` (each slot and its value, a leading space), then a grammar model's sentence
        quoted (` "a large oat latte"`), or "" without either."""
        return "".join(f" {name}={slot.value}" for name, slot in self.slots.items()) + \
            (f" {json.dumps(self.text, ensure_ascii=False)}" if self.text else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class DroppedEvent(UtteranceEvent):
    """An utterance the daemon heard but did not classify, and why (`queue_full`, `draining`)."""

    TYPE: ClassVar[str] = "utterance.dropped"

    reason: str

    @classmethod
    def from_utterance(cls, u: Utterance, reason: str) -> DroppedEvent:
        """The event for an utterance that will not be classified."""
        return cls(**cls.times_of(u), reason=reason)

    def summary(self) -> str:
        """`stream=a.wav #4 dropped: queue_full (3.02-4.40 s)`."""
        return self.said(f"dropped: {self.reason}")


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscardedEvent(SpanEvent):
    """Voiced audio too short to be an utterance (under `vad.min_utterance_ms`): not classified, only counted
    (published with `publisher.blip_events`). `utterance` is the index the next utterance takes."""

    TYPE: ClassVar[str] = "utterance.discarded"

    @classmethod
    def from_blip(cls, blip: UtteranceDiscarded) -> DiscardedEvent:
        """The event for a blip the segmenter discarded."""
        return cls(**cls.span_of(blip))

    def summary(self) -> str:
        """`stream=a.wav #2 discarded a 0.12 s blip (3.02-3.14 s)`."""
        return self.said(f"discarded a {self.duration_s:.2f} s blip")


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEndEvent(Event):
    """A stream ended, published after every event of its utterances: what became of everything it said.

    `reason` is None for a normal end (end marker, clean close, end of file), else why it ended (idle timeout,
    error, shutdown). `utterances` = `classified` (intent events, `unknown` included) + `dropped` + `failed`;
    `discarded` counts the voiced blips too short to be utterances."""

    TYPE: ClassVar[str] = "stream.end"

    stream_id: str
    reason: str | None = None
    live: bool
    duration_s: float
    utterances: int
    classified: int
    dropped: int
    failed: int
    discarded: int

    @classmethod
    def of(cls, s: StreamSummary) -> StreamEndEvent:
        """The event for a stream whose every utterance has had its outcome."""
        return cls(stream_id=s.stream_id, reason=s.reason, live=s.live, duration_s=round(s.duration_s, TIME_DECIMALS),
                   utterances=s.utterances, classified=s.classified, dropped=s.dropped, failed=s.failed,
                   discarded=s.discarded)

    def summary(self) -> str:
        """`stream=a.wav ended: 3 utterances (3 classified, 0 dropped, 0 failed), 1 blip discarded, 4.20 s`."""
        why = f" ({self.reason})" if self.reason else ""
        heard = (f"{self.utterances} utterances ({self.classified} classified, {self.dropped} dropped, "
                 f"{self.failed} failed)" if self.utterances else "no speech")
        return f"stream={self.stream_id} ended{why}: {heard}, {self.discarded} blips discarded, {self.duration_s:.2f} s"


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorEvent(Event):
    """A stream or utterance that failed: `error` is the exception class name, `message` its one line;
    `utterance` is None for stream-level errors."""

    TYPE: ClassVar[str] = "utterance.error"

    stream_id: str
    utterance: int | None = None
    error: str = ""
    message: str

    def summary(self) -> str:
        """`stream=mic0 #7 error: AudioError: NaN or infinite samples`."""
        where = f" #{self.utterance}" if self.utterance is not None else ""
        kind = f"{self.error}: " if self.error else ""
        return f"stream={self.stream_id}{where} error: {kind}{self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class VadEdgeEvent(Event):
    """Where speech started or ended on a stream (no type: see VadStartEvent and VadEndEvent)."""

    stream_id: str
    utterance: int
    at_s: float
    at_wall: float

    @classmethod
    def at(cls, stream_id: str, utterance: int, at_sample: int, sample_rate: int, stream_origin_wall: float,
           **more: Any) -> Self:
        """The event for an edge at `at_sample` of a stream (`more`: the subclass's own fields)."""
        at_s = at_sample / sample_rate
        return cls(stream_id=stream_id, utterance=utterance, at_s=round(at_s, TIME_DECIMALS),
                   at_wall=round(stream_origin_wall + at_s, TIME_DECIMALS), **more)

    def summary(self) -> str:
        """`stream=a.wav #3 vad.end at 2.80 s`."""
        return f"stream={self.stream_id} #{self.utterance} {self.type} at {self.at_s:.2f} s"


@dataclass(frozen=True, slots=True, kw_only=True)
class VadStartEvent(VadEdgeEvent):
    """Speech began on a stream (onset, pre-roll excluded); a VadEndEvent for the same utterance follows."""

    TYPE: ClassVar[str] = "vad.start"


@dataclass(frozen=True, slots=True, kw_only=True)
class VadEndEvent(VadEdgeEvent):
    """Speech ended (last voiced sample); `discarded` when it was shorter than the minimum: no intent follows."""

    TYPE: ClassVar[str] = "vad.end"

    discarded: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusEvent(Event):
    """The daemon's heartbeat: lifecycle state (starting, ready, reloading, draining, stopping) and load."""

    TYPE: ClassVar[str] = TOPIC_STATUS

    state: str
    model_id: str
    uptime_s: float
    streams: tuple[str, ...] = ()
    queue_depth: int = 0
    counters: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False)

    def summary(self) -> str:
        """`status ready model=m@1 streams=2 queue=0 up=3600 s`."""
        return (
            f"status {self.state} model={self.model_id} streams={len(self.streams)} "
            f"queue={self.queue_depth} up={self.uptime_s:.0f} s"
        )

    @classmethod
    def since(cls, started_monotonic: float, *, state: str, model_id: str, streams: Sequence[str] = (),
              queue_depth: int = 0, counters: Mapping[str, int] | None = None) -> StatusEvent:
        """A heartbeat of a daemon that started at `started_monotonic`."""
        uptime_s = round(time.monotonic() - started_monotonic, MS_DECIMALS)
        return cls(state=state, model_id=model_id, uptime_s=uptime_s, streams=tuple(streams),
                   queue_depth=queue_depth, counters=dict(counters or {}))


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownEvent(Event):
    """A type this client does not know (a newer daemon's), kept whole in `raw` so old clients survive new topics;
    made by hand (with `raw` holding its fields) it publishes as any other event."""

    wire_topic: str
    wire_type: str

    type = property(lambda self: self.wire_type, doc="The `type` it arrived with.")  # type: ignore[assignment]
    topic = property(lambda self: self.wire_topic, doc="The topic it arrived on.")  # type: ignore[assignment]

    def data(self) -> dict[str, Any]:
        """Its fields: everything in `raw` but the envelope."""
        return {k: v for k, v in self.raw.items() if k not in _ENVELOPE_KEYS}

    def summary(self) -> str:
        """The topic and the JSON object as it arrived."""
        return f"{self.topic} {json.dumps(dict(self.raw), ensure_ascii=False)}"


# --------------------------------------------------------------------------------------------- conversion

_BASE_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(Event))
# (name, type, required) of each wire field, per class: see _shape.
_SHAPES: dict[type, list[tuple[str, Any, bool]]] = {}


_OMIT: dict[type, frozenset[str]] = {}


def _omit_empty(cls: type) -> frozenset[str]:
    """Names of the OMIT_EMPTY fields of an event class."""
    names = _OMIT.get(cls)
    if names is None:
        names = _OMIT[cls] = frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get(OMIT_EMPTY))
    return names


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _shape(cls: type) -> list[tuple[str, Any, bool]]:
    """(name, type, required) of each wire field of an event, a nested dataclass or a named tuple, in order."""
    shape = _SHAPES.get(cls)
    if shape is None:
        hints = get_type_hints(cls)
        if dataclasses.is_dataclass(cls):
            shape = [(f.name, hints[f.name], _required(f)) for f in dataclasses.fields(cls)
                     if f.name not in _BASE_FIELDS]
        else:  # a named tuple
            shape = [(name, hints[name], name not in cls._field_defaults) for name in cls._fields]  # type: ignore[attr-defined]
        _SHAPES[cls] = shape
    return shape


def _to_json(value: Any) -> Any:
    """A field value as JSON: named tuples and dataclasses become objects, tuples lists."""
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return {k: _to_json(v) for k, v in value._asdict().items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    return value


def _fields_from_json(cls: type, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments for `cls` from a JSON object; a field with a default may be absent."""
    if not isinstance(raw, Mapping):
        raise TypeError(f"expected an object, got {raw!r}")
    values = {}
    for name, hint, required in _shape(cls):
        if name in raw:
            values[name] = _from_json(hint, raw[name])
        elif required:
            raise KeyError(name)
    return values


def _from_json(hint: Any, value: Any) -> Any:
    """A JSON value as the Python type a field declares (KeyError, TypeError or ValueError when it is not)."""
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in get_args(hint):
            return None
        (inner,) = [a for a in get_args(hint) if a is not type(None)]
        return _from_json(inner, value)
    if origin is tuple:
        (item, _ellipsis) = get_args(hint)
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {value!r}")
        return tuple(_from_json(item, v) for v in value)
    if origin is Mapping or origin is dict:
        key_hint, value_hint = get_args(hint)
        return {_from_json(key_hint, k): _from_json(value_hint, v) for k, v in dict(value or {}).items()}
    if isinstance(hint, type) and (dataclasses.is_dataclass(hint) or hasattr(hint, "_fields")):
        return hint(**_fields_from_json(hint, value))
    if hint in (str, int, float, bool):
        return hint(value)
    raise TypeError(f"no JSON conversion for {hint!r}")  # a new field type: add its conversion here
