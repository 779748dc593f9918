"""Accuracy as a local `evaluate` metric: `evaluate.load("train/metrics/accuracy")` works offline.

evaluate parses this file's imports line by line to check dependencies, hence one plain import per line.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Fraction of predictions equal to their reference label."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted label ids.
    references (list of int): true label ids.
    normalize (bool): if False, return the count of correct predictions instead of the fraction. Default True.
    sample_weight (list of float): optional per-example weights.
Returns:
    accuracy (float): in [0, 1] (or a count when normalize=False).
"""
_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Accuracy over integer label ids, with no download and no scikit-learn."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(
        self,
        predictions: list[int],
        references: list[int],
        normalize: bool = True,
        sample_weight: list[float] | None = None,
    ) -> dict[str, float]:
        predicted = np.asarray(predictions)
        expected = np.asarray(references)
        if predicted.shape != expected.shape:
            raise ValueError(f"{predicted.size} predictions but {expected.size} references")
        weights = np.ones(predicted.shape, dtype=float) if sample_weight is None else np.asarray(sample_weight, float)
        correct = float(np.sum(weights * (predicted == expected)))
        if not normalize:
            return {"accuracy": correct}
        total = float(np.sum(weights))
        return {"accuracy": correct / total if total else 0.0}
