"""PNG plots written next to a trained model: training curves and the test confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    """matplotlib with the file-only Agg backend: training runs on headless machines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: Sequence[dict[str, float]], path: Path) -> None:
    """Train/eval loss and eval accuracy per epoch; `history` rows carry epoch, train_loss, eval_loss, accuracy."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train loss"), ("eval_loss", "eval loss")):
        points = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
        if points:
            ax_loss.plot(*zip(*points), marker="o", label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    points = [(row["epoch"], row["accuracy"]) for row in history if row.get("accuracy") is not None]
    if points:
        ax_acc.plot(*zip(*points), marker="o", color="tab:green")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("eval accuracy")
    ax_acc.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion_matrix(truth: Sequence[int], predicted: Sequence[int], names: Sequence[str], path: Path) -> None:
    """Counts of true (rows) vs predicted (columns) labels, annotated."""
    plt = _pyplot()
    n = len(names)
    counts = np.zeros((n, n), dtype=int)
    for t, p in zip(truth, predicted):
        counts[t, p] += 1
    size = max(4.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(n), names, rotation=90)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center",
                        color="white" if counts[i, j] > counts.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
