"""The one place that wires the stages. An utterance's route from socket to ZeroMQ, in order:

    1. a source (daemon/sources/: socket, microphone, file)   audio chunks of one stream, on the event loop
    2. StreamTable.push (daemon/streams.py)                    webrtcvad cuts the stream into Utterances
    3. MicroBatcher.submit (daemon/batcher.py)                 one queue for every stream: live ones bounded, drop
                                                               by policy; recorded ones never dropped, their
                                                               sources wait for room (StreamTable.wait_room)
    4. the batcher's worker thread runs UtteranceClassifier    resample to 16 kHz + one batched forward
       (daemon/utterance_classifier.py -> daemon/classifier.py)
    5. Outbox.classified (daemon/outbox.py)                    Classified -> IntentEvent, counted
    6. Publisher.publish (daemon/publisher.py)                 [topic, json] with the next seq, never blocking

Each stage hands its output to the next one it was given: nothing comes back here. The one loop: a source that
answers its clients (Wyoming, daemon/sources/wyoming_server.py) watches its own streams' events at 5
(daemon/stream_watch.py) to answer from them. A dropped utterance goes from
3 and a failed batch from 4 to the Outbox as utterance.dropped / utterance.error; VAD edges and discarded blips go
from 2 to the Outbox. A stream's end goes from 2 through 3, which hands it to the Outbox as stream.end once the
stream's last utterance has had its outcome: after every other event of that stream. Every stage counts into one Counters (daemon/counters.py), which the `status` heartbeat and the
Prometheus endpoint (daemon/metrics.py) both read. `_start` builds the route from its end, so each stage exists
before the one that feeds it.

Lifecycle: bind the publisher and metrics, load and warm the model, bind the sources, then READY=1. SIGHUP reloads the config and
model beside the running ones and swaps between batches. SIGTERM stops accepting audio, ends every open utterance
as if speech ended, drains the queue (what the drain's deadline cannot reach is published as utterance.dropped,
reason draining), lets the batch in progress finish, publishes, and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable

from intentd.daemon import security
from intentd.daemon.batcher import MicroBatcher, UtteranceModel
from intentd.daemon.command_texts import CommandTexts, load_command_texts
from intentd.daemon.counters import Counters
from intentd.daemon.errors import ConfigError, IntentdError, ModelError
from intentd.daemon.events import StatusEvent
from intentd.daemon.loop_errors import AcceptErrorLog
from intentd.daemon.metrics import CountersCollector, MetricsServer
from intentd.daemon.notify import Notifier, watchdog_interval_s
from intentd.daemon.outbox import Outbox
from intentd.daemon.publisher import Publisher
from intentd.daemon.settings import Settings
from intentd.daemon.sources import Source, check_source, create_source
from intentd.daemon.stream_watch import StreamWatchers
from intentd.daemon.streams import StreamTable
from intentd.daemon.threads import run_in_new_thread
from intentd.daemon.utterance_classifier import UtteranceClassifier

log = logging.getLogger(__name__)

# Seconds a closing publisher may take to hand queued events to subscribers.
PUBLISH_LINGER_MS = 2000
# With no systemd watchdog armed the health check still runs, to log a stall and feed `status`.
DEFAULT_HEALTH_INTERVAL_S = 1.0
# How long READY waits for the batcher thread's own first forward (see MicroBatcher._warm_this_thread).
WORKER_WARM_TIMEOUT_S = 60.0


class Service:
    """The daemon. `run()` blocks until SIGTERM/SIGINT and returns the exit status."""

    def __init__(
        self,
        settings: Settings,
        *,
        reload_settings: Callable[[], Settings] | None = None,
        model_loader: Callable[[Settings], UtteranceModel] = UtteranceClassifier.load,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self._reload_settings = reload_settings or (lambda: self.settings)
        self._model_loader = model_loader
        self.notifier = notifier or Notifier()
        self.counters = Counters()
        self.state = "starting"
        self.started_monotonic = time.monotonic()
        self._publisher: Publisher | None = None
        self._outbox: Outbox | None = None
        self._batcher: MicroBatcher | None = None
        self._streams: StreamTable | None = None
        self._sources: list[Source] = []
        self._texts: CommandTexts | None = None  # see _command_texts
        self._metrics: MetricsServer | None = None
        self._stop: asyncio.Event | None = None  # made on the loop in _main
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reload_requested: asyncio.Event | None = None
        self._rate_window: tuple[float, int] = (time.monotonic(), 0)
        self.bound_sources: list[str] = []

    # -- entry points --------------------------------------------------------------------------------------

    def check(self) -> None:
        """Validate sources and model without serving (intentd --check)."""
        for uri in self.settings.sources.listen:
            check_source(uri, self.settings.base_dir)
        security.load(self.settings)
        self._model_loader(self.settings)

    def run(self) -> int:
        """Serve until asked to stop; 0 once every utterance heard has had its outcome published."""
        return asyncio.run(self._main())

    # -- the pipeline --------------------------------------------------------------------------------------

    async def _main(self) -> int:
        loop = self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._reload_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload_requested.set)
        loop.set_exception_handler(AcceptErrorLog())  # out of file descriptors: a line per interval, not a flood
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
        guard = security.load(s)  # the [security] files: a bad one stops start-up before the model loads
        for uri in s.sources.listen:  # a bad URI, an empty file:// source or a busy audio port too
            check_source(uri, s.base_dir, ports=True)
        # The event and metrics ports are bound before the model loads (seconds): a busy port fails at once, not
        # after every load, and /healthz answers 503 "starting" meanwhile (a Kubernetes startup probe's view).
        # The route (module docstring), from its end: each stage is handed the one it feeds.
        publisher = self._publisher = Publisher(s.publisher.uri, sndhwm=s.publisher.sndhwm, curve=guard.curve,
                                                counters=self.counters, instance=s.publisher.instance())  # 6
        if s.metrics.listen:
            self._metrics = MetricsServer(CountersCollector(
                self.counters, queue_depth=lambda: self._batcher.queue_depth if self._batcher else 0,
                active_streams=lambda: len(self._streams.stream_ids) if self._streams else 0,
                model_id=self._model_id, labels=self._serving_labels), health=self._health_report)
            self._metrics.serve(s.metrics.listen)
        model = await run_in_new_thread(lambda: self._load(s), name="intentd-load")
        watchers = StreamWatchers()
        outbox = self._outbox = Outbox(publisher, self.counters, watchers=watchers)  # 5
        batcher = self._batcher = MicroBatcher(model, outbox, s.batcher, keep_warm_s=s.model.keep_warm_s,
                                               counters=self.counters)  # 3, 4
        batcher.start()
        if not await asyncio.to_thread(batcher.wait_started, WORKER_WARM_TIMEOUT_S):
            log.warning("the batcher's start-up forward took over %.0f s; serving anyway", WORKER_WARM_TIMEOUT_S)
        streams = self._streams = StreamTable(s.vad, batcher, outbox.publish, vad_events=s.publisher.vad_events,
                                              blip_events=s.publisher.blip_events, counters=self.counters)  # 2
        for uri in s.sources.listen:  # 1
            source = create_source(uri, streams, s.sources, security=guard.ingest, counters=self.counters,
                                   watchers=watchers, texts=self._command_texts, base_dir=s.base_dir)
            self._sources.append(source)
            self.bound_sources.append(await source.start())
        self.state = "ready"
        log.info("ready: model %s, audio on %s, events on %s", model.model_id, ", ".join(self.bound_sources),
                 publisher.endpoint)
        outbox.publish(self._status())
        self.notifier.ready(self._status_line())

    def _command_texts(self) -> CommandTexts:
        """The serving model's labels and sentences, read from its folder once per model (Wyoming asks)."""
        assert self._batcher is not None
        model_id = self._batcher.model.model_id
        if self._texts is None or self._texts.model_id != model_id:
            try:
                self._texts = load_command_texts(self.settings.model_path(), model_id)
            except ModelError as err:
                # The folder changed or went away after the load (or an injected model has none): a scrape or a
                # Wyoming describe must still answer, from what the serving model itself knows.
                log.warning("%s; answering with the serving model's labels and no sentences", err)
                labels = tuple(getattr(self._batcher.model, "labels", ()))
                self._texts = CommandTexts(model_id, labels)
        return self._texts

    def _serving_labels(self) -> tuple[str, ...]:
        """The serving model's labels (none before it loads): /metrics shows each one's intent count from 0."""
        return self._command_texts().labels if self._batcher is not None else ()

    def _load(self, settings: Settings) -> UtteranceModel:
        started = time.monotonic()
        model = self._model_loader(settings)
        self.counters.model_loaded(time.monotonic() - started)
        return model

    # -- health, status, reload ----------------------------------------------------------------------------

    def healthy(self) -> bool:
        """The watchdog's question: is every stage still moving?"""
        if self._batcher is None or not self._batcher.is_healthy(self.settings.service.stall_s):
            return False
        return self._outbox is not None and self._outbox.failure is None

    def _health_report(self) -> tuple[bool, str]:
        """What /healthz answers (load balancers, Kubernetes probes): serving and healthy, and the state in words."""
        if self.state not in ("ready", "reloading"):  # a reload keeps serving the old model
            return False, self.state
        if not self.healthy():
            return False, f"{self.state}, unhealthy: batcher stalled or publisher failed"
        return True, self.state

    def _utterances_per_s(self) -> float:
        now, count = time.monotonic(), self.counters.status()["utterances"]
        then, before = self._rate_window
        self._rate_window = (now, count)
        return (count - before) / (now - then) if now > then else 0.0

    def _model_id(self) -> str:
        return self._batcher.model.model_id if self._batcher else ""

    def _status(self) -> StatusEvent:
        return StatusEvent.since(
            self.started_monotonic, state=self.state, model_id=self._model_id(),
            streams=self._streams.stream_ids if self._streams else (),
            queue_depth=self._batcher.queue_depth if self._batcher else 0, counters=self.counters.status(),
        )

    def _status_line(self) -> str:
        streams = len(self._streams.stream_ids) if self._streams else 0
        return (f"{self.state}: {streams} streams, {self._utterances_per_s():.1f} utterances/s, "
                f"model {self._model_id() or '-'}")

    def _publish_status(self) -> None:
        if self._outbox is not None:
            self._outbox.publish(self._status())

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.publisher.status_interval_s)
            self._publish_status()
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
        self._publish_status()
        try:
            new = self._reload_settings()
            self._check_restart_only(new)
            model = await run_in_new_thread(lambda: self._load(new), name="intentd-reload")
        except IntentdError as err:
            log.error("reload failed, still serving model %s: %s", self._batcher.model.model_id, err)
            ok = False
        else:
            old = self._batcher.swap_model(model)
            self.settings = new
            self._streams.configure(new.vad, new.publisher.vad_events, new.publisher.blip_events)
            log.info("reloaded: model %s replaces %s", model.model_id, old.model_id)
            ok = True
        self.counters.reload(ok)
        self.state = "ready"
        self._publish_status()
        self.notifier.ready(self._status_line())
        return ok

    def _check_restart_only(self, new: Settings) -> None:
        """Sockets are not rebound on reload: say which changes need a restart instead of half-applying."""
        old = self.settings
        changed = [name for name, a, b in (
            ("sources", old.sources, new.sources), ("publisher.uri", old.publisher.uri, new.publisher.uri),
            ("publisher.instance_id", old.publisher.instance_id, new.publisher.instance_id),
            ("metrics", old.metrics, new.metrics), ("security", old.security, new.security)) if a != b]
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
        self._publish_status()
        if self._publisher is not None:
            self._publisher.close(PUBLISH_LINGER_MS)
        if self._metrics is not None:
            self._metrics.close()
        self.notifier.close()
        if drain:
            # Not a failure: the drain published an utterance.dropped (draining) for each one it could not reach.
            log.info("stopped%s", "" if complete else "; the drain's deadline dropped some utterances (draining)")
        return 0
