"""Per-window accuracy of length-aware models: each labelled clip scored through the model core at the window it is
served at, counted by that window, beside the same clips at the model's full window and other models' scores.

Usage: .venv/bin/python -m bench.window_accuracy --model DIR [--model DIR ...] --dataset DATA [--split NAME]

The rows are the windows the first model with `windows_s` serves the clips at (daemon/windows.py `window_for`); a
model without windows scores every clip at its one full window. For each windowed model the table also scores the
same clips forced to its full window (`windows` emptied), the way it would serve them before issue 17, and says how
many top-1 answers and how large a score differ between the two. Accuracy is top-1 with no rejection (threshold 0),
so it does not move with calibration; `intentd-train eval` gives the figures with rejection.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from intentd.daemon.audio import SAMPLE_RATE
from intentd.daemon.classifier import Classifier


def labelled_clips(spec: str, split: str | None) -> tuple[list[np.ndarray], list[str], str]:
    """16 kHz clips and their label names from DATA (its test split if it has one, else every row)."""
    from intentd.train.data import iter_clips, load_labelled

    data = load_labelled(spec, draw_test=False)
    name = split or ("test" if "test" in data.splits else "train")
    clips: list[np.ndarray] = []
    labels: list[str] = []
    for batch, rows in iter_clips(data.split(name)):
        clips += batch
        labels += [data.label_names[i] for i in rows[data.label_column]]
    return clips, labels, name


def short_name(model: Path) -> str:
    """A model folder's name in the table: fit's `.../NAME/model` folders by their parent."""
    return model.parent.name if model.name == "model" else model.name


def top1(classifier: Classifier, clips: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(scores, top-1 label index) of every clip through the model core."""
    scores = classifier.probabilities(clips)
    return scores, scores.argmax(axis=1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, action="append", required=True, help="model folder (repeatable)")
    parser.add_argument("--dataset", required=True, help="labelled audio (an audiofolder, a save_to_disk folder)")
    parser.add_argument("--split", help="split to score (default: test if DATA has one, else every row)")
    args = parser.parse_args(argv)

    clips, names, split = labelled_clips(args.dataset, args.split)
    loaded = [Classifier.load(m, threshold=0.0) for m in args.model]
    windowed = next((c for c in loaded if c.windows), loaded[0])
    served = np.array([windowed.input_length(len(c)) for c in clips])
    rows = sorted(set(served.tolist()))

    columns: list[tuple[str, np.ndarray]] = []  # (header, correct per clip)
    notes: list[str] = []
    for path, classifier in zip(args.model, loaded, strict=True):
        truth = np.array([classifier.label2id[n] for n in names])
        scores, best = top1(classifier, clips)
        at = f"at its windows {[w / SAMPLE_RATE for w in classifier.windows]} s" if classifier.windows \
            else "at its full window"
        columns.append((f"{short_name(path)} {at}", best == truth))
        if classifier.windows:
            full = dataclasses.replace(classifier, windows=())
            full_scores, full_best = top1(full, clips)
            columns.append((f"{short_name(path)} forced to its full window", full_best == truth))
            changed = int((full_best != best).sum())
            notes.append(f"{short_name(path)}: served window vs full window: {changed}/{len(clips)} top-1 answers differ, "
                         f"largest score difference {float(np.abs(full_scores - scores).max()):.4f}")

    print(f"{args.dataset} ({split}): {len(clips)} clips; rows: the window "
          f"{short_name(args.model[loaded.index(windowed)])} serves each clip at; top-1 accuracy, no rejection\n")
    print("| window | clips | " + " | ".join(h for h, _ in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for window in rows:
        mask = served == window
        cells = " | ".join(f"{correct[mask].mean():.2%}" for _, correct in columns)
        print(f"| {window / SAMPLE_RATE:g} s | {int(mask.sum())} | {cells} |")
    print(f"| all | {len(clips)} | " + " | ".join(f"{c.mean():.2%}" for _, c in columns) + " |")
    for note in notes:
        print(f"\n{note}")
    print("\ncommand: .venv/bin/python -m bench.window_accuracy "
          + " ".join(f"--model {m}" for m in args.model) + f" --dataset {args.dataset} --split {split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
