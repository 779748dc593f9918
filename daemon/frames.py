"""Typed frames that travel between stages. Time is counted in samples at `sample_rate`, not wall clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """A piece of one stream's audio as it arrived: mono float32 in [-1, 1], any length."""

    stream_id: str
    samples: np.ndarray
    sample_rate: int
    start_sample: int
    # time.monotonic() when the chunk reached the daemon; latency is measured against it.
    arrival_monotonic: float


@dataclass(frozen=True, slots=True)
class Utterance:
    """One segmented utterance of one stream, at the stream's own rate."""

    stream_id: str
    index: int  # 0, 1, 2... per stream
    samples: np.ndarray  # mono float32, pre-roll included
    sample_rate: int
    start_sample: int  # first sample (pre-roll included) in stream time
    end_sample: int  # one past the last voiced sample in stream time
    truncated: bool  # cut at the maximum utterance length
    # Samples of trailing silence the segmenter waited before it closed the utterance (the hangover actually
    # spent); end-of-speech -> publish latency including the hangover adds this back.
    hangover_samples: int
    # time.monotonic() when the segmenter closed the utterance; processing latency is measured from here.
    closed_monotonic: float
    # Wall-clock time (epoch seconds) of the stream's sample 0, so start/end map to wall time.
    stream_origin_wall: float

    @property
    def duration_s(self) -> float:
        """Length of the utterance in seconds."""
        return (self.end_sample - self.start_sample) / self.sample_rate


@dataclass(frozen=True, slots=True)
class Prediction:
    """A classifier's answer for one clip: the top label, its score, the top-k (label, score) pairs and, for a
    model with slot heads or a grammar decoder, each slot it heard as {slot: (value, score)}; a grammar decoder
    also gives the command sentence it heard (`text`, as the grammar spells it)."""

    label: str
    score: float
    top_k: tuple[tuple[str, float], ...] = field(default_factory=tuple)
    slots: Mapping[str, tuple[str, float]] = field(default_factory=dict, hash=False)
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Classified:
    """An utterance with its prediction and the timings the batcher measured."""

    utterance: Utterance
    prediction: Prediction
    model_id: str
    queue_wait_ms: float  # closed -> batch start
    inference_ms: float  # batch start -> batch done (resample + features + forward), shared by the batch
    batch_size: int
