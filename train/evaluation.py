"""`intentd-train eval`: accuracy, a per-class report and what rejection does, for a model on a split of DATA; and
command acceptance (intent and every slot right, train/commands.py) where DATA labels slots (a `slots` column:
metadata.jsonl's, or synth's)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from intentd.daemon.audio import SAMPLE_RATE
from intentd.train.commands import (
    CommandPrediction,
    CommandPredictor,
    command_report,
    format_command_report,
    slot_labels,
)
from intentd.train.data import (
    DEFAULT_SPLIT_SEED,
    DEFAULT_TEST_FRACTION,
    LABEL_COLUMN_CANDIDATES,
    SLOTS_COLUMN,
    detect_source,
    iter_all_clips,
    iter_clips,
    load_labelled,
    map_labels_to_model,
)
from intentd.train.fit import ACCURACY_METRIC_DIR
from intentd.train.inference import (
    VIA_CHOICES,
    ClassifierCommands,
    PipelineClassifier,
    check_model_dir,
    load_classifier,
)
from intentd.train.out_of_scope import OUT_OF_SCOPE_LABEL, accepted

log = logging.getLogger(__name__)

DEFAULT_EVAL_BATCH = 16
# --split all: every row of DATA (a folder of labelled recordings has no held-out split of its own).
ALL_SPLITS = "all"


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


class _Scorer:
    """Probability rows for clips through intentd's core or the HF pipeline; one label order for both."""

    def __init__(self, model_dir: str, via: str, batch_size: int, threshold: float | None) -> None:
        self.manual = load_classifier(model_dir, threshold=threshold) if via == "manual" else None
        self.pipe = PipelineClassifier(model_dir) if via == "pipeline" else None
        self.labels = self.manual.labels if self.manual is not None else self.pipe.labels  # type: ignore[union-attr]
        if threshold is None:
            from intentd.daemon.classifier import calibrated_threshold

            threshold = self.manual.threshold if self.manual is not None else calibrated_threshold(Path(model_dir))
        self.threshold = threshold or 0.0
        self.batch_size = batch_size

    def __call__(self, clips: list[np.ndarray]) -> np.ndarray:
        if self.manual is not None:
            return self.manual.probabilities(clips, self.batch_size)
        rows = np.zeros((len(clips), len(self.labels)), dtype=np.float32)
        index = {name: i for i, name in enumerate(self.labels)}
        for r, clip in enumerate(clips):
            for label, score in self.pipe.classify(clip, SAMPLE_RATE, len(self.labels)).top_k:  # type: ignore[union-attr]
                rows[r, index[label]] = score
        return rows


def intent_only_predictions(probs: np.ndarray, labels: Sequence[str], threshold: float) -> list[CommandPrediction]:
    """An intent classifier's commands: its top label where the daemon's rule accepts it (else rejected), no
    slots."""
    taken = accepted(probs, labels, threshold)
    return [CommandPrediction(labels[int(row.argmax())] if ok else None) for row, ok in zip(probs, taken, strict=True)]


