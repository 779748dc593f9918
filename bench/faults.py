"""Faults and load against the running daemon, one table: each case's expectation, what happened, pass or fail.

Usage:
    .venv/bin/python -m bench.faults [--model DIR] [--fsdd DIR] [--soak-minutes 10] [--only CASE ...]
        [--seed 0] [--keep-logs]

Every case starts its own `intentd` subprocess on loopback through the tests' harness (tests/daemon_proc.py: free
ports, a tmp config, READY=1 from a fake notify socket, events from a subscriber synchronised on the status
heartbeat) and talks to it over real sockets with FSDD recordings (8 kHz digits; the run is skipped without them).
The model is a tiny Whisper classifier built from a config (as the tests build theirs), or --model DIR (a second,
different tiny one is built for the reload cases either way). Real-time streams are paced by one shared clock as in
bench/daemon_load.py, and the utterances a stream holds are counted by running the daemon's own segmenter over the
audio actually sent, so "events == expected" is exact. After a SIGTERM, what the daemon heard is its own count:
the `utterances` counter of its last status event (state `stopping`), published after the drain.

Cases (names for --only): malformed, storm, sigterm_realtime, sigterm_full_queue, sigterm_after_hup, sighup_load,
stalled_subscribers, kill_client, kill_daemon, fd_limits, fd_exhausted, slot_hogging, relative_paths, soak.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zmq

from bench.daemon_load import (
    CHUNK_BYTES,
    CHUNK_MS,
    RATE,
    expected_utterances,
    flood_stream,
    load_digits,
    noise,
    realtime_stream,
)
from intentd.daemon import events
from intentd.daemon.protocol import ReplyDecoder, StreamHeader, encode_audio, encode_end, encode_header
from tests.daemon_proc import (
    FSDD,
    REPO,
    DaemonFailed,
    DaemonProc,
    EventCollector,
    free_port,
    merge,
    start_daemon,
)

MS = 1000.0
READY_TIMEOUT_S = 120.0
REPLY_TIMEOUT_S = 30.0
SETTLE_QUIET_S = 3.0  # after the senders finish: no new event for this long means nothing more is coming
LABELS_A = ("balance", "transfer", "stop")
LABELS_B = ("yes", "no")
# Every case's daemon: INFO logs (the log is part of what is checked), a heartbeat the cases can watch the queue by.
BASE_SECTIONS: dict[str, dict[str, Any]] = {
    "service": {"log_level": "INFO"},
    "publisher": {"status_interval_s": 0.2},
}
ABORT_MARKS = ("terminate called", "Fatal Python error", "core dumped")
ACCEPT_ERROR_MARKS = ("out of system resource", "Too many open files")
DRAIN_S = 2.0  # the full-queue case's drain_timeout_s: shorter than the queue takes, on purpose
OPEN_TIMEOUT_S = 10.0
FD_HARD = 512  # the exhaustion case's hard limit: the crowd (some 875 descriptors in the daemon) cannot fit
RSS_GROWTH_LIMIT = 0.05  # the soak's target: RSS at the end within 5% of RSS at its start
SOAK_WARMUP_S = 30.0  # the soak's RSS "start" is taken after this much load (first batches allocate buffers)


# ------------------------------------------------------------------------------------------------ table


@dataclass
class Row:
    """One case's line in the table."""

    case: str
    expected: str
    got: str
    ok: bool


@dataclass
class Ctx:
    """What every case needs: audio, models, a folder, options."""

    workdir: Path
    model_a: Path
    model_b: Path
    clips: list[np.ndarray]
    seed: int
    soak_minutes: float
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)  # model folder name -> labels
    given_model: bool = False  # --model: a real model, used where the model's own cost matters
    _heavy: Path | None = None

    def heavy(self) -> Path:
        """A model whose forward and load cost what a real one's do: --model, else a Whisper-tiny-size one."""
        if self.given_model:
            return self.model_a
        if self._heavy is None:
            from tests.tiny_models import build_whisper_tiny_size

            self._heavy = build_whisper_tiny_size(self.workdir / "model-heavy", LABELS_A)
            self.labels["model-heavy"] = LABELS_A
        return self._heavy


def mb(nbytes: float) -> float:
    """Bytes in MiB."""
    return nbytes / 2**20


def rss(d: DaemonProc) -> int:
    """The daemon's resident set size in bytes."""
    return int(psutil.Process(d.proc.pid).memory_info().rss)


def aborted(log_text: str) -> bool:
    """Whether the daemon's log shows a C++ abort or a fatal interpreter error."""
    return any(mark in log_text for mark in ABORT_MARKS)


# ------------------------------------------------------------------------------------------------ daemons


def daemon(ctx: Ctx, name: str, sections: Mapping[str, Mapping[str, Any]] | None = None, *, model: Path | None = None,
           metrics: bool = False, cwd: Path | None = None, nofile: tuple[int, int] | None = None) -> DaemonProc:
    """A ready daemon for one case (its config and log in WORKDIR/NAME/)."""
    return start_daemon(ctx.workdir / name, (model or ctx.model_a).resolve(), merge(BASE_SECTIONS, sections or {}),
                        metrics=metrics, name=name, ready_timeout_s=READY_TIMEOUT_S, cwd=cwd, nofile=nofile)


@contextlib.contextmanager
def serving(ctx: Ctx, name: str, sections: Mapping[str, Mapping[str, Any]] | None = None,
            uris: tuple[str, str] | None = None, **kwargs: Any) -> Iterator[tuple[DaemonProc, EventCollector]]:
    """A ready daemon and a synchronised subscriber; the daemon is stopped (or reaped) afterwards. `uris`: the
    (audio, events) addresses when `sections` set them (the harness only knows the ports it picked)."""
    d = daemon(ctx, name, sections, **kwargs)
    if uris is not None:
        d.audio_uri, d.events_uri = uris
    collector: EventCollector | None = None
    try:
        collector = EventCollector(d.events_uri)
        yield d, collector
    finally:
        if collector is not None:
            collector.close()
        if d.alive():
            d.stop()
        else:
            d._cleanup()


