"""One stream's audio chunks -> utterances: webrtcvad decides per frame, the segmenter finds the boundaries.

The audio is cut from a bounded buffer: while idle only pre-roll plus the onset window is kept, so endless
silence costs constant memory; while speaking at most `max_utterance_ms` is held.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import webrtcvad

from intentd.daemon.errors import AudioError, ConfigError
from intentd.daemon.frames import AudioChunk, Utterance
from intentd.daemon.reframer import VAD_SAMPLE_RATES, Reframer, check_vad_frame, frame_samples_for
from intentd.daemon.segmenter import Segmenter, SegmenterSettings, SpeechDiscarded, SpeechEnded, SpeechStarted
from intentd.daemon.settings import DEFAULTS

VAD_AGGRESSIVENESS = (0, 1, 2, 3)
DEFAULT_AGGRESSIVENESS = DEFAULTS.vad.aggressiveness
# Stream rates we segment; below 8 kHz speech loses the bands webrtcvad looks at.
MIN_STREAM_RATE = 8000
MAX_STREAM_RATE = 192_000
PCM16_FULL_SCALE = 32767
# webrtcvad starts with a low noise estimate and calls the first ~100-180 ms of any noise speech, which would
# announce (then discard) a phantom utterance at every stream start. The first frames are therefore run
# through it once to adapt, then decided again; speech at sample 0 is still heard from sample 0.
VAD_PRIME_MS = 210


@dataclass(frozen=True, slots=True)
class UtteranceStarted:
    """Speech opened an utterance on a stream; its `Utterance` (or an `UtteranceDiscarded`) follows."""

    stream_id: str
    start_sample: int  # pre-roll included, stream time
    sample_rate: int
    detected_monotonic: float  # time.monotonic() when the start was detected
    index: int  # the index the Utterance will carry (reused if this one is discarded)
    stream_origin_wall: float


@dataclass(frozen=True, slots=True)
class UtteranceDiscarded:
    """An announced utterance was shorter than the minimum and will not be classified."""

    stream_id: str
    start_sample: int
    end_sample: int
    sample_rate: int
    index: int  # the index it would have had; the next utterance takes it
    stream_origin_wall: float


VadEvent = UtteranceStarted | Utterance | UtteranceDiscarded


def nearest_vad_rate(sample_rate: int) -> int:
    """The webrtcvad rate closest to `sample_rate` (ties go to the lower one)."""
    return min(VAD_SAMPLE_RATES, key=lambda r: (abs(r - sample_rate), r))


class SpeechDetector:
    """webrtcvad for frames at any stream rate: other rates are interpolated to the nearest supported one."""

    def __init__(self, sample_rate: int, frame_ms: int, aggressiveness: int) -> None:
        if aggressiveness not in VAD_AGGRESSIVENESS:
            raise ConfigError(f"vad.aggressiveness must be one of {VAD_AGGRESSIVENESS}, got {aggressiveness}")
        self.sample_rate = sample_rate
        self.frame_samples = frame_samples_for(sample_rate, frame_ms)
        self.decision_rate = nearest_vad_rate(sample_rate)
        decision_samples = frame_samples_for(self.decision_rate, frame_ms)
        check_vad_frame(self.decision_rate, decision_samples)  # webrtcvad accepts any length; we don't
        self.decision_samples = decision_samples
        if self.decision_rate == sample_rate:
            self._positions: np.ndarray | None = None
        else:
            # Where each decision-rate sample falls in the stream frame, so both span the same time. Linear
            # interpolation suffices: the result only feeds a speech/non-speech decision, never the model.
            step = self.frame_samples / decision_samples
            self._positions = np.arange(decision_samples, dtype=np.float64) * step
            self._grid = np.arange(self.frame_samples, dtype=np.float64)
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: np.ndarray) -> bool:
        """Decide one frame of `frame_samples` float32 samples at the stream rate."""
        if frame.size != self.frame_samples:
            raise AudioError(f"VAD frame must be {self.frame_samples} samples, got {frame.size}")
        if self._positions is not None:
            frame = np.interp(self._positions, self._grid, frame)
        pcm = (np.clip(frame, -1.0, 1.0) * PCM16_FULL_SCALE).astype("<i2")
        return bool(self._vad.is_speech(pcm.tobytes(), self.decision_rate))


class StreamSegmenter:
    """Segment ONE stream: `push` chunks in order, get back the events each chunk completed."""

    def __init__(
        self,
        stream_id: str,
        sample_rate: int,
        settings: SegmenterSettings,
        aggressiveness: int = DEFAULT_AGGRESSIVENESS,
        *,
        stream_origin_wall: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not MIN_STREAM_RATE <= sample_rate <= MAX_STREAM_RATE:
            raise AudioError(
                f"stream {stream_id}: sample rate {sample_rate} Hz is outside "
                f"{MIN_STREAM_RATE}..{MAX_STREAM_RATE} Hz"
            )
        self.stream_id = stream_id
        self.sample_rate = sample_rate
        try:
            self.detector = SpeechDetector(sample_rate, settings.frame_ms, aggressiveness)
        except AudioError as err:
            raise AudioError(f"stream {stream_id}: {err}") from err
        self.frame_samples = self.detector.frame_samples
        self.segmenter = Segmenter(settings)
        self._reframer = Reframer(self.frame_samples)
        self._clock = clock
        self._wall_clock = wall_clock
        self._origin_wall = stream_origin_wall
        self._base_sample: int | None = None  # start_sample of the first chunk: frame 0 begins there
        self._next_sample = 0
        # Frames still needed for an utterance or its pre-roll; _buf_first is the frame index of _buf[0].
        self._buf: deque[np.ndarray] = deque()
        self._buf_first = 0
        self._index = 0
        self._prime_frames = -(-VAD_PRIME_MS // settings.frame_ms)
        self._priming: list[np.ndarray] | None = []  # None once primed

    @property
    def buffered_samples(self) -> int:
        """Audio held for pre-roll or the open utterance (bounded), plus the part-frame waiting for more."""
        held = len(self._buf) + len(self._priming or ())
        return held * self.frame_samples + self._reframer.pending

    @property
    def speaking(self) -> bool:
        """True while an utterance is open."""
        return self.segmenter.speaking

    def push(self, chunk: AudioChunk) -> list[VadEvent]:
        """Take the next chunk of this stream; return the starts, utterances and discards it completed."""
        self._check(chunk)
        samples = chunk.samples
        if not np.isfinite(samples).all():
            bad = int(np.flatnonzero(~np.isfinite(samples))[0])
            raise AudioError(f"stream {self.stream_id}: NaN or infinite sample at {chunk.start_sample + bad}")
        if self._base_sample is None:
            self._base_sample = chunk.start_sample
            if self._origin_wall is None:
                # The chunk arrived about when its last sample was captured.
                elapsed_s = (chunk.start_sample + samples.size) / self.sample_rate
                self._origin_wall = self._wall_clock() - elapsed_s
        self._next_sample = chunk.start_sample + samples.size
        events: list[VadEvent] = []
        for frame in self._reframer.push(samples):
            if self._priming is None:
                events += self._step(frame)
                continue
            self._priming.append(frame)
            if len(self._priming) == self._prime_frames:
                events += self._end_priming()
        return events

    def flush(self, now: float | None = None) -> list[VadEvent]:
        """End of stream (or shutdown): close an open utterance; `now` is its closed_monotonic (default: clock)."""
        self._reframer.reset()  # less than one frame: never judged, never part of an utterance
        events = self._end_priming() if self._priming else []
        event = self.segmenter.flush()
        if event is not None:
            events.append(self._convert(event, now))
        self._trim()
        return events

    def _step(self, frame: np.ndarray) -> list[VadEvent]:
        self._buf.append(frame)
        event = self.segmenter.push(self.detector.is_speech(frame))
        result = [] if event is None else [self._convert(event, None)]
        self._trim()
        return result

    def _end_priming(self) -> list[VadEvent]:
        frames, self._priming = self._priming or [], None
        for frame in frames:
            self.detector.is_speech(frame)  # adapt only; the decision comes on the second pass
        events: list[VadEvent] = []
        for frame in frames:
            events += self._step(frame)
        return events

    def _check(self, chunk: AudioChunk) -> None:
        if chunk.stream_id != self.stream_id:
            raise AudioError(f"stream {self.stream_id}: got a chunk of stream {chunk.stream_id}")
        if chunk.sample_rate != self.sample_rate:
            raise AudioError(
                f"stream {self.stream_id}: rate changed from {self.sample_rate} to {chunk.sample_rate} Hz"
            )
        if self._base_sample is not None and chunk.start_sample != self._next_sample:
            raise AudioError(
                f"stream {self.stream_id}: chunk starts at sample {chunk.start_sample}, "
                f"expected {self._next_sample} (gap or overlap)"
            )
        if not isinstance(chunk.samples, np.ndarray) or chunk.samples.ndim != 1:
            raise AudioError(f"stream {self.stream_id}: audio must be a 1-D array")
        if chunk.samples.dtype != np.float32:
            raise AudioError(f"stream {self.stream_id}: audio must be float32, got {chunk.samples.dtype}")

    def _convert(self, event: SpeechStarted | SpeechEnded | SpeechDiscarded, now: float | None) -> VadEvent:
        base = self._base_sample or 0
        start_sample = base + event.start_frame * self.frame_samples
        if isinstance(event, SpeechStarted):
            return UtteranceStarted(self.stream_id, start_sample, self.sample_rate, self._clock(), self._index,
                                    self._origin_wall_now())
        end_sample = base + event.end_frame * self.frame_samples
        if isinstance(event, SpeechDiscarded):
            return UtteranceDiscarded(self.stream_id, start_sample, end_sample, self.sample_rate, self._index,
                                      self._origin_wall_now())
        first = event.start_frame - self._buf_first
        last = event.end_frame - self._buf_first
        if first < 0 or last > len(self._buf):  # the trimming below must keep every frame a start can use
            raise AssertionError(f"utterance frames {event.start_frame}..{event.end_frame} not buffered")
        samples = np.concatenate([self._buf[k] for k in range(first, last)])
        utterance = Utterance(
            stream_id=self.stream_id,
            index=self._index,
            samples=samples,
            sample_rate=self.sample_rate,
            start_sample=start_sample,
            end_sample=end_sample,
            truncated=event.truncated,
            hangover_samples=event.hangover_frames * self.frame_samples,
            closed_monotonic=self._clock() if now is None else now,
            stream_origin_wall=self._origin_wall_now(),
        )
        self._index += 1
        return utterance

    def _origin_wall_now(self) -> float:
        return self._origin_wall if self._origin_wall is not None else self._wall_clock()

    def _trim(self) -> None:
        """Drop frames no utterance can use any more."""
        open_start = self.segmenter.open_start_frame
        if open_start is not None:
            keep_from = open_start
        else:
            # A start detected on the next frame reaches back at most pre-roll + onset window frames.
            keep_from = self.segmenter.frame_index - self.segmenter.history_frames
        while self._buf and self._buf_first < keep_from:
            self._buf.popleft()
            self._buf_first += 1
