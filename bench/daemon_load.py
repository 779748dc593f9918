"""Load test of the running daemon: N concurrent real-time 8 kHz speech streams -> latency, drops, CPU, RSS.

Usage:
    .venv/bin/python -m bench.daemon_load --model DIR [--streams 1 10 25 50 100 150 200 250] [--duration 30]
        [--flood 480] [--seed 0] [--set model.threads=1 ...] [--keep-going]

Starts `intentd` as a subprocess through the tests' harness (tests/daemon_proc.py: free ports, a tmp config,
READY=1 from a notify socket it binds, events collected by a subscriber thread), then for each N
opens N TCP streams from this one process. Every stream is FSDD digits (8 kHz) separated by randomised
(seeded) low-noise silence, one utterance every ~3 s on average, paced in 20 ms chunks by ONE shared clock: each
wake-up sends every stream's chunks that are due, so a late wake-up catches up instead of drifting, and the lag
behind the clock is reported. Events come back through clients.subscriber (synchronised before sending). The
utterances expected per stream are counted by running the daemon's own segmenter (daemon.vad) over the same
samples, so "received == expected" is exact. A sweep step passes when p99 processing latency < 500 ms and nothing
was dropped (no utterance.dropped, no seq gaps, every expected event received).

Then the micro-batching check: a flood (as fast as TCP takes it) of K utterances over 8 streams, against a daemon
with the default batcher and one with batcher.max_batch = 1 (queue_size raised for both so neither drops).

Latencies: `processing` and `end_of_speech` come from the events (daemon clock). `client eos` is the client's own
clock: event received minus the moment the stream's last voiced sample was due to be sent, so it also counts
sender lag, socket buffering, event-loop backlog before the segmenter and ZeroMQ delivery (+ up to one 20 ms
chunk, since a sample leaves with its chunk).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import logging
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import tomllib
import wave
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import psutil

from intentd.daemon import events
from intentd.daemon.frames import AudioChunk, Utterance
from intentd.daemon.protocol import ReplyDecoder, StreamHeader, encode_audio, encode_end, encode_header
from intentd.daemon.segmenter import SegmenterSettings
from intentd.daemon.settings import BatcherSettings
from intentd.daemon.vad import DEFAULT_AGGRESSIVENESS, StreamSegmenter

# `python -m bench.daemon_load` runs from the repository root, which puts `tests` (a folder without
# __init__.py: test modules import conftest as a top-level module) on the import path as a namespace package.
from tests.daemon_proc import FSDD, REPO, DaemonFailed, DaemonProc, EventCollector, merge, start_daemon

log = logging.getLogger("bench.daemon_load")

RATE = 8000  # FSDD's rate: the daemon resamples to 16 kHz itself
CHUNK_MS = 20
CHUNK_SAMPLES = RATE * CHUNK_MS // 1000
CHUNK_BYTES = CHUNK_SAMPLES * 2  # s16le mono
LEAD_S = (0.5, 3.0)  # silence before a stream's first digit, uniform
GAP_S = (1.55, 3.5)  # silence after each digit, uniform: with FSDD's ~0.48 s digits, one every ~3 s
MEAN_PERIOD_S = 3.0  # one utterance per stream this often, on average
TAIL_S = 1.0  # silence at the end of a stream, so its last utterance closes by hangover, not by the end
NOISE_DBFS = -60.0  # background under the silence: a line is never digitally silent
P99_LIMIT_MS = 500.0
READY_TIMEOUT_S = 120.0
SETTLE_QUIET_S = 5.0  # after the last stream ends, wait this long without a new event before giving up
FLOOD_STREAMS = 8
FLOOD_GAP_S = 0.7  # > hangover + VAD smoothing, so flood clips never merge
FLOOD_QUEUE = 100_000
STATUS_INTERVAL_S = 1.0
RESOURCE_SAMPLE_S = 0.5
MS = 1000.0
# Over the harness's test config: room for the sweep's streams, a slower heartbeat, warnings only in the log.
BENCH_SECTIONS: dict[str, dict[str, Any]] = {
    "sources": {"max_streams": 4096},
    "publisher": {"status_interval_s": STATUS_INTERVAL_S},
    "service": {"log_level": "WARNING"},
}


# ------------------------------------------------------------------------------------------------- audio


def load_digits(folder: Path) -> list[np.ndarray]:
    """Every FSDD recording as int16 at 8 kHz (sorted by name, so a seed means the same audio everywhere)."""
    clips = []
    for path in sorted(glob.glob(str(folder / "*.wav"))):
        with wave.open(path) as w:
            if w.getframerate() != RATE or w.getsampwidth() != 2 or w.getnchannels() != 1:
                continue
            clips.append(np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy())
    return clips


def noise(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Low Gaussian background, int16."""
    scale = 32768.0 * 10 ** (NOISE_DBFS / 20)
    return np.round(rng.normal(0.0, scale, int(seconds * RATE))).astype("<i2")