def evaluate_model(
    model_dir: str,
    dataset: str,
    split: str | None = None,
    dataset_config: str | None = None,
    label_column: str | None = None,
    seed: int = DEFAULT_SPLIT_SEED,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    via: str = "manual",
    batch_size: int = DEFAULT_EVAL_BATCH,
    ood_datasets: Sequence[str] = (),
    threshold: float | None = None,
    predictor: CommandPredictor | None = None,
) -> dict[str, Any]:
    """The eval report as a dict: accuracy, n, per_class, and what the model's rejection does.

    Rejection is the daemon's rule at the model's calibrated threshold (or `threshold`): a clip is accepted
    unless the out-of-scope class wins or the top score is below the threshold. Clips of DATA labelled with the
    out-of-scope label, and every clip of each `ood_datasets` entry (all its splits, labels ignored), are out
    of domain: `out_of_domain_false_acceptance` is the share of them accepted; `in_domain_acceptance` the share
    of DATA's other clips accepted.

    Command acceptance is scored on DATA's in-domain clips: by `predictor` where given, else by the model's own
    answers: with its slots when the folder has slot heads (`--via manual`: the daemon's core), else intents with
    no slots. A rejected clip is never an accepted command.
    """
    import evaluate

    check_model_dir(model_dir)  # a wrong --model says so before the dataset is read
    for spec in ood_datasets:
        detect_source(spec)  # a wrong --ood-dataset too, before any scoring
    # No split named: DATA's own test split where it has one (synth's, a hub set's), else every row (a folder of
    # your recordings: it was never split, so all of it is yours to score). `--split test` draws fit's split.
    data = load_labelled(dataset, dataset_config, label_column, seed, test_fraction, draw_test=split is not None)
    if split is None:
        split = "test" if data.own_test else ALL_SPLITS
        log.info("evaluating %s split of %s", "its test" if data.own_test else "every clip", dataset)
    rows = _rows(data, split)
    score = _Scorer(model_dir, via, batch_size, threshold)
    label2id = {name: i for i, name in enumerate(score.labels)}
    id2label = dict(enumerate(score.labels))
    to_model = map_labels_to_model(data.label_names, label2id, dataset)

    # A folder with slot heads (or a grammar decoder) answers commands itself, from the same forwards as its intent
    # scores.
    own = ClassifierCommands(score.manual, batch_size) \
        if predictor is None and score.manual is not None and score.manual.predicts_slots else None
    truth: list[int] = []
    truth_slots: list[dict[str, str]] = []
    probabilities = []
    commands: list[CommandPrediction] = []
    for clips, batch in iter_clips(rows, batch_size):
        truth.extend(to_model[i] for i in batch[data.label_column])
        truth_slots.extend(slot_labels(raw) for raw in batch.get(SLOTS_COLUMN, [None] * len(clips)))
        if own is not None:
            scored, heard = own.classifier.scores(clips, batch_size)
            probabilities.append(scored)
            commands += own.from_scores(scored, heard)
            continue
        probabilities.append(score(clips))
        commands += (predictor.predict(clips) if predictor is not None
                     else intent_only_predictions(probabilities[-1], score.labels, score.threshold))
    probs = np.concatenate(probabilities) if probabilities else np.zeros((0, len(score.labels)), np.float32)
    predicted = [int(i) for i in probs.argmax(axis=1)]
    accuracy = evaluate.load(str(ACCURACY_METRIC_DIR)).compute(predictions=predicted, references=truth)["accuracy"]

    taken = accepted(probs, score.labels, score.threshold)
    inside = np.array([id2label[t] != OUT_OF_SCOPE_LABEL for t in truth], dtype=bool)
    outside_taken = list(taken[~inside])
    by_ood: dict[str, dict[str, float | int]] = {}
    for spec in ood_datasets:
        hits = [bool(a) for clips in iter_all_clips(spec, dataset_config, batch_size)
                for a in accepted(score(clips), score.labels, score.threshold)]
        by_ood[spec] = {"n": len(hits), "false_acceptance": float(np.mean(hits)) if hits else 0.0}
        outside_taken += hits
    in_domain = [i for i, t in enumerate(truth) if id2label[t] != OUT_OF_SCOPE_LABEL]
    command = command_report([id2label[truth[i]] for i in in_domain], [truth_slots[i] for i in in_domain],
                             [commands[i] for i in in_domain],
                             predicts_slots=bool(own is not None or predictor is not None and predictor.predicts_slots))
    return {
        "accuracy": float(accuracy),
        **command,
        "n": len(truth),
        "per_class": per_class_report(truth, predicted, id2label),
        "threshold": score.threshold,
        "in_domain_n": int(inside.sum()),
        "in_domain_acceptance": float(taken[inside].mean()) if inside.any() else None,
        "out_of_domain_n": len(outside_taken),
        "out_of_domain_false_acceptance": float(np.mean(outside_taken)) if outside_taken else None,
        "out_of_domain_datasets": by_ood,
        "model": str(model_dir),
        "dataset": dataset,
        "split": split,
        "via": via,
    }


