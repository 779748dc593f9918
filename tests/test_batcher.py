"""MicroBatcher with a fake model passed in: batching by size and age, load shedding, swaps, drain, health."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from intentd.daemon.batcher import MicroBatcher, StreamSummary
from intentd.daemon.errors import ConfigError
from intentd.daemon.frames import Classified, Prediction, Utterance
from intentd.daemon.settings import BatcherSettings

WAIT_S = 5.0  # generous upper bound for anything the worker should do promptly
FOREVER_MS = 10_000.0  # max_wait that never expires within a test (the most batcher.max_wait_ms allows)


def utt(stream: str, index: int, closed: float = 0.0) -> Utterance:
    """A tiny utterance; only its identity matters to the batcher."""
    return Utterance(stream, index, np.zeros(160, np.float32), 16000, 0, 160, False, 0, closed, 0.0)


class FakeModel:
    """Records each batch; can block inside classify until released, and fails on a 'poison' stream."""

    def __init__(self, model_id: str = "A", gated: bool = False) -> None:
        self.model_id = model_id
        self.batches: list[list[tuple[str, int]]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        if not gated:
            self.gate.set()

    def classify(self, utterances: list[Utterance]) -> list[Prediction]:
        self.batches.append([(u.stream_id, u.index) for u in utterances])
        self.entered.set()
        assert self.gate.wait(WAIT_S)
        if any(u.stream_id == "poison" for u in utterances):
            raise ValueError("cannot decode this clip")
        return [Prediction(f"{self.model_id}:{u.stream_id}:{u.index}", 0.9) for u in utterances]


class Sink:
    """The next stage (daemon.batcher.Results): collects outcomes and lets the test wait for a number of them."""

    def __init__(self) -> None:
        self.results: list[Classified] = []
        self.drops: list[tuple[tuple[str, int], str]] = []
        self.errors: list[tuple[tuple[str, int], str]] = []
        self.ends: list[StreamSummary] = []
        self.log: list[tuple[str, str]] = []  # (what, stream) in the order the batcher handed them on
        self._cond = threading.Condition()

    def classified(self, c: Classified) -> None:
        with self._cond:
            self.results.append(c)
            self.log.append(("classified", c.utterance.stream_id))
            self._cond.notify_all()

    def dropped(self, u: Utterance, reason: str) -> None:
        with self._cond:
            self.drops.append(((u.stream_id, u.index), reason))
            self.log.append(("dropped", u.stream_id))
            self._cond.notify_all()

    def failed(self, u: Utterance, message: str) -> None:
        with self._cond:
            self.errors.append(((u.stream_id, u.index), message))
            self.log.append(("failed", u.stream_id))
            self._cond.notify_all()

    def stream_ended(self, summary: StreamSummary) -> None:
        with self._cond:
            self.ends.append(summary)
            self.log.append(("end", summary.stream_id))
            self._cond.notify_all()

    def wait_ends(self, n: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.ends) >= n, WAIT_S), f"{len(self.ends)} stream ends"

    def wait(self, results: int = 0, errors: int = 0) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: len(self.results) >= results and len(self.errors) >= errors, WAIT_S
            )
        assert ok, f"timed out: {len(self.results)} results, {len(self.errors)} errors"

    def ids(self) -> list[tuple[str, int]]:
        return [(c.utterance.stream_id, c.utterance.index) for c in self.results]


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sink() -> Sink:
    return Sink()


def make(model: FakeModel, sink: Sink, keep_warm_s: float = 0.0, clock: FakeClock | None = None,
         heartbeat_s: float = 0.5, **settings: object) -> MicroBatcher:
    """A started batcher; `settings` are BatcherSettings fields (checked as a config file's would be)."""
    b = MicroBatcher(model, sink, BatcherSettings(**settings), keep_warm_s=keep_warm_s,  # type: ignore[arg-type]
                     clock=clock or time.monotonic, heartbeat_s=heartbeat_s)
    b.start()
    return b


@pytest.fixture
def batchers() -> Iterator[list[MicroBatcher]]:
    made: list[MicroBatcher] = []
    yield made
    for b in made:
        b.drain(WAIT_S)


def test_a_full_batch_runs_at_once(sink: Sink, batchers: list[MicroBatcher]) -> None:
    model = FakeModel()
    b = make(model, sink, max_batch=4, max_wait_ms=FOREVER_MS)
    batchers.append(b)
    for i in range(4):
        b.submit(utt("s1", i))
    sink.wait(results=4)
    assert model.batches == [[("s1", 0), ("s1", 1), ("s1", 2), ("s1", 3)]]
    assert {c.batch_size for c in sink.results} == {4}
    assert {c.prediction.label for c in sink.results} == {f"A:s1:{i}" for i in range(4)}
    counts = b.counters.snapshot()
    assert counts.batches == 1 and counts.submitted == 4 and counts.batch_size.total == 4


def test_a_partial_batch_runs_when_the_oldest_has_waited_max_wait(
    sink: Sink, batchers: list[MicroBatcher]
) -> None:
    clock = FakeClock()
    model = FakeModel()
    b = make(model, sink, max_batch=8, max_wait_ms=50.0, clock=clock)
    batchers.append(b)
    for i in range(3):
        b.submit(utt("s1", i, closed=clock.now))
    assert b.wait_iterations(3, WAIT_S)
    assert model.batches == []  # no time has passed on the batcher's clock
    clock.now += 0.049
    assert b.wait_iterations(2, WAIT_S)
    assert model.batches == []
    clock.now += 0.002
    sink.wait(results=3)
    assert model.batches == [[("s1", 0), ("s1", 1), ("s1", 2)]]
    assert sink.results[0].queue_wait_ms == pytest.approx(51.0)
    assert sink.results[0].inference_ms == 0.0  # the fake clock stood still during the call


def test_max_wait_with_the_real_clock(sink: Sink, batchers: list[MicroBatcher]) -> None:
    b = make(FakeModel(), sink, max_batch=8, max_wait_ms=30.0)
    batchers.append(b)
    t0 = time.monotonic()
    b.submit(utt("s1", 0, closed=t0))
    sink.wait(results=1)
    assert sink.results[0].queue_wait_ms >= 30.0
    assert sink.results[0].batch_size == 1


def fill_behind_a_blocked_batch(b: MicroBatcher, model: FakeModel) -> None:
    """u0 enters the (blocked) model; u1..u3 fill the queue of 3; u4 overflows it."""
    b.submit(utt("s1", 0))
    assert model.entered.wait(WAIT_S)
    for i in range(1, 5):
        b.submit(utt("s1", i))


def test_drop_oldest(sink: Sink, batchers: list[MicroBatcher]) -> None:
    model = FakeModel(gated=True)
    b = make(model, sink, max_batch=1, max_wait_ms=0.0, queue_size=3, drop_policy="drop_oldest")
    batchers.append(b)
    fill_behind_a_blocked_batch(b, model)
    assert sink.drops == [(("s1", 1), "queue_full")]
    model.gate.set()
    assert b.drain(WAIT_S)
    assert sink.ids() == [("s1", 0), ("s1", 2), ("s1", 3), ("s1", 4)]
    assert (len(sink.drops), len(sink.results), b.counters.snapshot().submitted) == (1, 4, 5)


def test_drop_newest(sink: Sink, batchers: list[MicroBatcher]) -> None:
    model = FakeModel(gated=True)
    b = make(model, sink, max_batch=1, max_wait_ms=0.0, queue_size=3, drop_policy="drop_newest")
    batchers.append(b)
    fill_behind_a_blocked_batch(b, model)
    assert sink.drops == [(("s1", 4), "queue_full")]
    model.gate.set()
    assert b.drain(WAIT_S)
    assert sink.ids() == [("s1", 0), ("s1", 1), ("s1", 2), ("s1", 3)]


def test_order_within_each_stream_is_kept(sink: Sink, batchers: list[MicroBatcher]) -> None:
    b = make(FakeModel(), sink, max_batch=4, max_wait_ms=1.0)
    batchers.append(b)
    for i in range(30):
        for stream in ("a", "b", "c"):
            b.submit(utt(stream, i))
    assert b.drain(WAIT_S)
    for stream in ("a", "b", "c"):
        assert [i for s, i in sink.ids() if s == stream] == list(range(30))
    assert len(sink.results) == 90


def test_swap_takes_effect_between_batches(sink: Sink, batchers: list[MicroBatcher]) -> None:
    old, new = FakeModel("A", gated=True), FakeModel("B")
    b = make(old, sink, max_batch=2, max_wait_ms=0.0)
    batchers.append(b)
    b.submit(utt("s1", 0))
    assert old.entered.wait(WAIT_S)
    assert b.swap_model(new) is old
    b.submit(utt("s1", 1))
    b.submit(utt("s1", 2))
    old.gate.set()
    sink.wait(results=3)
    assert old.batches == [[("s1", 0)]]
    assert new.batches == [[("s1", 1), ("s1", 2)]]
    assert [(c.model_id, c.prediction.label) for c in sink.results] == [
        ("A", "A:s1:0"),
        ("B", "B:s1:1"),
        ("B", "B:s1:2"),
    ]


def test_drain_runs_what_is_queued_without_waiting_then_refuses(sink: Sink) -> None:
    model = FakeModel()
    b = make(model, sink, max_batch=100, max_wait_ms=FOREVER_MS)
    for i in range(5):
        b.submit(utt("s1", i))
    assert b.drain(WAIT_S)
    assert sink.ids() == [("s1", i) for i in range(5)]
    assert b.submit(utt("s1", 5)) is False
    assert sink.drops == [(("s1", 5), "draining")]
    assert not b.is_healthy(10.0)  # the worker has finished


def test_a_drain_past_its_deadline_drops_what_waits_then_lets_the_running_batch_finish(sink: Sink) -> None:
    model = FakeModel(gated=True)
    b = make(model, sink, max_batch=1, max_wait_ms=0.0)
    account = b.open_stream("s1", live=True)
    for i in range(3):
        b.submit(utt("s1", i), account)
    b.end_stream(account, None, duration_s=1.0, discarded=0)
    assert model.entered.wait(WAIT_S)  # utterance 0 is inside the model

    def release_once_dropped() -> None:
        # The model returns only after the drain has given up on the queue: drain must still wait for it.
        with sink._cond:
            assert sink._cond.wait_for(lambda: len(sink.drops) == 2, WAIT_S)
        model.gate.set()

    releaser = threading.Thread(target=release_once_dropped)
    releaser.start()
    assert b.drain(0.05) is False
    releaser.join()
    assert sink.ids() == [("s1", 0)]  # the batch in progress was classified before drain returned
    assert sorted(sink.drops) == [(("s1", 1), "draining"), (("s1", 2), "draining")]
    assert not b.is_healthy(10.0)  # the worker has returned: nothing runs the model any more
    assert [(e.classified, e.dropped) for e in sink.ends] == [(1, 2)]
    assert sink.log[-1] == ("end", "s1")  # stream.end after every outcome of its stream


def test_a_failing_batch_is_reported_and_others_go_on(
    sink: Sink, batchers: list[MicroBatcher], caplog: pytest.LogCaptureFixture
) -> None:
    model = FakeModel(gated=True)
    b = make(model, sink, max_batch=2, max_wait_ms=0.0)
    batchers.append(b)
    b.submit(utt("warmup", 0))
    assert model.entered.wait(WAIT_S)
    b.submit(utt("poison", 0))
    b.submit(utt("kitchen", 0))
    b.submit(utt("kitchen", 1))
    with caplog.at_level(logging.ERROR, logger="intentd.daemon.batcher"):
        model.gate.set()
        sink.wait(results=2, errors=2)
    assert model.batches == [[("warmup", 0)], [("poison", 0), ("kitchen", 0)], [("kitchen", 1)]]
    assert [e[0] for e in sink.errors] == [("poison", 0), ("kitchen", 0)]
    assert "cannot decode this clip" in sink.errors[0][1]
    (line,) = [r.getMessage() for r in caplog.records if r.name == "intentd.daemon.batcher"]
    assert "kitchen,poison" in line and "\n" not in line
    assert sink.ids() == [("warmup", 0), ("kitchen", 1)]
    assert b.is_healthy(10.0)
    assert len(sink.errors) == 2
    assert b.counters.snapshot().batches == 2  # the failed batch is not metered


def test_a_model_returning_the_wrong_count_is_an_error(sink: Sink, batchers: list[MicroBatcher]) -> None:
    class Short(FakeModel):
        def classify(self, utterances: list[Utterance]) -> list[Prediction]:
            return super().classify(utterances)[:-1]

    b = make(Short(), sink, max_batch=2, max_wait_ms=FOREVER_MS)
    batchers.append(b)
    b.submit(utt("s1", 0))
    b.submit(utt("s1", 1))
    sink.wait(errors=2)
    assert sink.results == []


def test_health_follows_the_worker_loop(sink: Sink, batchers: list[MicroBatcher]) -> None:
    clock = FakeClock()
    model = FakeModel(gated=True)
    b = MicroBatcher(model, sink, BatcherSettings(max_batch=1, max_wait_ms=0.0), clock=clock, heartbeat_s=0.01)
    assert not b.is_healthy(10.0)  # not started
    b.start()
    batchers.append(b)
    clock.now += 60.0
    assert b.wait_iterations(2, WAIT_S)  # idle, the bounded wait keeps the heartbeat fresh
    assert b.is_healthy(10.0)
    b.submit(utt("s1", 0))
    assert model.entered.wait(WAIT_S)
    assert b.is_healthy(10.0)
    clock.now += 10.5
    assert not b.is_healthy(10.0)  # stuck inside one model call
    assert b.heartbeat_monotonic == pytest.approx(160.0)
    model.gate.set()
    sink.wait(results=1)
    assert b.wait_iterations(1, WAIT_S)
    assert b.is_healthy(10.0)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"max_batch": 0}, "batcher.max_batch"),
        ({"max_wait_ms": -1.0}, "batcher.max_wait_ms"),
        ({"queue_size": 0}, "batcher.queue_size"),
        ({"drop_policy": "drop_random"}, "batcher.drop_policy"),
    ],
)
def test_bad_settings_raise_naming_the_key(kwargs: dict[str, object], key: str, sink: Sink) -> None:
    with pytest.raises(ConfigError, match=key):
        make(FakeModel(), sink, **kwargs)


