"""The audio ingest wire format (docs/protocol.md): pure encode/decode, no I/O, no heavy imports.

Clients import this module, so it must stay free of torch and of anything else under `daemon/` that pulls it in.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np

from intentd.daemon.audio import to_mono
from intentd.daemon.errors import AudioError, ProtocolError

MAGIC: Final = b"INTD"
VERSION: Final = 1
# Hello: magic, version byte, big-endian u16 length of the JSON header that follows.
_HELLO = struct.Struct(">4sBH")
HELLO_BYTES: Final = _HELLO.size
MAX_HEADER_BYTES: Final = 4096
MAX_STREAM_ID_BYTES: Final = 256
# The optional `token` key (ingest authentication, docs/security.md): printable ASCII, no spaces.
MAX_TOKEN_BYTES: Final = 512
# Where the daemon listens for audio unless config.toml says otherwise (sources.listen), and where clients send.
DEFAULT_AUDIO_URI: Final = "tcp://127.0.0.1:5555"
MIN_SAMPLE_RATE: Final = 8000
MAX_SAMPLE_RATE: Final = 48000
MIN_CHANNELS: Final = 1
MAX_CHANNELS: Final = 8
SAMPLE_FORMATS: Final = ("s16le", "f32le")
SampleFormat = Literal["s16le", "f32le"]
BYTES_PER_SAMPLE: Final = {"s16le": 2, "f32le": 4}
_S16_SCALE: Final = 32768.0

# Every frame after the header: one kind byte, big-endian u32 payload length, payload.
_FRAME = struct.Struct(">BI")
FRAME_HEAD_BYTES: Final = _FRAME.size
KIND_AUDIO: Final = 0x01
KIND_END: Final = 0x02
MAX_CHUNK_BYTES: Final = 1 << 20  # 1 MiB of PCM per audio frame

# Server -> client replies: big-endian u32 length, then a UTF-8 JSON object with a "type" key.
_REPLY_LEN = struct.Struct(">I")
MAX_REPLY_BYTES: Final = 64 * 1024
REPLY_ACCEPT: Final = "accept"
REPLY_ERROR: Final = "error"
REPLY_FINAL: Final = "final"
REPLY_TYPES: Final = (REPLY_ACCEPT, REPLY_ERROR, REPLY_FINAL)
# The reason of an error reply that refuses a stream for its credentials starts with this.
UNAUTHORIZED: Final = "unauthorized"
# How every daemon, old or new, refuses a header key it does not know: the reason is this and a list of the keys.
UNKNOWN_KEYS: Final = "malformed header: unknown keys "
# The header's keys: every client sends the required ones; `live` was added later and defaults to true, so a
# client that never heard of it streams live, as every stream did before. `token` (later still) is sent only by
# clients given one, so a client without credentials sends what it always sent. `vad_events` (revision 1.3) is
# sent only by clients that show speech edges, e.g. intentd-live.
HEADER_KEYS: Final = ("stream_id", "sample_rate", "format", "channels")
KEY_VAD_EVENTS: Final = "vad_events"
HEADER_OPTIONAL_KEYS: Final = ("live", "token", KEY_VAD_EVENTS)


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """What a client declares before its audio: who it is, how its PCM is laid out, and whether it is live.

    Live audio (a microphone, a call, anything paced by a clock) cannot wait: when the model falls behind, its
    utterances are dropped by the daemon's drop policy. Recorded audio (a file) can: the daemon reads it no
    faster than it classifies, and drops none of it. `token` is the client's credential when the daemon asks
    for one (never shown in a repr, so never in a log line). `vad_events` asks the daemon to publish this
    stream's vad.start / vad.end events whatever its `publisher.vad_events` says (a live view's speech/silence).
    """

    stream_id: str
    sample_rate: int
    sample_format: SampleFormat
    channels: int
    live: bool = True
    token: str | None = dataclasses.field(default=None, repr=False)
    vad_events: bool = False

    @property
    def frame_bytes(self) -> int:
        """Bytes in one sample frame (one sample for every channel)."""
        return BYTES_PER_SAMPLE[self.sample_format] * self.channels


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One PCM chunk as sent: interleaved bytes in the header's format, any length up to MAX_CHUNK_BYTES."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class EndFrame:
    """The client's end marker: no more audio on this stream."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A server reply: `type` is accept, error or final; `fields` holds the rest of the JSON object."""

    type: str
    fields: dict[str, Any]

    @property
    def reason(self) -> str:
        """The error reason (empty for non-error replies)."""
        return str(self.fields.get("reason", ""))

    @property
    def unknown_keys(self) -> tuple[str, ...]:
        """The header keys this error refuses as unknown: the daemon is older than they are (else empty)."""
        if self.type != REPLY_ERROR or not self.reason.startswith(UNKNOWN_KEYS):
            return ()
        return tuple(re.findall(r"'([^']*)'", self.reason[len(UNKNOWN_KEYS) :]))


