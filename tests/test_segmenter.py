"""The segmenter state machine, driven by lists of booleans (one per 10 ms frame)."""

from __future__ import annotations

import dataclasses
import random
import tracemalloc

import pytest

from intentd.daemon.errors import ConfigError
from intentd.daemon.segmenter import (
    Segmenter,
    SegmenterSettings,
    SegmentEvent,
    SpeechDiscarded,
    SpeechEnded,
    SpeechStarted,
)

# In frames of 10 ms: start 3 of a 4-frame window, pre-roll 5, hangover 5, min 5, max 30.
SMALL = SegmenterSettings(
    frame_ms=10,
    start_ms=30,
    start_window_ms=40,
    preroll_ms=50,
    hangover_ms=50,
    min_utterance_ms=50,
    max_utterance_ms=300,
)
T, F = True, False


def run(
    bools: list[bool], settings: SegmenterSettings = SMALL, flush: bool = False
) -> list[tuple[int, SegmentEvent]]:
    """Push every decision; return (frame index, event) for each transition, plus the flush event."""
    seg = Segmenter(settings)
    out = []
    for i, b in enumerate(bools):
        event = seg.push(b)
        if event is not None:
            out.append((i, event))
    if flush:
        event = seg.flush()
        if event is not None:
            out.append((len(bools), event))
    return out


def test_exact_boundaries_with_preroll_and_hangover() -> None:
    events = run([F] * 20 + [T] * 20 + [F] * 20)
    assert events == [
        (22, SpeechStarted(15)),  # third voiced frame opens it; start = onset 20 - pre-roll 5
        (44, SpeechEnded(15, 40, truncated=False, hangover_frames=5)),
    ]


def test_preroll_is_clipped_at_stream_start() -> None:
    events = run([F] * 2 + [T] * 10 + [F] * 10)
    assert events == [(4, SpeechStarted(0)), (16, SpeechEnded(0, 12, False, 5))]


def test_one_unvoiced_frame_in_the_onset_does_not_move_it() -> None:
    events = run([F] * 10 + [T, F, T, T] + [T] * 6 + [F] * 10)
    assert events[0] == (13, SpeechStarted(5))


def test_isolated_voiced_frames_never_start() -> None:
    assert run([T, F, F] * 100) == []
    assert run([T, T, F, F] * 100) == []


def test_hangover_bridges_a_gap_shorter_than_itself() -> None:
    events = run([F] * 10 + [T] * 8 + [F] * 4 + [T] * 8 + [F] * 10)
    assert [e for _, e in events] == [SpeechStarted(5), SpeechEnded(5, 30, False, 5)]


def test_a_gap_as_long_as_the_hangover_splits() -> None:
    events = run([F] * 10 + [T] * 10 + [F] * 5 + [T] * 10 + [F] * 10)
    assert [e for _, e in events] == [
        SpeechStarted(5),
        SpeechEnded(5, 20, False, 5),
        SpeechStarted(20),  # pre-roll stops at the previous utterance's end (onset 25 - 5 = 20 anyway)
        SpeechEnded(20, 35, False, 5),
    ]


# SMALL plus a long hangover of 12 frames once an utterance has 15 frames of voice, and room for it under max.
LONG = dataclasses.replace(SMALL, long_hangover_ms=120, long_hangover_after_ms=150, max_utterance_ms=1000)


def test_a_short_command_still_closes_after_the_short_hangover() -> None:
    events = run([F] * 10 + [T] * 14 + [F] * 20, LONG)
    assert events == [(12, SpeechStarted(5)), (28, SpeechEnded(5, 24, False, 5))]


def test_a_long_command_survives_a_pause_the_short_hangover_would_split() -> None:
    decisions = [F] * 10 + [T] * 15 + [F] * 11 + [T] * 8 + [F] * 20
    assert [e for _, e in run(decisions, LONG)] == [SpeechStarted(5), SpeechEnded(5, 44, False, 12)]
    off = dataclasses.replace(LONG, long_hangover_ms=SMALL.hangover_ms)
    assert [e for _, e in run(decisions, off)] == [
        SpeechStarted(5), SpeechEnded(5, 25, False, 5), SpeechStarted(31), SpeechEnded(31, 44, False, 5)
    ]


def test_a_pause_as_long_as_the_long_hangover_still_splits() -> None:
    events = run([F] * 10 + [T] * 15 + [F] * 12 + [T] * 8 + [F] * 20, LONG)
    assert [e for _, e in events][:2] == [SpeechStarted(5), SpeechEnded(5, 25, False, 12)]
    assert len(events) == 4


def test_the_cap_inside_a_long_hangover_ends_the_command_instead_of_cutting_it() -> None:
    """Voice then a pause the short hangover closes on: reaching max_utterance_ms in the long hangover's extra
    wait is the command's end, not a cut; a cap inside a shorter dip still cuts."""
    capped = dataclasses.replace(LONG, max_utterance_ms=300)
    assert run([T] * 20 + [F] * 15, capped) == [(2, SpeechStarted(0)), (29, SpeechEnded(0, 20, False, 10))]
    assert run([T] * 26 + [F] * 10, capped)[1] == (29, SpeechEnded(0, 26, True, 4))


def test_a_long_hangover_below_the_hangover_changes_nothing() -> None:
    decisions = [F] * 10 + [T] * 20 + [F] * 8 + [T] * 8 + [F] * 20
    below = run(decisions, dataclasses.replace(LONG, long_hangover_ms=30))
    assert below == run(decisions, dataclasses.replace(LONG, long_hangover_ms=50)) != run(decisions, LONG)
    assert len(below) == 4


