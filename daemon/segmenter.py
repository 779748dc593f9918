"""Per-frame speech decisions -> utterance boundaries: a pure state machine counting in frames, no audio, no I/O.

It emits only on transitions, like silero-vad's VADIterator: `SpeechStarted` when speech opens an utterance,
`SpeechEnded` when the hangover closes it (or the maximum length cuts it), and `SpeechDiscarded` when speech that
was announced turns out shorter than the minimum, so every start is followed by exactly one end or discard.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from intentd.daemon.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SegmenterSettings:
    """Segmentation timing, in ms; converted to whole frames (rounded up) by the segmenter."""

    frame_ms: int = 30  # one `is_speech` decision covers this much audio
    # Voiced audio needed within the last `start_window_ms` to open an utterance: 90 of 120 ms means one
    # unvoiced frame inside the onset does not delay the start, while isolated voiced frames never start one.
    start_ms: int = 90
    start_window_ms: int = 120  # widened to start_ms when start_ms is longer
    # Audio kept before the first voiced frame: webrtcvad decides late on soft onsets (/f/, /s/, /h/).
    preroll_ms: int = 300
    # Unvoiced audio after the last voiced frame before the utterance closes. webrtcvad already smooths ~100 ms,
    # so no FSDD digit splits even at 60 ms; espeak-ng sentences with 100 ms extra pauses between words need
    # 270 ms at -50 dBFS noise (aggressiveness 2), so 300 ms is the fastest with a margin.
    hangover_ms: int = 300
    # Once an utterance has this much voice (onset -> last voiced frame), a pause may last long_hangover_ms
    # before it closes: a short command (a digit, "lights on") still ends after hangover_ms, while a long one
    # survives a hesitation ("can I get a... large mocha"). At or below hangover_ms it is off.
    long_hangover_ms: int = 800
    long_hangover_after_ms: int = 1000
    min_utterance_ms: int = 200  # voiced part (onset -> end, pre-roll excluded); shorter is dropped
    max_utterance_ms: int = 8000  # whole utterance, pre-roll included; longer speech is cut and continues

    def __post_init__(self) -> None:
        if self.frame_ms <= 0:
            raise ConfigError(f"vad.frame_ms must be positive, got {self.frame_ms}")
        if self.start_ms < self.frame_ms:
            raise ConfigError(
                f"vad.start_ms must be at least one frame ({self.frame_ms} ms), got {self.start_ms}"
            )
        if self.start_window_ms <= 0:
            raise ConfigError(f"vad.start_window_ms must be positive, got {self.start_window_ms}")
        if self.preroll_ms < 0:
            raise ConfigError(f"vad.preroll_ms must be >= 0, got {self.preroll_ms}")
        if self.hangover_ms < self.frame_ms:
            raise ConfigError(
                f"vad.hangover_ms must be at least one frame ({self.frame_ms} ms), got {self.hangover_ms}"
            )
        if self.long_hangover_after_ms < 0:
            raise ConfigError(f"vad.long_hangover_after_ms must be >= 0, got {self.long_hangover_after_ms}")
        if self.min_utterance_ms < 0:
            raise ConfigError(f"vad.min_utterance_ms must be >= 0, got {self.min_utterance_ms}")
        # A fresh utterance spans at most pre-roll + onset window when it opens; the cap must leave room after.
        floor_ms = self.preroll_ms + max(self.start_ms, self.start_window_ms) + self.frame_ms
        if self.max_utterance_ms < floor_ms:
            raise ConfigError(
                f"vad.max_utterance_ms must be at least preroll + start window + one frame ({floor_ms} ms), "
                f"got {self.max_utterance_ms}"
            )
        if self.min_utterance_ms >= self.max_utterance_ms:
            raise ConfigError("vad.min_utterance_ms must be below vad.max_utterance_ms")

    def frames(self, ms: int) -> int:
        """Whole frames covering `ms` (rounded up, so a setting is never shortened)."""
        return math.ceil(ms / self.frame_ms)


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """An utterance opened; `start_frame` includes the pre-roll."""

    start_frame: int


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """An utterance closed: frames [start_frame, end_frame), end one past the last voiced frame."""

    start_frame: int
    end_frame: int
    truncated: bool  # cut at max_utterance_ms rather than closed by silence
    hangover_frames: int  # unvoiced frames waited after end_frame before closing


@dataclass(frozen=True, slots=True)
class SpeechDiscarded:
    """An announced utterance was shorter than min_utterance_ms and is dropped."""

    start_frame: int
    end_frame: int


SegmentEvent = SpeechStarted | SpeechEnded | SpeechDiscarded


class Segmenter:
    """Feed one `is_speech` decision per frame with `push`; it returns an event on transitions, else None."""

    def __init__(self, settings: SegmenterSettings) -> None:
        self.settings = settings
        self.start_frames = settings.frames(settings.start_ms)
        self.window_frames = max(settings.frames(settings.start_window_ms), self.start_frames)
        self.preroll_frames = settings.frames(settings.preroll_ms)
        self.hangover_frames = settings.frames(settings.hangover_ms)
        self.long_hangover_frames = max(settings.frames(settings.long_hangover_ms), self.hangover_frames)
        self.long_after_frames = settings.frames(settings.long_hangover_after_ms)
        self.min_frames = settings.frames(settings.min_utterance_ms)
        self.max_frames = settings.frames(settings.max_utterance_ms)
        # The last window_frames decisions; bounded, so endless silence costs nothing.
        self._window: deque[bool] = deque(maxlen=self.window_frames)
        self._voiced_in_window = 0
        self._frame = 0  # index of the next frame pushed
        self._floor = 0  # pre-roll never reaches back before this (stream start or the previous utterance)
        self._speaking = False
        self._start = 0
        self._onset = 0  # first voiced frame of the open utterance
        self._last_voiced = 0
        self._silence = 0  # unvoiced frames since _last_voiced

    @property
    def frame_index(self) -> int:
        """Frames pushed so far."""
        return self._frame

    @property
    def speaking(self) -> bool:
        """True while an utterance is open."""
        return self._speaking

    @property
    def open_start_frame(self) -> int | None:
        """First frame (pre-roll included) of the open utterance, or None when idle."""
        return self._start if self._speaking else None

    @property
    def history_frames(self) -> int:
        """Frames before the current one that a start could still reach back to (pre-roll + onset window)."""
        return self.preroll_frames + self.window_frames

    @property
    def current_hangover_frames(self) -> int:
        """Unvoiced frames that close the open utterance: the long hangover once it has enough voice."""
        voiced = self._last_voiced + 1 - self._onset
        return self.long_hangover_frames if voiced >= self.long_after_frames else self.hangover_frames

    def push(self, is_speech: bool) -> SegmentEvent | None:
        """Advance by one frame; return the transition it caused, if any."""
        i = self._frame
        self._frame += 1
        if len(self._window) == self.window_frames and self._window[0]:
            self._voiced_in_window -= 1
        self._window.append(bool(is_speech))
        self._voiced_in_window += bool(is_speech)

        if not self._speaking:
            if not is_speech or self._voiced_in_window < self.start_frames:
                return None
            # The onset is the first voiced frame of the window that triggered; the floor keeps the pre-roll
            # inside the stream and out of the previous utterance.
            first_voiced = self._window.index(True)
            self._onset = max(self._floor, i - len(self._window) + 1 + first_voiced)
            self._start = max(self._floor, self._onset - self.preroll_frames)
            self._speaking = True
            self._last_voiced = i
            self._silence = 0
            return SpeechStarted(self._start)

        if is_speech:
            self._last_voiced = i
            self._silence = 0
        else:
            self._silence += 1
            if self._silence >= self.current_hangover_frames:
                return self._close(truncated=False)
        if i + 1 - self._start >= self.max_frames:
            if self._silence >= self.hangover_frames:
                # The cap fell inside a long hangover after a pause the short hangover already ends on: the
                # command was over, not cut off (a 2 s command near a 2.5 s cap must not come out truncated).
                return self._close(truncated=False)
            # The window still holds the speech just heard, so if it goes on the next voiced frame reopens at
            # once, at the cut (the floor), without pre-roll: endless speech gives back-to-back utterances.
            return self._close(truncated=True)
        return None

    def flush(self) -> SegmentEvent | None:
        """End of stream: close the open utterance (if any) and forget the onset history.

        An utterance the stream's end cuts short is kept if it was long enough to open one (start_ms of voice):
        a stream that ends inside speech ends on a command cut off, not on noise (a file or push-to-talk stream
        is its command: FSDD's tightest clips end before 150 ms of speech were judged voiced, and a hangover
        can never close them; mid-stream blips still need min_utterance_ms).
        """
        event = self._close(truncated=False, min_frames=min(self.min_frames, self.start_frames)) \
            if self._speaking else None
        self._window.clear()
        self._voiced_in_window = 0
        return event

    def _close(self, truncated: bool, min_frames: int | None = None) -> SpeechEnded | SpeechDiscarded:
        # At a cut in the middle of speech the cut point is the end; unvoiced frames just before a cut stay
        # outside the utterance as a hangover would.
        end = self._last_voiced + 1
        self._speaking = False
        if truncated:
            self._floor = self._frame
        else:
            # A new utterance needs fresh evidence, not the tail of this one (hangover may be shorter than
            # the onset window).
            self._floor = end
            self._window.clear()
            self._voiced_in_window = 0
        if end - self._onset < (self.min_frames if min_frames is None else min_frames):
            return SpeechDiscarded(self._start, end)
        return SpeechEnded(self._start, end, truncated, self._silence)