def _rows(data: Any, split: str) -> Any:
    """One split of DATA, or with --split all every split joined."""
    if split != ALL_SPLITS:
        return data.split(split)
    import datasets

    return datasets.concatenate_datasets(list(data.splits.values()))


def format_report(report: dict[str, Any]) -> str:
    """A readable table: one row per class, then accuracy."""
    width = max([len(name) for name in report["per_class"]] + [8])
    lines = [f"{'label':<{width}}  precision  recall     f1  support"]
    for name, row in report["per_class"].items():
        lines.append(
            f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}  {row['support']:7d}"
        )
    lines.append(f"accuracy {report['accuracy']:.4f} on {report['n']} clips ({report['dataset']}, split {report['split']})")
    if report["in_domain_acceptance"] is not None:
        lines.append(f"in-domain acceptance {report['in_domain_acceptance']:.4f} of {report['in_domain_n']} clips "
                     f"at threshold {report['threshold']:.4f}")
    if report["out_of_domain_false_acceptance"] is not None:
        lines.append(f"out-of-domain false acceptance {report['out_of_domain_false_acceptance']:.4f} "
                     f"of {report['out_of_domain_n']} clips")
    lines += format_command_report(report)
    return "\n".join(lines)


def register(subparsers: Any) -> None:
    """Add the `eval` subcommand."""
    p = subparsers.add_parser(
        "eval", help="accuracy and per-class report of a model on labelled audio",
        description="Score a model on labelled audio: accuracy, a per-class table, how much rejection keeps and "
        "how much it wrongly accepts, and whole commands (intent and slots) where DATA labels slots. DATA is "
        "a folder of your recordings (every clip is scored), the output of `intentd-train synth` or a hub data "
        "set (their test split is scored), or a save_to_disk folder.")
    p.add_argument("--model", required=True, metavar="DIR", help="model folder written by fit")
    p.add_argument("--dataset", required=True, metavar="DATA", help="hub id, audio folder or save_to_disk folder")
    p.add_argument("--dataset-config", help="hub dataset config, e.g. en-US")
    p.add_argument("--label-column", help=f"label column (default: {' or '.join(LABEL_COLUMN_CANDIDATES)})")
    p.add_argument("--split", default=None,
                   help=f"split to evaluate, or '{ALL_SPLITS}' for every row (default: DATA's own test split if "
                   f"it has one, else {ALL_SPLITS}); 'test' on DATA without one scores the part fit held out")
    p.add_argument("--seed", type=int, default=DEFAULT_SPLIT_SEED,
                   help="with --split test/train on DATA without a test split: the seed fit drew it with "
                   "(default %(default)s)")
    p.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                   help="with --split test/train on DATA without a test split: the held-out share fit drew "
                   "(default %(default)s)")
    p.add_argument("--via", choices=VIA_CHOICES, default="manual", help="manual (batched) or the HF pipeline")
    p.add_argument("--batch-size", type=int, default=DEFAULT_EVAL_BATCH,
                   help="clips per forward (default %(default)s)")
    p.add_argument("--ood-dataset", action="append", default=[], metavar="DATA",
                   help="speech that is no command (repeatable; every clip, labels ignored): report how much of it "
                        "the model accepts")
    p.add_argument("--threshold", type=float, default=None,
                   help="reject top scores below this instead of the model's calibrated threshold (0: none)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """CLI entry."""
    report = evaluate_model(
        args.model, args.dataset, args.split, args.dataset_config, args.label_column, args.seed,
        args.test_fraction, args.via, args.batch_size, args.ood_dataset, args.threshold,
    )
    print(json.dumps(report) if args.json else format_report(report))
    return 0
