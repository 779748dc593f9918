"""The Wyoming endpoint, checked with the `wyoming` package's own reader, writer and client (Home Assistant's).

Codec tests read our bytes with wyoming's reader and our decoder reads wyoming's writer in every chunking; the
end-to-end tests run the daemon as a subprocess on a tiny model and talk to it with wyoming.client.AsyncTcpClient,
with real FSDD recordings: describe/info, a transcript (and Wyoming intent) for a spoken digit that matches the
ZeroMQ intent event of the same utterance, and bad clients that each get one error while a good one is served.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event, read_event, write_event
from wyoming.info import Describe, Info
from wyoming.intent import Intent, NotRecognized

from intentd.daemon import events
from intentd.daemon import settings as settings_mod
from intentd.daemon.command_texts import CommandTexts, load_command_texts
from intentd.daemon.errors import ConfigError, ModelError, ProtocolError, SourceError
from intentd.daemon.sources.uri import WyomingSpec, parse_source_uri
from intentd.daemon.sources.wyoming_server import WyomingServer
from intentd.daemon.stream_watch import StreamWatchers
from intentd.daemon.wyoming_protocol import MAX_LINE_BYTES, WyomingDecoder, encode_event
from tests.daemon_proc import FSDD, SUB_CONNECT_TIMEOUT_S, EventCollector, free_port, running_daemon, silence
from tests.recording_sink import RecordingSink
from tests.tiny_models import TINY_LABELS, build_tiny_whisper

TEXTS = {"balance": "what is my balance", "transfer": "transfer money to savings", "stop": "stop my card"}
READ_TIMEOUT_S = 90.0  # a tiny model on a busy 2-core host, after the queue
CHUNK_MS = 100
EVENT_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------------------------- the wire format


def _wyoming_bytes(event: Event) -> bytes:
    out = io.BytesIO()
    write_event(event, out)
    return out.getvalue()


SAMPLE_EVENTS = [
    Describe().event(),
    Transcribe(language="en").event(),
    AudioStart(rate=16000, width=2, channels=1).event(),
    AudioChunk(rate=16000, width=2, channels=1, audio=bytes(range(256)) * 3).event(),
    AudioStop().event(),
    Transcript(text="what is my balance ü", language="en").event(),
    Error(text="bad", code="bad-event").event(),
]


@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_the_decoder_reads_what_wyoming_writes_in_any_chunking(piece: int) -> None:
    wire = b"".join(_wyoming_bytes(e) for e in SAMPLE_EVENTS)
    decoder = WyomingDecoder()
    got = []
    for i in range(0, len(wire), piece):
        decoder.append(wire[i:i + piece])
        got += list(decoder.events())
    assert [(e.type, dict(e.data), e.payload or None) for e in got] == \
           [(e.type, e.data, e.payload) for e in SAMPLE_EVENTS]
    assert not decoder.mid_event


def test_the_decoder_merges_inline_data_with_the_data_bytes() -> None:
    # Older writers put `data` in the header line; newer ones send data_length bytes; both may come together.
    extra = json.dumps({"width": 2}).encode()
    line = json.dumps({"type": "audio-start", "data": {"rate": 8000, "channels": 1}, "data_length": len(extra)})
    decoder = WyomingDecoder()
    decoder.append(line.encode() + b"\n" + extra)
    (event,) = decoder.events()
    assert event.type == "audio-start" and dict(event.data) == {"rate": 8000, "channels": 1, "width": 2}


def test_wyoming_reads_what_we_encode() -> None:
    wire = encode_event("transcript", {"text": "stop my card", "language": "en"}) + \
        encode_event("audio-chunk", {"rate": 8000, "width": 2, "channels": 1}, b"\x01\x02") + encode_event("pong")
    reader = io.BytesIO(wire)
    first, second, third = read_event(reader), read_event(reader), read_event(reader)
    assert first is not None and Transcript.from_event(first) == Transcript(text="stop my card", language="en")
    assert second is not None and AudioChunk.from_event(second).audio == b"\x01\x02"
    assert third is not None and third.type == "pong"


@pytest.mark.parametrize(("wire", "says"), [
    (b"{not json\n", "header line is not JSON"),
    (b"[1, 2]\n", "not an object"),
    (b'{"data": {}}\n', "no `type`"),
    (b'{"type": "audio-chunk", "payload_length": -1}\n', "payload_length must be a non-negative integer"),
    (b'{"type": "audio-chunk", "payload_length": 99999999}\n', "payload_length 99999999 is more than"),
    (b'{"type": "audio-start", "data_length": 3}\nxyz', "audio-start data is not JSON"),
    (b"x" * (MAX_LINE_BYTES + 1), "no end of line"),
])
def test_garbage_is_a_protocol_error_that_says_what_is_wrong(wire: bytes, says: str) -> None:
    decoder = WyomingDecoder()
    decoder.append(wire)
    with pytest.raises(ProtocolError, match=says):
        list(decoder.events())


# --------------------------------------------------------------------------------------------- URI and policy


def test_wyoming_uris_parse_with_their_languages() -> None:
    assert parse_source_uri("tcp+wyoming://127.0.0.1:10300") == WyomingSpec("127.0.0.1", 10300, ("en",))
    spec = parse_source_uri("wyoming://[::1]:10300?language=de,en-GB")
    assert spec == WyomingSpec("::1", 10300, ("de", "en-GB"))
    assert parse_source_uri(spec.uri()) == spec
    for bad in ("wyoming://127.0.0.1", "wyoming://h:1?lang=en", "wyoming://h:1?language=e!", "wyoming://h:1/x"):
        with pytest.raises(SourceError, match="tcp\\+wyoming://HOST:PORT"):
            parse_source_uri(bad)


def test_a_wyoming_listener_beyond_loopback_needs_an_explicit_allow_since_no_credential_applies() -> None:
    exposed = {"sources": {"listen": ["tcp+wyoming://0.0.0.0:10300"]}}
    for security in ({}, {"tokens_file": "tokens"}, {"tls_cert": "c", "tls_key": "k", "tls_client_ca": "ca"}):
        with pytest.raises(ConfigError, match="security.allow_unauthenticated") as info:
            settings_mod.from_dict({**exposed, "security": security})
        assert "Wyoming" in str(info.value)
    settings_mod.from_dict({**exposed, "security": {"allow_unauthenticated": True}})
    settings_mod.from_dict({"sources": {"listen": ["tcp+wyoming://127.0.0.1:10300", "wyoming://localhost:1"]}})


# --------------------------------------------------------------------------------------------- command texts


def test_texts_come_from_the_model_folder_and_default_to_the_label(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"1": "stop", "0": "balance"}}))
    bare = load_command_texts(tmp_path, "m@1")
    assert bare.labels == ("balance", "stop") and bare.text("stop") == "stop"
    (tmp_path / "intentd.json").write_text(json.dumps({"threshold": 0.5, "texts": {"stop": " stop  my card "}}))
    texts = load_command_texts(tmp_path, "m@2")
    assert texts.text("stop") == "stop my card" and texts.text("balance") == "balance"
    (tmp_path / "intentd.json").write_text(json.dumps({"texts": {"sotp": "stop my card"}}))
    with pytest.raises(ModelError, match="intentd.json: texts: 'sotp' is not one of the model's labels"):
        load_command_texts(tmp_path, "m@3")


# --------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = build_tiny_whisper(tmp_path_factory.mktemp("wyoming") / "tiny-wyoming", seed=3)
    (folder / "intentd.json").write_text(json.dumps({"texts": TEXTS}))
    assert set(TEXTS) == set(TINY_LABELS)
    return folder


def _fsdd(name: str) -> tuple[bytes, int]:
    """An FSDD recording with 0.3 s of silence either side, as 16-bit PCM bytes, and its rate (8 kHz)."""
    import soundfile as sf

    path = FSDD / name
    if not path.is_file():
        pytest.skip(f"FSDD is not in {FSDD}")
    data, rate = sf.read(str(path), dtype="int16")
    pad = np.zeros(round(0.3 * rate), dtype=np.int16)
    return np.concatenate([pad, data, pad]).astype("<i2").tobytes(), rate


def _chunks(pcm: bytes, rate: int) -> list[bytes]:
    step = rate * 2 * CHUNK_MS // 1000
    return [pcm[i:i + step] for i in range(0, len(pcm), step)]


async def _read_until(client: AsyncTcpClient, *types: str) -> list[Event]:
    """Events up to and including the first of `types` (or the connection's end)."""
    got = []
    while True:
        event = await client.read_event()
        if event is None:
            return got
        got.append(event)
        if event.type in types:
            return got


async def _request(port: int, pcm: bytes, rate: int, *, language: str | None = "en") -> list[Event]:
    """What Home Assistant does: transcribe, audio-start, chunks, audio-stop; then read to the end."""
    async with AsyncTcpClient("127.0.0.1", port, read_timeout=READ_TIMEOUT_S) as client:
        await client.write_event(Transcribe(language=language).event())
        await client.write_event(AudioStart(rate=rate, width=2, channels=1).event())
        for piece in _chunks(pcm, rate):
            await client.write_event(AudioChunk(rate=rate, width=2, channels=1, audio=piece).event())
        await client.write_event(AudioStop().event())
        answer = await _read_until(client, "intent", "not-recognized", "error")
    return answer


def _wyoming_sections(port: int, audio_port: int) -> dict:
    return {"sources": {"listen": [f"tcp://127.0.0.1:{audio_port}", f"tcp+wyoming://127.0.0.1:{port}"]}}


@pytest.mark.slow
def test_home_assistant_gets_info_and_a_transcript_and_zeromq_the_same_utterance(
        tmp_path: Path, model_dir: Path) -> None:
    pcm, rate = _fsdd("3_jackson_0.wav")
    port = free_port()
    with running_daemon(tmp_path, model_dir, _wyoming_sections(port, free_port())) as d:
        collector = EventCollector(d.events_uri, SUB_CONNECT_TIMEOUT_S)
        try:
            async def talk() -> tuple[Info, list[Event], list[Event]]:
                async with AsyncTcpClient("127.0.0.1", port, read_timeout=READ_TIMEOUT_S) as client:
                    await client.write_event(Describe().event())
                    described = await _read_until(client, "info")
                spoken = await _request(port, pcm, rate)
                quiet = await _request(port, silence(1.0, rate).astype("<i2").tobytes(), rate, language=None)
                return Info.from_event(described[-1]), spoken, quiet

            info, spoken, quiet = asyncio.run(talk())
            ended = _wait(lambda: [e for _, e in collector.about("wyoming-")
                                   if isinstance(e, events.StreamEndEvent)], count=2)
            heard = [e for _, e in collector.about("wyoming-")]
        finally:
            collector.close()
    # describe -> info: one asr program, the loaded model, a real language, the intents listed.
    (program,) = info.asr
    (model,) = program.models
    assert program.name == "intentd" and model.installed and model.languages == ["en"]
    assert all(label in (model.description or "") for label in TINY_LABELS)
    assert not info.intent, "no text-intent program: Home Assistant would send it text"
    # The spoken digit: transcript first (what Home Assistant reads), then the Wyoming intent.
    assert [e.type for e in spoken] == ["transcript", "intent"], spoken
    transcript, intent = Transcript.from_event(spoken[0]), Intent.from_event(spoken[1])
    assert transcript.text == TEXTS[intent.name] and transcript.language == "en"
    assert model.name == intent.context["intentd"]["model_id"]
    # ZeroMQ carried the same utterance: same stream, same index, same label and score.
    stream_id, index = intent.context["intentd"]["stream_id"], intent.context["intentd"]["utterance"]
    intents = [e for e in heard if isinstance(e, events.IntentEvent) and e.stream_id == stream_id]
    assert [(e.utterance, e.label, e.score) for e in intents if e.utterance == index] == \
           [(index, intent.name, intent.context["intentd"]["score"])], heard
    assert max(intents, key=lambda e: e.score).label == intent.name
    # Silence: an empty transcript and not-recognized, and a stream.end with no speech on ZeroMQ.
    assert [e.type for e in quiet] == ["transcript", "not-recognized"], quiet
    assert Transcript.from_event(quiet[0]).text == ""
    assert NotRecognized.from_event(quiet[1]).context["intentd"]["utterances"] == []
    ends = {e.stream_id: e for e in ended}
    assert ends[stream_id].classified == len(intents) >= 1 and ends[stream_id].reason is None
    (quiet_end,) = [e for sid, e in ends.items() if sid != stream_id]
    assert quiet_end.utterances == 0


def _wait(found: Callable[[], list], count: int, timeout_s: float = EVENT_TIMEOUT_S) -> list:
    """Poll the collector's records (its own thread fills them) until `found()` has `count` items."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = found()
        if len(got) >= count or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


async def _raw(port: int, wire: bytes) -> list[Event]:
    """Send bytes as they are, then read every event until the daemon closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(wire)
        await writer.drain()
        got = []
        while (event := await asyncio.wait_for(async_read_event(reader), READ_TIMEOUT_S)) is not None:
            got.append(event)
        return got
    finally:
        writer.close()


@pytest.mark.slow
def test_bad_clients_each_get_one_error_and_a_good_stream_beside_them_is_answered(
        tmp_path: Path, model_dir: Path) -> None:
    pcm, rate = _fsdd("7_lucas_1.wav")
    port = free_port()
    start = _wyoming_bytes(AudioStart(rate=rate, width=2, channels=1).event())
    chunk = _wyoming_bytes(AudioChunk(rate=rate, width=2, channels=1, audio=pcm[:3200]).event())
    bad = {
        "garbage JSON": b'{"type": "describe"\n',
        "width 4": _wyoming_bytes(AudioStart(rate=rate, width=4, channels=1).event()),
        "rate 4000": _wyoming_bytes(AudioStart(rate=4000, width=2, channels=1).event()),
        "rate changed mid-stream": start + chunk + _wyoming_bytes(
            AudioChunk(rate=16000, width=2, channels=1, audio=pcm[:3200]).event()),
        "chunk before start": chunk,
        "stop before start": _wyoming_bytes(AudioStop().event()),
    }
    with running_daemon(tmp_path, model_dir, _wyoming_sections(port, free_port())) as d:
        collector = EventCollector(d.events_uri, SUB_CONNECT_TIMEOUT_S)
        try:
            async def talk() -> tuple[list[Event], dict[str, list[Event]]]:
                async with AsyncTcpClient("127.0.0.1", port, read_timeout=READ_TIMEOUT_S) as good:
                    await good.write_event(AudioStart(rate=rate, width=2, channels=1).event())
                    pieces = _chunks(pcm, rate)
                    half = len(pieces) // 2
                    for piece in pieces[:half]:
                        await good.write_event(AudioChunk(rate=rate, width=2, channels=1, audio=piece).event())
                    # The bad clients run while the good stream is open, half sent.
                    answers = dict(zip(bad, await asyncio.gather(*(_raw(port, w) for w in bad.values())),
                                       strict=True))
                    for piece in pieces[half:]:
                        await good.write_event(AudioChunk(rate=rate, width=2, channels=1, audio=piece).event())
                    await good.write_event(AudioStop().event())
                    answer = await _read_until(good, "intent", "not-recognized", "error")
                    # The same connection takes a second request after its answer.
                    await good.write_event(Describe().event())
                    answer += await _read_until(good, "info")
                return answer, answers

            answer, answers = asyncio.run(talk())
            ends = _wait(lambda: [e for _, e in collector.about("wyoming-")
                                  if isinstance(e, events.StreamEndEvent)], count=2)
        finally:
            collector.close()
        log = d.log_text()
        assert d.alive()
    errors = {what: [Error.from_event(e) for e in got] for what, got in answers.items()}
    for what, got in answers.items():
        assert [e.type for e in got] == ["error"], (what, got)
    assert errors["garbage JSON"][0].code == "bad-event" and "not JSON" in errors["garbage JSON"][0].text
    assert errors["width 4"][0].code == "bad-audio" and "width 4 is not supported" in errors["width 4"][0].text
    assert "rate 4000 Hz is outside" in errors["rate 4000"][0].text
    changed = errors["rate changed mid-stream"][0]
    assert changed.code == "bad-audio" and "16000 Hz" in changed.text and f"{rate} Hz" in changed.text
    assert errors["chunk before start"][0].code == "out-of-order"
    assert errors["stop before start"][0].code == "out-of-order"
    assert [e.type for e in answer] == ["transcript", "intent", "info"], answer
    assert Transcript.from_event(answer[0]).text == TEXTS[Intent.from_event(answer[1]).name]
    # Only the stream that opened among the bad ones ended, with its reason; the good one ended normally.
    by_reason = sorted((e.reason or "") for e in ends)
    assert len(ends) == 2 and by_reason[0] == "" and "audio-chunk of 16000 Hz" in by_reason[1], ends
    assert "Traceback" not in log


# --------------------------------------------------------------------------------------------- the source alone


def _intent(stream_id: str, index: int, label: str, score: float) -> events.IntentEvent:
    return events.IntentEvent(
        stream_id=stream_id, utterance=index, start_s=0.0, end_s=1.0, start_wall=0.0, end_wall=1.0, duration_s=1.0,
        truncated=False, label=label, score=score, top_k=(events.LabelScore(label, score),), model_id="m@1",
        latency_ms=events.Latency(queue_wait=0.0, inference=1.0, processing=1.0, end_of_speech=1.0), batch_size=1)


def _end(stream_id: str, utterances: int) -> events.StreamEndEvent:
    return events.StreamEndEvent(stream_id=stream_id, live=True, duration_s=1.0, utterances=utterances,
                                 classified=utterances, dropped=0, failed=0, discarded=0)


async def _serve_one(outcome: Callable[[str], list[events.Event]], send: Callable[[AsyncTcpClient], Any],
                     ) -> tuple[list[Event], RecordingSink]:
    """A WyomingServer on a RecordingSink; once the sink sees the stream closed, `outcome(stream_id)` is
    delivered from another thread, as the batcher's worker publishes. Returns what the client read."""
    sink, watchers = RecordingSink(), StreamWatchers()
    texts = CommandTexts("m@1", ("balance", "stop"), {"stop": "stop my card"})
    server = WyomingServer(WyomingSpec("127.0.0.1", 0), sink, watchers, lambda: texts)
    port = int((await server.start()).rsplit(":", 1)[1])

    async def pipeline() -> None:
        await sink.wait_until(lambda: any(r.closed for r in sink.streams))
        stream_id = sink.streams[0].stream_id
        thread = threading.Thread(target=lambda: [watchers.deliver(e) for e in outcome(stream_id)])
        thread.start()
        await asyncio.to_thread(thread.join)

    worker = asyncio.create_task(pipeline())
    try:
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=READ_TIMEOUT_S) as client:
            await send(client)
            got = await _read_until(client, "intent", "not-recognized", "error")
    finally:
        await server.close()
        worker.cancel()
    return got, sink


