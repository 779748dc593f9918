"""The one place that wires the stages: sources -> StreamTable (VAD) -> MicroBatcher -> Engine -> Publisher.

An utterance's path: a source pushes AudioChunks into the StreamTable on the event loop thread; the stream's
StreamSegmenter closes an Utterance; the MicroBatcher queues it and its worker thread runs the Engine
(resample to 16 kHz + one batched forward); `_on_result` publishes the intent event from that thread.

Lifecycle: load and warm the model, bind the publisher and sources, then READY=1. SIGHUP reloads the config and
model beside the running ones and swaps between batches. SIGTERM stops accepting audio, ends every open utterance
as if speech ended, drains the queue, publishes, and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable

from daemon import events
from daemon.batcher import Engine as BatchEngine
from daemon.batcher import MicroBatcher
from daemon.errors import ConfigError, IntentdError
from daemon.frames import Classified, Prediction, Utterance
from daemon.metrics import Metrics
from daemon.notify import Notifier, watchdog_interval_s
from daemon.publisher import Publisher
from daemon.settings import Settings
from daemon.sources import Source, create_source
from daemon.streams import StreamTable
from daemon.threads import run_in_new_thread

log = logging.getLogger(__name__)

MS_PER_S = 1000.0
# Seconds a closing publisher may take to hand queued events to subscribers.
PUBLISH_LINGER_MS = 2000
# With no systemd watchdog armed the health check still runs, to log a stall and feed `status`.
DEFAULT_HEALTH_INTERVAL_S = 1.0
# How long READY waits for the batcher thread's own first forward (see MicroBatcher._warm_this_thread).
WORKER_WARM_TIMEOUT_S = 60.0


def load_engine(settings: Settings) -> BatchEngine:
    """Load, warm and wrap the model named by the settings (ModelError when it cannot)."""
    import torch

    from daemon.classifier import Classifier
    from daemon.engine import Engine
    from daemon.resample import Resampler

    if settings.model.threads:
        torch.set_num_threads(settings.model.threads)
    started = time.monotonic()
    classifier = Classifier.load(settings.model_path(), device=settings.model.device,
                                 top_k=settings.model.top_k, threshold=settings.model.threshold or None)
    classifier.warmup()
    log.info("model %s loaded and warm in %.1f s", classifier.model_id, time.monotonic() - started)
    return Engine(classifier, Resampler())


class _MeteredEngine:
    """Counts batch sizes and inference time around the real engine."""

    def __init__(self, engine: BatchEngine, metrics: Metrics) -> None:
        self.inner = engine
        self.model_id = engine.model_id
        self._metrics = metrics

    def keep_warm(self) -> None:
        warm = getattr(self.inner, "keep_warm", None)
        if warm is not None:
            warm()

    def classify(self, utterances: list[Utterance]) -> list[Prediction]:
        started = time.monotonic()
        result = self.inner.classify(utterances)
        self._metrics.batch_size.observe(len(utterances))
        self._metrics.inference.observe(time.monotonic() - started)
        return result


class Service:
    """The daemon. `run()` blocks until SIGTERM/SIGINT and returns the exit status."""

    def __init__(
        self,
        settings: Settings,
        *,
        reload_settings: Callable[[], Settings] | None = None,
        engine_loader: Callable[[Settings], BatchEngine] = load_engine,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self._reload_settings = reload_settings or (lambda: self.settings)
        self._engine_loader = engine_loader
        self.notifier = notifier or Notifier()
        self.metrics = Metrics()
        self.state = "starting"
        self.started_monotonic = time.monotonic()
        self.counters: Counter[str] = Counter()
        self._publisher: Publisher | None = None
        self._batcher: MicroBatcher | None = None
        self._sources: list[Source] = []
        self._streams: StreamTable | None = None
        self._stop: asyncio.Event | None = None  # made on the loop in _main
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reload_requested: asyncio.Event | None = None
        self._reloading = False
        self._publish_failed: str | None = None
        self._rate_window: tuple[float, int] = (time.monotonic(), 0)
        self.bound_sources: list[str] = []

    # -- entry points --------------------------------------------------------------------------------------

    def check(self) -> None:
        """Validate sources and model without serving (intentd --check)."""
        from daemon.sources.uri import parse_source_uri

        for uri in self.settings.sources.listen:
            parse_source_uri(uri)
        self._engine_loader(self.settings)

    def run(self) -> int:
        """Serve until asked to stop; 0 after a clean drain."""
        return asyncio.run(self._main())

    # -- the pipeline --------------------------------------------------------------------------------------

    async def _main(self) -> int:
        loop = self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._reload_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload_requested.set)
        try:
            await self._start()
        except BaseException:
            await self._teardown(drain=False)
            raise
        tasks = [asyncio.create_task(self._heartbeat_loop(), name="status"),
                 asyncio.create_task(self._health_loop(), name="health"),
                 asyncio.create_task(self._reload_loop(), name="reload")]
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return await self._teardown(drain=True)

    async def _start(self) -> None:
        s = self.settings
        engine = await run_in_new_thread(lambda: self._timed_load(s), name="intentd-load")
        self._publisher = Publisher(s.publisher.uri, sndhwm=s.publisher.sndhwm)
        self._batcher = MicroBatcher(
            _MeteredEngine(engine, self.metrics), self._on_result, on_drop=self._on_drop,
            on_error=self._on_error, max_batch=s.batcher.max_batch, max_wait_ms=s.batcher.max_wait_ms,
            queue_size=s.batcher.queue_size, drop_policy=s.batcher.drop_policy, keep_warm_s=s.model.keep_warm_s,
        )
        self.metrics.set_queue_depth_source(lambda: self._batcher.stats().queued if self._batcher else 0)
        self._batcher.start()
        if not await asyncio.to_thread(self._batcher.wait_started, WORKER_WARM_TIMEOUT_S):
            log.warning("the batcher's start-up forward took over %.0f s; serving anyway", WORKER_WARM_TIMEOUT_S)
        self._streams = StreamTable(s.vad.segmenter(), s.vad.aggressiveness, self._submit, self._publish,
                                    vad_events=s.publisher.vad_events, on_utterance=self._count_utterance)
        for uri in s.sources.listen:
            source = create_source(uri, self._streams, s.sources)
            self._sources.append(source)
            self.bound_sources.append(await source.start())
        if s.metrics.listen:
            self.metrics.serve(s.metrics.listen)
        self.state = "ready"
        log.info("ready: model %s, audio on %s, events on %s", engine.model_id, ", ".join(self.bound_sources),
                 self._publisher.endpoint)
        self._publish(self._status_message())
        self.notifier.ready(self._status_line())

    def _timed_load(self, settings: Settings) -> BatchEngine:
        started = time.monotonic()
        engine = self._engine_loader(settings)
        self.metrics.model_load_seconds.set(time.monotonic() - started)
        self.metrics.model.info({"model_id": engine.model_id})
        return engine

    def _submit(self, utterance: Utterance) -> None:
        assert self._batcher is not None
        self._batcher.submit(utterance)

    def _count_utterance(self, utterance: Utterance) -> None:
        self.counters["utterances"] += 1
        self.metrics.utterances.labels(truncated=str(utterance.truncated).lower()).inc()

    def _publish(self, event: events.Event) -> None:
        if self._publisher is None:
            return
        try:
            self._publisher.publish(event)
        except IntentdError as err:
            # A closed or broken publisher stops the watchdog pings: systemd restarts us.
            self._publish_failed = str(err)
            log.error("cannot publish %s: %s", event.topic, err)

    def _on_result(self, classified: Classified) -> None:
        """Runs on the batcher thread for every classified utterance."""
        event = events.IntentEvent.from_classified(classified)
        self._publish(event)
        latency = event.latency_ms
        self.counters["events"] += 1
        self.metrics.events.labels(label=classified.prediction.label).inc()
        self.metrics.queue_wait.observe(classified.queue_wait_ms / MS_PER_S)
        self.metrics.processing.observe(latency.processing / MS_PER_S)
        self.metrics.end_to_publish.observe(latency.end_of_speech / MS_PER_S)

    def _on_drop(self, utterance: Utterance, reason: str) -> None:
        self.counters["dropped"] += 1
        self.metrics.drops.labels(reason=reason).inc()
        log.warning("dropped utterance %d of stream %s: %s", utterance.index, utterance.stream_id, reason)
        self._publish(events.DroppedEvent.from_utterance(utterance, reason))

    def _on_error(self, utterance: Utterance, message: str) -> None:
        self.counters["errors"] += 1
        self.metrics.errors.labels(kind="classify").inc()
        self._publish(events.ErrorEvent(stream_id=utterance.stream_id, utterance=utterance.index,
                                        error="ClassifyError", message=message))

    # -- health, status, reload ----------------------------------------------------------------------------

    def healthy(self) -> bool:
        """The watchdog's question: is every stage still moving?"""
        if self._batcher is None or not self._batcher.is_healthy(self.settings.service.stall_s):
            return False
        return self._publish_failed is None

    def _utterances_per_s(self) -> float:
        now, count = time.monotonic(), self.counters["utterances"]
        then, before = self._rate_window
        self._rate_window = (now, count)
        return (count - before) / (now - then) if now > then else 0.0

    def _status_message(self) -> events.StatusEvent:
        stats = self._batcher.stats() if self._batcher else None
        engine = self._batcher.engine if self._batcher else None
        counters = dict(self.counters)
        counters["reloads"] = counters.get("reloads", 0)
        return events.StatusEvent.since(
            self.started_monotonic, state=self.state, model_id=engine.model_id if engine else "",
            streams=self._streams.stream_ids if self._streams else (),
            queue_depth=stats.queued if stats else 0, counters=counters,
        )

    def _status_line(self) -> str:
        streams = len(self._streams.stream_ids) if self._streams else 0
        engine = self._batcher.engine if self._batcher else None
        return (f"{self.state}: {streams} streams, {self._utterances_per_s():.1f} utterances/s, "
                f"model {engine.model_id if engine else '-'}")

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.publisher.status_interval_s)
            self.metrics.active_streams.set(len(self._streams.stream_ids) if self._streams else 0)
            self._publish(self._status_message())
            self.notifier.status(self._status_line())

    async def _health_loop(self) -> None:
        interval = watchdog_interval_s() or DEFAULT_HEALTH_INTERVAL_S
        was_healthy = True
        while True:
            await asyncio.sleep(interval)
            ok = self.healthy()
            if ok:
                self.notifier.watchdog()
            elif was_healthy:
                log.error("pipeline unhealthy (batcher stalled or publisher failed): watchdog pings stop")
            was_healthy = ok

    async def _reload_loop(self) -> None:
        assert self._reload_requested is not None
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            await self.reload()

    async def reload(self) -> bool:
        """Load the config and model beside the running ones, then swap; on failure keep what runs."""
        assert self._batcher is not None and self._streams is not None
        self.notifier.reloading()
        self.state = "reloading"
        self._publish(self._status_message())
        try:
            new = self._reload_settings()
            self._check_restart_only(new)
            engine = await run_in_new_thread(lambda: self._timed_load(new), name="intentd-reload")
        except IntentdError as err:
            log.error("reload failed, still serving model %s: %s", self._batcher.engine.model_id, err)
            self.metrics.reloads.labels(result="failed").inc()
            ok = False
        else:
            old = self._batcher.swap_engine(_MeteredEngine(engine, self.metrics))
            self.settings = new
            self._streams.configure(new.vad.segmenter(), new.vad.aggressiveness, new.publisher.vad_events)
            log.info("reloaded: model %s replaces %s", engine.model_id, old.model_id)
            self.metrics.reloads.labels(result="ok").inc()
            self.counters["reloads"] += 1
            ok = True
        self.state = "ready"
        self._publish(self._status_message())
        self.notifier.ready(self._status_line())
        return ok

    def _check_restart_only(self, new: Settings) -> None:
        """Sockets are not rebound on reload: say which changes need a restart instead of half-applying."""
        old = self.settings
        changed = [name for name, a, b in (
            ("sources", old.sources, new.sources), ("publisher.uri", old.publisher.uri, new.publisher.uri),
            ("metrics", old.metrics, new.metrics)) if a != b]
        if changed:
            raise ConfigError(f"{', '.join(changed)} changed: these take effect on restart, not reload")

    # -- shutdown ------------------------------------------------------------------------------------------

    def _request_stop(self, sig: signal.Signals) -> None:
        log.info("%s: draining", sig.name)
        assert self._stop is not None
        self._stop.set()

    def request_stop(self) -> None:
        """Ask a running service to drain and stop; callable from any thread."""
        assert self._stop is not None and self._loop is not None
        # asyncio.Event is not thread-safe: set() from another thread would not wake the loop's waiter.
        self._loop.call_soon_threadsafe(self._stop.set)

    async def _teardown(self, drain: bool) -> int:
        self.notifier.stopping()
        self.state = "draining"
        for source in self._sources:
            source.stop_accepting()
        # Closing the sources ends every open stream: open utterances are flushed into the batcher.
        await asyncio.gather(*(source.close("daemon shutting down") for source in self._sources),
                             return_exceptions=True)
        complete = True
        if self._batcher is not None:
            complete = await asyncio.to_thread(self._batcher.drain, self.settings.service.drain_timeout_s)
        self.state = "stopping"
        if self._publisher is not None:
            self._publish(self._status_message())
            self._publisher.close(PUBLISH_LINGER_MS)
        self.metrics.close()
        self.notifier.close()
        if drain:
            log.info("stopped%s", "" if complete else " with utterances left unclassified")
        return 0 if complete or not drain else 1
