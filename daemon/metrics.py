"""Prometheus metrics: one registry per service so tests can run several daemons in one process."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from daemon.errors import ConfigError, UnavailableError

log = logging.getLogger(__name__)

# Latency buckets in seconds: our target is tens of milliseconds, the hangover adds a few hundred.
_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Every counter the daemon exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.utterances = Counter("intentd_utterances_total", "Utterances segmented", ["truncated"], registry=r)
        self.events = Counter("intentd_events_total", "Intent events published", ["label"], registry=r)
        self.drops = Counter("intentd_drops_total", "Utterances dropped", ["reason"], registry=r)
        self.errors = Counter("intentd_errors_total", "Errors by kind", ["kind"], registry=r)
        self.queue_depth = Gauge("intentd_queue_depth", "Utterances waiting for the model", registry=r)
        self.active_streams = Gauge("intentd_active_streams", "Audio streams open now", registry=r)
        self.batch_size = Histogram("intentd_batch_size", "Utterances per model call", buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.queue_wait = Histogram("intentd_queue_wait_seconds", "Utterance closed -> batch start",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("intentd_inference_seconds", "Batch start -> batch done",
                                   buckets=_LATENCY_BUCKETS, registry=r)
        self.end_to_publish = Histogram("intentd_end_of_speech_to_publish_seconds",
                                        "Last voiced sample -> event published, hangover included",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.processing = Histogram("intentd_processing_seconds", "Utterance closed -> event published",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.model = Info("intentd_model", "The model serving now", registry=r)
        self.model_load_seconds = Gauge("intentd_model_load_seconds", "Seconds the last model load took",
                                        registry=r)
        self.reloads = Counter("intentd_reloads_total", "Reloads by result", ["result"], registry=r)

    def set_queue_depth_source(self, depth: Callable[[], int]) -> None:
        """Read the queue depth at scrape time instead of tracking every change."""
        self.queue_depth.set_function(lambda: float(depth()))

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
        server = getattr(self, "_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
