"""Microphone source: a PortAudio input (sounddevice) at its native rate, mixed to mono, reopened on failure."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from intentd.daemon.errors import SourceError
from intentd.daemon.frames import AudioChunk
from intentd.daemon.settings import DEFAULTS
from intentd.daemon.sources.sink import StreamSink

log = logging.getLogger(__name__)

# Virtual ALSA devices ("pulse", "default") advertise 32+ channels that are copies of the same signal;
# opening more than stereo costs bandwidth for nothing, since everything is mixed to mono.
MAX_CHANNELS: Final = 2
RETRY_INITIAL_S: Final = 0.5
RETRY_MAX_S: Final = 30.0
# No callback for this long means the device vanished without PortAudio telling us (common with USB and ALSA).
STALL_TIMEOUT_S: Final = 2.0
SHUTDOWN_REASON: Final = "server shutting down"
# Opening, starting or aborting a PortAudio stream that takes longer than this is treated as a failed device.
BACKEND_CALL_TIMEOUT_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class InputDevice:
    """One PortAudio input device, as `intentd devices` lists it."""

    index: int
    name: str
    channels: int  # max input channels
    default_sample_rate: float
    hostapi: str
    is_default: bool


def import_sounddevice() -> Any:
    """Import sounddevice lazily; SourceError saying what to install if it or PortAudio is missing."""
    try:
        import sounddevice
    except ImportError as err:
        raise SourceError(f"microphone input needs sounddevice: pip install sounddevice ({err})") from err
    except OSError as err:
        raise SourceError(
            f"microphone input needs the PortAudio library: apt install libportaudio2 ({err})"
        ) from err
    return sounddevice


def list_devices(sd: Any | None = None) -> list[InputDevice]:
    """The input devices PortAudio sees now (data only; printing is the CLI's job)."""
    sd = sd or import_sounddevice()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
        default_in = sd.default.device[0]
    except Exception as err:  # PortAudioError is not importable without PortAudio
        raise SourceError(f"cannot list audio devices: {err}") from err
    return [
        InputDevice(
            index=i,
            name=str(d["name"]),
            channels=int(d["max_input_channels"]),
            default_sample_rate=float(d["default_samplerate"]),
            hostapi=str(hostapis[d["hostapi"]]["name"]),
            is_default=i == default_in,
        )
        for i, d in enumerate(devices)
        if d["max_input_channels"] > 0
    ]


def find_device(devices: list[InputDevice], device: int | str | None) -> InputDevice:
    """Pick an input by index, by name (exact, else case-insensitive substring) or the default (None)."""
    if device is None:
        for d in devices:
            if d.is_default:
                return d
        raise SourceError(
            "no default input device; name one with mic://NAME_OR_INDEX (see `intentd devices`)"
        )
    if isinstance(device, int):
        for d in devices:
            if d.index == device:
                return d
        raise SourceError(f"mic://{device}: no input device with that index (see `intentd devices`)")
    exact = [d for d in devices if d.name == device]
    matches = exact or [d for d in devices if device.lower() in d.name.lower()]
    if not matches:
        names = ", ".join(repr(d.name) for d in devices) or "none"
        raise SourceError(f"mic://{device}: no input device matches (inputs: {names})")
    return matches[0]


class MicrophoneSource:
    """Feeds one microphone to the sink; each time the device (re)opens is a new stream with the same id."""

    def __init__(
        self,
        device: int | str | None,
        sink: StreamSink,
        *,
        stream_id: str | None = None,
        chunk_ms: int = DEFAULTS.sources.chunk_ms,
        retry_initial_s: float = RETRY_INITIAL_S,
        retry_max_s: float = RETRY_MAX_S,
        stall_timeout_s: float = STALL_TIMEOUT_S,
    ) -> None:
        self.device = device
        self.stream_id = stream_id or f"mic:{'default' if device is None else device}"
        self._sink = sink
        self._chunk_ms = chunk_ms
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._stall_timeout_s = stall_timeout_s
        self._task: asyncio.Task[None] | None = None
        self._stop_reason: str | None = None
        self._failing: str | None = None  # the last failure logged, so each state change logs once
        self.sessions = 0  # times the device was opened successfully

    async def start(self) -> str:
        """Start capturing in the background (a missing device is retried, not fatal); returns the URI."""
        import_sounddevice()  # a missing PortAudio is a setup error, not a device to wait for
        self._task = asyncio.create_task(self._run())
        return f"mic://{'' if self.device is None else self.device}"

    def stop_accepting(self) -> None:
        """Stop capturing; the open stream is closed with a shutdown reason."""
        if self._task is not None and not self._task.done() and self._stop_reason is None:
            self._stop_reason = SHUTDOWN_REASON
            self._task.cancel()

    async def close(self, reason: str = SHUTDOWN_REASON) -> None:
        """Stop capturing and wait until the stream is closed."""
        if self._task is not None and not self._task.done() and self._stop_reason is None:
            self._stop_reason = reason
            self._task.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        delay = self._retry_initial_s
        while True:
            try:
                await self._session()
                delay = self._retry_initial_s
            except SourceError as err:
                if self._failing != str(err):
                    log.warning(
                        "%s: %s; retrying with backoff up to %g s", self.stream_id, err, self._retry_max_s
                    )
                    self._failing = str(err)
                else:
                    log.debug("%s: still failing: %s", self.stream_id, err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)

    async def _session(self) -> None:
        """Open the device, feed the sink until it fails; raises SourceError saying why."""
        sd = import_sounddevice()
        try:
            info = find_device(list_devices(sd), self.device)
        except SourceError:
            # PortAudio enumerates devices once at initialisation; re-initialise so a re-plugged device is seen.
            # Only when the device is missing: re-initialising stops every other open PortAudio stream.
            with contextlib.suppress(Exception):
                await _call_in_thread(_reinitialise, sd)
            info = find_device(list_devices(sd), self.device)
        rate = int(info.default_sample_rate)
        channels = max(1, min(info.channels, MAX_CHANNELS))
        loop = asyncio.get_running_loop()
        failed: asyncio.Future[str] = loop.create_future()
        state = _SessionState()

        def fail(why: str) -> None:
            if not failed.done():
                failed.set_result(why)

        def on_block(block: np.ndarray, arrival: float) -> None:
            if failed.done():
                return
            mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
            if not np.isfinite(mono).all():
                fail("NaN or infinite samples from the device")
                return
            state.last_block = arrival
            self._sink.push(AudioChunk(self.stream_id, mono, rate, state.next_sample, arrival))
            state.next_sample += mono.size

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            # PortAudio's thread: copy (the buffer is reused) and hop to the loop; never block or touch the sink.
            block = indata.copy()
            arrival = time.monotonic()
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(on_block, block, arrival)

        def finished() -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fail, "device stream stopped")

        try:
            stream = await _call_in_thread(
                sd.InputStream,
                device=info.index,
                samplerate=rate,
                channels=channels,
                dtype="float32",
                blocksize=max(1, rate * self._chunk_ms // 1000),
                callback=callback,
                finished_callback=finished,
            )
        except (
            Exception
        ) as err:  # PortAudioError, ValueError: sounddevice's own types need PortAudio to import
            raise SourceError(f"cannot open input device {info.name!r}: {err}") from err
        self._sink.open_stream(self.stream_id, rate, time.time())
        reason: str | None = None
        try:
            try:
                await _call_in_thread(stream.start)
            except Exception as err:
                raise SourceError(f"cannot start input device {info.name!r}: {err}") from err
            state.last_block = time.monotonic()
            self.sessions += 1
            if self._failing is not None:
                log.warning("%s: device %r is back", self.stream_id, info.name)
            self._failing = None
            log.info("%s: capturing %r at %d Hz, %d channel(s)", self.stream_id, info.name, rate, channels)
            while True:
                try:
                    why = await asyncio.wait_for(asyncio.shield(failed), self._stall_timeout_s / 2)
                except TimeoutError:
                    if time.monotonic() - state.last_block > self._stall_timeout_s:
                        why = f"no audio for {self._stall_timeout_s:g} s"
                    else:
                        continue
                reason = f"input device {info.name!r} failed: {why}"
                raise SourceError(reason)
        except asyncio.CancelledError:
            reason = self._stop_reason or "microphone cancelled"
            raise
        except SourceError as err:
            reason = str(err)
            raise
        finally:
            # Close the sink's stream first: with a dead backend, abort() below can take long or hang.
            fail(reason or "closed")  # on_block ignores callbacks that are still in flight
            self._sink.close_stream(self.stream_id, reason)
            try:
                await asyncio.shield(_call_in_thread(_abort_and_close, stream))
            except Exception as err:  # noqa: BLE001 - any backend failure here is logged; the next open decides
                log.warning("%s: could not close input device %r cleanly: %s", self.stream_id, info.name, err)


@dataclass(slots=True)
class _SessionState:
    next_sample: int = 0
    last_block: float = 0.0


async def _call_in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking PortAudio call on a daemon thread; SourceError if it does not return in time.

    Not asyncio.to_thread: a backend call that never returns (ALSA on a vanished server does that) would pin
    the default executor, and asyncio.run() waits for that executor at exit.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not done.done():
            (done.set_result if ok else done.set_exception)(value)

    def work() -> None:
        try:
            result = fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised in the awaiting coroutine, not swallowed
            ok, value = False, err
        else:
            ok, value = True, result
        with contextlib.suppress(RuntimeError):  # the loop is gone; nobody is waiting
            loop.call_soon_threadsafe(settle, ok, value)

    threading.Thread(target=work, name="intentd-portaudio", daemon=True).start()
    try:
        return await asyncio.wait_for(done, BACKEND_CALL_TIMEOUT_S)
    except TimeoutError:
        raise SourceError(
            f"audio backend call {getattr(fn, '__name__', fn)} hung for {BACKEND_CALL_TIMEOUT_S:g} s"
        ) from None


def _abort_and_close(stream: Any) -> None:
    try:
        stream.abort()
    finally:
        stream.close()


def refresh_devices(sd: Any | None = None) -> None:
    """Re-scan PortAudio's devices (it enumerates once at start); stops every open PortAudio stream."""
    _reinitialise(sd or import_sounddevice())


def _reinitialise(sd: Any) -> None:
    # sounddevice exposes no public re-scan; these are the calls its own docs suggest for refreshing the list.
    sd._terminate()
    sd._initialize()
