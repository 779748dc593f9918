"""A Wyoming speech-to-text endpoint (Home Assistant, Rhasspy): each audio-start..audio-stop is one stream.

A client may ask `describe` (answered with `info`: one asr program whose model is the loaded one, its intents
listed), then send `transcribe` (optional), `audio-start`, `audio-chunk`s and `audio-stop`. The audio goes to
the sink like any socket stream's, so its utterances are segmented, classified and published on ZeroMQ as usual.
After `audio-stop` the connection waits for the stream's outcome (the Outbox hands it back through
StreamWatchers) and answers `transcript` whose text is the recognised command's sentence (daemon.command_texts),
followed by Wyoming `intent` (name = label, intentd's scores in `context`); with nothing recognised, an empty
`transcript` and `not-recognized`. When utterances were dropped or failed and none was recognised, the answer
is one `error` instead. Several utterances in one request: the most confident recognised one answers.

Bad input (not Wyoming, an unsupported format, audio out of order) gets one `error` event naming what was wrong;
the connection is then closed, and only its own stream is ended. Wyoming has no credentials: this listener takes
no tokens and no TLS, which is why the bind policy (daemon/settings.py) keeps it on loopback unless
security.allow_unauthenticated says otherwise (docs/security.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Final

from intentd.daemon.command_texts import CommandTexts
from intentd.daemon.counters import Counters
from intentd.daemon.errors import AudioError, IntentdError, ProtocolError
from intentd.daemon.events import UNKNOWN_LABEL, DroppedEvent, ErrorEvent, Event, IntentEvent, StreamEndEvent
from intentd.daemon.frames import AudioChunk
from intentd.daemon.protocol import MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_CHANNELS, MIN_SAMPLE_RATE, PcmDecoder
from intentd.daemon.settings import DEFAULTS
from intentd.daemon.sources.connection import READ_BYTES, ClientConnection, ConnectionServer
from intentd.daemon.sources.sink import StreamSink
from intentd.daemon.sources.uri import WyomingSpec
from intentd.daemon.stream_watch import StreamWatchers
from intentd.daemon.wyoming_protocol import (
    AUDIO_CHUNK,
    AUDIO_START,
    AUDIO_STOP,
    DESCRIBE,
    ERROR,
    INFO,
    INTENT,
    NOT_RECOGNIZED,
    PING,
    PONG,
    TRANSCRIBE,
    TRANSCRIPT,
    WyomingDecoder,
    WyomingEvent,
    encode_event,
)

log = logging.getLogger(__name__)

PROGRAM_NAME: Final = "intentd"
PROGRAM_URL: Final = ""  # Wyoming's attribution wants a URL; intentd has no public home to name
SAMPLE_WIDTH_BYTES: Final = 2  # 16-bit PCM (what Home Assistant sends); width 4 is int32, which we do not take
# How long an answer may take after audio-stop: the queue, a batch and the stream's end, with room for a slow host.
RESULT_TIMEOUT_S: Final = 60.0
# `code` of the error events this endpoint sends.
CODE_BAD_EVENT: Final = "bad-event"  # not Wyoming, or an event with missing or wrong fields
CODE_BAD_AUDIO: Final = "bad-audio"  # an audio format intentd does not take, or one that changed mid-stream
CODE_OUT_OF_ORDER: Final = "out-of-order"  # audio-chunk or audio-stop without audio-start, or two audio-starts
CODE_TIMEOUT: Final = "timeout"
CODE_BUSY: Final = "busy"
CODE_NOT_CLASSIFIED: Final = "not-classified"  # utterances dropped under load or failed in the model
CODE_SHUTDOWN: Final = "shutdown"
CODE_INTERNAL: Final = "internal"


class WyomingInputError(IntentdError):
    """A client's event that this endpoint refuses; `code` is the error event's code."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _version() -> str | None:
    try:
        return metadata.version("intentd")
    except metadata.PackageNotFoundError:
        return None


