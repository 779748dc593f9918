"""`intentd-send`: stream WAV/FLAC files (or the local microphone) to intentd's audio socket.

Files go as recorded streams (header `live: false`): the daemon reads them no faster than it classifies, so a flood
of files loses nothing. `--realtime` paces them at real time and marks them live, as a microphone is: the daemon
then drops utterances by its policy when it falls behind.

With `--events URI` it also subscribes to the daemon's events and says per file what the daemon heard, from the
file's `stream.end` (a daemon that never sends one is waited for `--wait-s`, then reported, not an error).

Credentials (docs/security.md): the token from `--token-file` or INTENTD_TOKEN (never a command-line value), TLS
with `--tls-ca` (and `--tls-cert` when the daemon asks for client certificates), CURVE keys for `--events`.

Imports only numpy, soundfile, sounddevice and pyzmq (lazily) and `daemon.protocol`/`daemon.events`/
`daemon.errors`: never torch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from intentd.clients.credentials import (
    IngestCredentials,
    add_arguments,
    from_arguments,
    refuse_secret_arguments,
)
from intentd.daemon import events
from intentd.daemon.errors import IntentdError
from intentd.daemon.protocol import (
    MAX_CHANNELS,
    MAX_CHUNK_BYTES,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    REPLY_ACCEPT,
    REPLY_ERROR,
    REPLY_FINAL,
    Reply,
    ReplyDecoder,
    SampleFormat,
    StreamHeader,
    encode_audio,
    encode_end,
    encode_header,
    encode_pcm,
)
from intentd.daemon.version import version_text

if TYPE_CHECKING:
    from intentd.clients.subscriber import CurveKeys

log = logging.getLogger("intentd-send")

DEFAULT_CHUNK_MS: Final = 20
REPLY_TIMEOUT_S: Final = 30.0
# A recorded stream's final reply comes once the daemon has read all of it, which it does only as fast as its
# model classifies everything queued before: under a flood that can take minutes.
RECORDED_FINAL_TIMEOUT_S: Final = 600.0
# After a failed write, how long to wait for the server's error reply that explains it.
ERROR_REPLY_GRACE_S: Final = 2.0
MIC_QUEUE_BLOCKS: Final = 500  # 10 s of 20 ms blocks; beyond that the network is not keeping up
MAX_MIC_CHANNELS: Final = 2
# --events: how long to wait for the daemon's first message (its status heartbeat comes every
# publisher.status_interval_s, 5 s by default) before sending, and by default for the stream.end of every file.
EVENTS_CONNECT_TIMEOUT_S: Final = 10.0
DEFAULT_WAIT_S: Final = 30.0
HEARD_POLL_S: Final = 0.1
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
_FLOAT_SUBTYPES: Final = ("FLOAT", "DOUBLE")


class SendError(IntentdError):
    """A stream could not be sent or the server refused it; the message carries the server's reason, and
    `reply` the server's error reply where there was one."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the server confirmed for one stream."""

    stream_id: str
    samples: int  # mono samples the server received, from its final reply