def settle(collector: EventCollector, quiet_s: float = SETTLE_QUIET_S, timeout_s: float = 120.0,
           done: Callable[[], bool] = lambda: False) -> None:
    """Wait until `done()` or no event other than a heartbeat has arrived for `quiet_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not done():
        with collector._lock:
            last = next((t for t, e in reversed(collector.records) if not isinstance(e, events.StatusEvent)), 0.0)
        if time.time() - last > quiet_s:
            return
        time.sleep(0.1)


def records(collector: EventCollector) -> list[events.Event]:
    """Every event received so far."""
    with collector._lock:
        return [e for _, e in collector.records]


@dataclass
class Tally:
    """Events about a set of streams, counted."""

    intents: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    ends: list[events.StreamEndEvent] = field(default_factory=list)
    by_stream: Counter[str] = field(default_factory=Counter)
    intent_events: list[events.IntentEvent] = field(default_factory=list)

    @property
    def outcomes(self) -> int:
        """Utterances with a published outcome: classified, dropped or failed."""
        return self.intents + sum(self.dropped.values()) + self.errors


def tally(found: Sequence[events.Event], prefix: str = "") -> Tally:
    """Count intents, drops (by reason), errors and stream ends about streams whose id starts with `prefix`."""
    t = Tally()
    for e in found:
        sid = str(e.raw.get("stream_id", ""))
        if not sid.startswith(prefix):
            continue
        if isinstance(e, events.IntentEvent):
            t.intents += 1
            t.by_stream[sid] += 1
            t.intent_events.append(e)
        elif isinstance(e, events.DroppedEvent):
            t.dropped[e.reason] += 1
        elif isinstance(e, events.ErrorEvent) and e.utterance is not None:
            t.errors += 1
        elif isinstance(e, events.StreamEndEvent):
            t.ends.append(e)
    return t


def last_status(found: Sequence[events.Event], state: str | None = None) -> events.StatusEvent | None:
    """The last status event (in `state`, when given)."""
    for e in reversed(found):
        if isinstance(e, events.StatusEvent) and (state is None or e.state == state):
            return e
    return None


def wait_for(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> bool:
    """Poll `predicate` until it holds or the timeout passes; whether it held."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True


def scrape(port: int, timeout_s: float = 5.0) -> str:
    """The daemon's /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as resp:
        return resp.read().decode()


def metric(text: str, name: str) -> float:
    """Sum of an unlabelled-or-labelled metric's samples (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{name}(?:\{{.*\}})? (\S+)$", line)
        if m:
            total += float(m.group(1))
    return total


# ------------------------------------------------------------------------------------------------ senders


@dataclass
class Outcome:
    """What one client stream saw."""

    sent: int = 0  # bytes of PCM sent
    reply: str = ""  # accept-time refusal, or the last reply: final / error: REASON / lost
    accepted: bool = False


async def _open(address: tuple[str, int], stream_id: str, live: bool = True
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, ReplyDecoder, str]:
    """Connect and send a header; (reader, writer, decoder, "" or the refusal's reason)."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(encode_header(StreamHeader(stream_id, RATE, "s16le", 1, live=live)))
    decoder = ReplyDecoder()
    while True:
        data = await asyncio.wait_for(reader.read(4096), REPLY_TIMEOUT_S)
        if not data:
            return reader, writer, decoder, "closed before accept"
        replies = decoder.feed(data)
        if replies:
            return reader, writer, decoder, "" if replies[0].type == "accept" else str(replies[0].reason)


async def _last_reply(reader: asyncio.StreamReader, decoder: ReplyDecoder, timeout_s: float = REPLY_TIMEOUT_S) -> str:
    """Read until the daemon's final or error reply (or the connection ends)."""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(4096), timeout_s)
            if not data:
                return "lost"
            for reply in decoder.feed(data):
                if reply.type == "final":
                    return "final"
                if reply.type == "error":
                    return f"error: {reply.reason}"
    except (ConnectionError, OSError, TimeoutError) as err:
        return f"lost: {type(err).__name__}"


async def talk(address: tuple[str, int], streams: Mapping[str, bytes], *, realtime: bool = True, live: bool = True,
               stop: threading.Event | None = None, on_open: Callable[[], None] | None = None
               ) -> dict[str, Outcome]:
    """Send every stream (paced by one clock when `realtime`, else as fast as the daemon reads), then an end marker
    and wait for each reply. When `stop` is set the senders stop sending and only wait for the daemon's replies."""
    out = {sid: Outcome() for sid in streams}
    opened = await asyncio.gather(*(_open(address, sid, live) for sid in streams), return_exceptions=True)
    conns: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter, ReplyDecoder]] = {}
    for sid, result in zip(streams, opened, strict=True):
        if isinstance(result, BaseException):
            out[sid].reply = f"refused: {type(result).__name__}"
        elif result[3]:
            out[sid].reply = f"refused: {result[3]}"
            result[1].close()
        else:
            out[sid].accepted = True
            conns[sid] = result[:3]
    if on_open is not None:
        on_open()
    stopped = stop or threading.Event()

    async def one(sid: str, pcm: bytes) -> None:
        reader, writer, decoder = conns[sid]
        step = CHUNK_BYTES if realtime else CHUNK_BYTES * 50
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            for i, lo in enumerate(range(0, len(pcm) - len(pcm) % CHUNK_BYTES, step)):
                if stopped.is_set():
                    break
                if realtime:
                    # A chunk leaves once its last sample is due, as from a sound card, by the shared clock.
                    await asyncio.sleep(max(0.0, start + (i + 1) * CHUNK_MS / MS - loop.time()))
                writer.write(encode_audio(pcm[lo:lo + step]))
                await writer.drain()
                out[sid].sent = lo + step
            if not stopped.is_set():
                writer.write(encode_end())
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        out[sid].reply = await _last_reply(reader, decoder)
        writer.close()

    await asyncio.gather(*(one(sid, streams[sid]) for sid in conns))
    return out


class Background:
    """Run a coroutine on its own event loop in a thread; `result()` joins it."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._value = asyncio.run(make())
            except BaseException as err:  # noqa: BLE001 -- re-raised by result()
                self._error = err

        self._thread = threading.Thread(target=run, name="faults-sender", daemon=True)
        self._thread.start()

    def result(self, timeout_s: float = 600.0) -> Any:
        """The coroutine's value (its exception re-raised)."""
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError("sender did not finish")
        if self._error is not None:
            raise self._error
        return self._value


