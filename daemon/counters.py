"""The daemon's one set of counts: the stages add to it, the `status` event and Prometheus both read it.

StreamTable counts utterances and discarded blips, MicroBatcher counts submissions, batches and their timings, the Outbox counts
what it publishes (intents, drops, errors), the service counts reloads and the socket sources and publisher count
the clients they refuse. Any thread may add; every read is a
consistent snapshot taken under the same lock.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

# What a `status` event's `counters` always holds, zeros included (docs/events.md).
STATUS_KEYS: Final = ("utterances", "events", "dropped", "errors", "reloads", "discarded", "refused")
# Latency buckets in seconds: our target is tens of milliseconds, the hangover adds a few hundred.
LATENCY_BUCKETS_S: Final = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 2.5, 5.0)
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RELOAD_OK: Final = "ok"
RELOAD_FAILED: Final = "failed"


@dataclass(slots=True)
class Histogram:
    """Observations counted into buckets by upper bound (the last, unbounded one is implied), with their sum."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; one more than bounds
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """Count one value into the first bucket whose bound is >= it."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self.counts)

    def copy(self) -> Histogram:
        """An independent snapshot."""
        out = Histogram(self.bounds)
        out.counts, out.total = list(self.counts), self.total
        return out


@dataclass(frozen=True, slots=True)
class CountsSnapshot:
    """Every count at one instant, as the exporters read them."""

    utterances: Mapping[bool, int]  # by truncated
    discarded: int  # voiced blips shorter than vad.min_utterance_ms, never classified
    events: Mapping[str, int]  # intent events by label
    drops: Mapping[str, int]  # by reason
    errors: Mapping[str, int]  # by kind
    reloads: Mapping[str, int]  # by result (ok, failed)
    refused: Mapping[str, int]  # clients turned away, by reason (daemon.security.REFUSED_*)
    submitted: int
    batches: int
    model_load_s: float
    batch_size: Histogram
    queue_wait_s: Histogram
    inference_s: Histogram
    processing_s: Histogram
    end_of_speech_s: Histogram

    def status(self) -> dict[str, int]:
        """The `counters` of a status event: totals since start, every documented key present."""
        return {
            "utterances": sum(self.utterances.values()),
            "events": sum(self.events.values()),
            "dropped": sum(self.drops.values()),
            "errors": sum(self.errors.values()),
            "reloads": self.reloads.get(RELOAD_OK, 0),
            "discarded": self.discarded,
            "refused": sum(self.refused.values()),
        }


class Counters:
    """Thread-safe counts and timings since start; one instance per service."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._utterances: Counter[bool] = Counter()
        self._discarded = 0
        self._events: Counter[str] = Counter()
        self._drops: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._reloads: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._submitted = 0
        self._batches = 0
        self._model_load_s = 0.0
        self._batch_size = Histogram(BATCH_BUCKETS)
        self._queue_wait_s = Histogram(LATENCY_BUCKETS_S)
        self._inference_s = Histogram(LATENCY_BUCKETS_S)
        self._processing_s = Histogram(LATENCY_BUCKETS_S)
        self._end_of_speech_s = Histogram(LATENCY_BUCKETS_S)

    # -- adding (any thread) -------------------------------------------------------------------------------

    def utterance(self, truncated: bool) -> None:
        """The VAD closed an utterance."""
        with self._lock:
            self._utterances[truncated] += 1

    def discarded(self) -> None:
        """The VAD discarded a voiced blip too short to be an utterance."""
        with self._lock:
            self._discarded += 1

    def submitted(self) -> None:
        """An utterance was handed to the batcher (queued or dropped)."""
        with self._lock:
            self._submitted += 1

    def batch(self, size: int, inference_s: float, queue_waits_s: Iterable[float]) -> None:
        """One model call ran (or failed) on `size` utterances that had waited `queue_waits_s`."""
        with self._lock:
            self._batches += 1
            self._batch_size.observe(size)
            self._inference_s.observe(inference_s)
            for wait in queue_waits_s:
                self._queue_wait_s.observe(wait)

    def intent(self, label: str, processing_s: float, end_of_speech_s: float) -> None:
        """An intent event was published, `processing_s` after its utterance closed."""
        with self._lock:
            self._events[label] += 1
            self._processing_s.observe(processing_s)
            self._end_of_speech_s.observe(end_of_speech_s)

    def drop(self, reason: str) -> None:
        """An utterance was dropped unclassified."""
        with self._lock:
            self._drops[reason] += 1

    def error(self, kind: str) -> None:
        """An utterance or stream failed."""
        with self._lock:
            self._errors[kind] += 1

    def reload(self, ok: bool) -> None:
        """A reload finished (or failed, keeping the running model)."""
        with self._lock:
            self._reloads[RELOAD_OK if ok else RELOAD_FAILED] += 1

    def refused(self, reason: str) -> None:
        """A client was turned away: a bad token or TLS handshake, a CURVE key not allowed, too many streams."""
        with self._lock:
            self._refused[reason] += 1

    def model_loaded(self, seconds: float) -> None:
        """A model load took `seconds`."""
        with self._lock:
            self._model_load_s = seconds

    # -- reading -------------------------------------------------------------------------------------------

    def snapshot(self) -> CountsSnapshot:
        """Every count at one instant."""
        with self._lock:
            return CountsSnapshot(
                utterances=dict(self._utterances), discarded=self._discarded, events=dict(self._events), drops=dict(self._drops),
                errors=dict(self._errors), reloads=dict(self._reloads), submitted=self._submitted,
                refused=dict(self._refused), batches=self._batches, model_load_s=self._model_load_s, batch_size=self._batch_size.copy(),
                queue_wait_s=self._queue_wait_s.copy(), inference_s=self._inference_s.copy(),
                processing_s=self._processing_s.copy(), end_of_speech_s=self._end_of_speech_s.copy(),
            )  # fmt: skip

    def status(self) -> dict[str, int]:
        """The `counters` of a status event (see CountsSnapshot.status)."""
        return self.snapshot().status()
