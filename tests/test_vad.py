"""StreamSegmenter: real webrtcvad on synthetic voice-like signals and, where present, FSDD spoken digits."""

from __future__ import annotations

import dataclasses
import wave
from pathlib import Path

import numpy as np
import pytest

from intentd.daemon.errors import AudioError, ConfigError
from intentd.daemon.frames import AudioChunk, Utterance
from intentd.daemon.segmenter import SegmenterSettings
from intentd.daemon.vad import (
    StreamSegmenter,
    UtteranceDiscarded,
    UtteranceStarted,
    VadEvent,
    nearest_vad_rate,
)

FSDD = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fsdd" / "recordings"
NOISE_RMS = 0.0005  # a quiet room, about -66 dBFS


def voice(rate: int, seconds: float, f0: float = 130.0) -> np.ndarray:
    """A harmonic-rich buzz that webrtcvad hears as speech."""
    t = np.arange(int(rate * seconds)) / rate
    s = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 20) if f0 * k < rate / 2)
    return (0.3 * s / np.abs(s).max()).astype(np.float32)


def scene(
    rate: int, parts: list[tuple[str, float]], seed: int = 0
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Concatenate ("voice"|"gap", seconds) parts under a quiet noise floor; return audio and voice spans."""
    pieces, spans, pos = [], [], 0
    for kind, seconds in parts:
        piece = voice(rate, seconds) if kind == "voice" else np.zeros(int(rate * seconds), np.float32)
        if kind == "voice":
            spans.append((pos, pos + piece.size))
        pieces.append(piece)
        pos += piece.size
    audio = np.concatenate(pieces)
    audio += (NOISE_RMS * np.random.default_rng(seed).standard_normal(audio.size)).astype(np.float32)
    return audio, spans


def chunks(audio: np.ndarray, rate: int, sizes: list[int] | int, stream_id: str = "s1") -> list[AudioChunk]:
    """Cut audio into AudioChunks of the given sizes (cycled) or one fixed size."""
    out, pos, k = [], 0, 0
    while pos < audio.size:
        size = sizes if isinstance(sizes, int) else sizes[k % len(sizes)]
        out.append(AudioChunk(stream_id, audio[pos : pos + size], rate, pos, float(k)))
        pos += size
        k += 1
    return out


class FakeClock:
    """A monotonic clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(seg: StreamSegmenter, parts: list[AudioChunk], flush: bool = True) -> list[VadEvent]:
    """Push every chunk (and flush); return all events."""
    events: list[VadEvent] = []
    for chunk in parts:
        events += seg.push(chunk)
    if flush:
        events += seg.flush()
    return events


def utterances(events: list[VadEvent]) -> list[Utterance]:
    """The Utterance events only."""
    return [e for e in events if isinstance(e, Utterance)]


def test_two_bursts_give_two_utterances_with_preroll_and_hangover() -> None:
    rate = 16000
    audio, spans = scene(rate, [("gap", 1.0), ("voice", 0.6), ("gap", 1.0), ("voice", 0.8), ("gap", 1.0)])
    events = run(
        StreamSegmenter("s1", rate, SegmenterSettings(), 2, stream_origin_wall=5.0), chunks(audio, rate, 320)
    )
    got = utterances(events)
    assert [type(e) for e in events] == [UtteranceStarted, Utterance, UtteranceStarted, Utterance]
    assert [u.index for u in got] == [0, 1]
    frame = 480
    for u, (on, off), started in zip(got, spans, events[::2], strict=True):
        assert isinstance(started, UtteranceStarted) and started.start_sample == u.start_sample
        # Pre-roll reaches 300 ms before the detected onset; the end lies a little after the voice because
        # webrtcvad smooths its own decisions (about 100 ms at 30 ms frames).
        assert on - int(0.3 * rate) - 2 * frame <= u.start_sample <= on - int(0.3 * rate) + 2 * frame
        assert off - frame <= u.end_sample <= off + 6 * frame
        np.testing.assert_array_equal(u.samples, audio[u.start_sample : u.end_sample])
        assert u.hangover_samples == int(0.3 * rate)
        assert not u.truncated
        assert u.stream_origin_wall == 5.0


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 11025, 48000])
def test_any_chunking_gives_bit_identical_utterances(rate: int) -> None:
    audio, spans = scene(
        rate,
        [
            ("gap", 0.5),
            ("voice", 0.5),
            ("gap", 0.15),
            ("voice", 0.4),
            ("gap", 1.2),  # longer than the long hangover the first utterance (1 s of voice) earns
            ("voice", 0.7),
            ("gap", 0.9),
        ],
    )
    rng = np.random.default_rng(rate)
    ms37 = rate * 37 // 1000
    chunkings: dict[str, int | list[int]] = {
        "10ms": rate // 100,
        "37ms": ms37,
        "random": [int(n) for n in rng.integers(1, 2 * ms37, size=500)],
        "1s": rate,
        "whole": audio.size,
    }
    results = {}
    for name, sizes in chunkings.items():
        seg = StreamSegmenter("s1", rate, SegmenterSettings(), 2, stream_origin_wall=0.0, clock=lambda: 1.0)
        results[name] = utterances(run(seg, chunks(audio, rate, sizes)))
    reference = results.pop("10ms")
    assert len(reference) == 2  # the 150 ms dip is bridged by the hangover
    assert reference[0].start_sample < spans[0][0] and reference[0].end_sample > spans[1][0]
    for name, got in results.items():
        assert len(got) == len(reference), name
        for a, b in zip(reference, got, strict=True):
            assert (a.start_sample, a.end_sample, a.hangover_samples, a.truncated) == (
                b.start_sample,
                b.end_sample,
                b.hangover_samples,
                b.truncated,
            ), name
            assert a.samples.dtype == b.samples.dtype == np.float32
            assert a.samples.tobytes() == b.samples.tobytes(), name