def rt_streams(ctx: Ctx, prefix: str, n: int, duration_s: float) -> dict[str, bytes]:
    """N real-time streams of digits and pauses, `duration_s` each."""
    return {f"{prefix}{i}": realtime_stream(ctx.clips, ctx.seed, i, duration_s).tobytes() for i in range(n)}


def expected_sent(streams: Mapping[str, bytes], outcomes: Mapping[str, Outcome]) -> int:
    """Utterances in the audio actually sent on the accepted streams (the daemon's segmenter, run here)."""
    total = 0
    for sid, pcm in streams.items():
        o = outcomes[sid]
        if o.accepted and o.sent:
            total += expected_utterances(np.frombuffer(pcm[:o.sent], dtype="<i2"))
    return total


def wait_intents(collector: EventCollector, prefix: str, count: int, timeout_s: float = 120.0) -> bool:
    """Block until `count` intents about `prefix` streams have arrived."""
    return wait_for(lambda: tally(records(collector), prefix).intents >= count, timeout_s)


# ------------------------------------------------------------------------------------------------ cases


def case_malformed(ctx: Ctx) -> Row:
    """5,000 malformed connections while 8 real-time streams talk."""
    total, concurrency = 5000, 50
    hello = b"INTD" + bytes([1])
    junk: list[Callable[[random.Random], bytes]] = [
        lambda r: r.randbytes(r.randint(1, 300)),  # noise
        lambda r: b"HTTP/1.1 GET /\r\n\r\n",  # the wrong protocol
        lambda r: hello + (60000).to_bytes(2, "big"),  # a header longer than allowed
        lambda r: hello + (40).to_bytes(2, "big") + b"{not json",  # truncated, then closed
        lambda r: hello + (12).to_bytes(2, "big") + b'{"nope": 1}}',  # JSON that is no header
        lambda r: encode_header(StreamHeader("m", RATE, "s16le", 1)) + bytes([0x7F, 0, 0, 0, 1, 0]),  # bad kind
        lambda r: encode_header(StreamHeader("m", RATE, "s16le", 1)) + bytes([1]) + (1 << 30).to_bytes(4, "big"),
        lambda r: encode_header(StreamHeader("m", RATE, "s16le", 1)) + encode_audio(b"\x01"),  # odd byte count
        lambda r: b"",  # connect and close
    ]
    answered = Counter[str]()

    async def flood() -> None:
        rng = random.Random(ctx.seed)
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                payload = junk[i % len(junk)](rng)
                try:
                    reader, writer = await asyncio.open_connection(*address)
                    writer.write(payload)
                    await writer.drain()
                    if i % 3 == 0:  # a third half-close, as a client that is done sending would
                        writer.write_eof()
                    data = await asyncio.wait_for(reader.read(65536), 15.0)
                    answered["reply" if data else "closed"] += 1
                    writer.close()
                except TimeoutError:
                    answered["no answer in 15 s"] += 1
                    writer.close()
                except (ConnectionError, OSError):
                    answered["reset"] += 1

        await asyncio.gather(*(one(i) for i in range(total)))

    with serving(ctx, "malformed", {"sources": {"idle_timeout_s": 5.0}}) as (d, collector):
        address = d.audio_address
        rss0 = rss(d)
        stop = threading.Event()
        streams = rt_streams(ctx, "good-", 8, 120.0)
        sender = Background(lambda: talk(address, streams, stop=stop))
        started = time.monotonic()
        asyncio.run(flood())
        flood_s = time.monotonic() - started
        stop.set()  # the good streams end where the flood ended
        outcomes = sender.result()
        expected = expected_sent(streams, outcomes)
        settle(collector, done=lambda: tally(records(collector), "good-").intents >= expected)
        t = tally(records(collector), "good-")
        rss1, alive, missed = rss(d), d.alive(), collector.missed
    ok = (alive and t.intents == expected and not t.dropped and missed == 0 and answered["no answer in 15 s"] == 0
          and rss1 - rss0 < 64 * 2**20)
    return Row("5,000 malformed connections while 8 real-time streams talk",
               "daemon up; every good utterance classified; 0 seq gaps; each bad client answered or closed; RSS +<64 MB",
               f"{total} bad in {flood_s:.0f} s ({', '.join(f'{k} {v}' for k, v in sorted(answered.items()))}); "
               f"good {t.intents}/{expected}, dropped {sum(t.dropped.values())}, gaps {missed}; "
               f"RSS {mb(rss0):.0f} -> {mb(rss1):.0f} MB", ok)


def case_storm(ctx: Ctx) -> Row:
    """1,000 connections at once, each a short stream; max_streams (512) refuses the rest with a reason."""
    n = 1000
    rng = np.random.default_rng(ctx.seed)
    streams = {}
    for i in range(n):
        clip = ctx.clips[int(rng.integers(len(ctx.clips)))]
        streams[f"storm-{i}"] = np.concatenate([noise(rng, 0.3), clip, noise(rng, 0.8)]).tobytes()
    with serving(ctx, "storm") as (d, collector):
        started = time.monotonic()
        outcomes = Background(lambda: talk(d.audio_address, streams, realtime=False)).result()
        took = time.monotonic() - started
        accepted = [sid for sid, o in outcomes.items() if o.accepted]
        expected = expected_sent(streams, outcomes)
        settle(collector, done=lambda: len(tally(records(collector), "storm-").ends) >= len(accepted))
        t = tally(records(collector), "storm-")
        alive, missed = d.alive(), collector.missed
    replies = Counter(o.reply.split(":")[0] if not o.accepted else o.reply for o in outcomes.values())
    refused = [o.reply for o in outcomes.values() if not o.accepted]
    silent = [r for r in refused if "too many streams" not in r]
    finals = sum(o.reply == "final" for o in outcomes.values() if o.accepted)
    # Live streams sent faster than real time: a real model cannot keep up with 512 of them, and live audio is
    # shed with a published utterance.dropped (queue_full) rather than queued without bound (docs/events.md).
    shed = set(t.dropped) <= {"queue_full"} and t.errors == 0
    ok = (alive and not silent and finals == len(accepted) and t.outcomes == expected and shed
          and len(t.ends) == len(accepted) and missed == 0)
    drops = ", ".join(f"{k} {v}" for k, v in sorted(t.dropped.items())) or "none dropped"
    return Row("1,000-connection storm (max_streams 512)",
               "each connection accepted or refused with a reason; every accepted stream answered (final + stream.end), "
               "each utterance an intent or a published utterance.dropped (queue_full); 0 seq gaps",
               f"{len(accepted)} accepted ({finals} final, {len(t.ends)} stream.end), {len(refused)} refused "
               f"({len(refused) - len(silent)} 'too many streams', {len(silent)} other) in {took:.1f} s; "
               f"intents {t.intents} + {drops} = {t.outcomes}/{expected}; gaps {missed}; {dict(replies)}", ok)


