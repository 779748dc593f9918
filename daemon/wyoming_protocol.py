"""The Wyoming wire format (Home Assistant, Rhasspy): pure encode/decode, no I/O, no heavy imports.

An event is one line of JSON (`type`, optional `data`, `data_length`, `payload_length`, `version`), then
`data_length` bytes of JSON merged into `data`, then `payload_length` bytes of payload (PCM for audio-chunk).
Written from the `wyoming` package's event.py, asr.py, audio.py, info.py and intent.py; the daemon does not need
that package (the tests talk to the daemon with its client).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from intentd.daemon.errors import ProtocolError

# The `wyoming` package release whose event shapes this module follows; sent as every event's `version`.
WYOMING_VERSION: Final = "1.10.2"
# A header line longer than this without a newline is not Wyoming: the client is told so and dropped.
MAX_LINE_BYTES: Final = 64 * 1024
MAX_DATA_BYTES: Final = 64 * 1024
MAX_PAYLOAD_BYTES: Final = 1 << 20  # 1 MiB, as an INTD audio frame (daemon.protocol.MAX_CHUNK_BYTES)
NEWLINE: Final = b"\n"

# Event types intentd reads or writes.
DESCRIBE: Final = "describe"
INFO: Final = "info"
TRANSCRIBE: Final = "transcribe"
TRANSCRIPT: Final = "transcript"
AUDIO_START: Final = "audio-start"
AUDIO_CHUNK: Final = "audio-chunk"
AUDIO_STOP: Final = "audio-stop"
INTENT: Final = "intent"
NOT_RECOGNIZED: Final = "not-recognized"
ERROR: Final = "error"
PING: Final = "ping"
PONG: Final = "pong"


@dataclass(frozen=True, slots=True)
class WyomingEvent:
    """One event: its type, its data (header `data` merged with the separate data bytes) and its payload."""

    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    payload: bytes = b""


def encode_event(event_type: str, data: Mapping[str, Any] | None = None, payload: bytes = b"") -> bytes:
    """One event as the bytes on the wire: header line, data bytes, payload (as the wyoming package writes it)."""
    header: dict[str, Any] = {"type": event_type, "version": WYOMING_VERSION}
    data_bytes = b""
    if data:
        data_bytes = json.dumps(dict(data), ensure_ascii=False, allow_nan=False).encode("utf-8")
        header["data_length"] = len(data_bytes)
    if payload:
        header["payload_length"] = len(payload)
    line = json.dumps(header, ensure_ascii=False).encode("utf-8")
    return line + NEWLINE + data_bytes + payload


def _length(header: Mapping[str, Any], key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"wyoming: {key} must be a non-negative integer, got {value!r}")
    if value > limit:
        raise ProtocolError(f"wyoming: {key} {value} is more than {limit} bytes")
    return value


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:
        raise ProtocolError(f"wyoming: {what} is not JSON: {err}") from err
    if not isinstance(value, dict):
        raise ProtocolError(f"wyoming: {what} is a JSON {type(value).__name__}, not an object")
    return value


class WyomingDecoder:
    """Bytes in any pieces -> WyomingEvents; ProtocolError (naming what is wrong) for anything else."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._header: dict[str, Any] | None = None  # read, waiting for its data and payload bytes
        self._data_bytes = 0
        self._payload_bytes = 0

    @property
    def mid_event(self) -> bool:
        """Whether bytes of an unfinished event are buffered."""
        return self._header is not None or bool(self._buffer)

    def append(self, data: bytes) -> None:
        """Add received bytes."""
        self._buffer += data

    def events(self) -> Iterator[WyomingEvent]:
        """Every event complete in the buffer, in order."""
        while True:
            if self._header is None:
                end = self._buffer.find(NEWLINE)
                if end < 0:
                    if len(self._buffer) > MAX_LINE_BYTES:
                        raise ProtocolError(f"wyoming: no end of line within {MAX_LINE_BYTES} bytes")
                    return
                if end > MAX_LINE_BYTES:
                    raise ProtocolError(f"wyoming: header line longer than {MAX_LINE_BYTES} bytes")
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                if not line.strip():
                    continue  # a blank line carries no event (the reference reader would fail on it; be lenient)
                header = _json_object(line, "header line")
                event_type = header.get("type")
                if not isinstance(event_type, str) or not event_type:
                    raise ProtocolError("wyoming: header line has no `type` string")
                if "data" in header and not isinstance(header["data"], dict):
                    raise ProtocolError(f"wyoming: {event_type}: `data` must be a JSON object")
                self._data_bytes = _length(header, "data_length", MAX_DATA_BYTES)
                self._payload_bytes = _length(header, "payload_length", MAX_PAYLOAD_BYTES)
                self._header = header
            if len(self._buffer) < self._data_bytes + self._payload_bytes:
                return
            header, self._header = self._header, None
            data = dict(header.get("data") or {})
            if self._data_bytes:
                data.update(_json_object(bytes(self._buffer[: self._data_bytes]), f"{header['type']} data"))
            payload = bytes(self._buffer[self._data_bytes: self._data_bytes + self._payload_bytes])
            del self._buffer[: self._data_bytes + self._payload_bytes]
            yield WyomingEvent(header["type"], data, payload)