def test_other_rates_decide_on_the_nearest_supported_rate() -> None:
    assert [nearest_vad_rate(r) for r in (8000, 11025, 22050, 24000, 44100, 96000)] == [
        8000,
        8000,
        16000,
        16000,
        48000,
        48000,
    ]
    seg = StreamSegmenter("s1", 44100, SegmenterSettings(), 2)
    assert (seg.frame_samples, seg.detector.decision_rate, seg.detector.decision_samples) == (
        1323,
        48000,
        1440,
    )


def test_max_length_cuts_and_continues() -> None:
    rate = 8000
    # The last piece has under 1 s of voice, so the short hangover ends it well inside the cap.
    audio, _ = scene(rate, [("gap", 0.5), ("voice", 4.5), ("gap", 1.0)])
    settings = SegmenterSettings(max_utterance_ms=2000)
    seg = StreamSegmenter("s1", rate, settings)
    got = utterances(run(seg, chunks(audio, rate, 800)))
    assert [u.truncated for u in got] == [True, True, False]
    longest = 67 * seg.frame_samples  # 2000 ms in whole 30 ms frames, rounded up
    assert [u.end_sample - u.start_sample for u in got[:2]] == [longest, longest]
    assert got[1].start_sample == got[0].end_sample and got[2].start_sample == got[1].end_sample
    np.testing.assert_array_equal(
        np.concatenate([u.samples for u in got]), audio[got[0].start_sample : got[2].end_sample]
    )


def test_flush_closes_an_open_utterance_at_the_given_time() -> None:
    rate = 16000
    clock = FakeClock()
    audio, _ = scene(rate, [("gap", 0.5), ("voice", 0.7)])
    seg = StreamSegmenter("s1", rate, SegmenterSettings(), clock=clock)
    events = run(seg, chunks(audio, rate, 160), flush=False)
    (started,) = events
    assert isinstance(started, UtteranceStarted)
    assert started.detected_monotonic == 100.0
    (u,) = seg.flush(now=123.5)
    assert isinstance(u, Utterance)
    assert u.closed_monotonic == 123.5 and not u.truncated and u.end_sample == audio.size
    assert seg.flush() == []