def _sigterm_row(name: str, d: DaemonProc, collector: EventCollector, prefix: str, status: int,
                 extra: str = "") -> tuple[bool, str]:
    """After a SIGTERM: did every utterance the daemon counted get a published outcome, and was the exit clean?"""
    # The stopping status follows the drain on the same socket: once it is here, everything before it is too.
    wait_for(lambda: last_status(records(collector), "stopping") is not None, 10.0)
    found = records(collector)
    t = tally(found, prefix)
    final = last_status(found, "stopping")
    heard = final.counters.get("utterances", -1) if final is not None else -1
    log_text = d.log_text()
    abort = aborted(log_text)
    ok = status == 0 and not abort and heard >= 0 and t.outcomes == heard and collector.missed == 0
    drops = ", ".join(f"{k} {v}" for k, v in sorted(t.dropped.items())) or "none"
    got = (f"exit {status}{' ABORT' if abort else ''}; heard {heard if heard >= 0 else '? (no stopping status)'}, "
           f"published {t.intents} intents + dropped ({drops}) + {t.errors} errors = {t.outcomes}; "
           f"{len(t.ends)} stream.end; gaps {collector.missed}{extra}")
    return ok, got


def case_sigterm_realtime(ctx: Ctx) -> Row:
    """SIGTERM in the middle of 20 real-time streams: every utterance heard is published."""
    n = 20
    streams = rt_streams(ctx, "rt-", n, 60.0)
    with serving(ctx, "sigterm_realtime") as (d, collector):
        sender = Background(lambda: talk(d.audio_address, streams))
        wait_intents(collector, "rt-", 2 * n)
        started = time.monotonic()
        d.signal(signal.SIGTERM)
        status = d.wait_exit(60.0)
        took = time.monotonic() - started
        sender.result()
        ok, got = _sigterm_row("sigterm", d, collector, "rt-", status, f"; exited {took:.1f} s after SIGTERM")
        t = tally(records(collector), "rt-")
        ok = ok and not t.dropped and len(t.ends) == n
    return Row("SIGTERM mid-way through 20 real-time streams",
               "exit 0; every utterance heard published as an intent (none dropped); 20 stream.end; 0 gaps", got, ok)


def case_sigterm_full_queue(ctx: Ctx) -> Row:
    """SIGTERM with the queue full: 8 live streams flooding, SIGTERM at queue depth >= 100."""
    per = 60
    streams = {f"full-{i}": flood_stream(ctx.clips, ctx.seed, i, per).tobytes() for i in range(8)}
    # A Whisper-tiny-size model and a short drain: the queue fills from 8 floods and cannot empty before the
    # deadline, which is what this case is about (the run: tiny.en and the default 20 s).
    sections = {"service": {"drain_timeout_s": DRAIN_S}}
    with serving(ctx, "sigterm_full_queue", sections, model=ctx.heavy()) as (d, collector):
        sender = Background(lambda: talk(d.audio_address, streams, realtime=False))
        deep = wait_for(lambda: (s := last_status(records(collector))) is not None and s.queue_depth >= 100, 120.0)
        depth = last_status(records(collector))
        d.signal(signal.SIGTERM)
        status = d.wait_exit(60.0)
        sender.result()
        ok, got = _sigterm_row("full", d, collector, "full-", status,
                               f"; SIGTERM at queue depth {depth.queue_depth if depth else '?'}")
        ok = ok and deep
    return Row(f"SIGTERM with a full queue (8 live floods, depth >= 100, Whisper-tiny-size model, "
               f"drain_timeout_s {DRAIN_S:g})",
               "exit 0, no abort; every utterance heard is an intent or utterance.dropped (queue_full or draining); "
               "0 gaps", got, ok)


def case_sigterm_after_hup(ctx: Ctx) -> Row:
    """SIGTERM 0.1 s after SIGHUP (a model change loading), under 8 real-time streams."""
    streams = rt_streams(ctx, "hup-", 8, 60.0)
    heavy = ctx.heavy()  # a load that takes long enough to be interrupted
    with serving(ctx, "sigterm_after_hup") as (d, collector):
        sender = Background(lambda: talk(d.audio_address, streams))
        wait_intents(collector, "hup-", 8)
        d.rewrite_config({"model": {"path": str(heavy)}})
        d.signal(signal.SIGHUP)
        time.sleep(0.1)  # the fault itself: the second signal lands while the new model loads
        d.signal(signal.SIGTERM)
        status = d.wait_exit(60.0)
        sender.result()
        ok, got = _sigterm_row("hup", d, collector, "hup-", status)
    return Row("SIGTERM 0.1 s after SIGHUP (loading a Whisper-tiny-size model), 8 real-time streams",
               "exit 0, no abort; every utterance heard published; 0 gaps", got, ok)