def realtime_stream(clips: Sequence[np.ndarray], seed: int, index: int, duration_s: float) -> np.ndarray:
    """One stream's `duration_s` of int16 audio: random digits with random silence between them."""
    rng = np.random.default_rng([seed, index])
    total = int(duration_s * RATE)
    parts = [noise(rng, rng.uniform(*LEAD_S))]
    used = parts[0].size
    while True:
        clip = clips[int(rng.integers(len(clips)))]
        gap = noise(rng, rng.uniform(*GAP_S))
        if used + clip.size + int(TAIL_S * RATE) > total:
            break
        parts += [clip, gap]
        used += clip.size + gap.size
    audio = np.concatenate(parts)[:total]
    return np.concatenate([audio, noise(rng, (total - audio.size) / RATE + 1)])[:total]


def flood_stream(clips: Sequence[np.ndarray], seed: int, index: int, count: int) -> np.ndarray:
    """`count` digits with FLOOD_GAP_S of silence between them, to be sent as fast as possible."""
    rng = np.random.default_rng([seed, 1_000_000 + index])
    parts = [noise(rng, LEAD_S[0])]
    for _ in range(count):
        parts += [clips[int(rng.integers(len(clips)))], noise(rng, FLOOD_GAP_S)]
    parts.append(noise(rng, TAIL_S))
    return np.concatenate(parts)


def expected_utterances(audio: np.ndarray) -> int:
    """Utterances the daemon's own segmenter (default VAD settings) finds in this audio."""
    seg = StreamSegmenter("expected", RATE, SegmenterSettings(), DEFAULT_AGGRESSIVENESS,
                          stream_origin_wall=0.0)
    samples = audio.astype(np.float32) / 32768.0
    found = 0
    for start in range(0, samples.size, CHUNK_SAMPLES):
        chunk = AudioChunk("expected", samples[start:start + CHUNK_SAMPLES], RATE, start, 0.0)
        found += sum(isinstance(e, Utterance) for e in seg.push(chunk))
    found += sum(isinstance(e, Utterance) for e in seg.flush())
    return found


# ------------------------------------------------------------------------------------------------ daemon


def start(model: Path, workdir: Path, name: str, sections: Mapping[str, Mapping[str, Any]]) -> DaemonProc:
    """A ready intentd (the model warm, sockets bound) with the bench's config; WORKDIR/NAME.toml and .log.

    Unlike a test daemon it keeps its own torch threads (no OMP_NUM_THREADS=1): the configured ones are measured.
    """
    return start_daemon(workdir, model.resolve(), merge(BENCH_SECTIONS, sections), name=name, one_thread=False,
                        ready_timeout_s=READY_TIMEOUT_S)


# ------------------------------------------------------------------------------------------------ sender


@dataclass
class SendStats:
    """What the sender saw."""

    t0_wall: float = 0.0  # wall time when sample 0 of every real-time stream was due
    lags_ms: list[float] = field(default_factory=list)  # per wake-up: how far behind the shared clock
    max_buffered: int = 0  # most bytes the sender's transports held unsent at once
    finals: int = 0
    errors: list[str] = field(default_factory=list)
    started_wall: float = 0.0
    ended_wall: float = 0.0


