"""Prometheus metrics, read at scrape time from the service's Counters: one registry per service, so tests can
run several daemons in one process."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from daemon.counters import Counters, Histogram
from daemon.errors import ConfigError, UnavailableError

log = logging.getLogger(__name__)


def _labelled(name: str, doc: str, label: str, counts: Mapping[Any, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, count in sorted(counts.items(), key=lambda kv: str(kv[0])):
        family.add_metric([str(value).lower() if isinstance(value, bool) else str(value)], count)
    return family


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    cumulative, buckets = 0, []
    for bound, count in zip((*h.bounds, float("inf")), h.counts, strict=True):
        cumulative += count
        buckets.append((floatToGoString(bound), cumulative))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.total)


class CountersCollector(Collector):
    """Every metric the daemon exports, built from one Counters snapshot plus the live gauges."""

    def __init__(
        self,
        counters: Counters,
        *,
        queue_depth: Callable[[], int],
        active_streams: Callable[[], int],
        model_id: Callable[[], str],
    ) -> None:
        self._counters = counters
        self._queue_depth = queue_depth
        self._active_streams = active_streams
        self._model_id = model_id

    def collect(self) -> Iterator[Metric]:
        """Called by prometheus_client at every scrape."""
        c = self._counters.snapshot()
        yield _labelled("intentd_utterances", "Utterances segmented", "truncated", c.utterances)
        yield CounterMetricFamily("intentd_discarded", "Voiced blips shorter than vad.min_utterance_ms, discarded "
                                  "unclassified", value=c.discarded)
        yield _labelled("intentd_events", "Intent events published", "label", c.events)
        yield _labelled("intentd_drops", "Utterances dropped", "reason", c.drops)
        yield _labelled("intentd_errors", "Errors by kind", "kind", c.errors)
        yield _labelled("intentd_reloads", "Reloads by result", "result", c.reloads)
        yield _labelled("intentd_refused", "Clients refused, by reason", "reason", c.refused)
        yield GaugeMetricFamily("intentd_queue_depth", "Utterances waiting for the model", value=self._queue_depth())
        yield GaugeMetricFamily("intentd_active_streams", "Audio streams open now", value=self._active_streams())
        yield _histogram("intentd_batch_size", "Utterances per model call", c.batch_size)
        yield _histogram("intentd_queue_wait_seconds", "Utterance closed -> batch start", c.queue_wait_s)
        yield _histogram("intentd_inference_seconds", "Batch start -> batch done", c.inference_s)
        yield _histogram("intentd_end_of_speech_to_publish_seconds",
                         "Last voiced sample -> event published, hangover included", c.end_of_speech_s)
        yield _histogram("intentd_processing_seconds", "Utterance closed -> event published", c.processing_s)
        info = InfoMetricFamily("intentd_model", "The model serving now")
        info.add_metric([], {"model_id": self._model_id()})
        yield info
        yield GaugeMetricFamily("intentd_model_load_seconds", "Seconds the last model load took",
                                value=c.model_load_s)


class MetricsServer:
    """The HTTP endpoint Prometheus scrapes, serving one collector from its own registry."""

    def __init__(self, collector: CountersCollector) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        self._server: Any = None

    def serve(self, listen: str) -> tuple[str, int]:
        """Start the HTTP endpoint on HOST:PORT (port 0 picks one); returns the bound address."""
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"metrics.listen = {listen!r} is not HOST:PORT")
        try:
            server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
        except OSError as err:
            raise UnavailableError(f"metrics.listen = {listen!r} cannot be bound: {err.strerror}") from err
        self._server = server
        bound = server.server_address
        log.info("metrics on http://%s:%d/metrics", bound[0], bound[1])
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        """Stop the HTTP endpoint if it runs."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