async def open_connection(uri: str, credentials: IngestCredentials | None = None,
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to tcp://HOST:PORT (with TLS when `credentials` say so) or unix:///PATH; SendError if the URI is
    bad, nobody listens or the server's certificate does not verify."""
    tls = credentials.tls if credentials is not None else None
    try:
        if uri.startswith("unix://"):
            path = uri[len("unix://") :]
            if not path:
                raise SendError(f"bad URI {uri!r}: unix:// needs a socket path")
            if tls is not None:
                raise SendError(f"{uri}: TLS is for tcp:// (a Unix socket is local)")
            return await asyncio.open_unix_connection(path)
        if uri.startswith("tcp://"):
            host, sep, port = uri[len("tcp://") :].rpartition(":")
            if not sep or not port.isdigit():
                raise SendError(f"bad URI {uri!r}: expected tcp://HOST:PORT")
            host = host.strip("[]") or "127.0.0.1"
            if tls is None:
                return await asyncio.open_connection(host, int(port))
            assert credentials is not None
            return await asyncio.open_connection(host, int(port), ssl=tls,
                                                 server_hostname=credentials.server_hostname or host,
                                                 ssl_handshake_timeout=REPLY_TIMEOUT_S)
    except OSError as err:
        raise SendError(f"cannot connect to {uri}: {err.strerror or err}") from err
    raise SendError(f"bad URI {uri!r}: intentd-send speaks tcp://HOST:PORT or unix:///PATH")


class _Replies:
    """Reads the server's replies in the background so an error reply is seen even while we are sending."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._queue: asyncio.Queue[Reply | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        dec = ReplyDecoder()
        try:
            while data := await self._reader.read(4096):
                for reply in dec.feed(data):
                    self._queue.put_nowait(reply)
        except (ConnectionError, OSError, IntentdError) as err:
            log.debug("reply stream ended: %s", err)
        finally:
            self._queue.put_nowait(None)

    async def next(self, timeout: float) -> Reply | None:
        """The next reply, or None once the server has closed the connection."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            raise SendError(f"no reply from the server within {timeout:g} s") from None

    def close(self) -> None:
        """Stop reading."""
        self._task.cancel()


def _refusal(stream_id: str, reply: Reply | None, expected: str, hint_tls: bool = False) -> SendError:
    if reply is None:
        hint = " (does it require TLS? give --tls-ca)" if hint_tls else ""
        return SendError(f"{stream_id}: server closed the connection before its {expected} reply{hint}")
    if reply.type == REPLY_ERROR:
        return SendError(f"{stream_id}: server refused: {reply.reason}", reply)
    return SendError(f"{stream_id}: expected a {expected} reply, got {reply.type!r}")


async def send_stream(uri: str, header: StreamHeader, blocks: AsyncIterator[bytes],
                      credentials: IngestCredentials | None = None,
                      accepted: Callable[[Reply], None] | None = None) -> SendResult:
    """Send one stream: header (with the credentials' token), wait for accept (handed to `accepted`), PCM blocks,
    end marker, wait for final."""
    if credentials is not None and credentials.token is not None:
        header = dataclasses.replace(header, token=credentials.token)
    reader, writer = await open_connection(uri, credentials)
    replies = _Replies(reader)
    try:
        writer.write(encode_header(header))
        reply = await replies.next(REPLY_TIMEOUT_S)
        if reply is None or reply.type != REPLY_ACCEPT:
            plain_tcp = uri.startswith("tcp://") and (credentials is None or credentials.tls is None)
            raise _refusal(header.stream_id, reply, "accept", hint_tls=plain_tcp)
        if accepted is not None:
            accepted(reply)
        try:
            async for pcm in blocks:
                for i in range(0, len(pcm), MAX_CHUNK_BYTES):
                    writer.write(encode_audio(pcm[i : i + MAX_CHUNK_BYTES]))
                    await writer.drain()
            writer.write(encode_end())
            await writer.drain()
        except (ConnectionError, OSError) as err:
            # The server usually said why before closing; prefer its reason to our broken pipe.
            with contextlib.suppress(SendError):
                late = await replies.next(ERROR_REPLY_GRACE_S)
                if late is not None and late.type == REPLY_ERROR:
                    raise _refusal(header.stream_id, late, "final") from err
            raise SendError(f"{header.stream_id}: connection lost while sending: {err}") from err
        reply = await replies.next(REPLY_TIMEOUT_S if header.live else RECORDED_FINAL_TIMEOUT_S)
        if reply is None or reply.type != REPLY_FINAL:
            raise _refusal(header.stream_id, reply, "final")
        return SendResult(header.stream_id, int(reply.fields.get("samples", 0)))
    finally:
        replies.close()
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


def _soundfile() -> Any:
    try:
        import soundfile
    except (ImportError, OSError) as err:
        raise SendError(
            f"reading audio files needs soundfile and libsndfile (pip install soundfile): {err}"
        ) from err
    return soundfile


def _check_layout(what: str, rate: int, channels: int) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise SendError(
            f"{what}: {rate} Hz is outside the protocol's {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise SendError(f"{what}: {channels} channels, the protocol takes 1..{MAX_CHANNELS}")


async def send_file(
    uri: str,
    path: str | Path,
    *,
    stream_id: str | None = None,
    chunk_ms: int = DEFAULT_CHUNK_MS,
    realtime: bool = False,
    live: bool | None = None,
    credentials: IngestCredentials | None = None,
) -> SendResult:
    """Stream one WAV/FLAC file at its native rate and channels (s16le, or f32le for float files).

    `live` (default: `realtime`) marks the stream live: its utterances may then be dropped under load.
    """
    sf = _soundfile()
    if not Path(path).is_file():  # libsndfile says only "System error." for a missing file
        raise SendError(f"audio file {path} {'is not a file' if Path(path).exists() else 'does not exist'}")
    try:
        snd = sf.SoundFile(str(path))
    except (OSError, RuntimeError) as err:
        raise SendError(f"cannot read audio file {path}: {err}") from err
    with snd:
        rate, channels = int(snd.samplerate), int(snd.channels)
        _check_layout(str(path), rate, channels)
        fmt: SampleFormat = "f32le" if snd.subtype in _FLOAT_SUBTYPES else "s16le"
        header = StreamHeader(stream_id or str(path), rate, fmt, channels, realtime if live is None else live)
        block = max(1, rate * chunk_ms // 1000)

        async def blocks() -> AsyncIterator[bytes]:
            t0 = time.monotonic()
            sent = 0
            dtype = "float32" if fmt == "f32le" else "int16"
            while True:
                try:
                    data = snd.read(block, dtype=dtype, always_2d=True)
                except (OSError, RuntimeError) as err:
                    raise SendError(f"cannot read audio file {path}: {err}") from err
                if len(data) == 0:
                    return
                if realtime:
                    delay = t0 + sent / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                sent += len(data)
                yield encode_pcm(data, fmt)

        return await send_stream(uri, header, blocks(), credentials)


def _sounddevice() -> Any:
    try:
        import sounddevice
    except ImportError as err:
        raise SendError(f"--mic needs sounddevice (pip install sounddevice): {err}") from err
    except OSError as err:
        raise SendError(f"--mic needs the PortAudio library (apt install libportaudio2): {err}") from err
    return sounddevice


def _pick_input(sd: Any, device: str) -> tuple[int, dict[str, Any]]:
    devices = list(sd.query_devices())
    if device == "":
        index = sd.default.device[0]
        if index is None or index < 0:
            raise SendError("no default input device; pass --mic NAME_OR_INDEX (see `intentd devices`)")
    elif device.isdigit():
        index = int(device)
    else:
        matches = [
            i
            for i, d in enumerate(devices)
            if d["max_input_channels"] > 0 and device.lower() in d["name"].lower()
        ]
        if not matches:
            raise SendError(f"no input device matches {device!r}")
        index = matches[0]
    if not 0 <= index < len(devices) or devices[index]["max_input_channels"] < 1:
        raise SendError(f"device {index} is not an input device")
    return index, dict(devices[index])


async def send_microphone(
    uri: str, device: str, *, stream_id: str | None, chunk_ms: int, stop: asyncio.Event,
    credentials: IngestCredentials | None = None,
) -> SendResult:
    """Stream the local microphone (mixed to mono on the server) until `stop` is set."""
    sd = _sounddevice()
    index, info = _pick_input(sd, device)
    rate = int(info["default_samplerate"])
    channels = min(int(info["max_input_channels"]), MAX_MIC_CHANNELS)
    _check_layout(f"microphone {info['name']!r}", rate, channels)
    header = StreamHeader(stream_id or f"mic:{socket.gethostname()}", rate, "f32le", channels)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(MIC_QUEUE_BLOCKS)
    dropped = 0

    def put(data: bytes) -> None:
        nonlocal dropped
        try:
            queue.put_nowait(data)
        except asyncio.QueueFull:
            dropped += 1

    def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio's thread: copy out and hop to the loop; never block here.
        with contextlib.suppress(RuntimeError):  # loop already closed at exit
            loop.call_soon_threadsafe(put, indata.astype("<f4").tobytes())

    async def blocks() -> AsyncIterator[bytes]:
        while not stop.is_set():
            getter = asyncio.ensure_future(queue.get())
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if getter in done:
                yield getter.result()
            else:
                getter.cancel()
        while not queue.empty():
            yield queue.get_nowait()

    try:
        stream = sd.InputStream(
            device=index,
            samplerate=rate,
            channels=channels,
            dtype="float32",
            blocksize=max(1, rate * chunk_ms // 1000),
            callback=callback,
        )
    except Exception as err:  # sounddevice raises PortAudioError, ValueError...
        raise SendError(f"cannot open microphone {info['name']!r}: {err}") from err
    log.info("streaming microphone %r at %d Hz, %d ch as %r", info["name"], rate, channels, header.stream_id)
    with stream:
        try:
            return await send_stream(uri, header, blocks(), credentials)
        finally:
            if dropped:
                log.warning("dropped %d microphone blocks: the connection did not keep up", dropped)


class Hearing:
    """What the daemon publishes about our streams, collected on a thread from its event socket (--events)."""

    def __init__(self, uri: str, stream_ids: Sequence[str], curve: CurveKeys | None = None) -> None:
        from intentd.clients.subscriber import Subscriber  # pyzmq: only for --events

        self._sub = Subscriber(uri, recv_timeout_s=HEARD_POLL_S, curve=curve)
        self._ids = set(stream_ids)
        self.heard: dict[str, list[events.Event]] = {sid: [] for sid in stream_ids}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="intentd-send-events", daemon=True)

    def start(self, timeout_s: float = EVENTS_CONNECT_TIMEOUT_S) -> bool:
        """Wait until subscribed (the daemon's next message), then collect; False if nothing arrived in time."""
        connected = self._sub.wait_connected(timeout_s)
        self._thread.start()
        return connected

    def _run(self) -> None:
        while not self._stop.is_set():
            event = self._sub.recv()
            sid = event.raw.get("stream_id") if event is not None else None
            if event is not None and sid in self._ids:
                with self._cond:
                    self.heard[str(sid)].append(event)
                    self._cond.notify_all()

    def end_of(self, stream_id: str) -> events.StreamEndEvent | None:
        """The stream's stream.end, once it has arrived."""
        with self._cond:
            return next((e for e in self.heard[stream_id] if isinstance(e, events.StreamEndEvent)), None)

    def wait_ends(self, stream_ids: Sequence[str], timeout_s: float) -> None:
        """Block until every stream's stream.end has arrived, or `timeout_s` has passed."""
        with self._cond:
            self._cond.wait_for(lambda: all(self.end_of(sid) is not None for sid in stream_ids), timeout_s)

    def report(self, stream_id: str, wait_s: float) -> str:
        """One line: what the daemon heard on this stream, from its intents and stream.end."""
        end = self.end_of(stream_id)
        if end is None:
            return f"{stream_id}: no stream.end within {wait_s:g} s (a daemon before stream.end never sends one)"
        with self._cond:
            said = [e for e in self.heard[stream_id] if isinstance(e, events.IntentEvent | events.DroppedEvent)]
        parts = [f"{e.label} {e.score:.2f}" if isinstance(e, events.IntentEvent) else f"dropped ({e.reason})"
                 for e in sorted(said, key=lambda e: e.utterance)]
        heard = f"heard {end.utterances}: {', '.join(parts)}" if end.utterances else "no speech"
        blips = f"; {end.discarded} blip(s) too short to classify" if end.discarded else ""
        why = f" (ended: {end.reason})" if end.reason else ""
        return f"{stream_id}: {heard}{blips}{why}"

    def close(self) -> None:
        """Stop collecting and close the socket."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._sub.close()


def build_parser() -> argparse.ArgumentParser:
    """The command line of intentd-send."""
    p = argparse.ArgumentParser(
        prog="intentd-send",
        description="Stream WAV/FLAC files or a microphone to intentd. Files are recorded streams: the daemon "
        "reads them no faster than it classifies, so none of their utterances is dropped; a microphone "
        "(--mic) and --realtime files are live streams, whose utterances the daemon drops by its policy when it "
        "falls behind.",
    )
    p.add_argument("--version", action="version", version=version_text("intentd-send"))
    p.add_argument(
        "--to", required=True, metavar="URI", help="the daemon's socket: tcp://HOST:PORT or unix:///PATH"
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="WAV/FLAC files, each its own stream")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="pace files at real time and mark them live, as a microphone (default: recorded, sent as fast as "
        "the daemon classifies them, never dropped)",
    )
    p.add_argument(
        "--live",
        action="store_true",
        help="mark files live without pacing them: the daemon's drop policy applies when it falls behind "
        "(the behaviour before recorded streams; for load tests)",
    )
    p.add_argument(
        "--chunk-ms", type=int, default=DEFAULT_CHUNK_MS, help=f"audio per chunk in ms (default {DEFAULT_CHUNK_MS})"
    )
    p.add_argument("--stream-id", help="stream id (one file or --mic only; default: the file's path)")
    p.add_argument("--sequential", action="store_true", help="send files one after another, not concurrently")
    p.add_argument(
        "--mic",
        nargs="?",
        const="",
        metavar="DEVICE",
        help="stream a microphone (name substring or index; default device) until Ctrl-C",
    )
    p.add_argument(
        "--events",
        metavar="URI",
        help="the daemon's event socket (e.g. tcp://127.0.0.1:5556): subscribe first, then print per file what "
        "the daemon heard once its stream.end arrives",
    )
    p.add_argument(
        "--wait-s",
        type=float,
        default=DEFAULT_WAIT_S,
        help=f"with --events: how long after sending to wait for the stream.end of every file (default {DEFAULT_WAIT_S:g})",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    add_arguments(p)
    return p


async def _run(args: argparse.Namespace) -> int:
    try:
        credentials, curve = from_arguments(args, events=args.events is not None)
    except IntentdError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.mic is not None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            result = await send_microphone(
                args.to, args.mic, stream_id=args.stream_id, chunk_ms=args.chunk_ms, stop=stop,
                credentials=credentials,
            )
        except IntentdError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_FAILED
        print(f"{result.stream_id}: {result.samples} samples accepted")
        return EXIT_OK

    hearing = None
    if args.events is not None:
        try:
            hearing = Hearing(args.events, [args.stream_id or path for path in args.files], curve)
        except IntentdError as err:
            print(f"error: --events: {err}", file=sys.stderr)
            return EXIT_FAILED
        if not await asyncio.to_thread(hearing.start):
            log.warning("no message from %s within %g s: what the daemon heard may be missed",
                        args.events, EVENTS_CONNECT_TIMEOUT_S)

    async def one(path: str) -> bool:
        try:
            result = await send_file(
                args.to,
                path,
                stream_id=args.stream_id,
                chunk_ms=args.chunk_ms,
                realtime=args.realtime,
                live=args.realtime or args.live,
                credentials=credentials,
            )
        except IntentdError as err:
            print(f"error: {err}", file=sys.stderr)
            return False
        print(f"{result.stream_id}: {result.samples} samples accepted")
        return True

    try:
        if args.sequential:
            ok = [await one(path) for path in args.files]
        else:
            ok = list(await asyncio.gather(*(one(path) for path in args.files)))
        if hearing is not None:
            sent = [args.stream_id or path for path, good in zip(args.files, ok, strict=True) if good]
            await asyncio.to_thread(hearing.wait_ends, sent, args.wait_s)
            for sid in sent:
                print(hearing.report(sid, args.wait_s))
    finally:
        if hearing is not None:
            hearing.close()
    return EXIT_OK if all(ok) else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Run intentd-send; 0 when every stream was accepted and finished, 1 if any failed, 2 on usage errors."""
    if (refused := refuse_secret_arguments(sys.argv[1:] if argv is None else argv)) is not None:
        print(f"error: {refused}", file=sys.stderr)
        return EXIT_USAGE
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.mic is None and not args.files:
        parser.error("give FILE... or --mic")
    if args.mic is not None and args.files:
        parser.error("--mic and FILE... are exclusive")
    if args.stream_id is not None and len(args.files) > 1:
        parser.error("--stream-id needs exactly one FILE (each file's stream id defaults to its path)")
    if not 1 <= args.chunk_ms <= 1000:
        parser.error("--chunk-ms must be 1..1000")
    if not (args.to.startswith("tcp://") or args.to.startswith("unix://")):
        parser.error(f"--to {args.to!r}: expected tcp://HOST:PORT or unix:///PATH")
    if args.events is not None and args.mic is not None:
        parser.error("--events reports on files; watch a microphone with intentd-sub or intentd-live")
    if args.wait_s < 0:
        parser.error("--wait-s must be >= 0")
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