async def _open(address: tuple[str, int], stream_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                                                   ReplyDecoder]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(encode_header(StreamHeader(stream_id, RATE, "s16le", 1)))
    decoder = ReplyDecoder()
    while True:
        data = await reader.read(4096)
        if not data:
            raise ConnectionError(f"{stream_id}: closed before accept")
        replies = decoder.feed(data)
        if replies:
            if replies[0].type != "accept":
                raise ConnectionError(f"{stream_id}: {replies[0].reason}")
            return reader, writer, decoder


async def _final(reader: asyncio.StreamReader, decoder: ReplyDecoder, stream_id: str, stats: SendStats) -> None:
    while True:
        data = await reader.read(4096)
        if not data:
            stats.errors.append(f"{stream_id}: closed without final")
            return
        for reply in decoder.feed(data):
            if reply.type == "final":
                stats.finals += 1
            else:
                stats.errors.append(f"{stream_id}: {reply.type} {reply.reason}")
            return


async def send_realtime(address: tuple[str, int], streams: dict[str, bytes]) -> SendStats:
    """Send every stream at real-time pace, all paced by one clock; one wake-up serves every due chunk."""
    stats = SendStats()
    conns = await asyncio.gather(*(_open(address, sid) for sid in streams))
    writers = [w for _, w, _ in conns]
    payloads = list(streams.values())
    n_chunks = max(len(p) for p in payloads) // CHUNK_BYTES
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1
    stats.t0_wall = time.time() + (start - loop.time())
    stats.started_wall = stats.t0_wall
    sent = 0  # chunks sent per stream so far (all streams move together)
    chunk_s = CHUNK_MS / MS
    while sent < n_chunks:
        now = loop.time()
        # A chunk leaves once its last sample is due, as from a sound card.
        due = min(n_chunks, int((now - start) / chunk_s))
        if due > sent:
            lo, hi = sent * CHUNK_BYTES, due * CHUNK_BYTES
            for writer, pcm in zip(writers, payloads, strict=True):
                writer.write(encode_audio(pcm[lo:hi]))
            stats.lags_ms.append((loop.time() - (start + due * chunk_s)) * MS)
            stats.max_buffered = max(stats.max_buffered, sum(w.transport.get_write_buffer_size() for w in writers))
            sent = due
        await asyncio.sleep(max(0.0, start + (sent + 1) * chunk_s - loop.time()))
    for writer in writers:
        writer.write(encode_end())
    await asyncio.gather(*(_final(r, d, sid, stats) for (r, _, d), sid in zip(conns, streams, strict=True)))
    stats.ended_wall = time.time()
    for writer in writers:
        writer.close()
    return stats


async def send_flood(address: tuple[str, int], streams: dict[str, bytes]) -> SendStats:
    """Send every stream as fast as the daemon reads it."""
    stats = SendStats()
    conns = await asyncio.gather(*(_open(address, sid) for sid in streams))
    stats.started_wall = time.time()

    async def one(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter, ReplyDecoder], sid: str,
                  pcm: bytes) -> None:
        reader, writer, decoder = conn
        step = CHUNK_BYTES * 50  # 1 s per frame: like a file upload
        for lo in range(0, len(pcm), step):
            writer.write(encode_audio(pcm[lo:lo + step]))
            await writer.drain()
        writer.write(encode_end())
        await _final(reader, decoder, sid, stats)
        writer.close()

    await asyncio.gather(*(one(c, sid, pcm) for c, (sid, pcm) in zip(conns, streams.items(), strict=True)))
    stats.ended_wall = time.time()
    return stats


# ------------------------------------------------------------------------------------------------ a run


