"""The two ways `intentd-train predict/eval` run a model folder: intentd's own core, the one the daemon serves
with (daemon/classifier.py, "manual"), and the tutorial's `pipeline("audio-classification")`, one clip at a time,
which shows that a folder fit made works wherever a Hugging Face user loads it, with the same scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from intentd.daemon.errors import IntentdError
from intentd.daemon.frames import Prediction
from intentd.train.commands import CommandPrediction
from intentd.train.errors import TrainError

if TYPE_CHECKING:
    from intentd.daemon.classifier import Classifier

VIA_CHOICES = ("manual", "pipeline")


def check_model_dir(model_dir: str | Path) -> Path:
    """The folder, if it can hold a model intentd loads; else a TrainError saying what is missing."""
    from intentd.daemon.classifier import check_model_folder

    try:
        return check_model_folder(model_dir)
    except IntentdError as err:
        raise TrainError(str(err)) from err


def load_classifier(model_dir: str | Path, top_k: int = 3, threshold: float | None = None) -> Classifier:
    """The daemon's Classifier for a model folder, rejecting as the daemon does: at the model's calibrated
    threshold unless `threshold` overrides it (0: never by score)."""
    from intentd.daemon.classifier import Classifier

    try:
        return Classifier.load(model_dir, top_k=top_k, threshold=threshold)
    except IntentdError as err:
        raise TrainError(str(err)) from err


class ClassifierCommands:
    """A model folder with slot heads as eval's CommandPredictor (train/commands.py): each clip's answer as the
    daemon gives it (`Classifier.answer`: intent or rejected, and the slots that intent takes)."""

    predicts_slots = True

    def __init__(self, classifier: Classifier, max_batch: int | None = None) -> None:
        self.classifier = classifier
        self.max_batch = max_batch

    def predict(self, clips: Sequence[np.ndarray]) -> list[CommandPrediction]:
        """One command per clip, in order."""
        return self.from_scores(*self.classifier.scores(clips, self.max_batch))

    def from_scores(self, probabilities: np.ndarray, slots: Sequence[dict[str, tuple[str, float]]]
                    ) -> list[CommandPrediction]:
        """The commands for scores `Classifier.scores` returned (so eval runs each forward once)."""
        from intentd.daemon.classifier import top_k_of
        from intentd.daemon.events import UNKNOWN_LABEL

        ranked = top_k_of(probabilities, self.classifier.labels, 1)
        answers = [self.classifier.answer(top, heard) for top, heard in zip(ranked, slots, strict=True)]
        return [CommandPrediction(None if a.label == UNKNOWN_LABEL else a.label,
                                  {name: value for name, (value, _score) in a.slots.items()}) for a in answers]


class PipelineClassifier:
    """A model folder through `pipeline("audio-classification")`, fed {'raw', 'sampling_rate'} one clip at a time."""

    def __init__(self, model_dir: str | Path) -> None:
        from transformers import pipeline

        path = check_model_dir(model_dir)
        try:
            self.pipe = pipeline("audio-classification", model=str(path), device="cpu")
        except (OSError, ValueError, KeyError) as err:
            raise TrainError(f"cannot load model folder {model_dir} into a pipeline: {err}") from err
        config = self.pipe.model.config
        self.labels = tuple(str(config.id2label[i]) for i in range(config.num_labels))

    def classify(self, clip: np.ndarray, rate: int, k: int, threshold: float | None = None) -> Prediction:
        """Best k labels for one mono clip at any rate (the pipeline resamples, as the daemon does), and the
        daemon's answer at `threshold`."""
        from intentd.daemon.classifier import decide

        k = max(1, min(k, len(self.labels)))
        rows = self.pipe({"raw": np.asarray(clip, dtype=np.float32), "sampling_rate": rate}, top_k=k)
        return decide(tuple((str(r["label"]), float(r["score"])) for r in rows), threshold)
