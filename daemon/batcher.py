"""Utterances from all streams -> batches for one model, on one worker thread, through two queues (live, recorded).

A batch runs when `max_batch` utterances wait or the oldest has waited `max_wait_ms`. Utterances of live streams
(microphones, calls: they cannot wait) and of recorded ones (files: they can) wait apart:

- live: at most `queue_size`; a full queue drops one by the configured policy, as it always has. A batch takes
  live utterances first, so recorded work never delays or starves live audio.
- recorded: never dropped. Their sources stop reading while `recorded_high_water` of them wait (`has_room`),
  and are woken through `add_room_listener` when the worker takes some (TCP backpressure in the socket server).

A model failure fails each utterance of its batch and the worker goes on. Every outcome is handed forward to the
next stage (`Results`: classified, dropped, failed), never back to the caller; so is the end of a stream
(`stream_ended`), once every utterance of it has had its outcome handed on: a subscriber sees a stream's
`stream.end` after all its other events. The model (resampling included) is swapped only between batches.
Submissions, batch sizes and timings are counted here, into the service's Counters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol

from intentd.daemon.counters import Counters
from intentd.daemon.errors import ConfigError
from intentd.daemon.frames import Classified, Prediction, Utterance
from intentd.daemon.settings import DEFAULTS, BatcherSettings

log = logging.getLogger(__name__)

# The idle worker wakes at least this often to refresh its heartbeat, so a watchdog can tell idle from dead.
HEARTBEAT_S = 0.5
# While a drain waits for the batch in progress, it says so this often.
STOP_LOG_INTERVAL_S = 5.0
MS_PER_S = 1000.0
REASON_QUEUE_FULL = "queue_full"
REASON_DRAINING = "draining"


class UtteranceModel(Protocol):
    """What the batcher runs: one call per batch, one Prediction per utterance, in order (an optional
    `keep_warm()` runs a throw-away forward)."""

    @property
    def model_id(self) -> str: ...

    def classify(self, utterances: list[Utterance]) -> list[Prediction]: ...


class Results(Protocol):
    """The next stage: where every utterance the batcher took ends up (daemon.outbox.Outbox)."""

    def classified(self, result: Classified) -> None:
        """Called on the worker thread, in batch order."""
        ...

    def dropped(self, utterance: Utterance, reason: str) -> None:
        """Called on the submitting thread (queue full, draining)."""
        ...

    def failed(self, utterance: Utterance, message: str) -> None:
        """Called on the worker thread for each utterance of a batch the model failed on."""
        ...

    def stream_ended(self, summary: StreamSummary) -> None:
        """Called once per ended stream, on whichever thread handed on its last utterance's outcome (or on the
        closing thread when none was left), after that outcome."""
        ...


OUTCOMES: Final = ("classified", "dropped", "failed")


@dataclass(frozen=True, slots=True)
class StreamSummary:
    """What became of one ended stream's audio: handed to Results.stream_ended after its last outcome."""

    stream_id: str
    reason: str | None  # None: a normal end; else why the source ended it
    live: bool
    duration_s: float  # audio received, in seconds of stream time
    discarded: int  # voiced blips too short to be utterances (never submitted)
    classified: int
    dropped: int
    failed: int

    @property
    def utterances(self) -> int:
        """Utterances submitted: each was classified, dropped or failed."""
        return self.classified + self.dropped + self.failed


@dataclass(eq=False, slots=True)
class StreamAccount:
    """One open stream as the batcher sees it (from `open_stream`): whether it is live, and the outcomes of its
    utterances so far. Only the batcher changes it, under its lock."""

    stream_id: str
    live: bool
    pending: int = 0  # submitted, outcome not yet handed on
    outcomes: Counter[str] = field(default_factory=Counter)
    ending: tuple[str | None, float, int] | None = None  # (reason, duration_s, discarded) once closed
    reported: bool = False

    def summary(self) -> StreamSummary:
        """The stream's summary (once it has ended)."""
        assert self.ending is not None
        reason, duration_s, discarded = self.ending
        return StreamSummary(self.stream_id, reason, self.live, duration_s, discarded,
                             *(self.outcomes[o] for o in OUTCOMES))


@dataclass(slots=True)
class _Waiting:
    utterance: Utterance
    enqueued: float  # batcher clock at submit; the max_wait deadline counts from here
    account: StreamAccount | None  # None: a live utterance nobody tracks (tests, tools)