def test_closed_monotonic_comes_from_the_clock() -> None:
    rate = 16000
    clock = FakeClock()
    audio, _ = scene(rate, [("gap", 0.5), ("voice", 0.5), ("gap", 1.0)])
    seg = StreamSegmenter("s1", rate, SegmenterSettings(), clock=clock, wall_clock=lambda: 1000.0)
    clock.now = 7.0
    (started,) = [e for e in seg.push(chunks(audio, rate, rate)[0]) if isinstance(e, UtteranceStarted)]
    clock.now = 9.0
    (u,) = utterances(run(seg, chunks(audio, rate, rate)[1:]))
    assert (started.detected_monotonic, u.closed_monotonic) == (7.0, 9.0)
    assert u.stream_origin_wall == 1000.0 - 1.0  # the first chunk (1 s) arrived at wall time 1000


def test_short_blips_are_announced_then_discarded() -> None:
    rate = 16000
    audio, _ = scene(rate, [("gap", 0.5), ("voice", 0.06), ("gap", 1.0)])
    events = run(StreamSegmenter("s1", rate, SegmenterSettings()), chunks(audio, rate, 480))
    assert [type(e) for e in events] == [UtteranceStarted, UtteranceDiscarded]


def test_endless_silence_emits_nothing_and_holds_bounded_audio() -> None:
    rate = 16000
    seg = StreamSegmenter("s1", rate, SegmenterSettings())
    rng = np.random.default_rng(1)
    limit = (seg.segmenter.history_frames + 1) * seg.frame_samples
    for k in range(600):  # ten minutes
        noise = (NOISE_RMS * rng.standard_normal(rate)).astype(np.float32)
        events = seg.push(AudioChunk("s1", noise, rate, k * rate, 0.0))
        assert not any(isinstance(e, Utterance) for e in events)
        assert seg.buffered_samples <= limit


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_raise_naming_the_stream(bad: float) -> None:
    seg = StreamSegmenter("mic-7", 16000, SegmenterSettings())
    samples = np.zeros(480, np.float32)
    samples[17] = bad
    with pytest.raises(AudioError, match="mic-7.*17"):
        seg.push(AudioChunk("mic-7", samples, 16000, 0, 0.0))


def test_bad_chunks_raise() -> None:
    seg = StreamSegmenter("s1", 16000, SegmenterSettings())
    seg.push(AudioChunk("s1", np.zeros(100, np.float32), 16000, 0, 0.0))
    with pytest.raises(AudioError, match="expected 100"):
        seg.push(AudioChunk("s1", np.zeros(100, np.float32), 16000, 200, 0.0))
    with pytest.raises(AudioError, match="rate"):
        seg.push(AudioChunk("s1", np.zeros(100, np.float32), 8000, 100, 0.0))
    with pytest.raises(AudioError, match="float32"):
        seg.push(AudioChunk("s1", np.zeros(100, np.float64), 16000, 100, 0.0))


