"""End to end: intentd as a subprocess, WAV files in through intentd-send, events out through the Subscriber."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from intentd.clients.subscriber import Subscriber
from intentd.daemon import events
from intentd.daemon.classifier import MODEL_ID_HASH_CHARS, weights_digest
from tests.daemon_proc import (
    DaemonProc,
    collect,
    run_cli,
    running_daemon,
    send_files,
    speech_clips,
    write_speech_wav,
)
from tests.tiny_models import TINY_LABELS, build_tiny_whisper

pytestmark = pytest.mark.slow

UTTERANCES_PER_FILE = (3, 2, 3)
SCORE_TOLERANCE = 1e-4
ONE_CORE_TOLERANCE = 1e-5  # the same clip through any route: events carry 6 decimals
PHONE_RATE = 8000
LATENCY_MAX_MS = 30_000.0  # sane on a loaded 2-core CI machine; the point is finite and ordered
EVENT_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("e2e") / "tiny-intents", seed=0)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three files of 3, 2 and 3 different phrases separated by a second of silence."""
    root = tmp_path_factory.mktemp("e2e-audio")
    clips = speech_clips(sum(UTTERANCES_PER_FILE), root / "clips")
    out, used = [], 0
    for i, n in enumerate(UTTERANCES_PER_FILE):
        out.append(write_speech_wav(root / f"speech{i}.wav", clips[used : used + n]))
        used += n
    return out


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[DaemonProc]:
    with running_daemon(tmp_path_factory.mktemp("e2e-daemon"), model_dir) as d:
        yield d


@pytest.fixture()
def sub(daemon: DaemonProc) -> Iterator[Subscriber]:
    with Subscriber(daemon.events_uri, recv_timeout_s=EVENT_TIMEOUT_S) as s:
        assert s.wait_connected(30.0), "no status heartbeat from the daemon"
        yield s


def intents_for(sub: Subscriber, expected: dict[str, int], everything: list[events.Event] | None = None
                ) -> dict[str, list[events.IntentEvent]]:
    """Receive until every stream in `expected` has that many intent events; others are kept in `everything`."""
    got: dict[str, list[events.IntentEvent]] = {sid: [] for sid in expected}

    def keep(event: events.Event) -> bool:
        if everything is not None:
            everything.append(event)
        assert not isinstance(event, (events.ErrorEvent, events.DroppedEvent)), event.raw
        if isinstance(event, events.IntentEvent) and event.stream_id in got:
            got[event.stream_id].append(event)
        return False

    def done(_: list[object]) -> bool:
        return all(len(got[sid]) >= n for sid, n in expected.items())

    collect(sub, done, EVENT_TIMEOUT_S, keep)
    counts = {sid: len(v) for sid, v in got.items()}
    assert counts == expected, f"intent events per stream: {counts}, expected {expected}"
    return got


def test_intent_events_per_stream_in_order_with_contiguous_seq(
    daemon: DaemonProc, sub: Subscriber, wavs: list[Path], model_dir: Path
) -> None:
    everything: list[events.Event] = []
    send_files(daemon.audio_uri, wavs)
    got = intents_for(sub, {str(w): n for w, n in zip(wavs, UTTERANCES_PER_FILE)}, everything)
    # Anything published meanwhile (heartbeats) is in order too: one seq per message, no gaps, no repeats.
    seqs = [e.seq for e in everything]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    assert sub.missed == 0 and sub.restarts == 0 and sub.malformed == 0
    model_id = f"{model_dir.name}@{weights_digest(model_dir)[:MODEL_ID_HASH_CHARS]}"
    for sid, evs in got.items():
        assert [e.utterance for e in evs] == list(range(len(evs)))
        starts = [e.start_s for e in evs]
        assert starts == sorted(starts) and len(set(starts)) == len(starts)
        for prev, e in itertools.pairwise(evs):
            assert e.start_s >= prev.end_s, f"{sid}: utterances overlap"
        for e in evs:
            assert e.label in TINY_LABELS and e.topic == events.intent_topic(e.label)
            assert 0.0 < e.score <= 1.0 and e.top_k[0] == (e.label, e.score)
            assert {label for label, _ in e.top_k} <= set(TINY_LABELS)
            assert e.model_id == model_id
            assert not e.truncated and 0.2 < e.duration_s < 8.0
            lat = e.latency_ms
            assert 0.0 <= lat.queue_wait < LATENCY_MAX_MS and 0.0 < lat.inference < LATENCY_MAX_MS
            # processing spans queue wait + inference; end of speech adds the hangover the VAD waited.
            assert lat.processing + 1.0 >= lat.queue_wait + lat.inference
            assert lat.processing <= lat.end_of_speech < LATENCY_MAX_MS
            assert e.batch_size >= 1
            assert e.end_wall - e.start_wall == pytest.approx(e.duration_s, abs=1e-5)