class MicroBatcher:
    """One worker thread batching utterances for `model` and handing every outcome to `results`.

    `settings` (checked when made) says when a batch runs and what a full queue drops; `keep_warm_s` is
    `model.keep_warm_s`. Counts go to `counters` (a fresh Counters when none is given)."""

    def __init__(
        self,
        model: UtteranceModel,
        results: Results,
        settings: BatcherSettings = DEFAULTS.batcher,
        *,
        keep_warm_s: float = DEFAULTS.model.keep_warm_s,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.monotonic,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        if heartbeat_s <= 0:
            raise ConfigError(f"heartbeat interval must be positive, got {heartbeat_s}")
        self._model = model
        self._results = results
        self.counters = counters if counters is not None else Counters()
        self.max_batch = settings.max_batch
        self.max_wait_s = settings.max_wait_ms / MS_PER_S
        self.queue_size = settings.queue_size
        self.drop_policy = settings.drop_policy
        self.recorded_high_water = settings.recorded_high_water
        self._clock = clock
        self._heartbeat_s = heartbeat_s
        self._live: deque[_Waiting] = deque()
        self._recorded: deque[_Waiting] = deque()
        self._room_listeners: list[Callable[[], None]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._draining = False
        self._busy = False
        self._heartbeat = clock()
        # After this long without a batch the worker calls model.keep_warm(): on a CPU the first forward
        # after a few idle seconds measured 30-50 ms instead of 19 ms (cold caches); 0 disables.
        self.keep_warm_s = keep_warm_s
        self._last_work = clock()
        self.keep_warm_calls = 0
        self._iterations = 0
        self._started = threading.Event()

    # -- producer side -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread."""
        with self._cond:
            if self._thread is not None:
                raise RuntimeError("batcher already started")
            self._heartbeat = self._clock()
            self._thread = threading.Thread(target=self._run, name="intentd-batcher", daemon=True)
            self._thread.start()

    def wait_started(self, timeout_s: float) -> bool:
        """Block until the worker has made its start-up keep-warm call (or found none to make); False on timeout."""
        return self._started.wait(timeout_s)

    def open_stream(self, stream_id: str, live: bool) -> StreamAccount:
        """Start accounting for a stream; submit its utterances with the account, then end_stream it."""
        return StreamAccount(stream_id, live)

    def submit(self, utterance: Utterance, account: StreamAccount | None = None) -> bool:
        """Queue an utterance; False if it (or, by policy, an older one) was dropped instead. Never blocks.

        Without an account the utterance counts as live and untracked. A recorded stream's utterance is always
        queued (its source waits for `has_room` before it sends more audio); only a draining batcher drops it.
        """
        new = _Waiting(utterance, self._clock(), account)
        dropped: _Waiting | None = None
        reason = REASON_QUEUE_FULL
        self.counters.submitted()
        with self._cond:
            if account is not None:
                account.pending += 1
            live = account is None or account.live
            if self._draining:
                dropped, reason = new, REASON_DRAINING
            elif live and len(self._live) >= self.queue_size:
                dropped = new if self.drop_policy == "drop_newest" else self._live.popleft()
            if dropped is not new:
                (self._live if live else self._recorded).append(new)
                self._cond.notify_all()
        if dropped is None:
            return True
        log.warning(
            "dropped utterance %d of stream %s (%s, policy %s, %d queued)",
            dropped.utterance.index,
            dropped.utterance.stream_id,
            reason,
            self.drop_policy,
            self.queue_size,
        )
        self._hand_on(self._results.dropped, dropped.utterance, reason)
        self._settle([dropped], "dropped")
        return dropped is not new

    def end_stream(self, account: StreamAccount, reason: str | None, *, duration_s: float, discarded: int) -> None:
        """No more utterances will come from this stream: Results.stream_ended follows its last outcome."""
        with self._cond:
            account.ending = (reason, duration_s, discarded)
            ended = self._take_ended([account])
        self._report(ended)

    def has_room(self) -> bool:
        """True while fewer than `recorded_high_water` recorded utterances wait: recorded sources may send more."""
        with self._cond:
            return len(self._recorded) < self.recorded_high_water

    def add_room_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` (on the worker thread; it must not block) whenever the worker takes recorded
        utterances off the queue while recorded sources may be waiting for room."""
        self._room_listeners.append(listener)

    def swap_model(self, model: UtteranceModel) -> UtteranceModel:
        """Use `model` from the next batch on (a running batch finishes on the old one); return the old one."""
        with self._cond:
            old, self._model = self._model, model
        log.info("model %s replaces %s from the next batch", model.model_id, old.model_id)
        return old

    @property
    def model(self) -> UtteranceModel:
        """The model the next batch will use."""
        return self._model

    @property
    def queue_depth(self) -> int:
        """Utterances waiting now, live and recorded."""
        with self._cond:
            return len(self._live) + len(self._recorded)

    def drain(self, timeout_s: float) -> bool:
        """Stop taking work and classify what is queued; True if it all was.

        At the deadline whatever still waits is handed on as dropped (reason `draining`), so every utterance
        the daemon heard has an outcome. The batch in progress then finishes (its outcomes are handed on too)
        before this returns, however long it takes: the interpreter must not exit while the worker is inside
        the model, or torch's threads are torn down under it and the process aborts. A model that never
        returns leaves stopping to the service manager (systemd's TimeoutStopSec, then SIGKILL).
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._draining = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            left = [*self._live, *self._recorded]
            self._live.clear()
            self._recorded.clear()
            self._cond.notify_all()  # the worker returns after the batch it is running
        if left:
            log.warning("drain timed out after %g s: %d queued utterances dropped (%s)", timeout_s, len(left),
                        REASON_DRAINING)
            for waiting in left:
                self._hand_on(self._results.dropped, waiting.utterance, REASON_DRAINING)
            self._settle(left, "dropped")
        if thread is not None and thread.is_alive():
            log.info("waiting for the batch in progress to finish")
            while thread.is_alive():
                thread.join(STOP_LOG_INTERVAL_S)
                if thread.is_alive():
                    log.warning("still waiting for the model to finish its batch")
        return not left

    # -- health --------------------------------------------------------------------------------------------

    @property
    def heartbeat_monotonic(self) -> float:
        """When the worker loop last went round (batcher clock); it stops moving inside a stuck model call."""
        return self._heartbeat

    @property
    def iterations(self) -> int:
        """Worker loop iterations so far (lets tests wait for the worker without sleeping)."""
        return self._iterations

    def is_healthy(self, max_stall_s: float) -> bool:
        """False when the worker thread is dead or has not gone round its loop for `max_stall_s`."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return False
        return self._clock() - self._heartbeat <= max_stall_s

    def wait_iterations(self, count: int, timeout_s: float) -> bool:
        """Block until the worker has gone round `count` more times (or timeout); for tests and probes."""
        with self._cond:
            target = self._iterations + count
            return self._cond.wait_for(lambda: self._iterations >= target, timeout_s)

    # -- worker --------------------------------------------------------------------------------------------

    def _run(self) -> None:
        self._warm_this_thread()
        while True:
            with self._cond:
                self._heartbeat = self._clock()
                self._iterations += 1
                self._cond.notify_all()
                batch = self._take()
                warm = None
                if batch is None:
                    if self._draining and not (self._live or self._recorded):
                        return
                    warm = self._due_for_keep_warm()
                    if warm is None:
                        continue
                model = self._model  # fixed for the whole batch, whatever swap_model does meanwhile
                self._busy = True
            if batch is None:
                assert warm is not None
                self._keep_warm(warm)  # outside the lock: submit() never waits for it
                continue
            if any(w.account is not None and not w.account.live for w in batch):
                self._room_freed()
            try:
                self._run_batch(model, batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._last_work = self._clock()
                    self._cond.notify_all()

    def _warm_this_thread(self) -> None:
        """One keep-warm forward on this thread before any utterance, whatever keep_warm_s says.

        The model was warmed where it was loaded, but torch's CPU pool of worker threads belongs to the thread
        that runs the forward: without this, the first utterance paid for building it (one measured 296 ms
        against 24 ms at p50).
        """
        warm = getattr(self._model, "keep_warm", None)
        try:
            if warm is not None:
                with self._cond:
                    self._busy = True
                self._keep_warm(warm)
        finally:
            self._started.set()

    def _due_for_keep_warm(self) -> Callable[[], object] | None:
        """With the lock held: the model's keep_warm when the worker has idled for keep_warm_s."""
        if self.keep_warm_s <= 0 or self._draining or self._live or self._recorded:
            return None
        if self._clock() - self._last_work < self.keep_warm_s:
            return None
        return getattr(self._model, "keep_warm", None)

    def _keep_warm(self, warm: Callable[[], object]) -> None:
        try:
            warm()
            self.keep_warm_calls += 1
        except Exception as err:  # noqa: BLE001 -- a failed warm-up must not stop the worker; real batches report
            log.warning("keep-warm forward failed: %s", err)
        finally:
            with self._cond:
                self._busy = False
                self._last_work = self._clock()
                self._cond.notify_all()

    def _take(self) -> list[_Waiting] | None:
        """With the lock held: pop a due batch (live utterances first), or wait (bounded) and return None."""
        queues = [q for q in (self._live, self._recorded) if q]
        if not queues:
            if not self._draining:
                self._cond.wait(self._heartbeat_s)
            return None
        if sum(map(len, queues)) < self.max_batch and not self._draining:
            left = min(q[0].enqueued for q in queues) + self.max_wait_s - self._clock()
            if left > 0:
                self._cond.wait(min(left, self._heartbeat_s))
                return None
        batch: list[_Waiting] = []
        for q in queues:
            while q and len(batch) < self.max_batch:
                batch.append(q.popleft())
        return batch

    def _room_freed(self) -> None:
        for listener in self._room_listeners:
            try:
                listener()
            except Exception:
                log.exception("a room listener failed")

    def _run_batch(self, model: UtteranceModel, waiting: list[_Waiting]) -> None:
        """Classify one batch, hand on every utterance's outcome, then settle their streams' accounts."""
        self._settle(waiting, self._classify(model, [w.utterance for w in waiting]))

    def _classify(self, model: UtteranceModel, batch: list[Utterance]) -> str:
        """Run one batch and hand on each utterance's outcome; returns which outcome they all had."""
        started = self._clock()
        queue_waits_s = [started - u.closed_monotonic for u in batch]
        try:
            predictions = model.classify(batch)
            if len(predictions) != len(batch):
                raise ValueError(f"model returned {len(predictions)} predictions for {len(batch)} utterances")
        except Exception as err:  # noqa: BLE001 -- a poisoned clip must not stop the other streams
            streams = ",".join(sorted({u.stream_id for u in batch}))
            log.error("model %s failed on a batch of %d (streams %s): %s", model.model_id, len(batch), streams, err)
            message = f"{type(err).__name__}: {err}"
            for utterance in batch:
                self._hand_on(self._results.failed, utterance, message)
            return "failed"
        inference_s = self._clock() - started
        self.counters.batch(len(batch), inference_s, queue_waits_s)
        for utterance, prediction, wait_s in zip(batch, predictions, queue_waits_s, strict=True):
            result = Classified(
                utterance=utterance,
                prediction=prediction,
                model_id=model.model_id,
                queue_wait_ms=wait_s * MS_PER_S,
                inference_ms=inference_s * MS_PER_S,
                batch_size=len(batch),
            )
            self._hand_on(self._results.classified, result)
        return "classified"

    # -- stream accounts -----------------------------------------------------------------------------------

    def _settle(self, waiting: Iterable[_Waiting], outcome: str) -> None:
        """After their outcomes were handed on: count them, then report each stream that has ended with none left.

        Counting only after the hand-on is what orders a stream's end after all its events, whichever thread
        (the worker, or a submitter whose utterance was dropped) hands on its last outcome.
        """
        accounts = [w.account for w in waiting if w.account is not None]
        if not accounts:
            return
        with self._cond:
            for account in accounts:
                account.pending -= 1
                account.outcomes[outcome] += 1
            ended = self._take_ended(accounts)
        self._report(ended)

    @staticmethod
    def _take_ended(accounts: Iterable[StreamAccount]) -> list[StreamSummary]:
        """With the lock held: the summaries of streams that have ended with no outcome pending, each once."""
        ended = []
        for account in accounts:
            if account.ending is not None and account.pending == 0 and not account.reported:
                account.reported = True
                ended.append(account.summary())
        return ended

    def _report(self, ended: list[StreamSummary]) -> None:
        for summary in ended:
            self._hand_on(self._results.stream_ended, summary)

    def _hand_on(self, stage: Callable[..., None], *args: object) -> None:
        """Give an outcome to the next stage; its failure is logged and never reaches the worker or the producer."""
        try:
            stage(*args)
        except Exception:
            log.exception("the batcher's next stage failed in %s", getattr(stage, "__name__", stage))