@dataclass
class RunResult:
    """One load level."""

    label: str
    streams: int
    expected: int
    duration_s: float
    intents: int = 0
    dropped: int = 0
    errors: int = 0
    missed: int = 0
    utt_per_s: float = 0.0
    processing: list[float] = field(default_factory=list)
    queue_wait: list[float] = field(default_factory=list)
    inference: list[float] = field(default_factory=list)
    eos: list[float] = field(default_factory=list)
    client_eos: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    daemon_cpu: float = 0.0  # percent of one core
    bench_cpu: float = 0.0
    rss_mb: float = 0.0
    uss_mb: float = 0.0  # memory only this process holds: RSS minus shared library pages (torch's are large)
    lag_p99: float = 0.0
    lag_max: float = 0.0
    buffered_kb: float = 0.0
    send_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Sustained: p99 processing under the limit and every expected utterance classified."""
        return (not self.dropped and not self.errors and not self.missed and self.intents == self.expected
                and not self.send_errors and pct(self.processing, 99) < P99_LIMIT_MS)


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nan when empty)."""
    return float(np.percentile(values, q)) if values else float("nan")


class ResourceSampler:
    """Daemon CPU% (delta of its CPU time over the window) and peak RSS, sampled in a thread."""

    def __init__(self, daemon: DaemonProc) -> None:
        self._ps = psutil.Process(daemon.proc.pid)
        self._me = psutil.Process()
        self.rss_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        t = self._ps.cpu_times()
        m = self._me.cpu_times()
        self._t0, self._cpu0, self._me0 = time.monotonic(), t.user + t.system, m.user + m.system
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(RESOURCE_SAMPLE_S):
            self.rss_peak = max(self.rss_peak, self._ps.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        t, m = self._ps.cpu_times(), self._me.cpu_times()
        wall = time.monotonic() - self._t0
        self.rss_peak = max(self.rss_peak, self._ps.memory_info().rss)
        self.daemon_cpu = (t.user + t.system - self._cpu0) / wall * 100
        self.bench_cpu = (m.user + m.system - self._me0) / wall * 100


def settle(collector: EventCollector, prefix: str, expected: int) -> None:
    """Wait until every expected utterance has an event, or no event came for SETTLE_QUIET_S."""
    started = time.time()
    while True:
        found = collector.about(prefix)
        done = sum(isinstance(e, (events.IntentEvent, events.DroppedEvent, events.ErrorEvent)) for _, e in found)
        if done >= expected:
            return
        last = max(found[-1][0] if found else 0.0, started)
        if time.time() - last > SETTLE_QUIET_S:
            return
        time.sleep(0.05)


def summarise(result: RunResult, found: Iterable[tuple[float, events.Event]], origins: dict[str, float]) -> None:
    """Fill a result from the events about its streams."""
    for recv_wall, e in found:
        if isinstance(e, events.IntentEvent):
            result.intents += 1
            result.processing.append(e.latency_ms.processing)
            result.queue_wait.append(e.latency_ms.queue_wait)
            result.inference.append(e.latency_ms.inference)
            result.eos.append(e.latency_ms.end_of_speech)
            result.batch_sizes.append(e.batch_size)
            origin = origins.get(e.stream_id)
            if origin is not None:
                result.client_eos.append((recv_wall - (origin + e.end_s)) * MS)
        elif isinstance(e, events.DroppedEvent):
            result.dropped += 1
        elif isinstance(e, events.ErrorEvent):
            result.errors += 1


def run_realtime(daemon: DaemonProc, collector: EventCollector, clips: Sequence[np.ndarray], n: int, duration_s: float,
                 seed: int, cache: dict[tuple[int, float], tuple[bytes, int]], label: str) -> RunResult:
    """N real-time streams for `duration_s`; stream i's audio is the same at every N (of the same duration)."""
    for i in range(n):
        if (i, duration_s) not in cache:
            audio = realtime_stream(clips, seed, i, duration_s)
            cache[i, duration_s] = (audio.tobytes(), expected_utterances(audio))
    prefix = f"{label}-n{n}-"
    streams = {f"{prefix}{i}": cache[i, duration_s][0] for i in range(n)}
    result = RunResult(label, n, sum(cache[i, duration_s][1] for i in range(n)), duration_s)
    missed_before = collector.missed
    with ResourceSampler(daemon) as res:
        stats = asyncio.run(send_realtime(daemon.audio_address, streams))
        settle(collector, prefix, result.expected)
    result.missed = collector.missed - missed_before
    summarise(result, collector.about(prefix), {sid: stats.t0_wall for sid in streams})
    result.utt_per_s = result.intents / duration_s
    result.daemon_cpu, result.bench_cpu, result.rss_mb = res.daemon_cpu, res.bench_cpu, res.rss_peak / 2**20
    result.uss_mb = psutil.Process(daemon.proc.pid).memory_full_info().uss / 2**20
    result.lag_p99, result.lag_max = pct(stats.lags_ms, 99), max(stats.lags_ms, default=0.0)
    result.buffered_kb = stats.max_buffered / 1024
    result.send_errors = stats.errors
    return result


def run_flood(daemon: DaemonProc, clips: Sequence[np.ndarray], total: int, seed: int, label: str
              ) -> tuple[RunResult, float]:
    """K utterances as fast as possible over FLOOD_STREAMS streams; (result, utterances/s)."""
    collector = EventCollector(daemon.events_uri)
    per = -(-total // FLOOD_STREAMS)
    audios = [flood_stream(clips, seed, i, per) for i in range(FLOOD_STREAMS)]
    streams = {f"{label}-flood-{i}": a.tobytes() for i, a in enumerate(audios)}
    result = RunResult(label, FLOOD_STREAMS, sum(expected_utterances(a) for a in audios), 0.0)
    with ResourceSampler(daemon) as res:
        stats = asyncio.run(send_flood(daemon.audio_address, streams))
        settle(collector, f"{label}-flood-", result.expected)
    found = collector.about(f"{label}-flood-")
    result.missed = collector.missed
    collector.close()
    summarise(result, found, {})
    last = max((t for t, e in found if isinstance(e, events.IntentEvent)), default=stats.ended_wall)
    rate = result.intents / (last - stats.started_wall)
    result.daemon_cpu, result.rss_mb = res.daemon_cpu, res.rss_peak / 2**20
    result.send_errors = stats.errors
    return result, rate


# ----------------------------------------------------------------------------------------------- report


def row(r: RunResult) -> str:
    """One markdown table row."""
    bs = f"{statistics.mean(r.batch_sizes):.1f}/{max(r.batch_sizes)}" if r.batch_sizes else "-"
    return (f"| {r.streams} | {r.duration_s:g} | {r.intents}/{r.expected} | {r.dropped}/{r.missed}/{r.errors} | {r.utt_per_s:.1f} "
            f"| {pct(r.processing, 50):.0f} / {pct(r.processing, 95):.0f} / {pct(r.processing, 99):.0f} "
            f"| {pct(r.queue_wait, 50):.0f} / {pct(r.inference, 50):.0f} "
            f"| {pct(r.eos, 50):.0f} / {pct(r.eos, 99):.0f} "
            f"| {pct(r.client_eos, 50):.0f} / {pct(r.client_eos, 99):.0f} | {bs} "
            f"| {r.daemon_cpu:.0f} | {r.rss_mb:.0f} / {r.uss_mb:.0f} | {r.bench_cpu:.0f} | {r.lag_p99:.1f} / {r.lag_max:.0f} "
            f"| {'yes' if r.ok else 'NO'} |")


HEADER = ("| streams | s | events/expected | dropped/seq-gaps/errors | utt/s | processing p50 / p95 / p99 ms "
          "| queue / inference p50 ms | end_of_speech p50 / p99 ms | client eos p50 / p99 ms | batch mean/max | daemon CPU % | RSS / USS MB "
          "| bench CPU % | sender lag p99 / max ms | sustained |\n|" + "---|" * 15)


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`section.key=value` strings (value in TOML syntax) -> config sections."""
    sections: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set {item!r}: expected SECTION.KEY=VALUE")
        try:
            sections.setdefault(section, {})[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError as err:
            raise SystemExit(f"--set {item!r}: bad TOML value: {err}") from err
    return sections


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep and the batching comparison; print markdown tables."""
    p = argparse.ArgumentParser(prog="bench.daemon_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=REPO / "models" / "default", help="model folder")
    p.add_argument("--fsdd", type=Path, default=FSDD, help="FSDD recordings folder")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 10, 25, 50, 100, 150, 200, 250])
    p.add_argument("--duration", type=float, default=30.0, help="seconds per sweep step")
    p.add_argument("--min-utterances", type=int, default=40,
                   help="lengthen steps with few streams to about this many utterances (for the percentiles)")
    p.add_argument("--flood", type=int, default=480, help="utterances in the batching comparison (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override for every daemon started (TOML value), e.g. model.threads=1")
    p.add_argument("--keep-going", action="store_true", help="continue the sweep after a failing step")
    p.add_argument("--keep-logs", action="store_true", help="keep the tmp folder with configs and daemon logs")
    args = p.parse_args(argv)
    # A killed benchmark must still stop the daemons it started (the finally blocks below).
    signal.signal(signal.SIGTERM, _interrupt)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if not args.fsdd.is_dir():
        print(f"skipped: no FSDD recordings at {args.fsdd}")
        return 0
    if not (args.model / "model.safetensors").is_file():
        print(f"error: no model at {args.model} (pass --model DIR)", file=sys.stderr)
        return 2
    clips = load_digits(args.fsdd)
    workdir = Path(tempfile.mkdtemp(prefix="intentd-load-"))
    overrides = parse_overrides(args.set)
    load = os.getloadavg()
    print(f"# intentd load: model {args.model}, {len(clips)} FSDD clips, {psutil.cpu_count()} CPUs, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, overrides {args.set or 'none'}")
    try:
        daemon = start(args.model, workdir, "sweep", overrides)
        collector: EventCollector | None = None
        print(f"\n## Real-time sweep: {args.duration:g} s per step (longer for few streams), 8 kHz s16le, {CHUNK_MS} ms chunks, "
              f"config overrides: {args.set or 'none'}\n\n{HEADER}", flush=True)
        cache: dict[tuple[int, float], tuple[bytes, int]] = {}
        best = 0
        try:
            collector = EventCollector(daemon.events_uri)
            for n in args.streams:
                duration = max(args.duration, round(MEAN_PERIOD_S * args.min_utterances / n))
                r = run_realtime(daemon, collector, clips, n, duration, args.seed, cache, "rt")
                print(row(r), flush=True)
                for err in r.send_errors[:3]:
                    print(f"  sender: {err}", flush=True)
                if r.ok:
                    best = max(best, n)
                elif not args.keep_going:
                    break
        finally:
            if collector is not None:
                collector.close()
            daemon.stop()
        print(f"\nMost streams sustained (p99 processing < {P99_LIMIT_MS:g} ms, no drops): {best}", flush=True)

        if args.flood:
            print(f"\n## Micro-batching: flood of {args.flood} utterances over {FLOOD_STREAMS} streams "
                  f"(batcher.queue_size={FLOOD_QUEUE})\n\n| batcher | events/expected | utterances/s "
                  f"| batch mean/max | processing p50 / p99 ms | daemon CPU % |\n|---|---|---|---|---|---|",
                  flush=True)
            defaults = BatcherSettings()
            default_name = f"default (max_batch {defaults.max_batch}, max_wait {defaults.max_wait_ms:g} ms)"
            for name, batcher in ((default_name, {}), ("max_batch = 1", {"max_batch": 1})):
                d = start(args.model, workdir, f"flood{len(batcher)}",
                          merge(overrides, {"batcher": {"queue_size": FLOOD_QUEUE, **batcher}}))
                try:
                    r, rate = run_flood(d, clips, args.flood, args.seed, f"f{len(batcher)}")
                finally:
                    d.stop()
                bs = f"{statistics.mean(r.batch_sizes):.1f}/{max(r.batch_sizes)}" if r.batch_sizes else "-"
                print(f"| {name} | {r.intents}/{r.expected} | {rate:.1f} | {bs} "
                      f"| {pct(r.processing, 50):.0f} / {pct(r.processing, 99):.0f} | {r.daemon_cpu:.0f} |",
                      flush=True)
    except DaemonFailed as err:  # did not start, stop or publish: its log says why
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if args.keep_logs:
            print(f"\nconfigs and daemon logs: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
