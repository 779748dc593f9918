"""A flood of recorded files: concurrent `intentd-send` processes (not real time) against one daemon.

Usage:
    .venv/bin/python -m bench.file_flood [--model DIR] [--senders 4] [--files-per-sender 160] [--batch 20]
        [--also-live] [--set SECTION.KEY=VALUE ...] [--fsdd DIR] [--keep-logs]

Starts `intentd` at its default settings through the tests' harness (tests/daemon_proc.py), then runs `--senders`
threads, each sending its share of FSDD recordings with `intentd-send --to URI FILE...` in batches of `--batch`
files (one process per batch, the files of a batch concurrently), as issue 15 measured it. Events are collected
from the publisher. A file is *answered* when its `stream.end` arrived; the flood passes when every file is
answered, every utterance its stream.end counts got an intent event (`intent.unknown` included), and nothing was
dropped, failed or lost (no `utterance.dropped`, no `utterance.error`, no seq gap). `--also-live` floods a fresh
daemon with the same files marked live (`intentd-send --live`, what every file was before recorded streams) for
comparison. The model: `--model DIR`, else `models/default`, else a tiny untrained Whisper built on the spot (the
count of answers does not depend on accuracy; its cost does set how far the queue fills). Skips (prints SKIPPED,
exit 0) without FSDD.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intentd.daemon import events
from intentd.daemon.settings import DEFAULTS

# `python -m bench.file_flood` runs from the repository root, which puts `tests` on the import path.
from tests.daemon_proc import FSDD, REPO, DaemonFailed, EventCollector, run_cli, start_daemon

READY_TIMEOUT_S = 120.0
ANSWER_TIMEOUT_S = 900.0  # after the last sender finished: every stream.end must be in by then
SEND_TIMEOUT_S = 900.0
POLL_S = 0.1
DEFAULT_MODEL = REPO / "models" / "default"


@dataclass
class Flood:
    """What one flood sent and what came back."""

    files: list[str]
    live: bool
    send_failures: list[str] = field(default_factory=list)
    wall_s: float = 0.0  # first send -> last stream.end
    ends: dict[str, events.StreamEndEvent] = field(default_factory=dict)
    intents: dict[str, int] = field(default_factory=dict)
    unknown: int = 0
    dropped_events: int = 0
    error_events: int = 0
    missed: int = 0
    status: dict[str, int] = field(default_factory=dict)

    @property
    def utterances(self) -> int:
        return sum(e.utterances for e in self.ends.values())

    @property
    def answered_ok(self) -> bool:
        return (len(self.ends) == len(self.files) and not self.send_failures and self.dropped_events == 0
                and self.error_events == 0 and self.missed == 0
                and all(self.intents.get(sid, 0) == e.utterances for sid, e in self.ends.items()))


def pick_files(fsdd: Path, count: int) -> list[str]:
    """`count` FSDD recordings spread evenly over the sorted list (every digit and speaker), as absolute paths."""
    every = sorted(fsdd.glob("*.wav"))
    step = len(every) / count
    return [str(every[int(i * step)]) for i in range(count)]


def sender(uri: str, files: Sequence[str], batch: int, live: bool, failures: list[str]) -> None:
    """One sender: its files `batch` at a time, one intentd-send process per batch."""
    extra = ["--live"] if live else []
    for i in range(0, len(files), batch):
        done = run_cli("intentd-send", "--to", uri, *extra, *files[i : i + batch], timeout_s=SEND_TIMEOUT_S)
        if done.returncode != 0:
            failures.extend(line for line in done.stderr.splitlines() if line.strip())


def run_flood(workdir: Path, model: Path, sections: dict[str, dict[str, Any]], files: list[str], senders: int,
              batch: int, live: bool) -> Flood:
    """Start a daemon, flood it, collect until every file's stream.end is in (or the timeout), stop it."""
    name = "live" if live else "recorded"
    flood = Flood(files, live)
    d = start_daemon(workdir, model, sections, name=f"intentd-{name}", one_thread=False,
                     ready_timeout_s=READY_TIMEOUT_S)
    collector = EventCollector(d.events_uri)
    try:
        share = len(files) // senders
        threads = [threading.Thread(target=sender, args=(d.audio_uri, files[k * share : (k + 1) * share], batch,
                                                         live, flood.send_failures), name=f"sender-{k}")
                   for k in range(senders)]
        t0 = time.time()  # the collector stamps events with wall time
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wanted = set(files)
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        last_end = t0
        while time.monotonic() < deadline:
            ended = {e.stream_id for _, e in list(collector.records) if isinstance(e, events.StreamEndEvent)}
            if wanted <= ended:
                break
            time.sleep(POLL_S)
        time.sleep(1.0)  # late events (there should be none) still count
        records = list(collector.records)
        for received, e in records:
            if isinstance(e, events.StreamEndEvent) and e.stream_id in wanted:
                flood.ends[e.stream_id] = e
                last_end = max(last_end, received)
            elif isinstance(e, events.IntentEvent):
                flood.intents[e.stream_id] = flood.intents.get(e.stream_id, 0) + 1
                flood.unknown += e.label == events.UNKNOWN_LABEL
            elif isinstance(e, events.DroppedEvent):
                flood.dropped_events += 1
            elif isinstance(e, events.ErrorEvent):
                flood.error_events += 1
        statuses = [e for _, e in records if isinstance(e, events.StatusEvent)]
        flood.status = dict(statuses[-1].counters) if statuses else {}
        flood.wall_s = last_end - t0
        flood.missed = collector.missed
    finally:
        collector.close()
        d.stop()
    return flood