def case_sighup_load(ctx: Ctx) -> Row:
    """SIGHUP with a model change and a config change while 20 real-time streams talk."""
    n = 20
    streams = rt_streams(ctx, "load-", n, 45.0)
    with serving(ctx, "sighup_load") as (d, collector):
        sender = Background(lambda: talk(d.audio_address, streams))
        wait_intents(collector, "load-", 2 * n)
        d.rewrite_config({"model": {"path": str(ctx.model_b.resolve())}, "vad": {"hangover_ms": 330},
                          "publisher": {"status_interval_s": 0.3}})
        d.signal(signal.SIGHUP)
        d.notify.wait_for("RELOADING", "1", 30.0)
        d.notify.wait_for("READY", "1", 120.0)
        reloaded_wall = time.time()
        outcomes = sender.result()
        expected = expected_sent(streams, outcomes)
        settle(collector, done=lambda: len(tally(records(collector), "load-").ends) >= n)
        found = records(collector)
        t = tally(found, "load-")
        missed, log_text = collector.missed, d.log_text()
    ids = sorted({e.model_id for e in t.intent_events})
    a_ids = [i for i in ids if i.startswith(ctx.model_a.name + "@")]
    b_ids = [i for i in ids if i.startswith(ctx.model_b.name + "@")]
    wrong = 0
    for e in t.intent_events:
        labels = ctx.labels[e.model_id.split("@")[0]]
        # Each event's label is its model's; after READY only the new model serves.
        if e.label not in labels or (e.published_wall > reloaded_wall + 1.0 and e.model_id not in b_ids):
            wrong += 1
    per_stream_switches = 0
    for sid in streams:
        seq = [e.model_id for e in t.intent_events if e.stream_id == sid]
        per_stream_switches = max(per_stream_switches, sum(a != b for a, b in itertools.pairwise(seq)))
    finals = sum(o.reply == "final" for o in outcomes.values())
    ok = (finals == n and len(t.ends) == n and all(e.reason is None for e in t.ends) and t.intents == expected
          and not t.dropped and missed == 0 and wrong == 0 and len(a_ids) == 1 and len(b_ids) == 1
          and per_stream_switches <= 1 and "reloaded: model" in log_text)
    return Row("SIGHUP with a model and a config change under 20 real-time streams",
               "no stream dropped (20 final, 20 clean stream.end); intents == expected; 0 gaps; each event's "
               "model_id and label match (old model, then the new one, switching once per stream)",
               f"{finals} final, {len(t.ends)} stream.end ({sum(e.reason is None for e in t.ends)} clean); intents "
               f"{t.intents}/{expected}, dropped {sum(t.dropped.values())}; gaps {missed}; model ids {ids}; "
               f"{wrong} events with the wrong model or label; at most {per_stream_switches} switch per stream", ok)


def case_stalled_subscribers(ctx: Ctx) -> Row:
    """40 subscribers that never read beside one that does, under 20 real-time streams."""
    n, stalled_n = 20, 40
    streams = rt_streams(ctx, "sub-", n, 40.0)
    # A small high-water mark so the stalled subscribers' queues fill within the run (sndhwm messages each).
    sections = {"publisher": {"sndhwm": 1000, "vad_events": True, "status_interval_s": 0.1}}
    with serving(ctx, "stalled_subscribers", sections) as (d, collector):
        zctx: zmq.Context[Any] = zmq.Context()
        stalled = []
        for _ in range(stalled_n):
            s = zctx.socket(zmq.SUB)
            s.setsockopt(zmq.RCVHWM, 1)
            s.setsockopt(zmq.RCVBUF, 4096)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt_string(zmq.SUBSCRIBE, "")
            s.connect(d.events_uri)
            stalled.append(s)
        try:
            rss0 = rss(d)
            outcomes = Background(lambda: talk(d.audio_address, streams)).result()
            expected = expected_sent(streams, outcomes)
            settle(collector, done=lambda: tally(records(collector), "sub-").intents >= expected)
            t = tally(records(collector), "sub-")
            rss1, missed, published = rss(d), collector.missed, len(records(collector))
        finally:
            for s in stalled:
                s.close()
            zctx.term()
    ok = t.intents == expected and missed == 0 and rss1 - rss0 < 128 * 2**20
    return Row(f"{stalled_n} subscribers that never read (sndhwm 1000) + one that does, 20 real-time streams",
               "the reading subscriber gets every event (intents == expected, 0 gaps); RSS +<128 MB",
               f"intents {t.intents}/{expected}, gaps {missed}, {published} events published; "
               f"RSS {mb(rss0):.0f} -> {mb(rss1):.0f} MB", ok)


KILL_CLIENT = """
import socket, sys, time
import numpy as np
from intentd.daemon.protocol import StreamHeader, encode_audio, encode_header
host, port, sid, path = sys.argv[1:5]
pcm = np.load(path).tobytes()
s = socket.create_connection((host, int(port)))
s.sendall(encode_header(StreamHeader(sid, 8000, "s16le", 1)))
s.recv(4096)
for i in range(0, len(pcm), 320):
    s.sendall(encode_audio(pcm[i:i + 320]))
    time.sleep(0.02)
print("sent", flush=True)
time.sleep(3600)
"""


def case_kill_client(ctx: Ctx) -> Row:
    """kill -9 of a client mid-utterance: its utterance is still classified."""
    rng = np.random.default_rng(ctx.seed)
    audio = np.concatenate([noise(rng, 0.5), ctx.clips[3]])  # speech to the last sample: the utterance is open
    path = ctx.workdir / "kill_client.npy"
    np.save(path, audio)
    with serving(ctx, "kill_client", {"publisher": {"vad_events": True}}) as (d, collector):
        host, port = d.audio_address
        client = subprocess.Popen([sys.executable, "-c", KILL_CLIENT, host, str(port), "victim", str(path)],
                                  cwd=REPO, stdout=subprocess.PIPE, text=True)
        try:
            assert client.stdout is not None
            client.stdout.readline()  # every chunk is in the socket
            # The daemon has heard the speech begin: the utterance is open when the client dies.
            wait_for(lambda: any(isinstance(e, events.VadStartEvent) and e.stream_id == "victim"
                                 for e in records(collector)), 30.0)
            client.send_signal(signal.SIGKILL)
        finally:
            client.wait()
        settle(collector, done=lambda: bool(tally(records(collector), "victim").ends))
        t = tally(records(collector), "victim")
    end = t.ends[0] if t.ends else None
    ok = t.intents == 1 and end is not None and end.classified == 1
    return Row("kill -9 of a client mid-utterance", "its utterance classified (1 intent), then stream.end",
               f"{t.intents} intent(s); stream.end {'reason ' + repr(end.reason) if end else 'missing'}"
               + (f", classified {end.classified}" if end else ""), ok)


