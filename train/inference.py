"""Run a trained model folder on 16 kHz clips: the manual path (extractor -> logits -> softmax) and the pipeline.

The manual path batches clips yet gives exactly what the HF pipeline gives one clip at a time: Whisper pads every
clip to its fixed chunk anyway, and other models get batches of equal-length clips only, so no padding enters.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from train.audio_io import MODEL_SAMPLE_RATE
from train.errors import TrainError

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
VIA_CHOICES = ("manual", "pipeline")


@dataclass(frozen=True, slots=True)
class Ranked:
    """One label and its softmax score."""

    label: str
    score: float


def check_model_dir(model_dir: str | Path) -> Path:
    """The folder, if it holds a model config; else a TrainError naming it."""
    path = Path(model_dir)
    if not path.is_dir():
        raise TrainError(f"model folder {path} does not exist")
    if not (path / "config.json").is_file():
        raise TrainError(f"{path} is not a model folder (no config.json)")
    return path


class Classifier:
    """A loaded audio classifier and its feature extractor, in eval mode."""

    def __init__(self, model: Any, extractor: Any) -> None:
        self.model = model.eval()
        self.extractor = extractor
        self.id2label: dict[int, str] = {int(k): v for k, v in model.config.id2label.items()}
        self.label2id: dict[str, int] = {v: k for k, v in self.id2label.items()}
        self._fixed_length = hasattr(extractor, "n_samples")  # Whisper: every clip padded to one chunk

    @classmethod
    def load(cls, model_dir: str | Path) -> Classifier:
        """Load a folder written by `intentd-train fit` (or any HF audio classifier folder)."""
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

        path = check_model_dir(model_dir)
        try:
            model = AutoModelForAudioClassification.from_pretrained(str(path))
            extractor = AutoFeatureExtractor.from_pretrained(str(path))
        except (OSError, ValueError, KeyError) as err:
            raise TrainError(f"cannot load model folder {path}: {err}") from err
        return cls(model, extractor)

    def _inputs(self, clips: list[np.ndarray]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"sampling_rate": MODEL_SAMPLE_RATE, "return_tensors": "pt"}
        if self._fixed_length:
            kwargs["return_attention_mask"] = False
        return dict(self.extractor(clips, **kwargs))

    def _groups(self, clips: list[np.ndarray], batch_size: int) -> list[list[int]]:
        """Index batches: in order for fixed-length models, else of equal-length clips only."""
        if self._fixed_length:
            order = list(range(len(clips)))
            return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, clip in enumerate(clips):
            by_length[len(clip)].append(i)
        return [idx[i : i + batch_size] for idx in by_length.values() for i in range(0, len(idx), batch_size)]

    def logits(self, clips: list[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """(clips, labels) logits for mono float32 clips at 16 kHz."""
        import torch

        out = np.zeros((len(clips), len(self.id2label)), dtype=np.float32)
        device = next(self.model.parameters()).device
        with torch.no_grad():
            for idx in self._groups(clips, batch_size):
                inputs = {k: v.to(device) for k, v in self._inputs([clips[i] for i in idx]).items()}
                out[idx] = self.model(**inputs).logits.float().cpu().numpy()
        return out

    def probabilities(self, clips: list[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """(clips, labels) softmax scores."""
        logits = self.logits(clips, batch_size)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def top_k(self, clips: list[np.ndarray], k: int, batch_size: int = DEFAULT_BATCH_SIZE) -> list[list[Ranked]]:
        """Best k labels per clip, best first."""
        probs = self.probabilities(clips, batch_size)
        k = max(1, min(k, probs.shape[1]))
        ranked = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[Ranked(self.id2label[int(j)], float(row[j])) for j in order] for row, order in zip(probs, ranked)]


class PipelineClassifier:
    """The same folder through `pipeline("audio-classification")`, fed {'raw', 'sampling_rate'} one clip at a time."""

    def __init__(self, model_dir: str | Path) -> None:
        from transformers import pipeline

        path = check_model_dir(model_dir)
        try:
            self.pipe = pipeline("audio-classification", model=str(path), device="cpu")
        except (OSError, ValueError, KeyError) as err:
            raise TrainError(f"cannot load model folder {path} into a pipeline: {err}") from err
        self.num_labels = len(self.pipe.model.config.id2label or {})

    def top_k(self, clip: np.ndarray, rate: int, k: int) -> list[Ranked]:
        """Best k labels for one mono clip at any rate (the pipeline resamples)."""
        k = max(1, min(k, self.num_labels))
        rows = self.pipe({"raw": np.asarray(clip, dtype=np.float32), "sampling_rate": rate}, top_k=k)
        return [Ranked(r["label"], float(r["score"])) for r in rows]