class WarmModel(FakeModel):
    """Counts keep-warm calls and can hold one open to show real work is not blocked behind the lock."""

    def __init__(self) -> None:
        super().__init__()
        self.warmed = threading.Event()
        self.warm_calls = 0

    def keep_warm(self) -> None:
        self.warm_calls += 1
        self.warmed.set()


def test_an_idle_worker_keeps_the_model_warm_and_stops_while_busy_or_draining(sink: Sink) -> None:
    model = WarmModel()
    b = make(model, sink, max_batch=1, max_wait_ms=0.0, keep_warm_s=0.05, heartbeat_s=0.02)
    assert model.warmed.wait(WAIT_S), "an idle batcher never called keep_warm"
    # Real work still flows between keep-warm calls, and counts as activity.
    b.submit(utt("s1", 0))
    sink.wait(results=1)
    assert b.drain(WAIT_S)
    after_drain = model.warm_calls
    assert not b.wait_iterations(3, 0.2)  # the worker has stopped...
    assert model.warm_calls == after_drain  # ...and so have the keep-warm calls


def test_keep_warm_off_by_zero_after_the_start_up_call(sink: Sink, batchers: list[MicroBatcher]) -> None:
    model = WarmModel()
    b = make(model, sink, keep_warm_s=0.0, heartbeat_s=0.02)
    batchers.append(b)
    assert b.wait_started(WAIT_S)
    assert b.wait_iterations(10, WAIT_S)
    assert model.warm_calls == 1  # the start-up call on the worker thread, and no idle ones


