"""Every stream answered, recorded streams never dropped: intentd with real sockets, intentd-send as a subprocess.

A stream's `stream.end` comes after every other event of that stream and counts what became of it; recorded
files wait for a model that is behind (TCP backpressure) instead of being dropped, while live streams keep the
drop policy and go first.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from intentd.daemon import events
from intentd.daemon import settings as settings_mod
from intentd.daemon.audio import SAMPLE_RATE
from intentd.daemon.frames import AudioChunk, Prediction, Utterance
from intentd.daemon.notify import Notifier
from intentd.daemon.protocol import ReplyDecoder, StreamHeader, encode_audio, encode_header, encode_pcm
from intentd.daemon.settings import VadSettings
from intentd.daemon.vad import StreamSegmenter, UtteranceDiscarded
from tests.daemon_proc import (
    DaemonProc,
    EventCollector,
    NotifySocket,
    clean_env,
    free_port,
    run_cli,
    running_daemon,
    serve_while,
    silence,
    speech_clips,
    tool,
    write_speech_wav,
)
from tests.tiny_models import build_tiny_whisper

pytestmark = pytest.mark.slow

EVENT_TIMEOUT_S = 60.0
IDLE_TIMEOUT_S = 1.0
# Long enough that a 0.35 s piece of a phrase is a blip the segmenter discards, short enough for whole phrases.
MIN_UTTERANCE_MS = 700
CHUNK_S = 0.02
# Events that belong to one utterance of a stream; stream.end must come after all of them.
UTTERANCE_EVENTS = (events.IntentEvent, events.DroppedEvent, events.ErrorEvent, events.DiscardedEvent)
END = events.StreamEndEvent


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("end") / "tiny-end", seed=2)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[DaemonProc]:
    sections = {"vad": {"min_utterance_ms": MIN_UTTERANCE_MS}, "publisher": {"blip_events": True},
                "sources": {"idle_timeout_s": IDLE_TIMEOUT_S}}
    with running_daemon(tmp_path_factory.mktemp("end-daemon"), model_dir, sections) as d:
        yield d


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """Six different phrases at the model rate, the material of every file here."""
    return speech_clips(6, tmp_path_factory.mktemp("end-clips"), seed=7)


@pytest.fixture()
def collector(daemon: DaemonProc) -> Iterator[EventCollector]:
    c = EventCollector(daemon.events_uri)
    yield c
    c.close()


def segmented(path: Path, vad: VadSettings) -> tuple[int, int]:
    """(utterances, discarded blips) the daemon's own segmenter finds in a 16-bit WAV sent in 20 ms chunks."""
    audio, rate = sf.read(str(path), dtype="float32")
    seg = StreamSegmenter("expected", rate, vad.segmenter(), vad.aggressiveness, stream_origin_wall=0.0)
    step = round(rate * CHUNK_S)
    found = []
    for start in range(0, audio.size, step):
        found += seg.push(AudioChunk("expected", audio[start : start + step], rate, start, 0.0))
    found += seg.flush(0.0)
    return (sum(isinstance(e, Utterance) for e in found), sum(isinstance(e, UtteranceDiscarded) for e in found))


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = EVENT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def wait_for_ends(collector: EventCollector, stream_ids: Sequence[str], after_seq: int = 0,
                  timeout_s: float = EVENT_TIMEOUT_S) -> dict[str, list[events.Event]]:
    """Every event of each stream (seq > after_seq) once each has its stream.end; checks the ordering on the way."""
    def of_streams() -> dict[str, list[events.Event]]:
        by_stream: dict[str, list[events.Event]] = {sid: [] for sid in stream_ids}
        for _, event in sorted(collector.records, key=lambda r: r[1].seq):
            sid = event.raw.get("stream_id")
            if event.seq > after_seq and sid in by_stream and isinstance(event, (*UTTERANCE_EVENTS, END)):
                by_stream[sid].append(event)
        return by_stream

    wait_until("every stream.end", lambda: all(any(isinstance(e, END) for e in evs)
                                                for evs in of_streams().values()), timeout_s)
    time.sleep(0.3)  # anything published after a stream.end would be an ordering bug: give it time to show
    by_stream = of_streams()
    for sid, evs in by_stream.items():
        kinds = [e.type for e in evs]
        assert kinds.count(END.TYPE) == 1 and kinds[-1] == END.TYPE, (sid, kinds)
        end = the_end(evs)
        intents = [e for e in evs if isinstance(e, events.IntentEvent)]
        drops = [e for e in evs if isinstance(e, events.DroppedEvent)]
        assert (end.classified, end.dropped, end.failed) == (len(intents), len(drops), 0), (sid, kinds, end)
        assert end.utterances == len(intents) + len(drops)
        assert sorted(e.utterance for e in intents + drops) == list(range(end.utterances))
    assert collector.missed == 0
    return by_stream