def case_kill_daemon(ctx: Ctx) -> Row:
    """kill -9 of the daemon under load, then a restart on the same config and ports."""
    streams = rt_streams(ctx, "k9-", 8, 30.0)
    d = daemon(ctx, "kill_daemon")
    try:
        collector = EventCollector(d.events_uri)
        sender = Background(lambda: talk(d.audio_address, streams))
        wait_intents(collector, "k9-", 4)
        d.proc.send_signal(signal.SIGKILL)
        status = d.wait_exit()
        outcomes = sender.result()
        collector.close()
    finally:
        if d.alive():
            d.proc.kill()
        d._cleanup()
    lost = Counter(o.reply.split(":")[0] for o in outcomes.values())
    # The same ports: the new daemon takes over the old one's address, as systemd's Restart= does.
    same = {"sources": {"listen": [d.audio_uri]}, "publisher": {"uri": d.events_uri}}
    started = time.monotonic()
    again = streams_after = None
    try:
        with serving(ctx, "kill_daemon_again", same, (d.audio_uri, d.events_uri)) as (d2, collector2):
            ready_s = time.monotonic() - started
            again = rt_streams(ctx, "k9b-", 4, 15.0)
            outcomes2 = Background(lambda: talk(d2.audio_address, again)).result()
            expected = expected_sent(again, outcomes2)
            settle(collector2, done=lambda: tally(records(collector2), "k9b-").intents >= expected)
            streams_after = tally(records(collector2), "k9b-")
            missed = collector2.missed
    except DaemonFailed as err:
        return Row("kill -9 of the daemon under load, restart", "restart READY; new streams classified",
                   f"restart failed: {str(err).splitlines()[0]}", False)
    ok = status == -signal.SIGKILL and streams_after is not None and streams_after.intents == expected and missed == 0
    return Row("kill -9 of the daemon under 8 streams, restart on the same ports",
               "restart READY; 4 new streams' utterances all classified; 0 gaps",
               f"killed (exit {status}); clients saw {dict(lost)}; restarted READY in {ready_s:.1f} s; "
               f"intents {streams_after.intents if streams_after else 0}/{expected}; gaps {missed}", ok)


class Crowd:
    """Many idle connections held open: ZeroMQ subscribers to the publisher and ingest streams kept alive by
    a 20 ms chunk of quiet noise every 2 s (real audio, so the idle timeout does not end them)."""

    def __init__(self, d: DaemonProc, subscribers: int, streams: int) -> None:
        self.zctx: zmq.Context[Any] = zmq.Context()
        self.zctx.set(zmq.MAX_SOCKETS, subscribers + 64)
        self.subs = []
        for _ in range(subscribers):
            s = self.zctx.socket(zmq.SUB)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(d.events_uri)
            self.subs.append(s)
        self.accepted = 0
        self.refused: Counter[str] = Counter()
        self._stop = threading.Event()
        self._opened = threading.Event()
        self._streams = streams
        self._address = d.audio_address
        self._sender = Background(self._hold)
        self._opened.wait(120.0)

    async def _hold(self) -> None:
        rng = np.random.default_rng(0)
        chunk = encode_audio(noise(rng, CHUNK_MS / MS).tobytes())
        sem = asyncio.Semaphore(64)

        async def opened(i: int) -> asyncio.StreamWriter | None:
            async with sem:
                try:
                    # A connection the daemon cannot accept (no descriptors left) waits in the kernel's queue.
                    _, writer, _, refused = await asyncio.wait_for(_open(self._address, f"idle-{i}"), OPEN_TIMEOUT_S)
                except (ConnectionError, OSError, TimeoutError) as err:
                    self.refused[type(err).__name__] += 1
                    return None
                if refused:
                    self.refused[refused[:40]] += 1
                    writer.close()
                    return None
                return writer

        writers = [w for w in await asyncio.gather(*(opened(i) for i in range(self._streams))) if w is not None]
        self.accepted = len(writers)
        self._opened.set()
        while not self._stop.is_set():
            for w in writers:
                with contextlib.suppress(ConnectionError, OSError):
                    w.write(chunk)
            await asyncio.sleep(2.0)
        for w in writers:
            w.close()

    def close(self) -> None:
        """Drop every connection."""
        self._stop.set()
        self._sender.result(60.0)
        for s in self.subs:
            s.close()
        self.zctx.term()


def _works(d: DaemonProc, ctx: Ctx, prefix: str) -> tuple[str, bool]:
    """/metrics answers, a new subscriber gets a heartbeat, a new stream's utterances are all classified."""
    notes, ok = [], True
    try:
        scrape(d.metrics_port or 0)
        notes.append("/metrics ok")
    except OSError as err:
        notes.append(f"/metrics FAILED ({err})")
        ok = False
    try:
        c = EventCollector(d.events_uri, connect_timeout_s=10.0)
    except DaemonFailed:
        notes.append("new subscriber FAILED")
        return "; ".join(notes), False
    notes.append("new subscriber ok")
    streams = rt_streams(ctx, prefix, 1, 8.0)
    try:
        outcomes = Background(lambda: talk(d.audio_address, streams)).result()
        expected = expected_sent(streams, outcomes)
        settle(c, done=lambda: tally(records(c), prefix).intents >= expected)
        got = tally(records(c), prefix).intents
    finally:
        c.close()
    notes.append(f"new stream {got}/{expected} ({next(iter(outcomes.values())).reply or 'no reply'})")
    return "; ".join(notes), ok and got == expected and expected > 0


def _accept_error_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if any(m in line for m in ACCEPT_ERROR_MARKS))