def test_preroll_never_reaches_into_the_previous_utterance() -> None:
    settings = SegmenterSettings(
        frame_ms=10,
        start_ms=30,
        start_window_ms=40,
        preroll_ms=100,
        hangover_ms=50,
        min_utterance_ms=50,
        max_utterance_ms=400,
    )
    events = run([F] * 20 + [T] * 10 + [F] * 7 + [T] * 10 + [F] * 10, settings)
    starts = [e for _, e in events if isinstance(e, SpeechStarted)]
    assert starts == [SpeechStarted(10), SpeechStarted(30)]  # not 37 - 10 = 27


def test_blips_shorter_than_min_are_discarded_after_their_start() -> None:
    events = run([F] * 10 + [T] * 4 + [F] * 10)
    assert [e for _, e in events] == [SpeechStarted(5), SpeechDiscarded(5, 14)]
    events = run([F] * 10 + [T] * 5 + [F] * 10)
    assert [e for _, e in events] == [SpeechStarted(5), SpeechEnded(5, 15, False, 5)]


def test_max_length_cuts_and_endless_speech_continues_back_to_back() -> None:
    events = run([T] * 95 + [F] * 10)
    assert events == [
        (2, SpeechStarted(0)),
        (29, SpeechEnded(0, 30, truncated=True, hangover_frames=0)),
        (30, SpeechStarted(30)),  # reopens at the cut, no pre-roll, no onset delay
        (59, SpeechEnded(30, 60, True, 0)),
        (60, SpeechStarted(60)),
        (89, SpeechEnded(60, 90, True, 0)),
        (90, SpeechStarted(90)),
        (99, SpeechEnded(90, 95, False, 5)),
    ]


def test_cut_during_a_dip_keeps_the_dip_outside() -> None:
    events = run([F] * 5 + [T] * 22 + [F] * 3 + [T] * 10 + [F] * 10)
    # Start 0 (onset 5, pre-roll clipped); max 30 frames is reached at frame 29, inside the dip 27..29.
    assert events[1] == (29, SpeechEnded(0, 27, True, 3))
    # The window now holds mostly the dip, so the next start needs fresh evidence; it still may not reach
    # back before the cut.
    assert events[2] == (32, SpeechStarted(30))


def test_flush_ends_an_open_utterance() -> None:
    assert run([F] * 10 + [T] * 10, flush=True)[-1] == (20, SpeechEnded(5, 20, False, 0))
    assert run([F] * 10 + [T] * 10 + [F] * 2, flush=True)[-1] == (22, SpeechEnded(5, 20, False, 2))
    assert run([F] * 10, flush=True) == []


def test_the_stream_end_keeps_a_short_command_it_cuts_off() -> None:
    """A hangover never closes speech the stream's end cuts: enough voice to open an utterance is kept there,
    while the same blip inside the stream is still too short."""
    assert run([F] * 10 + [T] * 3, flush=True)[-1] == (13, SpeechEnded(5, 13, False, 0))
    assert run([F] * 10 + [T] * 3 + [F] * 4, flush=True)[-1] == (17, SpeechEnded(5, 13, False, 4))
    assert [e for _, e in run([F] * 10 + [T] * 3 + [F] * 10 + [T] * 3, flush=True)] == [
        SpeechStarted(5), SpeechDiscarded(5, 13), SpeechStarted(18), SpeechEnded(18, 26, False, 0)]
    # One unvoiced frame inside the onset still opens it, and is counted in the voiced span.
    assert run([F] * 10 + [T, F, T, T], flush=True)[-1] == (14, SpeechEnded(5, 14, False, 0))


def test_endless_silence_emits_nothing_in_bounded_memory() -> None:
    seg = Segmenter(SegmenterSettings())
    for _ in range(1000):
        assert seg.push(False) is None
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(100_000):
            assert seg.push(False) is None
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 16_384
    assert seg.frame_index == 101_000


def test_random_decisions_give_well_formed_events() -> None:
    rng = random.Random(7)
    bools: list[bool] = []
    while len(bools) < 20_000:
        bools += [rng.random() < 0.5] * rng.randint(1, 40)
    events = [e for _, e in run(bools, flush=True)]
    assert events
    last_end = 0
    for started, ended in zip(events[::2], events[1::2], strict=True):
        assert isinstance(started, SpeechStarted)
        assert isinstance(ended, (SpeechEnded, SpeechDiscarded))
        assert ended.start_frame == started.start_frame >= last_end
        assert 0 < ended.end_frame - ended.start_frame <= SMALL.frames(SMALL.max_utterance_ms)
        last_end = ended.end_frame


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"frame_ms": 0}, "vad.frame_ms"),
        ({"start_ms": 10}, "vad.start_ms"),
        ({"preroll_ms": -1}, "vad.preroll_ms"),
        ({"hangover_ms": 20}, "vad.hangover_ms"),
        ({"long_hangover_after_ms": -1}, "vad.long_hangover_after_ms"),
        ({"min_utterance_ms": -5}, "vad.min_utterance_ms"),
        ({"max_utterance_ms": 400}, "vad.max_utterance_ms"),
        ({"min_utterance_ms": 9000, "max_utterance_ms": 8000}, "vad.min_utterance_ms"),
    ],
)
def test_settings_are_validated_naming_the_key(changes: dict[str, int], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        SegmenterSettings(**changes)


def test_defaults_are_valid() -> None:
    seg = Segmenter(SegmenterSettings())
    assert (seg.start_frames, seg.window_frames, seg.preroll_frames, seg.hangover_frames) == (3, 4, 10, 10)
