"""intentd-live: talk into the local microphone and watch level, VAD state and intents in the terminal.

Streams the mic to the daemon's audio socket (clients.send.send_stream, the ingest protocol) and subscribes to
its events for this stream id. VAD state comes with any daemon config: the stream's header asks for its own
vad.start / vad.end events (`vad_events`, ingest protocol revision 1.3). A daemon older than that refuses the key;
the view then streams without it and says that speech edges need that daemon's `publisher.vad_events = true`.
Credentials as intentd-send takes them (docs/security.md). No torch here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

import numpy as np

from intentd.clients.credentials import (
    IngestCredentials,
    add_arguments,
    from_arguments,
    refuse_secret_arguments,
)
from intentd.clients.send import (
    DEFAULT_CHUNK_MS,
    MAX_MIC_CHANNELS,
    SendError,
    SendResult,
    _pick_input,
    _sounddevice,
    send_stream,
)
from intentd.clients.sub import clock
from intentd.clients.subscriber import DEFAULT_CONNECT, Subscriber
from intentd.daemon import events
from intentd.daemon.errors import IntentdError
from intentd.daemon.protocol import DEFAULT_AUDIO_URI, KEY_VAD_EVENTS, Reply, StreamHeader
from intentd.daemon.version import version_text

log = logging.getLogger(__name__)

REDRAW_S: Final = 0.05  # 20 redraws a second: smooth meter, negligible CPU
METER_WIDTH: Final = 30
METER_FLOOR_DB: Final = -60.0  # the meter's left edge; quieter reads as empty
MIC_QUEUE_BLOCKS: Final = 500  # 10 s of 20 ms blocks
SUB_POLL_S: Final = 0.1
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

CLEAR_LINE: Final = "\r\x1b[2K"
GREEN: Final = "\x1b[32m"
YELLOW: Final = "\x1b[33m"
RED: Final = "\x1b[31m"
BOLD: Final = "\x1b[1m"
RESET: Final = "\x1b[0m"


def level_dbfs(block: np.ndarray) -> float:
    """RMS level of a float block in dBFS (METER_FLOOR_DB for silence)."""
    if block.size == 0:
        return METER_FLOOR_DB
    rms = float(np.sqrt(np.mean(np.square(block, dtype=np.float64))))
    return max(METER_FLOOR_DB, 20.0 * math.log10(rms)) if rms > 0 else METER_FLOOR_DB


def meter(db: float, width: int = METER_WIDTH) -> str:
    """A text bar for a dBFS level: METER_FLOOR_DB is empty, 0 dBFS is full."""
    filled = round((min(0.0, max(METER_FLOOR_DB, db)) - METER_FLOOR_DB) / -METER_FLOOR_DB * width)
    return "#" * filled + "-" * (width - filled)


@dataclass
class LiveView:
    """What the terminal shows: updated from the mic thread and the event thread, rendered by the UI loop."""

    stream_id: str
    color: bool = True
    level_db: float = METER_FLOOR_DB
    speaking: bool | None = None  # None until the daemon confirms it publishes this stream's vad events
    vad_note: str = ""  # why VAD state may never come (a daemon from before per-stream vad events)
    last_intent: str = ""
    intents: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def vad_confirmed(self) -> None:
        """The daemon accepted the stream with its vad events: silence until the first vad.start."""
        with self.lock:
            if self.speaking is None:
                self.speaking = False

    def vad_unavailable(self, why: str) -> None:
        """The daemon cannot publish this stream's vad events on request; `why` is shown until one comes."""
        with self.lock:
            self.vad_note = why

    def on_level(self, db: float) -> None:
        """Record the latest mic block's level."""
        with self.lock:
            self.level_db = db

    def on_event(self, event: events.Event) -> str | None:
        """Update state from an event about our stream; returns a line to print above the status line."""
        react = _REACTIONS.get(type(event))
        if react is None:
            return None
        with self.lock:
            return react(self, event)

    def _speech_started(self, event: events.VadStartEvent) -> None:
        self.speaking = True

    def _speech_ended(self, event: events.VadEndEvent) -> None:
        self.speaking = False

    def _intent(self, event: events.IntentEvent) -> str:
        self.intents += 1
        text = f"{event.label} {event.score:.2f}{event.slots_text()}"
        self.last_intent = text
        shade = YELLOW if event.label == events.UNKNOWN_LABEL else GREEN
        alts = "  ".join(f"{label} {score:.2f}" for label, score in event.top_k[1:])
        return (
            f"{clock(event.published_wall)} #{event.utterance} {self._paint(shade + BOLD, text)}"
            f"  ({event.duration_s:.2f} s, {event.latency_ms.end_of_speech:.0f} ms after speech end)"
            + (f"  [{alts}]" if alts else "")
        )

    def _dropped(self, event: events.DroppedEvent) -> str:
        return f"{clock(event.published_wall)} #{event.utterance} {self._paint(RED, 'dropped')}: {event.reason}"

    def _error(self, event: events.ErrorEvent) -> str:
        return f"{clock(event.published_wall)} {self._paint(RED, 'error')}: {event.error} {event.message}"

    def status_line(self) -> str:
        """The one line redrawn in place: meter, level, VAD state, last intent."""
        with self.lock:
            if self.speaking is None:
                vad = f"vad ? ({self.vad_note})" if self.vad_note else "vad ?"
            else:
                vad = self._paint(GREEN, "SPEECH") if self.speaking else "silence"
            return (
                f"[{meter(self.level_db)}] {self.level_db:5.1f} dBFS  {vad}  "
                f"intents {self.intents}  last: {self.last_intent or '-'}"
            )

    def _paint(self, code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if self.color else text


# What the view does with each event type (state change, a line to print, or both); other types are ignored.
_REACTIONS: Final[dict[type[events.Event], Callable[[LiveView, Any], str | None]]] = {
    events.VadStartEvent: LiveView._speech_started,
    events.VadEndEvent: LiveView._speech_ended,
    events.IntentEvent: LiveView._intent,
    events.DroppedEvent: LiveView._dropped,
    events.ErrorEvent: LiveView._error,
}


class Terminal:
    """Prints intent lines above a status line that is redrawn in place (plain ANSI; no curses)."""

    def __init__(self, out: TextIO, redraw: bool) -> None:
        self._out = out
        self._redraw = redraw
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        """Print a permanent line (the status line is redrawn below it on the next tick)."""
        with self._lock:
            self._out.write((CLEAR_LINE if self._redraw else "") + text + "\n")
            self._out.flush()

    def status(self, text: str) -> None:
        """Redraw the status line (only on a terminal: piped output gets just the permanent lines)."""
        if not self._redraw:
            return
        with self._lock:
            self._out.write(CLEAR_LINE + text)
            self._out.flush()

    def finish(self) -> None:
        """Leave the cursor on a fresh line."""
        if self._redraw:
            self.line("")


def watch_events(sub: Subscriber, view: LiveView, term: Terminal, stop: threading.Event) -> None:
    """The event thread: feed our stream's events into the view until `stop` is set."""
    while not stop.is_set():
        event = sub.recv(timeout_s=SUB_POLL_S)
        if event is not None and (text := view.on_event(event)) is not None:
            term.line(text)


async def stream_microphone(
    audio_uri: str, device: str, stream_id: str, view: LiveView, stop: asyncio.Event,
    credentials: IngestCredentials | None = None, say: Callable[[str], None] | None = None,
) -> int:
    """Capture the mic, meter it into `view`, and stream it with the ingest protocol until `stop` is set; `say`
    prints a line (the microphone opened, a daemon without per-stream vad events).

    Device selection and the protocol session are clients.send's (_pick_input, send_stream); the capture is ours
    because the meter needs every block.
    """
    sd = _sounddevice()
    index, info = _pick_input(sd, device)
    rate = int(info["default_samplerate"])
    channels = min(int(info["max_input_channels"]), MAX_MIC_CHANNELS)
    header = StreamHeader(stream_id, rate, "f32le", channels)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(MIC_QUEUE_BLOCKS)

    def put(data: bytes) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # the network is not keeping up: lose audio, not time
            queue.put_nowait(data)

    def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio's thread: meter, copy out, hop to the loop; never block here.
        view.on_level(level_dbfs(indata))
        with contextlib.suppress(RuntimeError):  # loop already closed at exit
            loop.call_soon_threadsafe(put, indata.astype("<f4").tobytes())

    async def blocks() -> AsyncIterator[bytes]:
        while not stop.is_set():
            try:
                yield await asyncio.wait_for(queue.get(), REDRAW_S)
            except TimeoutError:
                continue
        while not queue.empty():
            yield queue.get_nowait()

    try:
        mic = sd.InputStream(device=index, samplerate=rate, channels=channels, dtype="float32",
                             blocksize=max(1, rate * DEFAULT_CHUNK_MS // 1000), callback=callback)  # fmt: skip
    except Exception as err:  # sounddevice raises PortAudioError, ValueError...
        raise SendError(f"cannot open microphone {info['name']!r}: {err}") from err
    if say is not None:  # which of several inputs is the first thing to check when nothing is heard
        say(f"microphone {index}: {info['name']} ({rate} Hz, {channels} channel(s))")
    with mic:
        result = await send_asking_vad_events(audio_uri, header, blocks, view, credentials, say)
    return result.samples


async def send_asking_vad_events(
    audio_uri: str, header: StreamHeader, blocks: Callable[[], AsyncIterator[bytes]], view: LiveView,
    credentials: IngestCredentials | None = None, say: Callable[[str], None] | None = None,
) -> SendResult:
    """send_stream with `vad_events` in the header; the accept's confirmation shows silence in `view`. A daemon
    from before protocol revision 1.3 refuses the key (before any audio is read): the stream is sent again
    without it, and the view says why speech may not show."""
    header = dataclasses.replace(header, vad_events=True)

    def accepted(reply: Reply) -> None:
        if reply.fields.get(KEY_VAD_EVENTS) is True:
            view.vad_confirmed()

    try:
        return await send_stream(audio_uri, header, blocks(), credentials, accepted)
    except SendError as err:
        if err.reply is None or KEY_VAD_EVENTS not in err.reply.unknown_keys:
            raise
    why = "this daemon shows speech only with publisher.vad_events = true"
    view.vad_unavailable(why)
    if say is not None:
        say(f"the daemon at {audio_uri} predates per-stream vad events: {why}")
    return await send_stream(audio_uri, dataclasses.replace(header, vad_events=False), blocks(), credentials)


async def _run(args: argparse.Namespace, view: LiveView, term: Terminal, sub: Subscriber,
               credentials: IngestCredentials) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sub_stop = threading.Event()
    watcher = threading.Thread(target=watch_events, args=(sub, view, term, sub_stop), daemon=True)
    watcher.start()

    async def redraw() -> None:
        while True:
            term.status(view.status_line())
            await asyncio.sleep(REDRAW_S)

    painter = asyncio.create_task(redraw())
    term.line(
        f"streaming the microphone as {view.stream_id!r} to {args.to}; events from {args.connect}; Ctrl-C ends"
    )
    try:
        samples = await stream_microphone(args.to, args.mic, view.stream_id, view, stop, credentials, term.line)
    except IntentdError as err:
        term.line(f"error: {err}")
        return EXIT_FAILED
    finally:
        painter.cancel()
        sub_stop.set()
        await asyncio.to_thread(watcher.join)
        term.finish()
    term.line(f"{view.stream_id}: {samples} samples accepted, {view.intents} intents")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The intentd-live command line."""
    p = argparse.ArgumentParser(
        prog="intentd-live",
        description="Talk into this machine's microphone and watch what intentd makes of it: the input level, "
        "speech/silence as the daemon's VAD hears it, and each intent as it is recognised.")
    p.add_argument("--version", action="version", version=version_text("intentd-live"))
    p.add_argument("--to", default=DEFAULT_AUDIO_URI, metavar="URI",
                   help=f"the daemon's audio socket (default {DEFAULT_AUDIO_URI})")  # fmt: skip
    p.add_argument("--connect", default=DEFAULT_CONNECT, metavar="URI",
                   help=f"the daemon's event publisher (default {DEFAULT_CONNECT})")  # fmt: skip
    p.add_argument("--mic", default="", metavar="DEVICE", help="input device name substring or index")
    p.add_argument("--stream-id", help="stream id (default live:HOST:PID)")
    p.add_argument("--no-color", action="store_true", help="plain text, no ANSI colours")
    add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the live view until Ctrl-C; 0 when the stream ended cleanly."""
    if (refused := refuse_secret_arguments(sys.argv[1:] if argv is None else argv)) is not None:
        print(f"error: {refused}", file=sys.stderr)
        return EXIT_USAGE
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    stream_id = args.stream_id or f"live:{socket.gethostname()}:{os.getpid()}"
    tty = sys.stdout.isatty()
    view = LiveView(stream_id, color=tty and not args.no_color)
    term = Terminal(sys.stdout, redraw=tty)
    try:
        credentials, curve = from_arguments(args)
    except IntentdError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        sub = Subscriber(args.connect, topics=("intent.", "utterance.", "vad."), stream_id=stream_id, curve=curve)
    except IntentdError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    with sub:
        return asyncio.run(_run(args, view, term, sub, credentials))


if __name__ == "__main__":
    sys.exit(main())