class ThreadRecordingModel(WarmModel):
    """Records which thread each call ran on, and holds the start-up keep-warm until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.calls: list[tuple[str, str]] = []

    def keep_warm(self) -> None:
        self.calls.append(("warm", threading.current_thread().name))
        self.release.wait(WAIT_S)
        super().keep_warm()

    def classify(self, utterances: list[Utterance]) -> list[Prediction]:
        self.calls.append(("classify", threading.current_thread().name))
        return super().classify(utterances)


def test_the_worker_warms_its_own_thread_before_the_first_utterance(
    sink: Sink, batchers: list[MicroBatcher]
) -> None:
    model = ThreadRecordingModel()
    b = make(model, sink, max_batch=1, max_wait_ms=0.0)
    batchers.append(b)
    assert not b.wait_started(0.05)  # the start-up forward is still running
    b.submit(utt("s1", 0))  # arrives meanwhile: queued behind it, not lost
    model.release.set()
    assert b.wait_started(WAIT_S)
    sink.wait(results=1)
    assert model.calls == [("warm", "intentd-batcher"), ("classify", "intentd-batcher")]


# --------------------------------------------------------------------------------------------- live and recorded


def test_recorded_utterances_are_never_dropped_and_hold_their_senders_at_the_high_water_mark(
    sink: Sink, batchers: list[MicroBatcher]
) -> None:
    model = FakeModel(gated=True)
    b = make(model, sink, max_batch=2, max_wait_ms=0.0, queue_size=1, recorded_high_water=3)
    batchers.append(b)
    freed: list[str] = []
    b.add_room_listener(lambda: freed.append(threading.current_thread().name))
    rec = b.open_stream("file", live=False)
    b.submit(utt("file", 0), rec)
    assert model.entered.wait(WAIT_S)
    assert b.has_room()
    for i in range(1, 6):  # far past queue_size: a recorded sender that ignored has_room loses nothing either
        assert b.submit(utt("file", i), rec) is True
        assert b.has_room() is (i < 3)
    live = b.open_stream("mic", live=True)
    b.submit(utt("mic", 0), live)
    b.submit(utt("mic", 1), live)  # live keeps its own queue_size and policy: drops mic 0
    assert sink.drops == [(("mic", 0), "queue_full")]
    assert b.queue_depth == 6
    model.gate.set()
    assert b.drain(WAIT_S)
    assert sink.drops == [(("mic", 0), "queue_full")]
    assert [i for s, i in sink.ids() if s == "file"] == list(range(6))
    # Live first: the batch after the one in the model takes mic 1 before any waiting file utterance.
    assert model.batches[:2] == [[("file", 0)], [("mic", 1), ("file", 1)]]
    assert b.has_room() and freed and set(freed) == {"intentd-batcher"}


def test_a_streams_end_follows_the_outcome_of_its_last_utterance(sink: Sink, batchers: list[MicroBatcher]) -> None:
    model = FakeModel(gated=True)
    b = make(model, sink, max_batch=1, max_wait_ms=0.0, queue_size=1, drop_policy="drop_oldest")
    batchers.append(b)
    silent = b.open_stream("silent", live=True)
    b.end_stream(silent, None, duration_s=2.0, discarded=1)  # nothing pending: it ends at once
    assert sink.ends == [StreamSummary("silent", None, True, 2.0, 1, 0, 0, 0)]
    talk, rec = b.open_stream("talk", live=True), b.open_stream("file", live=False)
    b.submit(utt("file", 0), rec)
    assert model.entered.wait(WAIT_S)
    b.submit(utt("talk", 0), talk)
    b.end_stream(talk, "client vanished", duration_s=1.5, discarded=0)
    b.end_stream(rec, None, duration_s=3.0, discarded=2)
    assert len(sink.ends) == 1  # both still have an utterance in the batcher
    b.submit(utt("other", 0))  # a live utterance nobody tracks overflows the live queue: talk 0 is dropped
    assert sink.log[-2:] == [("dropped", "talk"), ("end", "talk")]
    model.gate.set()
    sink.wait_ends(3)
    assert [entry for entry in sink.log if entry[1] == "file"] == [("classified", "file"), ("end", "file")]
    assert sink.ends[1:] == [StreamSummary("talk", "client vanished", True, 1.5, 0, 0, 1, 0),
                             StreamSummary("file", None, False, 3.0, 2, 1, 0, 0)]
    assert sink.ends[2].utterances == 1


def test_failed_and_reused_ids_are_accounted_per_stream(sink: Sink, batchers: list[MicroBatcher]) -> None:
    model = FakeModel(gated=True)
    b = make(model, sink, max_batch=4, max_wait_ms=0.0)
    batchers.append(b)
    first, again = b.open_stream("poison", live=False), b.open_stream("poison", live=False)
    b.submit(utt("poison", 0), first)
    assert model.entered.wait(WAIT_S)
    b.end_stream(first, None, duration_s=1.0, discarded=0)
    b.submit(utt("poison", 0), again)  # the id reopened while the first stream's utterance is still running
    b.submit(utt("poison", 1), again)
    b.end_stream(again, None, duration_s=2.0, discarded=0)
    model.gate.set()
    sink.wait_ends(2)
    assert [(e.duration_s, e.failed, e.utterances) for e in sink.ends] == [(1.0, 1, 1), (2.0, 2, 2)]
    assert sink.log == [("failed", "poison"), ("end", "poison"), ("failed", "poison"), ("failed", "poison"),
                        ("end", "poison")]


def test_under_load_every_stream_ends_after_all_its_outcomes(sink: Sink, batchers: list[MicroBatcher]) -> None:
    """Drops on the submitting thread and results on the worker race; each end still comes after its stream's."""
    model = FakeModel(gated=True)
    b = make(model, sink, max_batch=3, max_wait_ms=0.0, queue_size=4)
    batchers.append(b)
    accounts = {f"s{n}": b.open_stream(f"s{n}", live=n % 2 == 0) for n in range(40)}
    for i in range(5):
        if i == 2:  # two rounds pile up behind the held model; the rest race the worker
            model.gate.set()
        for sid, account in accounts.items():
            b.submit(utt(sid, i), account)
    for sid, account in accounts.items():
        b.end_stream(account, None, duration_s=1.0, discarded=0)
    sink.wait_ends(len(accounts))
    assert sink.drops, "the live half should have overflowed a queue of 4"
    for sid in accounts:
        mine = [what for what, s in sink.log if s == sid]
        assert mine[-1] == "end" and mine.count("end") == 1 and len(mine) == 6, (sid, mine)
    for end in sink.ends:
        assert end.utterances == 5 and end.classified + end.dropped == 5
        assert end.dropped == 0 or end.live, end  # recorded streams lose nothing