def the_end(evs: Sequence[events.Event]) -> events.StreamEndEvent:
    end = evs[-1]
    assert isinstance(end, events.StreamEndEvent)
    return end


def send(uri: str, *args: str, timeout_s: float = 120.0) -> str:
    done = run_cli("intentd-send", "--to", uri, *args, timeout_s=timeout_s)
    assert done.returncode == 0, done.stderr
    return done.stdout


# --------------------------------------------------------------------------------------------- end to end


def test_every_file_is_answered_with_its_intents_then_stream_end(
    daemon: DaemonProc, collector: EventCollector, clips: list[np.ndarray], tmp_path: Path
) -> None:
    speech = write_speech_wav(tmp_path / "speech.wav", clips[:3])
    quiet = tmp_path / "silence.wav"
    sf.write(str(quiet), silence(2.0), SAMPLE_RATE, subtype="PCM_16")
    blip = tmp_path / "blip.wav"
    sf.write(str(blip), np.concatenate([silence(0.5), clips[3][: int(0.35 * SAMPLE_RATE)], silence(1.0)]),
             SAMPLE_RATE, subtype="PCM_16")
    vad = VadSettings(min_utterance_ms=MIN_UTTERANCE_MS)
    expected = {str(p): segmented(p, vad) for p in (speech, quiet, blip)}
    assert expected[str(speech)][0] >= 2 and expected[str(quiet)] == (0, 0) and expected[str(blip)] == (0, 1)

    said = send(daemon.audio_uri, "--events", daemon.events_uri, str(speech), str(quiet), str(blip))
    got = wait_for_ends(collector, list(expected))
    for sid, (utterances, discarded) in expected.items():
        end = the_end(got[sid])
        assert (end.utterances, end.classified, end.dropped, end.discarded) == (utterances, utterances, 0, discarded)
        assert end.reason is None and end.live is False
        assert end.duration_s == pytest.approx(sf.info(sid).duration, abs=1e-3)
        # publisher.blip_events: one utterance.discarded per blip, before the end.
        assert sum(isinstance(e, events.DiscardedEvent) for e in got[sid]) == discarded
    assert the_end(got[str(quiet)]).summary().endswith("no speech, 0 blips discarded, 2.00 s")
    # intentd-send --events tells the sender the same, file by file.
    labels = ", ".join(f"{e.label} {e.score:.2f}" for e in got[str(speech)] if isinstance(e, events.IntentEvent))
    assert f"{speech}: heard {expected[str(speech)][0]}: {labels}\n" in said, said
    assert f"{quiet}: no speech\n" in said and f"{blip}: no speech; 1 blip(s) too short to classify\n" in said
    # Counted where status and Prometheus read: a heartbeat after the blip carries it.
    wait_until("a status counting the blip", lambda: any(
        isinstance(e, events.StatusEvent) and e.counters.get("discarded", 0) >= 1 for _, e in collector.records))


def test_a_stream_ended_by_the_idle_timeout_is_answered_with_its_reason(
    daemon: DaemonProc, collector: EventCollector, clips: list[np.ndarray]
) -> None:
    sock = socket.create_connection(daemon.audio_address, timeout=30)
    try:
        sock.sendall(encode_header(StreamHeader("stalled", SAMPLE_RATE, "s16le", 1, live=False)))
        sock.sendall(encode_audio(encode_pcm(np.concatenate([silence(0.3), clips[4], silence(1.0)]), "s16le")))
        got = wait_for_ends(collector, ["stalled"])  # the client then says nothing: the idle timeout ends it
        received = b""
        while data := sock.recv(65536):
            received += data
        replies = ReplyDecoder().feed(received)
    finally:
        sock.close()
    end = the_end(got["stalled"])
    assert end.reason is not None and "idle timeout" in end.reason
    assert end.utterances == end.classified == 1
    assert [r.type for r in replies] == ["accept", "error"] and "idle timeout" in replies[1].reason