def test_audio_reaches_the_sink_as_mono_and_the_most_confident_recognised_utterance_answers() -> None:
    stereo = (np.arange(-4000, 4000, 5, dtype=np.int16).reshape(-1, 2))

    async def send(client: AsyncTcpClient) -> None:
        await client.write_event(AudioStart(rate=22050, width=2, channels=2).event())
        pcm = stereo.astype("<i2").tobytes()
        for i in range(0, len(pcm), 333 * 4 + 2):  # chunks that split sample frames
            await client.write_event(AudioChunk(rate=22050, width=2, channels=2, audio=pcm[i:i + 333 * 4 + 2]).event())
        await client.write_event(AudioStop().event())

    def outcome(sid: str) -> list[events.Event]:
        return [_intent(sid, 0, "balance", 0.7), _intent(sid, 1, "unknown", 0.95), _intent(sid, 2, "stop", 0.8),
                _end(sid, 3)]

    got, sink = asyncio.run(_serve_one(outcome, send))
    (rec,) = sink.streams
    assert rec.closed and rec.reason is None and rec.sample_rate == 22050 and rec.live
    np.testing.assert_allclose(rec.samples, stereo.astype(np.float32).mean(axis=1) / 32768.0, atol=1e-6)
    assert [e.type for e in got] == ["transcript", "intent"]
    assert Transcript.from_event(got[0]).text == "stop my card"
    intent = Intent.from_event(got[1])
    assert intent.name == "stop" and intent.context["intentd"]["utterance"] == 2


