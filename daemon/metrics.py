"""Prometheus metrics, read at scrape time from the service's Counters: one registry per service, so tests can
run several daemons in one process. The same endpoint answers `/healthz` for load balancers and Kubernetes probes:
200 while the daemon is ready and its own health check (the one that feeds the systemd watchdog) passes, 503
otherwise (starting, reloading is still 200 as it keeps serving, draining, a stalled batcher, a dead publisher).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from intentd.daemon.batcher import REASON_DRAINING, REASON_QUEUE_FULL
from intentd.daemon.counters import RELOAD_FAILED, RELOAD_OK, Counters, Histogram
from intentd.daemon.errors import ConfigError, UnavailableError
from intentd.daemon.outbox import KIND_CLASSIFY
from intentd.daemon.security import REFUSED_CURVE, REFUSED_MAX_STREAMS, REFUSED_TLS, REFUSED_TOKEN
from intentd.daemon.version import version

log = logging.getLogger(__name__)

HEALTH_PATH: Final = "/healthz"
# (healthy, one line saying why): what /healthz answers with.
HealthCheck = Callable[[], tuple[bool, str]]


# Label values every scrape shows from the start, at 0 until they happen: an alert on a rate (drops, refusals,
# failed reloads) sees zero, not an absent series. The model's labels are added for intentd_events.
KNOWN_DROP_REASONS: Final = (REASON_QUEUE_FULL, REASON_DRAINING)
KNOWN_ERROR_KINDS: Final = (KIND_CLASSIFY,)
KNOWN_RELOAD_RESULTS: Final = (RELOAD_OK, RELOAD_FAILED)
KNOWN_REFUSALS: Final = (REFUSED_TOKEN, REFUSED_TLS, REFUSED_CURVE, REFUSED_MAX_STREAMS)


def _labelled(name: str, doc: str, label: str, counts: Mapping[Any, int],
              known: Iterable[Any] = ()) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    every = {value: 0 for value in known} | dict(counts)
    for value, count in sorted(every.items(), key=lambda kv: str(kv[0])):
        family.add_metric([str(value).lower() if isinstance(value, bool) else str(value)], count)
    return family


def build_info() -> dict[str, str]:
    """What intentd_build_info labels: intentd's version and the versions that decide its numbers."""
    import platform
    from importlib import metadata

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "none"

    return {"version": version(), "python": platform.python_version(), "torch": installed("torch"),
            "transformers": installed("transformers"), "onnxruntime": installed("onnxruntime")}


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
        labels: Callable[[], Sequence[str]] = tuple,
    ) -> None:
        self._counters = counters
        self._queue_depth = queue_depth
        self._active_streams = active_streams
        self._model_id = model_id
        self._labels = labels
        self._build = build_info()

    def collect(self) -> Iterator[Metric]:
        """Called by prometheus_client at every scrape."""
        c = self._counters.snapshot()
        yield _labelled("intentd_utterances", "Utterances segmented", "truncated", c.utterances, (False, True))
        yield CounterMetricFamily("intentd_discarded", "Voiced blips shorter than vad.min_utterance_ms, discarded "
                                  "unclassified", value=c.discarded)
        yield _labelled("intentd_events", "Intent events published", "label", c.events, self._labels())
        yield _labelled("intentd_drops", "Utterances dropped", "reason", c.drops, KNOWN_DROP_REASONS)
        yield _labelled("intentd_errors", "Errors by kind", "kind", c.errors, KNOWN_ERROR_KINDS)
        yield _labelled("intentd_reloads", "Reloads by result", "result", c.reloads, KNOWN_RELOAD_RESULTS)
        yield _labelled("intentd_refused", "Clients refused, by reason", "reason", c.refused, KNOWN_REFUSALS)
        yield GaugeMetricFamily("intentd_queue_depth", "Utterances waiting for the model", value=self._queue_depth())
        yield GaugeMetricFamily("intentd_active_streams", "Audio streams open now", value=self._active_streams())
        yield _histogram("intentd_batch_size", "Utterances per model call", c.batch_size)
        yield _histogram("intentd_queue_wait_seconds", "Utterance closed -> batch start", c.queue_wait_s)
        yield _histogram("intentd_inference_seconds", "Batch start -> batch done", c.inference_s)
        yield _histogram("intentd_end_of_speech_to_publish_seconds",
                         "Last voiced sample -> event published, hangover included", c.end_of_speech_s)
        yield _histogram("intentd_processing_seconds", "Utterance closed -> event published", c.processing_s)
        build = InfoMetricFamily("intentd_build", "intentd's version and the versions of what it runs on")
        build.add_metric([], self._build)
        yield build
        info = InfoMetricFamily("intentd_model", "The model serving now")
        info.add_metric([], {"model_id": self._model_id()})
        yield info
        yield GaugeMetricFamily("intentd_model_load_seconds", "Seconds the last model load took",
                                value=c.model_load_s)


class _QuietHandler(WSGIRequestHandler):
    """No access log: probes come every few seconds."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """The HTTP endpoint Prometheus scrapes, serving one collector from its own registry, and `/healthz`."""

    def __init__(self, collector: CountersCollector, health: HealthCheck | None = None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        # The standard process_* (CPU, memory, open descriptors: the limit issue 18 ran into) and python_info series.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._health = health
        self._metrics_app = make_wsgi_app(self.registry)
        self._server: Any = None

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != HEALTH_PATH:
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        ok, why = self._health() if self._health is not None else (True, "ok")
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "text/plain; charset=utf-8")])
        return [f"{why}\n".encode()]

    def serve(self, listen: str) -> tuple[str, int]:
        """Start the HTTP endpoint on HOST:PORT (port 0 picks one); returns the bound address."""
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"metrics.listen = {listen!r} is not HOST:PORT")
        try:
            server = make_server(host or "127.0.0.1", int(port), self._app, ThreadingWSGIServer,
                                 handler_class=_QuietHandler)
        except OSError as err:
            raise UnavailableError(f"metrics.listen = {listen!r} cannot be bound: {err.strerror}") from err
        threading.Thread(target=server.serve_forever, name="intentd-metrics", daemon=True).start()
        self._server = server
        bound = server.server_address
        log.info("metrics on http://%s:%d/metrics, health on %s", bound[0], bound[1], HEALTH_PATH)
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        """Stop the HTTP endpoint if it runs."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
