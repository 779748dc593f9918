"""`intentd-train eval`: accuracy and a per-class report of a model folder on one split of DATA."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

import numpy as np

from daemon.audio import SAMPLE_RATE
from train.data import (
    DEFAULT_SPLIT_SEED,
    DEFAULT_TEST_FRACTION,
    LABEL_COLUMN_CANDIDATES,
    iter_clips,
    load_labelled,
    map_labels_to_model,
)
from train.fit import ACCURACY_METRIC_DIR
from train.inference import VIA_CHOICES, PipelineClassifier, check_model_dir, load_classifier

log = logging.getLogger(__name__)

DEFAULT_EVAL_BATCH = 16


def per_class_report(truth: list[int], predicted: list[int], id2label: dict[int, str]) -> dict[str, dict[str, float]]:
    """precision/recall/f1/support per label that occurs in truth or predictions."""
    from sklearn.metrics import precision_recall_fscore_support

    present = sorted(set(truth) | set(predicted))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=present, zero_division=0
    )
    return {
        id2label[label]: {
            "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)
        }
        for label, p, r, f, s in zip(present, precision, recall, f1, support)
    }


def evaluate_model(
    model_dir: str,
    dataset: str,
    split: str = "test",
    dataset_config: str | None = None,
    label_column: str | None = None,
    seed: int = DEFAULT_SPLIT_SEED,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    via: str = "manual",
    batch_size: int = DEFAULT_EVAL_BATCH,
) -> dict[str, Any]:
    """The eval report as a dict: accuracy, n, per_class, plus what was evaluated."""
    import evaluate

    check_model_dir(model_dir)  # a wrong --model says so before the dataset is read
    data = load_labelled(dataset, dataset_config, label_column, seed, test_fraction)
    rows = data.split(split)
    manual = load_classifier(model_dir) if via == "manual" else None
    pipe = PipelineClassifier(model_dir) if via == "pipeline" else None
    labels = manual.labels if manual is not None else pipe.labels  # type: ignore[union-attr]
    label2id = {name: i for i, name in enumerate(labels)}
    id2label = dict(enumerate(labels))
    to_model = map_labels_to_model(data.label_names, label2id, dataset)

    truth: list[int] = []
    predicted: list[int] = []
    for clips, batch in iter_clips(rows, batch_size):
        truth.extend(to_model[i] for i in batch[data.label_column])
        if manual is not None:
            predicted.extend(int(i) for i in np.argmax(manual.probabilities(clips, batch_size), axis=1))
        else:
            predicted.extend(label2id[pipe.classify(c, SAMPLE_RATE, 1).label] for c in clips)  # type: ignore[union-attr]
    accuracy = evaluate.load(str(ACCURACY_METRIC_DIR)).compute(predictions=predicted, references=truth)["accuracy"]
    return {
        "accuracy": float(accuracy),
        "n": len(truth),
        "per_class": per_class_report(truth, predicted, id2label),
        "model": str(model_dir),
        "dataset": dataset,
        "split": split,
        "via": via,
    }


def format_report(report: dict[str, Any]) -> str:
    """A readable table: one row per class, then accuracy."""
    width = max([len(name) for name in report["per_class"]] + [8])
    lines = [f"{'label':<{width}}  precision  recall     f1  support"]
    for name, row in report["per_class"].items():
        lines.append(
            f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}  {row['support']:7d}"
        )
    lines.append(f"accuracy {report['accuracy']:.4f} on {report['n']} clips ({report['dataset']}, split {report['split']})")
    return "\n".join(lines)


def register(subparsers: Any) -> None:
    """Add the `eval` subcommand."""
    p = subparsers.add_parser("eval", help="accuracy and per-class report of a model on a dataset split")
    p.add_argument("--model", required=True, metavar="DIR", help="model folder written by fit")
    p.add_argument("--dataset", required=True, metavar="DATA", help="hub id, audio folder or save_to_disk folder")
    p.add_argument("--dataset-config", help="hub dataset config, e.g. en-US")
    p.add_argument("--label-column", help=f"label column (default: {' or '.join(LABEL_COLUMN_CANDIDATES)})")
    p.add_argument("--split", default="test", help="split to evaluate (default %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULT_SPLIT_SEED,
                   help="seed of the train/test split when DATA has no test split (as fit drew it; default %(default)s)")
    p.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                   help="held-out fraction when DATA has no test split (as fit drew it; default %(default)s)")
    p.add_argument("--via", choices=VIA_CHOICES, default="manual", help="manual (batched) or the HF pipeline")
    p.add_argument("--batch-size", type=int, default=DEFAULT_EVAL_BATCH,
                   help="clips per forward (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """CLI entry."""
    report = evaluate_model(
        args.model, args.dataset, args.split, args.dataset_config, args.label_column, args.seed,
        args.test_fraction, args.via, args.batch_size,
    )
    print(json.dumps(report) if args.json else format_report(report))
    return 0