def test_bad_configuration_raises() -> None:
    with pytest.raises(AudioError, match="25 ms|ms"):
        StreamSegmenter("s1", 16000, SegmenterSettings(frame_ms=25, start_ms=75, hangover_ms=300))
    with pytest.raises(ConfigError, match="aggressiveness"):
        StreamSegmenter("s1", 16000, SegmenterSettings(), aggressiveness=4)
    with pytest.raises(AudioError, match="4000 Hz"):
        StreamSegmenter("s1", 4000, SegmenterSettings())


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A 16-bit mono WAV as float32 and its rate."""
    with wave.open(str(path)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        return (data.astype(np.float32) / 32768.0), w.getframerate()


@pytest.mark.skipif(not FSDD.is_dir(), reason="../shared/data/fsdd is absent")
@pytest.mark.parametrize("aggressiveness", [2, 3])
def test_fsdd_digits_give_one_utterance_each(aggressiveness: int) -> None:
    rate = 8000
    pieces, spans, pos = [], [], 0
    gap = np.zeros(int(0.7 * rate), np.float32)
    for k, speaker in enumerate(["george", "jackson", "nicolas", "lucas"] * 5):
        audio, file_rate = read_wav(FSDD / f"{k % 10}_{speaker}_{k}.wav")
        assert file_rate == rate
        pieces += [gap, audio]
        spans.append((pos + gap.size, pos + gap.size + audio.size))
        pos += gap.size + audio.size
    stream = np.concatenate([*pieces, gap])
    stream += (NOISE_RMS * np.random.default_rng(0).standard_normal(stream.size)).astype(np.float32)
    seg = StreamSegmenter("fsdd", rate, SegmenterSettings(), aggressiveness)
    got = utterances(run(seg, chunks(stream, rate, 333, "fsdd")))
    assert len(got) == len(spans)
    for u, (lo, hi) in zip(got, spans, strict=True):
        # Each utterance covers most of its own recording's loudest part and none of the next one.
        peak = lo + int(np.argmax(np.abs(stream[lo:hi])))
        assert u.start_sample <= peak < u.end_sample
        assert spans[0][0] - gap.size <= u.start_sample and u.end_sample <= hi + gap.size // 2


def hesitation_stream(pause_s: float) -> tuple[np.ndarray, int]:
    """Real speech with a hesitation: three FSDD digits said in a row, a pause, two more, in a quiet room."""
    rate = 8000
    first = [read_wav(FSDD / f"{d}_jackson_0.wav")[0] for d in (3, 7, 9)]
    second = [read_wav(FSDD / f"{d}_jackson_0.wav")[0] for d in (4, 2)]
    edge = np.zeros(int(0.5 * rate), np.float32)
    stream = np.concatenate([edge, *first, np.zeros(int(pause_s * rate), np.float32), *second, edge, edge])
    stream += (NOISE_RMS * np.random.default_rng(0).standard_normal(stream.size)).astype(np.float32)
    return stream, rate


@pytest.mark.skipif(not FSDD.is_dir(), reason="../shared/data/fsdd is absent")
@pytest.mark.parametrize("pause_s", [0.6, 0.7])
def test_a_hesitation_in_a_long_command_stays_one_utterance(pause_s: float) -> None:
    stream, rate = hesitation_stream(pause_s)
    on = SegmenterSettings()
    off = dataclasses.replace(on, long_hangover_ms=on.hangover_ms)
    got = {name: utterances(run(StreamSegmenter("s", rate, s), chunks(stream, rate, 160, "s")))
           for name, s in (("on", on), ("off", off))}
    assert len(got["off"]) == 2  # without the long hangover the pause splits the command
    assert len(got["on"]) == 1
    whole = got["on"][0]
    assert whole.start_sample == got["off"][0].start_sample and whole.end_sample == got["off"][1].end_sample


@pytest.mark.skipif(not FSDD.is_dir(), reason="../shared/data/fsdd is absent")
def test_a_single_word_ends_exactly_as_before() -> None:
    rate = 8000
    word = read_wav(FSDD / "5_george_3.wav")[0]
    stream = np.concatenate([np.zeros(rate // 2, np.float32), word, np.zeros(2 * rate, np.float32)])
    stream += (NOISE_RMS * np.random.default_rng(1).standard_normal(stream.size)).astype(np.float32)
    on = SegmenterSettings()
    off = dataclasses.replace(on, long_hangover_ms=on.hangover_ms)
    got = [utterances(run(StreamSegmenter("s", rate, s), chunks(stream, rate, 160, "s"), flush=False))
           for s in (on, off)]
    assert len(got[0]) == len(got[1]) == 1
    (a,), (b,) = got
    # Same span, same audio, closed by the same (short) hangover rather than the stream's end.
    assert (a.start_sample, a.end_sample, a.hangover_samples) == (b.start_sample, b.end_sample, b.hangover_samples)
    assert np.array_equal(a.samples, b.samples)
    assert a.hangover_samples == on.frames(on.hangover_ms) * on.frame_ms * rate // 1000
