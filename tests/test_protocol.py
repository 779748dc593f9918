"""The ingest wire format, driven with plain bytes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from intentd.daemon.errors import AudioError, ProtocolError, SourceError
from intentd.daemon.protocol import (
    MAGIC,
    MAX_CHUNK_BYTES,
    MAX_HEADER_BYTES,
    MAX_STREAM_ID_BYTES,
    VERSION,
    AudioFrame,
    EndFrame,
    PcmDecoder,
    ReplyDecoder,
    StreamDecoder,
    StreamHeader,
    encode_audio,
    encode_end,
    encode_header,
    encode_pcm,
    encode_reply,
)
from intentd.daemon.sources import create_source
from intentd.daemon.sources.uri import FileSpec, MicSpec, TcpSpec, UnixSpec, parse_source_uri
from tests.recording_sink import RecordingSink

HEADER = StreamHeader("kitchen/mic-1 ✓", 16000, "s16le", 2)


def _raw_header(obj: object, version: int = VERSION, magic: bytes = MAGIC) -> bytes:
    body = json.dumps(obj).encode()
    return magic + struct.pack(">BH", version, len(body)) + body


def _good_fields(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {"stream_id": "s", "sample_rate": 16000, "format": "s16le", "channels": 1}
    fields.update(overrides)
    return fields


def test_round_trip_whole_and_byte_by_byte() -> None:
    wire = encode_header(HEADER) + encode_audio(b"\x01\x00\x02\x00") + encode_audio(b"") + encode_end()
    expected = [HEADER, AudioFrame(b"\x01\x00\x02\x00"), AudioFrame(b""), EndFrame()]
    assert StreamDecoder().feed(wire) == expected
    dec = StreamDecoder()
    frames = [f for i in range(len(wire)) for f in dec.feed(wire[i : i + 1])]
    assert frames == expected
    assert dec.header == HEADER
    dec.finish()


def test_header_split_across_many_feeds_yields_nothing_until_complete() -> None:
    wire = encode_header(HEADER)
    dec = StreamDecoder()
    for i in range(len(wire) - 1):
        assert dec.feed(wire[i : i + 1]) == []
    assert dec.feed(wire[-1:]) == [HEADER]


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "bad magic"),
        (b"IN", None),  # a valid prefix is not an error until the connection closes
        (_raw_header(_good_fields(), version=9), "unsupported protocol version 9"),
        (MAGIC + struct.pack(">BH", VERSION, 0), "length 0"),
        (MAGIC + struct.pack(">BH", VERSION, MAX_HEADER_BYTES + 1), "length"),
        (MAGIC + struct.pack(">BH", VERSION, 3) + b"\xff\xfe{", "not UTF-8 JSON"),
        (_raw_header([1, 2]), "not an object"),
        (_raw_header({"stream_id": "s", "sample_rate": 16000, "format": "s16le"}), "missing key 'channels'"),
        (_raw_header(_good_fields(gain=2)), "unknown keys"),
        (_raw_header(_good_fields(stream_id="")), "stream_id"),
        (_raw_header(_good_fields(stream_id="x" * (MAX_STREAM_ID_BYTES + 1))), "stream_id longer"),
        (_raw_header(_good_fields(stream_id="a\nb")), "control characters"),
        (_raw_header(_good_fields(sample_rate=7999)), "unsupported sample_rate 7999"),
        (_raw_header(_good_fields(sample_rate=48001)), "unsupported sample_rate"),
        (_raw_header(_good_fields(sample_rate=True)), "sample_rate must be an integer"),
        (_raw_header(_good_fields(sample_rate=16000.0)), "sample_rate must be an integer"),
        (_raw_header(_good_fields(format="u8")), "unsupported format 'u8'"),
        (_raw_header(_good_fields(channels=0)), "unsupported channels 0"),
        (_raw_header(_good_fields(channels=9)), "unsupported channels 9"),
        (_raw_header(_good_fields(live=1)), "live must be true or false"),
        (_raw_header(_good_fields(live="no")), "live must be true or false"),
        (encode_header(HEADER) + struct.pack(">BI", 1, MAX_CHUNK_BYTES + 1), "oversized chunk"),
        (encode_header(HEADER) + struct.pack(">BI", 7, 0), "unknown frame kind 0x07"),
        (encode_header(HEADER) + struct.pack(">BI", 2, 4), "malformed end marker"),
        (encode_header(HEADER) + encode_end() + b"x", "after the end marker"),
    ],
)
def test_malformed_input_raises_protocol_error(wire: bytes, match: str | None) -> None:
    dec = StreamDecoder()
    if match is None:
        assert dec.feed(wire) == []
        with pytest.raises(ProtocolError, match="truncated header"):
            dec.finish()
        return
    with pytest.raises(ProtocolError, match=match):
        # Feed in two halves too, so errors do not depend on arriving in one piece.
        dec.feed(wire[: len(wire) // 2])
        dec.feed(wire[len(wire) // 2 :])


def test_oversized_chunk_refused_from_its_length_prefix_alone() -> None:
    dec = StreamDecoder()
    dec.feed(encode_header(HEADER))
    with pytest.raises(ProtocolError, match="oversized chunk"):
        dec.feed(struct.pack(">BI", 1, MAX_CHUNK_BYTES + 1))
    with pytest.raises(ProtocolError, match="oversized chunk"):
        encode_audio(bytes(MAX_CHUNK_BYTES + 1))
    assert len(encode_audio(bytes(MAX_CHUNK_BYTES))) == MAX_CHUNK_BYTES + 5


def test_truncation_detected_on_finish() -> None:
    dec = StreamDecoder()
    dec.feed(encode_header(HEADER)[:-1])
    with pytest.raises(ProtocolError, match="truncated header"):
        dec.finish()
    dec = StreamDecoder()
    dec.feed(encode_header(HEADER) + encode_audio(b"abcd")[:-2])
    with pytest.raises(ProtocolError, match="truncated frame"):
        dec.finish()


def test_encode_header_validates() -> None:
    with pytest.raises(ProtocolError, match="sample_rate"):
        encode_header(StreamHeader("s", 96000, "s16le", 1))


def test_live_is_optional_and_a_header_without_it_is_live() -> None:
    """Clients from before `live` (no key) stream live, as they always did; a live header is still byte for byte
    the old one, so live clients keep working with daemons that do not know the key."""
    old_client = _raw_header(_good_fields())
    (header,) = StreamDecoder().feed(old_client)
    assert header == StreamHeader("s", 16000, "s16le", 1) and header.live is True
    compact = json.dumps(_good_fields(), separators=(",", ":")).encode()
    assert encode_header(header) == MAGIC + struct.pack(">BH", VERSION, len(compact)) + compact
    recorded = StreamHeader("s", 16000, "s16le", 1, live=False)
    wire = encode_header(recorded)
    assert b'"live":false' in wire
    assert StreamDecoder().feed(wire) == [recorded]
    (explicit,) = StreamDecoder().feed(_raw_header(_good_fields(live=True)))
    assert explicit.live is True
    with pytest.raises(ProtocolError, match="live"):
        encode_header(StreamHeader("s", 16000, "s16le", 1, live=None))  # type: ignore[arg-type]


def test_vad_events_is_optional_sent_only_when_asked_and_an_old_daemons_refusal_names_it() -> None:
    """A header that does not ask for its vad events is what clients sent before the key (revision 1.3), so they
    and the daemons before it keep working; a daemon before it refuses the key the way every daemon refuses an
    unknown one, and Reply.unknown_keys reads that refusal so a client can resend without it."""
    plain = StreamHeader("s", 16000, "s16le", 1)
    assert plain.vad_events is False and b"vad_events" not in encode_header(plain)
    asking = StreamHeader("s", 16000, "s16le", 1, vad_events=True)
    wire = encode_header(asking)
    assert b'"vad_events":true' in wire
    decoder = StreamDecoder()
    assert [frame for i in range(len(wire)) for frame in decoder.feed(wire[i : i + 1])] == [asking]
    (explicit,) = StreamDecoder().feed(_raw_header(_good_fields(vad_events=False)))
    assert explicit == plain
    with pytest.raises(ProtocolError, match="vad_events must be true or false"):
        StreamDecoder().feed(_raw_header(_good_fields(vad_events="yes")))
    # What a daemon from before revision 1.3 answers (its decoder knows only live and token):
    with pytest.raises(ProtocolError) as refused:
        StreamDecoder().feed(_raw_header(_good_fields(vad_events=True, colour="red")))
    assert str(refused.value) == "malformed header: unknown keys ['colour']"
    old_reason = "malformed header: unknown keys ['vad_events']"
    (reply,) = ReplyDecoder().feed(encode_reply("error", reason=old_reason, stream_id=None))
    assert reply.unknown_keys == ("vad_events",)
    (two,) = ReplyDecoder().feed(encode_reply("error", reason="malformed header: unknown keys ['token', 'vad_events']"))
    assert two.unknown_keys == ("token", "vad_events")
    (other,) = ReplyDecoder().feed(encode_reply("error", reason="header: unsupported sample_rate 96000"))
    assert other.unknown_keys == ()


def test_s16_stereo_to_mono_float32_with_leftover_across_chunks() -> None:
    rng = np.random.default_rng(0)
    ints = rng.integers(-32768, 32767, size=(1000, 2), dtype=np.int16)
    wire = ints.astype("<i2").tobytes()
    expected = (ints.astype(np.float32) / np.float32(32768.0)).mean(axis=1, dtype=np.float32)
    dec = PcmDecoder("s16le", 2)
    # Cut at odd byte boundaries, inside samples and inside sample frames.
    parts = [dec.decode(wire[i : i + 7]) for i in range(0, len(wire), 7)]
    dec.finish()
    got = np.concatenate(parts)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    assert got.min() >= -1.0 and got.max() < 1.0


def test_f32_mono_is_bit_exact_and_nan_inf_rejected() -> None:
    x = np.linspace(-1, 1, 321, dtype=np.float32)
    dec = PcmDecoder("f32le", 1)
    np.testing.assert_array_equal(dec.decode(encode_pcm(x, "f32le")), x)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[10] = bad
        with pytest.raises(AudioError, match="NaN or infinite"):
            PcmDecoder("f32le", 1).decode(encode_pcm(y, "f32le"))


def test_partial_sample_frame_at_end_is_an_error() -> None:
    dec = PcmDecoder("s16le", 2)
    assert dec.decode(b"\x00\x01\x02").size == 0
    assert dec.leftover_bytes == 3
    with pytest.raises(AudioError, match="inside a sample frame"):
        dec.finish()


def test_encode_pcm_s16_round_trip_and_clipping() -> None:
    x = np.array([0.0, 0.5, -0.5, 1.5, -1.5], dtype=np.float32)
    got = PcmDecoder("s16le", 1).decode(encode_pcm(x, "s16le"))
    np.testing.assert_array_equal(got, np.array([0.0, 0.5, -0.5, 32767 / 32768, -1.0], dtype=np.float32))


def test_reply_round_trip_split_and_malformed() -> None:
    wire = encode_reply("accept", stream_id="a") + encode_reply("error", reason="bad") + encode_reply("final")
    dec = ReplyDecoder()
    replies = [r for i in range(len(wire)) for r in dec.feed(wire[i : i + 1])]
    assert [r.type for r in replies] == ["accept", "error", "final"]
    assert replies[0].fields == {"stream_id": "a"}
    assert replies[1].reason == "bad"
    with pytest.raises(ProtocolError):
        ReplyDecoder().feed(struct.pack(">I", 2) + b"[]")
    with pytest.raises(ProtocolError):
        encode_reply("hello")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("tcp://0.0.0.0:5555", TcpSpec("0.0.0.0", 5555)),
        ("tcp://:5555", TcpSpec("127.0.0.1", 5555)),
        ("tcp://[::1]:0", TcpSpec("::1", 0)),
        ("unix:///run/intentd/audio.sock", UnixSpec(Path("/run/intentd/audio.sock"))),
        ("file:///tmp/a b.wav", FileSpec(Path("/tmp/a b.wav"))),
        ("file://rel/x.flac?realtime=1", FileSpec(Path("rel/x.flac"), realtime=True)),
        ("file:///x.wav?realtime=false", FileSpec(Path("/x.wav"))),
        ("mic://", MicSpec(None)),
        ("mic://3", MicSpec(3)),
        ("mic://USB%20Audio", MicSpec("USB Audio")),
    ],
)
def test_source_uris_parse_to_typed_specs(uri: str, expected: object) -> None:
    assert parse_source_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "localhost:5555",
        "http://x:1",
        "tcp://host",
        "tcp://h:99999",
        "tcp://h:1/path",
        "unix://",
        "file://",
        "file:///x.wav?speed=2",
        "file:///x.wav?realtime=maybe",
        "mic://a/b",
    ],
)
def test_bad_source_uris_name_the_uri_and_list_schemes(uri: str) -> None:
    with pytest.raises(SourceError) as info:
        parse_source_uri(uri)
    assert (
        repr(uri) in str(info.value) and "tcp://HOST:PORT" in str(info.value) and "mic://" in str(info.value)
    )


def test_create_source_picks_the_class_by_scheme(tmp_path: Path) -> None:
    sink = RecordingSink()
    assert type(create_source("tcp://127.0.0.1:0", sink)).__name__ == "SocketServer"
    assert type(create_source(f"unix://{tmp_path}/s.sock", sink)).__name__ == "SocketServer"
    assert type(create_source(f"file://{tmp_path}/a.wav", sink)).__name__ == "FileReplaySource"
    assert type(create_source("mic://2", sink)).__name__ == "MicrophoneSource"
