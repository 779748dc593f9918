"""What the batcher runs: utterances at any rate -> 16 kHz clips -> one batched classifier forward."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from intentd.daemon.errors import ModelError
from intentd.daemon.frames import Prediction, Utterance

if TYPE_CHECKING:
    from intentd.daemon.settings import Settings

log = logging.getLogger(__name__)


class Resampler(Protocol):
    """Any rate -> `target_rate`; `daemon.resample.Resampler` is the cached-kernel implementation."""

    target_rate: int

    def __call__(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """Return `samples` (mono float32 at `sample_rate`) at `target_rate`."""
        ...


class ClipClassifier(Protocol):
    """The part of `daemon.classifier.Classifier` used here, so tests can pass a fake."""

    model_id: str
    sample_rate: int

    def classify(self, clips: Sequence[np.ndarray]) -> list[Prediction]:
        """Classify 16 kHz mono float32 clips in one batch."""
        ...


KEEP_WARM_SAMPLES = 1600  # 0.1 s at 16 kHz; fixed-window models pad it to their window anyway


class UtteranceClassifier:
    """The batcher's UtteranceModel: resample every utterance to the model's rate, then classify them together."""

    def __init__(self, classifier: ClipClassifier, resampler: Resampler) -> None:
        if resampler.target_rate != classifier.sample_rate:
            raise ModelError(
                f"model {classifier.model_id} takes {classifier.sample_rate} Hz, "
                f"the resampler makes {resampler.target_rate} Hz"
            )
        self._classifier = classifier
        self._resampler = resampler

    @classmethod
    def load(cls, settings: Settings) -> UtteranceClassifier:
        """Load and warm the model the settings name, with a resampler to its rate (ModelError when it cannot)."""
        import torch

        from intentd.daemon.classifier import Classifier
        from intentd.daemon.resample import Resampler

        if settings.model.threads:
            torch.set_num_threads(settings.model.threads)
        started = time.monotonic()
        classifier = Classifier.load(settings.model_path(), device=settings.model.device,
                                     top_k=settings.model.top_k, threshold=settings.model.own_threshold,
                                     runtime=settings.model.runtime)
        classifier.warmup()
        log.info("model %s loaded and warm in %.1f s", classifier.model_id, time.monotonic() - started)
        return cls(classifier, Resampler())

    @property
    def model_id(self) -> str:
        """The loaded model's `<folder>@<weights hash>`, stamped on every intent event."""
        return self._classifier.model_id

    def keep_warm(self) -> None:
        """A throw-away forward on a short silent clip, keeping weights and kernels hot between utterances."""
        self._classifier.classify([np.zeros(KEEP_WARM_SAMPLES, dtype=np.float32)])

    def classify(self, utterances: Sequence[Utterance]) -> list[Prediction]:
        """One Prediction per utterance, in order, from a single batched forward."""
        clips = [self._resampler(u.samples, u.sample_rate) for u in utterances]
        return self._classifier.classify(clips)
