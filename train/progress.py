"""Progress display: bars on a terminal, plain periodic lines otherwise, so a log file (or `make model`'s output)
is not one huge line of carriage returns."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Final, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
# Off a terminal: one progress line at most this often (and one at the end).
PLAIN_INTERVAL_S: Final = 30.0
# What datasets, huggingface_hub and tqdm read to turn their bars off; set before they are imported.
BAR_SWITCHES: Final = ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")


def on_terminal() -> bool:
    """True when stderr, where bars are drawn, is a terminal."""
    return sys.stderr.isatty()


def configure() -> None:
    """Turn the libraries' bars off when stderr is no terminal; intentd-train's main calls this once, first."""
    if not on_terminal():
        for name in BAR_SWITCHES:
            os.environ.setdefault(name, "1")


def track(items: Iterable[T], total: int, desc: str, unit: str, enabled: bool = True,
          interval_s: float = PLAIN_INTERVAL_S) -> Iterator[T]:
    """`items`, with a tqdm bar on a terminal, else an INFO line every `interval_s` seconds and one at the end."""
    if not enabled:
        yield from items
        return
    if on_terminal():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=unit)
        return
    started = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= interval_s:
            last = now
            log.info("%s: %d/%d %ss (%.0f s)", desc, done, total, unit, now - started)
    log.info("%s: %d/%d %ss in %.0f s", desc, done, total, unit, time.monotonic() - started)
