"""The last stage before the socket: outcomes -> events, counted, then published.

The batcher hands every utterance's outcome here (classified, dropped, failed), and each stream's end once its
last outcome is out; the StreamTable hands its VAD edges and discarded blips; the service publishes its `status`
heartbeats through here too. Any thread may call it. Every event also goes to `watchers` (daemon/stream_watch.py),
so a source that answers its clients (Wyoming) hears its own streams' outcomes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from intentd.daemon.batcher import StreamSummary
from intentd.daemon.counters import Counters
from intentd.daemon.errors import IntentdError
from intentd.daemon.events import DroppedEvent, ErrorEvent, Event, IntentEvent, StreamEndEvent
from intentd.daemon.frames import Classified, Utterance
from intentd.daemon.publisher import Publisher
from intentd.daemon.stream_watch import StreamWatchers

log = logging.getLogger(__name__)

MS_PER_S = 1000.0
ERROR_CLASSIFY = "ClassifyError"  # the `error` of an utterance.error for a batch the model failed on
KIND_CLASSIFY = "classify"  # its kind in the counters


class Outbox:
    """Implements daemon.batcher.Results: builds each outcome's event, counts it and publishes it."""

    def __init__(self, publisher: Publisher, counters: Counters,
                 clock: Callable[[], float] = time.monotonic, *, watchers: StreamWatchers | None = None) -> None:
        self._publisher = publisher
        self._counters = counters
        self._clock = clock
        self._watchers = watchers
        # The last publish error: a closed or broken publisher stops the watchdog pings, so systemd restarts us.
        self.failure: str | None = None

    def publish(self, event: Event) -> None:
        """Send one event; a failure is logged and kept in `failure`, never raised into a stage."""
        try:
            self._publisher.publish(event)
        except IntentdError as err:
            self.failure = str(err)
            log.error("cannot publish %s: %s", event.topic, err)
        if self._watchers is not None:  # even when publishing failed: the watcher's client still waits
            self._watchers.deliver(event)

    def classified(self, result: Classified) -> None:
        """An intent event, made right before publishing (it measures the processing latency)."""
        event = IntentEvent.from_classified(result, self._clock())
        latency = event.latency_ms
        # Counted before it goes out, as drops and errors are: a subscriber that has seen the event and then reads
        # `status` or /metrics finds it counted.
        self._counters.intent(event.label, latency.processing / MS_PER_S, latency.end_of_speech / MS_PER_S)
        self.publish(event)

    def dropped(self, utterance: Utterance, reason: str) -> None:
        """An utterance that will not be classified."""
        self._counters.drop(reason)
        log.warning("dropped utterance %d of stream %s: %s", utterance.index, utterance.stream_id, reason)
        self.publish(DroppedEvent.from_utterance(utterance, reason))

    def failed(self, utterance: Utterance, message: str) -> None:
        """An utterance of a batch the model failed on."""
        self._counters.error(KIND_CLASSIFY)
        self.publish(ErrorEvent(stream_id=utterance.stream_id, utterance=utterance.index, error=ERROR_CLASSIFY,
                                message=message))

    def stream_ended(self, summary: StreamSummary) -> None:
        """A stream's end, after every event of its utterances (the batcher calls this last)."""
        log.info("stream %s answered: %d classified, %d dropped, %d failed, %d blips discarded",
                 summary.stream_id, summary.classified, summary.dropped, summary.failed, summary.discarded)
        self.publish(StreamEndEvent.of(summary))