@pytest.fixture(scope="module")
def tiny_queue_daemon(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[DaemonProc]:
    sections = {"batcher": {"max_batch": 1, "queue_size": 1, "recorded_high_water": 1}}
    with running_daemon(tmp_path_factory.mktemp("flood-daemon"), model_dir, sections) as d:
        yield d


def test_a_flood_of_files_against_a_one_place_queue_loses_nothing(
    tiny_queue_daemon: DaemonProc, clips: list[np.ndarray], tmp_path: Path
) -> None:
    files = [write_speech_wav(tmp_path / f"f{i}.wav", [clips[i % 6], clips[(i + 1) % 6]], gap_s=0.6, lead_s=0.3,
                              tail_s=0.6) for i in range(16)]
    vad = VadSettings()
    expected = {str(p): segmented(p, vad)[0] for p in files}
    c = EventCollector(tiny_queue_daemon.events_uri)
    try:
        send(tiny_queue_daemon.audio_uri, *map(str, files))
        got = wait_for_ends(c, list(expected))
        # The same files marked live: the policy may drop some now; ordering and accounting hold all the same.
        after = max(e.seq for _, e in c.records)
        send(tiny_queue_daemon.audio_uri, "--live", *map(str, files))
        live = wait_for_ends(c, list(expected), after_seq=after)
    finally:
        c.close()
    for sid, n in expected.items():
        end = the_end(got[sid])
        assert (end.utterances, end.classified, end.dropped, end.live) == (n, n, 0, False), end
        assert the_end(live[sid]).utterances == n and the_end(live[sid]).live is True


# --------------------------------------------------------------------------------------------- in-process


class HeldModel:
    """A fake model that, while held, waits inside classify until released: a model that has fallen behind."""

    model_id = "held@0"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def hold(self) -> None:
        self.entered.clear()
        self.gate.clear()

    def classify(self, utterances: Sequence[Utterance]) -> list[Prediction]:
        self.entered.set()
        assert self.gate.wait(EVENT_TIMEOUT_S)
        return [Prediction("a", 1.0, (("a", 1.0),)) for _ in utterances]


def test_recorded_files_wait_for_a_stuck_model_live_goes_first_and_a_live_flood_drops(
    clips: list[np.ndarray], tmp_path: Path
) -> None:
    from intentd.daemon.service import Service

    events_port, queue_size, high_water = free_port(), 2, 2
    settings = settings_mod.from_dict({
        "sources": {"listen": ["tcp://127.0.0.1:0"]},
        "publisher": {"uri": f"tcp://127.0.0.1:{events_port}", "status_interval_s": 0.1},
        "batcher": {"max_batch": 1, "queue_size": queue_size, "recorded_high_water": high_water},
    })
    model, notify = HeldModel(), NotifySocket()
    service = Service(settings, model_loader=lambda s: model, notifier=Notifier(notify.path))
    # Phrases 1 s apart: separate commands (a 0.6 s pause after a phrase of 1 s or more is a hesitation that
    # vad.long_hangover_ms bridges).
    files = {kind: [write_speech_wav(tmp_path / f"{kind}{i}.wav", clips[i : i + 3], gap_s=1.0) for i in range(4)]
             for kind in ("recorded", "flood")}
    one_phrase = write_speech_wav(tmp_path / "mic.wav", clips[5:6])

    def depth(collector: EventCollector) -> int:
        status = [e for _, e in collector.records if isinstance(e, events.StatusEvent)]
        return status[-1].queue_depth if status else -1

    def drive() -> None:
        notify.wait_for("READY", "1", timeout_s=30.0)
        uri = service.bound_sources[0]
        collector = EventCollector(f"tcp://127.0.0.1:{events_port}")
        try:
            # Recorded files against a model that is stuck: one utterance in the model, the high-water mark of
            # them waiting, and the senders held back by TCP instead of anything dropped.
            model.hold()
            recorded = [str(p) for p in files["recorded"]]
            sender = subprocess.Popen([*tool("intentd-send"), "--to", uri, *recorded], env=clean_env(),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            wait_until("the recorded high-water mark", lambda: depth(collector) == high_water)
            # A live stream is not held: its utterance is queued apart...
            send(uri, "--live", "--stream-id", "mic", str(one_phrase))
            wait_until("the live utterance queued", lambda: depth(collector) == high_water + 1)
            assert sender.poll() is None, "recorded senders should be held while the model is stuck"
            assert not any(isinstance(e, events.DroppedEvent) for _, e in collector.records)
            model.gate.set()
            _, err = sender.communicate(timeout=EVENT_TIMEOUT_S)
            assert sender.returncode == 0, err
            got = wait_for_ends(collector, [*recorded, "mic"])
            # ...and classified as soon as the model is free, before the recorded utterances that waited.
            order = [e.stream_id for _, e in sorted(collector.records, key=lambda r: r[1].seq)
                     if isinstance(e, events.IntentEvent)]
            assert order[1] == "mic", order
            for sid in recorded:
                end = the_end(got[sid])
                assert end.dropped == 0 and end.classified == end.utterances >= 2, end
            total = sum(the_end(got[sid]).utterances for sid in recorded)

            # The same audio as a live flood against the stuck model: one in the model, queue_size waiting, the
            # rest dropped by policy, each drop published and counted in its stream's end.
            after = max(e.seq for _, e in collector.records)
            model.hold()
            flood = [str(p) for p in files["flood"]]
            send(uri, "--live", *flood)
            model.gate.set()
            got = wait_for_ends(collector, flood, after_seq=after)
            ends = [the_end(got[sid]) for sid in flood]
            assert sum(e.utterances for e in ends) == total
            assert sum(e.classified for e in ends) == 1 + queue_size
            assert sum(e.dropped for e in ends) == total - 1 - queue_size
        finally:
            collector.close()

    try:
        assert serve_while(service, drive) == 0
    finally:
        notify.close()