def case_fd_limits(ctx: Ctx) -> Row:
    """600 publisher connections + 450 idle ingest streams under systemd's default soft limit of 1024 files."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limits = (1024, hard)
    with serving(ctx, "fd_limits", metrics=True, nofile=limits) as (d, _collector):
        crowd = Crowd(d, 600, 450)
        try:
            fds = psutil.Process(d.proc.pid).num_fds()
            works, ok = _works(d, ctx, "fdl-")
            d.signal(signal.SIGHUP)
            d.notify.wait_for("RELOADING", "1", 30.0)
            d.notify.wait_for("READY", "1", 120.0)
            log_text = d.log_text()
            reload_ok = "reload failed" not in log_text
        finally:
            crowd.close()
        limit = psutil.Process(d.proc.pid).rlimit(psutil.RLIMIT_NOFILE)
        errors = _accept_error_lines(d.log_text())
    ok = ok and reload_ok and crowd.accepted == 450 and errors == 0
    return Row(f"600 subscribers + 450 idle ingest streams, started with RLIMIT_NOFILE soft 1024 (hard {hard})",
               "all 450 accepted; /metrics, a new subscriber, a new stream and SIGHUP work; no accept errors",
               f"daemon's limit {limit[0]}, {fds} fds open; {crowd.accepted} accepted; {works}; "
               f"SIGHUP {'ok' if reload_ok else 'FAILED'}; {errors} accept-error log lines", ok)


def case_fd_exhausted(ctx: Ctx) -> Row:
    """The same crowd under a hard limit of 512: accept fails; the log says so at a bounded rate; it recovers."""
    with serving(ctx, "fd_exhausted", metrics=True, nofile=(FD_HARD, FD_HARD)) as (d, _collector):
        log0 = d.log_path.stat().st_size
        started = time.monotonic()
        crowd = Crowd(d, 600, 450)
        try:
            time.sleep(10.0)  # the exhaustion lasts a while: what the log does meanwhile is the point
            held_s = time.monotonic() - started
            grew = d.log_path.stat().st_size - log0
            errors = _accept_error_lines(d.log_text())
            alive = d.alive()
        finally:
            crowd.close()
        # Once the crowd has gone, everything works again.
        recovered = wait_for(lambda: psutil.Process(d.proc.pid).num_fds() < FD_HARD - 64, 60.0)
        works, ok = _works(d, ctx, "fdx-")
    ok = ok and alive and recovered and errors <= 2 + held_s / 10 and grew < 1_000_000
    return Row(f"the same crowd under a hard RLIMIT_NOFILE of {FD_HARD} (exhausted)",
               "daemon up; accept-error log rate-limited (a few lines, not thousands/s); works again afterwards",
               f"{crowd.accepted} accepted, refused {dict(crowd.refused) or 'none'}; {errors} accept-error lines and "
               f"{grew / 1024:.0f} KiB of log in {held_s:.0f} s; afterwards: {works}", ok)


def case_slot_hogging(ctx: Ctx) -> Row:
    """512 connections sending empty 5-byte audio frames every 5 s must not hold every slot."""
    n, idle_s = 512, 10.0
    refused_first = ""
    got_in_s: float | None = None
    hogs_ended: Counter[str] = Counter()
    with serving(ctx, "slot_hogging") as (d, collector):
        stop = threading.Event()
        opened = threading.Event()
        held = Counter[str]()

        async def hogs() -> None:
            conns = await asyncio.gather(*(_open(d.audio_address, f"hog-{i}") for i in range(n)),
                                         return_exceptions=True)
            live = []
            for c in conns:
                if isinstance(c, BaseException) or c[3]:
                    held["not opened"] += 1
                else:
                    held["holding a slot"] += 1
                    live.append(c)
            opened.set()

            async def hog(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, decoder: ReplyDecoder) -> None:
                reply = asyncio.ensure_future(_last_reply(reader, decoder, timeout_s=3600.0))
                while not stop.is_set() and not reply.done():
                    with contextlib.suppress(ConnectionError, OSError):
                        writer.write(encode_audio(b""))  # 5 bytes: an audio frame with no samples
                    await asyncio.wait([reply], timeout=5.0)
                hogs_ended[(reply.result() if reply.done() else "still open")[:32]] += 1
                reply.cancel()
                writer.close()

            await asyncio.gather(*(hog(r, w, dec) for r, w, dec, _ in live))

        sender = Background(hogs)
        opened.wait(120.0)
        since = time.monotonic()

        async def probe() -> str:
            _, writer, _, refused = await _open(d.audio_address, "probe")
            writer.close()
            return refused

        while time.monotonic() - since < 3 * idle_s:
            refused = asyncio.run(probe())
            if not refused:
                got_in_s = time.monotonic() - since
                break
            refused_first = refused_first or refused
            time.sleep(0.5)
        streams = rt_streams(ctx, "real-", 1, 6.0)
        outcome = Background(lambda: talk(d.audio_address, streams)).result()
        expected = expected_sent(streams, outcome)
        settle(collector, done=lambda: tally(records(collector), "real-").intents >= expected)
        t = tally(records(collector), "real-")
        wait_for(lambda: sum(hogs_ended.values()) >= held["holding a slot"], 2 * idle_s)
        stop.set()
        sender.result()
    ended_idle = sum(v for k, v in hogs_ended.items() if "idle timeout" in k)
    ok = (held["holding a slot"] == n and "too many streams" in refused_first and got_in_s is not None
          and got_in_s <= idle_s + 5.0 and t.intents == expected > 0 and ended_idle == n)
    return Row("slot hogging: 512 connections sending empty 5-byte audio frames every 5 s (idle_timeout_s 10)",
               "all 512 slots taken, a real client refused; the hogs ended by the idle timeout; the real client in "
               "within ~idle_timeout_s and classified",
               f"{held['holding a slot']} hogs holding slots; real client refused ({refused_first[:40] or 'never'}), "
               f"in after {'never' if got_in_s is None else f'{got_in_s:.1f} s'}, intents {t.intents}/{expected}; "
               f"hogs ended: {dict(hogs_ended)}", ok)


def case_relative_paths(ctx: Ctx) -> Row:
    """Relative file:// and unix:// source paths resolve against the config file's folder, not the working one."""
    folder = ctx.workdir / "relative_paths"
    elsewhere = ctx.workdir / "relative_paths_cwd"
    elsewhere.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(ctx.seed)
    import soundfile as sf

    audio = np.concatenate([noise(rng, 0.5), ctx.clips[1], noise(rng, 1.0), ctx.clips[2], noise(rng, 1.0)])
    sf.write(str(folder / "speech.wav"), audio, RATE, subtype="PCM_16")
    expected = expected_utterances(audio)
    port = free_port()
    listen = [f"tcp://127.0.0.1:{port}", "unix://ingest.sock", "file://speech.wav"]
    try:
        d = daemon(ctx, "relative_paths", {"sources": {"listen": listen}}, metrics=True, cwd=elsewhere)
    except DaemonFailed as err:
        first = next((line for line in str(err).splitlines() if "error" in line.lower()), str(err).splitlines()[0])
        return Row("relative file:// and unix:// paths (config in A, working folder B)",
                   "socket A/ingest.sock; A/speech.wav replayed and classified", f"did not start: {first[:160]}",
                   False)
    try:
        sock_here, sock_cwd = (folder / "ingest.sock").exists(), (elsewhere / "ingest.sock").exists()
        assert d.metrics_port is not None
        heard = wait_for(lambda: metric(scrape(d.metrics_port), "intentd_events_total") >= expected, 60.0, 0.2)
        events_total = metric(scrape(d.metrics_port), "intentd_events_total")
    finally:
        d.stop()
    ok = sock_here and not sock_cwd and heard and events_total == expected
    return Row("relative file:// and unix:// paths (config in A, working folder B)",
               "socket made as A/ingest.sock; A/speech.wav replayed and every utterance classified",
               f"A/ingest.sock {'yes' if sock_here else 'no'}, B/ingest.sock {'yes' if sock_cwd else 'no'}; "
               f"intents {events_total:.0f}/{expected}", ok)