ClientFrame = StreamHeader | AudioFrame | EndFrame


def validate_header(stream_id: Any, sample_rate: Any, sample_format: Any, channels: Any,
                    live: Any = True, token: Any = None, vad_events: Any = False) -> StreamHeader:
    """Check header fields against the protocol's bounds; ProtocolError names the field at fault."""
    if not isinstance(stream_id, str) or not stream_id:
        raise ProtocolError("header: stream_id must be a non-empty string")
    if len(stream_id.encode("utf-8")) > MAX_STREAM_ID_BYTES:
        raise ProtocolError(f"header: stream_id longer than {MAX_STREAM_ID_BYTES} UTF-8 bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in stream_id):
        raise ProtocolError("header: stream_id contains control characters")
    # bool is an int subclass; reject it so `true` is not read as rate 1.
    if not isinstance(sample_rate, int) or isinstance(sample_rate, bool):
        raise ProtocolError(f"header: sample_rate must be an integer, got {sample_rate!r}")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ProtocolError(
            f"header: unsupported sample_rate {sample_rate} (accepted {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz)"
        )
    if sample_format not in SAMPLE_FORMATS:
        raise ProtocolError(
            f"header: unsupported format {sample_format!r} (accepted {', '.join(SAMPLE_FORMATS)})"
        )
    if not isinstance(channels, int) or isinstance(channels, bool) or not MIN_CHANNELS <= channels <= MAX_CHANNELS:
        raise ProtocolError(f"header: unsupported channels {channels!r} (accepted {MIN_CHANNELS}..{MAX_CHANNELS})")
    if not isinstance(live, bool):
        raise ProtocolError(f"header: live must be true or false, got {live!r}")
    # The value is never quoted back: it may be a real credential sent to the wrong daemon.
    if token is not None and not (
        isinstance(token, str) and 0 < len(token) <= MAX_TOKEN_BYTES and all(0x21 <= ord(c) < 0x7F for c in token)
    ):
        raise ProtocolError(f"header: token must be 1..{MAX_TOKEN_BYTES} printable ASCII characters without spaces")
    if not isinstance(vad_events, bool):
        raise ProtocolError(f"header: {KEY_VAD_EVENTS} must be true or false, got {vad_events!r}")
    return StreamHeader(stream_id, sample_rate, sample_format, channels, live, token, vad_events)


def encode_header(header: StreamHeader) -> bytes:
    """Encode the hello and JSON header that open a stream (`live` only when false, `token` only when set,
    `vad_events` only when true).

    A live header without a token or vad events is byte for byte what clients sent before these keys existed, so
    such clients keep working with daemons that do not know them.
    """
    validate_header(header.stream_id, header.sample_rate, header.sample_format, header.channels, header.live,
                    header.token, header.vad_events)
    fields: dict[str, Any] = {
        "stream_id": header.stream_id,
        "sample_rate": header.sample_rate,
        "format": header.sample_format,
        "channels": header.channels,
    }
    if not header.live:
        fields["live"] = False
    if header.token is not None:
        fields["token"] = header.token
    if header.vad_events:
        fields[KEY_VAD_EVENTS] = True
    body = json.dumps(
        fields,
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")
    if len(body) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header: {len(body)} bytes, more than {MAX_HEADER_BYTES}")
    return _HELLO.pack(MAGIC, VERSION, len(body)) + body


def encode_audio(pcm: bytes) -> bytes:
    """Encode one PCM chunk; ProtocolError if it exceeds MAX_CHUNK_BYTES."""
    if len(pcm) > MAX_CHUNK_BYTES:
        raise ProtocolError(f"oversized chunk: {len(pcm)} bytes, more than {MAX_CHUNK_BYTES}")
    return _FRAME.pack(KIND_AUDIO, len(pcm)) + pcm


def encode_end() -> bytes:
    """Encode the end marker."""
    return _FRAME.pack(KIND_END, 0)


def _parse_header_json(body: bytes) -> StreamHeader:
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"malformed header: not UTF-8 JSON ({err})") from err
    if not isinstance(obj, dict):
        raise ProtocolError("malformed header: JSON is not an object")
    unknown = set(obj) - set(HEADER_KEYS) - set(HEADER_OPTIONAL_KEYS)
    if unknown:
        raise ProtocolError(f"{UNKNOWN_KEYS}{sorted(unknown)}")
    for key in HEADER_KEYS:
        if key not in obj:
            raise ProtocolError(f"malformed header: missing key {key!r}")
    return validate_header(obj["stream_id"], obj["sample_rate"], obj["format"], obj["channels"],
                           obj.get("live", True), obj.get("token"), obj.get(KEY_VAD_EVENTS, False))


class StreamDecoder:
    """Incremental client-stream decoder: feed bytes as they arrive, get header, audio and end frames.

    Raises ProtocolError on the first malformed byte; sizes are checked from the length prefix, before the payload
    is buffered, so an oversized chunk is refused without reading it.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._header: StreamHeader | None = None
        self._ended = False

    @property
    def header(self) -> StreamHeader | None:
        """The stream's header once it has been decoded."""
        return self._header

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[ClientFrame]:
        """Append bytes and return every frame they complete (ProtocolError if any byte is malformed)."""
        self.append(data)
        return list(self.frames())

    def append(self, data: bytes) -> None:
        """Buffer bytes without decoding them; frames() decodes."""
        if self._ended and data:
            raise ProtocolError("bytes after the end marker")
        self._buf += data

    def frames(self) -> Iterator[ClientFrame]:
        """Yield complete frames one by one; raises ProtocolError only when it reaches a malformed one.

        Lazy on purpose: a server opens the stream for a good header before it meets a bad chunk sent in the
        same packet, so the audio before the error is still accounted for and closed with a reason.
        """
        while True:
            frame = self._next()
            if frame is None:
                return
            yield frame

    def finish(self) -> None:
        """Declare the byte stream closed; ProtocolError if it stopped inside the header or a frame."""
        if self._header is None:
            raise ProtocolError(f"truncated header: connection closed after {len(self._buf)} bytes")
        if self._buf:
            raise ProtocolError(f"truncated frame: connection closed with {len(self._buf)} bytes of a frame")

    def _next(self) -> ClientFrame | None:
        buf = self._buf
        if self._header is None:
            # Check the magic on the bytes we have, so garbage is refused at once, not after 7 bytes.
            prefix = bytes(buf[: len(MAGIC)])
            if prefix != MAGIC[: len(prefix)]:
                raise ProtocolError("malformed header: bad magic (not an intentd audio stream)")
            if len(buf) < HELLO_BYTES:
                return None
            _, version, body_len = _HELLO.unpack_from(buf)
            if version != VERSION:
                raise ProtocolError(f"unsupported protocol version {version} (this server speaks {VERSION})")
            if body_len == 0 or body_len > MAX_HEADER_BYTES:
                raise ProtocolError(f"malformed header: length {body_len} (accepted 1..{MAX_HEADER_BYTES})")
            if len(buf) < HELLO_BYTES + body_len:
                return None
            self._header = _parse_header_json(bytes(buf[HELLO_BYTES : HELLO_BYTES + body_len]))
            del buf[: HELLO_BYTES + body_len]
            return self._header
        if self._ended:
            return None
        if len(buf) < FRAME_HEAD_BYTES:
            return None
        kind, length = _FRAME.unpack_from(buf)
        if kind == KIND_AUDIO:
            if length > MAX_CHUNK_BYTES:
                raise ProtocolError(f"oversized chunk: {length} bytes, more than {MAX_CHUNK_BYTES}")
            if len(buf) < FRAME_HEAD_BYTES + length:
                return None
            pcm = bytes(buf[FRAME_HEAD_BYTES : FRAME_HEAD_BYTES + length])
            del buf[: FRAME_HEAD_BYTES + length]
            return AudioFrame(pcm)
        if kind == KIND_END:
            if length != 0:
                raise ProtocolError(f"malformed end marker: length {length}, expected 0")
            del buf[:FRAME_HEAD_BYTES]
            self._ended = True
            if buf:
                raise ProtocolError("bytes after the end marker")
            return EndFrame()
        raise ProtocolError(f"unknown frame kind 0x{kind:02x}")


class PcmDecoder:
    """Turns PCM bytes of one stream into mono float32, carrying partial sample frames to the next chunk."""

    def __init__(self, sample_format: SampleFormat, channels: int) -> None:
        if sample_format not in SAMPLE_FORMATS:
            raise AudioError(f"unsupported sample format {sample_format!r}")
        self._dtype = np.dtype("<i2") if sample_format == "s16le" else np.dtype("<f4")
        self._channels = channels
        self._frame_bytes = BYTES_PER_SAMPLE[sample_format] * channels
        self._leftover = b""

    @property
    def leftover_bytes(self) -> int:
        """Bytes of an incomplete sample frame waiting for the next chunk."""
        return len(self._leftover)

    def decode(self, pcm: bytes) -> np.ndarray:
        """Decode bytes to mono float32 in [-1, 1]; AudioError on NaN or infinite samples."""
        data = self._leftover + pcm if self._leftover else pcm
        whole = len(data) - len(data) % self._frame_bytes
        self._leftover = data[whole:]
        raw = np.frombuffer(data, dtype=self._dtype, count=whole // self._dtype.itemsize)
        if self._dtype.kind == "i":
            samples = raw.astype(np.float32) / np.float32(_S16_SCALE)
        else:
            samples = raw.astype(np.float32)
            if not np.isfinite(samples).all():
                raise AudioError("NaN or infinite samples in f32le audio")
        if self._channels > 1:
            samples = to_mono(samples.reshape(-1, self._channels), channels_axis=1)
        return samples

    def finish(self) -> None:
        """Declare the stream ended; AudioError if it stopped inside a sample frame."""
        if self._leftover:
            raise AudioError(
                f"stream ended inside a sample frame ({len(self._leftover)} of {self._frame_bytes} bytes)"
            )


def encode_pcm(samples: np.ndarray, sample_format: SampleFormat) -> bytes:
    """Encode float samples ([frames] or [frames, channels], in [-1, 1]) as interleaved PCM bytes."""
    arr = np.asarray(samples)
    if sample_format == "f32le":
        return np.ascontiguousarray(arr, dtype="<f4").tobytes()
    if sample_format == "s16le":
        if arr.dtype.kind in "iu":
            return np.ascontiguousarray(arr, dtype="<i2").tobytes()
        scaled = np.clip(np.round(arr.astype(np.float64) * _S16_SCALE), -_S16_SCALE, _S16_SCALE - 1)
        return np.ascontiguousarray(scaled, dtype="<i2").tobytes()
    raise AudioError(f"unsupported sample format {sample_format!r}")


def encode_reply(reply_type: str, **fields: Any) -> bytes:
    """Encode one server reply (accept, error, final) as a length-prefixed JSON object."""
    if reply_type not in REPLY_TYPES:
        raise ProtocolError(f"unknown reply type {reply_type!r}")
    body = json.dumps({"type": reply_type, **fields}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_REPLY_BYTES:
        raise ProtocolError(f"reply of {len(body)} bytes, more than {MAX_REPLY_BYTES}")
    return _REPLY_LEN.pack(len(body)) + body


class ReplyDecoder:
    """Incremental decoder for the server's replies, used by clients."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Reply]:
        """Append bytes and return every reply they complete; ProtocolError on a malformed reply."""
        self._buf += data
        replies: list[Reply] = []
        while len(self._buf) >= _REPLY_LEN.size:
            (length,) = _REPLY_LEN.unpack_from(self._buf)
            if length > MAX_REPLY_BYTES:
                raise ProtocolError(f"reply of {length} bytes, more than {MAX_REPLY_BYTES}")
            end = _REPLY_LEN.size + length
            if len(self._buf) < end:
                break
            body = bytes(self._buf[_REPLY_LEN.size : end])
            del self._buf[:end]
            try:
                obj = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ProtocolError(f"malformed reply: {err}") from err
            if not isinstance(obj, dict) or obj.get("type") not in REPLY_TYPES:
                raise ProtocolError(f"malformed reply: {body[:80]!r}")
            reply_type = obj.pop("type")
            replies.append(Reply(reply_type, obj))
        return replies