def test_chunk_size_does_not_change_utterances(daemon: DaemonProc, sub: Subscriber, wavs: list[Path]) -> None:
    wav = wavs[0]
    n = UTTERANCES_PER_FILE[0]
    send_files(daemon.audio_uri, [wav], chunk_ms=10, stream_id="chunks-10ms")
    send_files(daemon.audio_uri, [wav], chunk_ms=1000, stream_id="chunks-1s")
    got = intents_for(sub, {"chunks-10ms": n, "chunks-1s": n})
    for small, big in zip(got["chunks-10ms"], got["chunks-1s"], strict=True):
        assert (small.utterance, small.start_s, small.end_s, small.label) == \
            (big.utterance, big.start_s, big.end_s, big.label)
        assert small.score == pytest.approx(big.score, abs=SCORE_TOLERANCE)
        for (la, sa), (lb, sb) in zip(small.top_k, big.top_k, strict=True):
            assert la == lb and sa == pytest.approx(sb, abs=SCORE_TOLERANCE)


def test_streamed_utterance_scores_like_direct_classification(
    daemon: DaemonProc, sub: Subscriber, wavs: list[Path], model_dir: Path, tmp_path: Path
) -> None:
    """One model core: the daemon, `intentd-train predict` (alone and among 15 clips of other lengths), the HF
    pipeline and `eval` give each utterance the same label and score (1e-5), from 8 kHz phone audio that every
    path resamples itself."""
    from intentd.daemon.resample import resample

    speech, speech_rate = sf.read(str(wavs[1]), dtype="float32")
    phone = tmp_path / "phone.wav"
    sf.write(str(phone), resample(speech, speech_rate, PHONE_RATE), PHONE_RATE, subtype="PCM_16")
    send_files(daemon.audio_uri, [phone], stream_id="direct")
    got = intents_for(sub, {"direct": UTTERANCES_PER_FILE[1]})["direct"]
    audio, rate = sf.read(str(phone), dtype="int16")
    cut_files = []
    for e in got:
        # The event's times are the utterance's exact sample span (pre-roll included, hangover excluded).
        start, end = round(e.start_s * rate), round(e.end_s * rate)
        cut = tmp_path / "eval" / "test" / e.label / f"utterance{e.utterance}.wav"
        cut.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(cut), audio[start:end], rate, subtype="PCM_16")
        cut_files.append(cut)
    rng = np.random.default_rng(2)
    others = []
    for i, (seconds, other_rate) in enumerate(zip(rng.uniform(0.2, 2.5, 15), [8000, 16_000, 44_100] * 5)):
        other = tmp_path / f"other{i}.wav"
        sf.write(str(other), rng.standard_normal(round(seconds * other_rate)) * 0.1, other_rate)
        others.append(str(other))

    def predict(*extra: str) -> list[dict[str, float | str]]:
        done = run_cli("intentd-train", "predict", "--model", str(model_dir), "--json", "--top-k", "1", *extra)
        assert done.returncode == 0, done.stderr
        by_file = {p["file"]: p["top"][0] for p in json.loads(done.stdout)["predictions"]}
        return [by_file[str(f)] for f in cut_files]

    cuts = [str(f) for f in cut_files]
    for route in (predict(*cuts), predict(*others[:7], *cuts, *others[7:]), predict("--via", "pipeline", *cuts)):
        for e, top in zip(got, route, strict=True):
            assert top["label"] == e.label, (top, e.raw)
            assert top["score"] == pytest.approx(e.score, abs=ONE_CORE_TOLERANCE), (top, e.raw)
    done = run_cli("intentd-train", "eval", "--model", str(model_dir), "--dataset", str(tmp_path / "eval"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["n"], report["accuracy"]) == (len(got), 1.0)  # labelled with the daemon's answers