def test_lost_utterances_with_nothing_recognised_answer_one_error_and_a_label_without_text_says_its_name() -> None:
    async def send(client: AsyncTcpClient) -> None:
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(640)).event())
        await client.write_event(AudioStop().event())

    def dropped(sid: str) -> list[events.Event]:
        return [events.DroppedEvent(stream_id=sid, utterance=0, start_s=0.0, end_s=1.0, start_wall=0.0,
                                    end_wall=1.0, duration_s=1.0, truncated=False, reason="queue_full"),
                _end(sid, 1)]

    got, _ = asyncio.run(_serve_one(dropped, send))
    assert [e.type for e in got] == ["error"]
    error = Error.from_event(got[0])
    assert error.code == "not-classified" and "dropped (queue_full)" in error.text
    got, _ = asyncio.run(_serve_one(lambda sid: [_intent(sid, 0, "balance", 0.6), _end(sid, 1)], send))
    assert Transcript.from_event(got[0]).text == "balance"


def test_a_client_gone_before_audio_stop_ends_its_stream_with_a_reason() -> None:
    async def run() -> RecordingSink:
        sink = RecordingSink()
        texts = CommandTexts("m@1", ("balance",))
        server = WyomingServer(WyomingSpec("127.0.0.1", 0), sink, StreamWatchers(), lambda: texts)
        port = int((await server.start()).rsplit(":", 1)[1])
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=bytes(640)).event())
            await sink.wait_until(lambda: bool(sink.streams) and bool(sink.streams[0].chunks))
        await sink.wait_until(lambda: sink.streams[0].closed)
        await server.close()
        return sink

    (rec,) = asyncio.run(run()).streams
    assert rec.reason == "connection closed before audio-stop" and rec.samples.size == 320
