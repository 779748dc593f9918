"""File replay: a WAV/FLAC file fed to the sink as one stream, at real-time pace (a live stream) or as fast as the
model takes it (a recorded stream: the replay awaits the sink's room before each chunk, so nothing is dropped)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Final

import numpy as np

from intentd.daemon.errors import SourceError
from intentd.daemon.frames import AudioChunk
from intentd.daemon.settings import DEFAULTS
from intentd.daemon.sources.sink import StreamSink

log = logging.getLogger(__name__)

# Disk reads are done off the event loop in blocks this long, then cut into chunk_ms pieces.
READ_BLOCK_S: Final = 1.0
SHUTDOWN_REASON: Final = "server shutting down"


class FileReplaySource:
    """Replays one audio file as a stream (stream id = the path unless given)."""

    def __init__(
        self,
        path: str | Path,
        sink: StreamSink,
        *,
        chunk_ms: int = DEFAULTS.sources.chunk_ms,
        realtime: bool = False,
        stream_id: str | None = None,
    ) -> None:
        if chunk_ms <= 0:
            raise SourceError(f"file://{path}: chunk_ms must be > 0, got {chunk_ms}")
        self.path = Path(path)
        self._sink = sink
        self._chunk_ms = chunk_ms
        self._realtime = realtime
        self.stream_id = stream_id or str(path)
        self._task: asyncio.Task[int] | None = None
        self._stop_reason: str | None = None

    async def start(self) -> str:
        """Check the file is readable (SourceError naming it otherwise) and start replaying in the background."""
        info = await asyncio.to_thread(_probe, self.path)
        log.info(
            "replaying %s (%d Hz, %d ch, %.2f s)%s",
            self.path,
            info.samplerate,
            info.channels,
            info.duration,
            " at real-time pace (live)" if self._realtime else " as fast as the model takes it (recorded)",
        )
        self._task = asyncio.create_task(self.replay())
        return f"file://{self.path}"

    async def wait(self) -> int:
        """Wait for a started replay to finish; returns the samples replayed."""
        if self._task is None:
            raise SourceError(f"file://{self.path}: replay not started")
        return await self._task

    def stop_accepting(self) -> None:
        """Stop the replay; the stream is closed with a shutdown reason."""
        self._stop(SHUTDOWN_REASON)

    async def close(self, reason: str = SHUTDOWN_REASON) -> None:
        """Stop the replay and wait until its stream is closed."""
        self._stop(reason)
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, SourceError):
                await self._task

    def _stop(self, reason: str) -> None:
        if self._task is not None and not self._task.done() and self._stop_reason is None:
            self._stop_reason = reason
            self._task.cancel()

    async def replay(self) -> int:
        """Replay the whole file into the sink now; returns the samples replayed. SourceError if unreadable."""
        sf = _soundfile()
        try:
            snd = await asyncio.to_thread(sf.SoundFile, str(self.path))
        except (OSError, RuntimeError, sf.LibsndfileError) as err:
            raise SourceError(f"cannot read audio file {self.path}: {err}") from err
        rate = int(snd.samplerate)
        chunk = max(1, rate * self._chunk_ms // 1000)
        block = max(chunk, int(rate * READ_BLOCK_S) // chunk * chunk)
        pushed = 0
        loop = asyncio.get_running_loop()
        read: asyncio.Future[np.ndarray] | None = None
        self._sink.open_stream(self.stream_id, rate, time.time(), live=self._realtime)
        reason: str | None = None
        t0 = time.monotonic()
        try:
            while True:
                try:
                    read = loop.run_in_executor(None, snd.read, block, "float32", True)
                    # shield: on cancel the read keeps its thread; the file is closed only after it returns.
                    data = await asyncio.shield(read)
                except (OSError, RuntimeError, sf.LibsndfileError) as err:
                    raise SourceError(f"cannot read audio file {self.path}: {err}") from err
                if len(data) == 0:
                    break
                mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0].copy()
                for i in range(0, len(mono), chunk):
                    piece = mono[i : i + chunk]
                    if self._realtime:
                        # Pace by the audio clock, not by sleeping a fixed time per chunk, so drift does not add up.
                        delay = t0 + pushed / rate - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    else:
                        await asyncio.sleep(0)  # let other streams and the server run between chunks
                        await self._sink.wait_room(self.stream_id)
                    self._sink.push(AudioChunk(self.stream_id, piece, rate, pushed, time.monotonic()))
                    pushed += len(piece)
        except asyncio.CancelledError:
            reason = self._stop_reason or "replay cancelled"
            raise
        except Exception as err:
            reason = str(err)
            raise
        finally:
            if read is not None and not read.done():
                read.add_done_callback(lambda _: snd.close())
            else:
                snd.close()
            self._sink.close_stream(self.stream_id, reason)
            log.info("replay of %s %s after %d samples", self.path, reason or "finished", pushed)
        return pushed


def _soundfile() -> Any:
    try:
        import soundfile
    except (ImportError, OSError) as err:
        raise SourceError(
            f"file replay needs soundfile and libsndfile (pip install soundfile): {err}"
        ) from err
    return soundfile


def _probe(path: Path) -> Any:
    return probe_file(path)


def probe_file(path: Path) -> Any:
    """soundfile's info on a file worth replaying; SourceError naming it when it is missing, unreadable or holds
    no audio. Cheap (no model needed): the service calls it before loading the model."""
    if not path.is_file():
        raise SourceError(f"file://{path}: {'not a file' if path.exists() else 'no such file'}")
    sf = _soundfile()
    try:
        info = sf.info(str(path))
    except (OSError, RuntimeError, sf.LibsndfileError) as err:
        raise SourceError(f"cannot read audio file {path}: {err}") from err
    if info.frames == 0:
        raise SourceError(f"file://{path}: the file holds no audio (0 samples)")
    return info