def case_soak(ctx: Ctx) -> Row:
    """32 real-time streams for --soak-minutes: events expected vs received, RSS start/end."""
    n = 32
    duration = ctx.soak_minutes * 60.0
    streams = rt_streams(ctx, "soak-", n, duration)
    samples: list[tuple[float, int]] = []
    with serving(ctx, "soak", {"publisher": {"status_interval_s": 1.0}}) as (d, collector):
        ready_rss = rss(d)
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(5.0):
                samples.append((time.monotonic(), rss(d)))

        sampler = threading.Thread(target=sample, daemon=True)
        started = time.monotonic()
        sampler.start()
        outcomes = Background(lambda: talk(d.audio_address, streams)).result(duration + 600.0)
        expected = expected_sent(streams, outcomes)
        settle(collector, done=lambda: tally(records(collector), "soak-").intents >= expected)
        stop.set()
        sampler.join()
        t = tally(records(collector), "soak-")
        missed = collector.missed
    after_warmup = [r for when, r in samples if when - started >= min(SOAK_WARMUP_S, duration / 4)]
    rss0 = after_warmup[0] if after_warmup else ready_rss
    rss1 = samples[-1][1] if samples else ready_rss
    growth = (rss1 - rss0) / rss0
    ok = t.intents == expected and not t.dropped and missed == 0 and growth < RSS_GROWTH_LIMIT
    return Row(f"soak: 32 real-time streams for {ctx.soak_minutes:g} min",
               "intents == expected, 0 dropped, 0 gaps; RSS growth < 5% (start = after 30 s of load)",
               f"intents {t.intents}/{expected}, dropped {sum(t.dropped.values())}, gaps {missed}; RSS "
               f"{mb(ready_rss):.0f} at READY, {mb(rss0):.0f} -> {mb(rss1):.0f} MB ({growth * 100:+.1f}%), "
               f"peak {mb(max((r for _, r in samples), default=rss1)):.0f}", ok)


CASES: dict[str, Callable[[Ctx], Row]] = {
    "malformed": case_malformed,
    "storm": case_storm,
    "sigterm_realtime": case_sigterm_realtime,
    "sigterm_full_queue": case_sigterm_full_queue,
    "sigterm_after_hup": case_sigterm_after_hup,
    "sighup_load": case_sighup_load,
    "stalled_subscribers": case_stalled_subscribers,
    "kill_client": case_kill_client,
    "kill_daemon": case_kill_daemon,
    "fd_limits": case_fd_limits,
    "fd_exhausted": case_fd_exhausted,
    "slot_hogging": case_slot_hogging,
    "relative_paths": case_relative_paths,
    "soak": case_soak,
}


# ------------------------------------------------------------------------------------------------ main


def build_models(workdir: Path, model: Path | None) -> tuple[Path, Path, dict[str, tuple[str, ...]]]:
    """Model A (--model, or a tiny Whisper built from a config) and a different tiny model B for the reloads."""
    from tests.tiny_models import build_tiny_whisper

    b = build_tiny_whisper(workdir / "model-b", 5, LABELS_B)
    labels = {"model-b": LABELS_B}
    if model is not None:
        config = json.loads((model / "config.json").read_text())
        labels[model.resolve().name] = tuple(config["id2label"][str(i)] for i in range(len(config["id2label"])))
        return model.resolve(), b, labels
    labels["model-a"] = LABELS_A
    return build_tiny_whisper(workdir / "model-a", 0, LABELS_A), b, labels


def table(rows: Sequence[Row]) -> str:
    """The markdown table."""
    lines = ["| case | expected | got | pass |", "|---|---|---|---|"]
    lines += [f"| {r.case} | {r.expected} | {r.got} | {'pass' if r.ok else 'FAIL'} |" for r in rows]
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cases and print one table; 0 when every case passed, 1 otherwise."""
    p = argparse.ArgumentParser(prog="bench.faults", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="model folder (default: a tiny Whisper built here)")
    p.add_argument("--fsdd", type=Path, default=FSDD, help="FSDD recordings folder")
    p.add_argument("--soak-minutes", type=float, default=10.0)
    p.add_argument("--only", nargs="+", choices=sorted(CASES), default=None, help="run only these cases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-logs", action="store_true", help="keep the tmp folder with configs and daemon logs")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a killed run still stops its daemons (finally blocks)
    command = shlex.join([".venv/bin/python", "-m", "bench.faults", *(sys.argv[1:] if argv is None else argv)])
    if not args.fsdd.is_dir():
        print(f"skipped: no FSDD recordings at {args.fsdd}")
        return 0
    if args.model is not None and not (args.model / "config.json").is_file():
        print(f"error: no model at {args.model}", file=sys.stderr)
        return 2
    # The crowd cases hold over a thousand sockets in this process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    workdir = Path(tempfile.mkdtemp(prefix="intentd-faults-"))
    clips = load_digits(args.fsdd)
    load = os.getloadavg()
    print(f"# intentd faults: {command}\n# {len(clips)} FSDD clips, {psutil.cpu_count()} CPUs, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, model {args.model or 'tiny Whisper built from a config'}",
          flush=True)
    rows: list[Row] = []
    try:
        model_a, model_b, labels = build_models(workdir, args.model)
        ctx = Ctx(workdir, model_a, model_b, clips, args.seed, args.soak_minutes, labels, args.model is not None)
        for name in args.only or list(CASES):
            started = time.monotonic()
            try:
                row = CASES[name](ctx)
            except (DaemonFailed, AssertionError, TimeoutError, OSError) as err:
                row = Row(name, "-", f"case failed to run: {type(err).__name__}: {str(err).splitlines()[0][:200]}",
                          False)
            rows.append(row)
            print(f"# {name}: {'pass' if row.ok else 'FAIL'} ({time.monotonic() - started:.0f} s): {row.got}",
                  flush=True)
    finally:
        print(f"\n{table(rows)}\n\nReproduce: {command}", flush=True)
        if args.keep_logs:
            print(f"configs and daemon logs: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if rows and all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
