"""intentd-sub: print intentd events as human-readable lines or JSON lines."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from intentd.clients.credentials import add_curve_arguments, curve_keys
from intentd.clients.subscriber import DEFAULT_CONNECT, Subscriber
from intentd.daemon.errors import IntentdError
from intentd.daemon.events import Event
from intentd.daemon.version import version_text

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_IDLE = 3  # --idle-timeout passed without a matching event


def build_parser() -> argparse.ArgumentParser:
    """The intentd-sub command line."""
    p = argparse.ArgumentParser(prog="intentd-sub", description="Print intentd events as they are published.")
    p.add_argument("--version", action="version", version=version_text("intentd-sub"))
    p.add_argument(
        "--connect", metavar="URI", action="append",
        help=f"publisher, repeatable: one socket takes several daemons (or one intentd-proxy) at once "
        f"(default {DEFAULT_CONNECT})",
    )
    p.add_argument(
        "--topic",
        metavar="PREFIX",
        action="append",
        help="topic prefix to receive, repeatable (intent., intent.balance, vad., status...); default: all",
    )
    p.add_argument("--stream", metavar="ID", help="only events about this stream id")
    p.add_argument("--json", action="store_true", help="one JSON object per line (the event plus its topic)")
    p.add_argument("--count", type=int, metavar="N", help="exit after N events")
    p.add_argument(
        "--idle-timeout", type=float, metavar="S", help=f"exit {EXIT_IDLE} after S seconds with no event"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log connection details to stderr")
    add_curve_arguments(p)
    return p


def clock(wall: float) -> str:
    """Local time of day with milliseconds, e.g. 12:03:04.512."""
    return time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall * 1000) % 1000:03d}"


def format_event(event: Event) -> str:
    """One human-readable line for an event: the time it was published, then the event's own summary."""
    return f"{clock(event.published_wall)} {event.summary()}"


def format_json(event: Event) -> str:
    """One JSON line: the event as published, with its topic first."""
    return json.dumps({"topic": event.topic, **event.raw}, ensure_ascii=False, separators=(",", ":"))


def run(sub: Subscriber, as_json: bool, count: int | None, out: TextIO) -> int:
    """Print events until `count` is reached or the subscriber's idle timeout passes."""
    for printed, event in enumerate(sub, start=1):
        out.write((format_json(event) if as_json else format_event(event)) + "\n")
        out.flush()
        if count is not None and printed >= count:
            return EXIT_OK
    return EXIT_IDLE


def main(argv: Sequence[str] | None = None) -> int:
    """Subscribe and print until Ctrl-C, --count or --idle-timeout."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.count is not None and args.count < 1:
        print("error: --count must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        sub = Subscriber(args.connect or [DEFAULT_CONNECT], topics=args.topic or ("",), stream_id=args.stream,
                         recv_timeout_s=args.idle_timeout, curve=curve_keys(args))  # fmt: skip
    except IntentdError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    with sub:
        try:
            status = run(sub, args.json, args.count, sys.stdout)
        except KeyboardInterrupt:
            status = EXIT_OK
        except BrokenPipeError:
            # The reader (e.g. `| head`) went away; point stdout at /dev/null so the exit flush stays quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
        if status == EXIT_IDLE:
            where = ", ".join(args.connect or [DEFAULT_CONNECT])
            hint = "" if sub.received else "; nothing arrived at all: is intentd publishing there (publisher.uri)?"
            print(f"error: no event for {args.idle_timeout:g} s (--idle-timeout) from {where}{hint}", file=sys.stderr)
        log.info(
            "received %d messages, missed %d, publisher restarts %d", sub.received, sub.missed, sub.restarts
        )
        for instance in sub.instances:
            log.info("  instance %s: last seq %d, missed %d, restarts %d", instance or "(unnamed)",
                     sub.last_seq_by_instance[instance], sub.missed_by_instance.get(instance, 0),
                     sub.restarts_by_instance.get(instance, 0))
    return status


if __name__ == "__main__":
    sys.exit(main())