def row(f: Flood) -> str:
    ends = f.ends.values()
    no_speech = sum(e.utterances == 0 for e in ends)
    return (f"| {'live (--live)' if f.live else 'recorded (default)'} | {len(f.files)} | {len(f.ends)} | "
            f"{f.utterances} | {sum(f.intents.values())} ({f.unknown} unknown) | "
            f"{sum(e.dropped for e in ends)} / {f.dropped_events} | {f.error_events} / {f.missed} | "
            f"{sum(e.discarded for e in ends)} ({no_speech} files) | {len(f.send_failures)} | {f.wall_s:.1f} | "
            f"{'yes' if f.answered_ok else 'NO'} |")


HEADER = ("| streams marked | files | stream.end received | utterances (stream.end) | intent events | "
          "dropped (stream.end / events) | errors / seq gaps | blips discarded (files with no utterance) | "
          "sender failures | wall s | every file answered, nothing dropped |\n|---|---|---|---|---|---|---|---|---|---|---|")


def parse_sets(values: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`SECTION.KEY=VALUE` (VALUE in TOML syntax) -> {section: {key: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in values:
        dotted, sep, value = item.partition("=")
        section, dot, key = dotted.partition(".")
        if not sep or not dot:
            raise SystemExit(f"error: --set {item!r}: expected SECTION.KEY=VALUE")
        out.setdefault(section, {})[key] = tomllib.loads(f"v = {value}")["v"]
    return out


@contextlib.contextmanager
def work_folder(keep: bool) -> Iterator[Path]:
    """A fresh folder for configs and daemon logs, removed afterwards unless `keep`."""
    path = Path(tempfile.mkdtemp(prefix="intentd-file-flood-"))
    try:
        yield path
    finally:
        if keep:
            print(f"\nconfigs and daemon logs: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def flood_and_report(args: argparse.Namespace, workdir: Path, count: int, arguments: str) -> int:
    """Pick the model, run the flood(s), print the table; 0 when the recorded flood passed."""
    if args.model is not None:
        model, which = args.model, str(args.model)
    elif DEFAULT_MODEL.is_dir():
        model, which = DEFAULT_MODEL, str(DEFAULT_MODEL)
    else:
        from tests.tiny_models import build_tiny_whisper

        model = build_tiny_whisper(workdir / "tiny-whisper")
        which = "tiny untrained Whisper (tests/tiny_models.build_tiny_whisper), no models/default here"
    sections = parse_sets(args.set)
    files = pick_files(args.fsdd, count)
    b = DEFAULTS.batcher
    print(f"# intentd file flood: {count} FSDD recordings, {args.senders} intentd-send loops x "
          f"{args.files_per_sender} files in batches of {args.batch}")
    print(f"model: {which}")
    print(f"daemon settings: defaults (batcher.queue_size = {b.queue_size}, recorded_high_water = "
          f"{b.recorded_high_water}, max_batch = {b.max_batch}){' + ' + ' '.join(args.set) if args.set else ''}")
    print(f"command: .venv/bin/python -m bench.file_flood {arguments}")
    print()
    print(HEADER)
    floods = [run_flood(workdir, model, sections, files, args.senders, args.batch, live=False)]
    print(row(floods[0]), flush=True)
    if args.also_live:
        floods.append(run_flood(workdir, model, sections, files, args.senders, args.batch, live=True))
        print(row(floods[1]), flush=True)
    for f in floods:
        for line in f.send_failures[:5]:
            print(f"  {'live' if f.live else 'recorded'} sender: {line}")
        print(f"  {'live' if f.live else 'recorded'} daemon counters at the end: {f.status}")
    return 0 if floods[0].answered_ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the flood(s) and print the table; 0 when every recorded file was answered with nothing dropped."""
    p = argparse.ArgumentParser(prog="bench.file_flood", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="model folder (default: models/default, else a tiny Whisper)")
    p.add_argument("--senders", type=int, default=4, help="concurrent intentd-send loops (default 4)")
    p.add_argument("--files-per-sender", type=int, default=160, help="files each sender sends (default 160)")
    p.add_argument("--batch", type=int, default=20, help="files per intentd-send process (default 20)")
    p.add_argument("--also-live", action="store_true", help="then the same flood marked live, on a fresh daemon")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a config key for the daemon (TOML value), e.g. batcher.queue_size=256")
    p.add_argument("--fsdd", type=Path, default=FSDD, help="FSDD recordings folder")
    p.add_argument("--keep-logs", action="store_true", help="keep the work folder (configs, daemon logs)")
    args = p.parse_args(argv)
    count = args.senders * args.files_per_sender
    available = sorted(args.fsdd.glob("*.wav")) if args.fsdd.is_dir() else []
    if len(available) < count:
        print(f"SKIPPED: {count} FSDD recordings needed, {len(available)} at {args.fsdd}")
        return 0
    with work_folder(args.keep_logs) as workdir:
        try:
            return flood_and_report(args, workdir, count, shlex.join(sys.argv[1:] if argv is None else argv))
        except DaemonFailed as err:  # did not start, stop or publish: its log says why
            print(f"error: {err}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