def info_data(texts: CommandTexts, languages: tuple[str, ...]) -> dict[str, Any]:
    """The `info` answer to `describe`: one asr program and its one model, the loaded one.

    Languages are real language codes (Home Assistant matches them against an assistant's language); the intent
    labels and their sentences go in the model's description and in extra `intents` / `texts` keys, which
    Wyoming readers skip. No `intent` program is listed: intentd recognises intents in audio, not in text, and
    Home Assistant would offer a listed one as a conversation agent that sends it text.
    """
    attribution = {"name": PROGRAM_NAME, "url": PROGRAM_URL}
    model = {
        "name": texts.model_id, "attribution": attribution, "installed": True, "version": None,
        "description": f"intents: {', '.join(texts.labels)}", "languages": list(languages),
        "intents": list(texts.labels), "texts": {label: texts.text(label) for label in texts.labels},
    }
    program = {
        "name": PROGRAM_NAME, "attribution": attribution, "installed": True, "version": _version(),
        "description": "intentd: spoken commands to intents (the transcript is the recognised command)",
        "models": [model], "supports_transcript_streaming": False,
    }
    return {"asr": [program], "tts": [], "handle": [], "intent": [], "wake": [], "mic": [], "snd": []}


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """An audio-start's (or audio-chunk's) rate, width and channels."""

    rate: int
    width: int
    channels: int

    @classmethod
    def of(cls, event: WyomingEvent) -> AudioFormat:
        """The format an event declares; WyomingInputError when a field is missing or out of bounds."""
        values = []
        for key in ("rate", "width", "channels"):
            value = event.data.get(key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise WyomingInputError(f"{event.type}: {key} must be an integer, got {value!r}", CODE_BAD_EVENT)
            values.append(value)
        found = cls(*values)
        if found.width != SAMPLE_WIDTH_BYTES:
            raise WyomingInputError(f"{event.type}: width {found.width} is not supported: send 16-bit PCM "
                                    f"(width {SAMPLE_WIDTH_BYTES})", CODE_BAD_AUDIO)
        if not MIN_SAMPLE_RATE <= found.rate <= MAX_SAMPLE_RATE:
            raise WyomingInputError(f"{event.type}: rate {found.rate} Hz is outside "
                                    f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz", CODE_BAD_AUDIO)
        if not MIN_CHANNELS <= found.channels <= MAX_CHANNELS:
            raise WyomingInputError(f"{event.type}: {found.channels} channels is outside "
                                    f"{MIN_CHANNELS}..{MAX_CHANNELS}", CODE_BAD_AUDIO)
        return found

    def __str__(self) -> str:
        return f"{self.rate} Hz, width {self.width}, {self.channels} channel(s)"


@dataclass(slots=True)
class _Outcome:
    """What became of one request's utterances."""

    intents: list[IntentEvent] = field(default_factory=list)
    not_classified: list[str] = field(default_factory=list)  # why each dropped or failed utterance was lost


class WyomingServer(ConnectionServer["_WyomingConnection"]):
    """Serves Wyoming speech-to-text on one TCP address; every request's audio is a stream of the sink."""

    _log = log
    WHAT = "Wyoming clients"
    BUSY_CODE = CODE_BUSY

    def __init__(
        self,
        spec: WyomingSpec,
        sink: StreamSink,
        watchers: StreamWatchers,
        texts: Callable[[], CommandTexts],
        *,
        idle_timeout_s: float = DEFAULTS.sources.idle_timeout_s,
        max_streams: int | None = None,
        result_timeout_s: float = RESULT_TIMEOUT_S,
        counters: Counters | None = None,
    ) -> None:
        super().__init__(spec.uri(), sink, idle_timeout_s=idle_timeout_s, max_streams=max_streams,
                         counters=counters)
        self._spec = spec
        self._watchers = watchers
        self._texts = texts
        self._result_timeout_s = result_timeout_s

    async def start(self) -> str:
        """Bind and start accepting connections; return the bound URI. SourceError if the address is unusable,
        ModelError if the model folder's sentences are malformed (better at start than in every answer)."""
        self._texts()
        host, port = await self._listen_tcp(self._spec.host, self._spec.port)
        self._bound_uri = WyomingSpec(host, port, self._spec.languages).uri()
        log.info("listening for Wyoming speech-to-text on %s (languages %s; no authentication: Wyoming has none)",
                 self._bound_uri, ", ".join(self._spec.languages))
        return self._bound_uri

    def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _WyomingConnection:
        return _WyomingConnection(self, reader, writer)


class _WyomingConnection(ClientConnection):
    """One client: read events, run its requests one after another, answer, and close each stream once."""

    _log = log
    SHUTDOWN_CODE = CODE_SHUTDOWN

    def __init__(self, server: WyomingServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self._server = server
        self._decoder = WyomingDecoder()
        self._language: str | None = None  # from the last transcribe
        self._requests = 0
        self._stream_id: str | None = None  # while audio-start..audio-stop is open
        self._format: AudioFormat | None = None
        self._pcm: PcmDecoder | None = None
        self._next_sample = 0
        self._results: asyncio.Queue[Event] | None = None
        self._answering = False

    def _interruptible(self) -> bool:
        return not self._answering  # a request awaiting its answer is answered first

    async def _failed(self, err: Exception) -> None:
        if isinstance(err, WyomingInputError):
            await self._fail(str(err), err.code)
        elif isinstance(err, ProtocolError | AudioError):
            await self._fail(str(err), CODE_BAD_EVENT if isinstance(err, ProtocolError) else CODE_BAD_AUDIO)
        elif isinstance(err, TimeoutError):
            await self._fail(f"idle timeout: no bytes for {self._server._idle_timeout_s:g} s", CODE_TIMEOUT)
        elif isinstance(err, IntentdError):
            await self._fail(str(err), CODE_INTERNAL)
        elif isinstance(err, ConnectionError | OSError):
            self._end_stream(f"connection lost: {err}")
            await self.close_writer()
        else:
            await super()._failed(err)

    def _error_reply(self, reason: str, code: str | None) -> bytes:
        return encode_event(ERROR, {"text": reason, "code": code or CODE_INTERNAL})

    def describe(self) -> str:
        """`Wyoming stream 'wyoming-127.0.0.1:40312-1' from 127.0.0.1:40312`, or `Wyoming connection from ...`."""
        what = f"Wyoming stream {self._stream_id!r}" if self._stream_id else "Wyoming connection"
        return f"{what} from {self.peer}"

    async def _read_until_end(self) -> bool:
        while self._stop_reason is None:
            data = await asyncio.wait_for(self._reader.read(READ_BYTES), self._server._idle_timeout_s)
            if not data:
                if self._decoder.mid_event:
                    raise ProtocolError("wyoming: connection closed inside an event")
                if self._stream_id is not None:
                    log.info("%s: closed before audio-stop; nobody to answer", self.describe())
                    self._end_stream("connection closed before audio-stop")
                return True
            self._decoder.append(data)
            for event in self._decoder.events():
                if self._stop_reason is not None:  # shutdown came while a request was answered: no new one
                    return True
                await self._handle(event)
        return True

    async def _handle(self, event: WyomingEvent) -> None:
        if event.type == DESCRIBE:
            texts = self._server._texts()
            await self._send(encode_event(INFO, info_data(texts, self._server._spec.languages)))
        elif event.type == TRANSCRIBE:
            language = event.data.get("language")
            self._language = language if isinstance(language, str) else None
        elif event.type == AUDIO_START:
            self._open(event)
        elif event.type == AUDIO_CHUNK:
            self._chunk(event)
        elif event.type == AUDIO_STOP:
            await self._stop_and_answer()
        elif event.type == PING:
            await self._send(encode_event(PONG, {"text": event.data.get("text")}))
        else:
            # Wyoming servers drop events they do not serve (select-program, recognize, ...).
            log.debug("%s: ignored a %r event", self.describe(), event.type)

    def _open(self, event: WyomingEvent) -> None:
        if self._stream_id is not None:
            raise WyomingInputError("audio-start while the previous audio has had no audio-stop", CODE_OUT_OF_ORDER)
        audio = AudioFormat.of(event)
        self._requests += 1
        stream_id = f"wyoming-{self.peer}-{self._requests}"
        self._results = self._server._watchers.watch(stream_id)
        try:
            self._server._sink.open_stream(stream_id, audio.rate, time.time(), live=True)
        except BaseException:
            self._server._watchers.unwatch(stream_id)
            raise
        self._stream_id, self._format = stream_id, audio
        self._pcm = PcmDecoder("s16le", audio.channels)
        self._next_sample = 0
        log.debug("%s: opened at %s", self.describe(), audio)  # the StreamTable logs the open

    def _chunk(self, event: WyomingEvent) -> None:
        if self._stream_id is None or self._format is None or self._pcm is None:
            raise WyomingInputError("audio-chunk before audio-start", CODE_OUT_OF_ORDER)
        if any(key in event.data for key in ("rate", "width", "channels")):
            audio = AudioFormat.of(event)
            if audio != self._format:
                raise WyomingInputError(f"audio-chunk of {audio} in a stream that audio-start declared "
                                        f"{self._format}", CODE_BAD_AUDIO)
        samples = self._pcm.decode(event.payload)
        if samples.size == 0:
            return
        chunk = AudioChunk(stream_id=self._stream_id, samples=samples, sample_rate=self._format.rate,
                           start_sample=self._next_sample, arrival_monotonic=time.monotonic())
        self._next_sample += samples.size
        self._server._sink.push(chunk)

    async def _stop_and_answer(self) -> None:
        if self._stream_id is None or self._pcm is None or self._results is None:
            raise WyomingInputError("audio-stop before audio-start", CODE_OUT_OF_ORDER)
        self._pcm.finish()
        stream_id, results = self._stream_id, self._results
        self._end_stream(None)
        log.debug("Wyoming stream %r from %s: audio-stop after %d samples", stream_id, self.peer, self._next_sample)
        self._answering = True
        try:
            outcome = await asyncio.wait_for(_collect(results), self._server._result_timeout_s)
        except TimeoutError:
            raise WyomingInputError(f"no result for stream {stream_id!r} within "
                                    f"{self._server._result_timeout_s:g} s", CODE_TIMEOUT) from None
        finally:
            self._answering = False
            self._server._watchers.unwatch(stream_id)
        await self._send(self._answer(stream_id, outcome))

    def _answer(self, stream_id: str, outcome: _Outcome) -> bytes:
        languages = self._server._spec.languages
        language = self._language if self._language in languages else languages[0]
        recognised = [e for e in outcome.intents if e.label != UNKNOWN_LABEL]
        if recognised:
            best = max(recognised, key=lambda e: e.score)
            text = self._server._texts().text(best.label)
            log.info("Wyoming stream %r: %r (%s %.2f)", stream_id, text, best.label, best.score)
            return (encode_event(TRANSCRIPT, {"text": text, "language": language})
                    + encode_event(INTENT, {"name": best.label, "context": {"intentd": _context(best)}}))
        if outcome.not_classified:
            why = "; ".join(outcome.not_classified)
            log.warning("Wyoming stream %r: no answer: %s", stream_id, why)
            return encode_event(ERROR, {"text": f"stream {stream_id!r}: not classified: {why}",
                                        "code": CODE_NOT_CLASSIFIED})
        log.info("Wyoming stream %r: nothing recognised (%d utterance(s))", stream_id, len(outcome.intents))
        context = {"intentd": {"stream_id": stream_id, "utterances": [_context(e) for e in outcome.intents]}}
        return (encode_event(TRANSCRIPT, {"text": "", "language": language})
                + encode_event(NOT_RECOGNIZED, {"context": context}))

    def _end_stream(self, reason: str | None) -> bool:
        """Close the open stream in the sink (exactly once) and stop watching it unless it is being answered."""
        stream_id = self._stream_id
        if stream_id is None:
            return True
        self._stream_id, self._format, self._pcm = None, None, None
        if reason is not None:
            self._server._watchers.unwatch(stream_id)
        try:
            self._server._sink.close_stream(stream_id, reason)
        except Exception:
            log.exception("Wyoming stream %r from %s: sink failed to close the stream", stream_id, self.peer)
            return False
        return True


async def _collect(results: asyncio.Queue[Event]) -> _Outcome:
    """The stream's events up to its stream.end (published after all of its utterances' outcomes)."""
    outcome = _Outcome()
    while True:
        event = await results.get()
        if isinstance(event, IntentEvent):
            outcome.intents.append(event)
        elif isinstance(event, DroppedEvent):
            outcome.not_classified.append(f"utterance {event.utterance} dropped ({event.reason})")
        elif isinstance(event, ErrorEvent):
            outcome.not_classified.append(f"utterance {event.utterance} failed ({event.message})")
        elif isinstance(event, StreamEndEvent):
            return outcome


def _context(event: IntentEvent) -> dict[str, Any]:
    """intentd's view of one utterance, for a Wyoming event's `context` (the ZeroMQ event has it all)."""
    return {"stream_id": event.stream_id, "utterance": event.utterance, "label": event.label,
            "score": event.score, "top_k": [{"label": label, "score": score} for label, score in event.top_k],
            "model_id": event.model_id, "start_s": event.start_s, "end_s": event.end_s}

