"""Unseen-speaker accuracy on FSDD: fit on three speakers with `intentd-train fit`, test on the fourth, each in turn.

Usage: .venv/bin/python -m bench.fsdd_speakers [--fsdd DIR] [--workdir DIR] [--max-seconds S] [--synth DIR]
                                              [-- FIT FLAGS...]

Each fold builds two audiofolders of symlinks under the work folder: the three training speakers (fit holds out a
random 20% of them to pick the best epoch, so the unseen speaker never influences training) and the unseen
speaker, scored with `intentd-train eval`. Target: >= 98% on every speaker. Prints one row per speaker and the
command that reproduces the table. `--synth DIR` passes `--add-dataset DIR` to fit: an `intentd-train synth` digits
folder joins every fold's data (its train voices to training, its test voices to the held-out part that picks the
best epoch), i.e. real speech from three speakers plus text-made speech, as a user would combine them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import fsdd

TARGET = 0.98


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsdd.add_bench_args(parser, "where symlinks and models go")
    parser.add_argument("--synth", type=Path, help="also train on this digits synth folder (fit --add-dataset)")
    parser.add_argument("--speakers", nargs="+", default=list(fsdd.SPEAKERS), help="held-out speakers to run")
    fsdd.add_fit_flags(parser)
    args = parser.parse_args(argv)
    fit_flags = fsdd.fit_flags(args)

    bench = fsdd.open_bench(args, "intentd-fsdd-speakers-")
    if bench is None:
        return fsdd.SKIP_STATUS
    recs, workdir, log_file, base = bench.recordings, bench.workdir, bench.log_file, bench.base
    extra = [f"plus-{args.synth.name}"] if args.synth else []
    tag = "-".join([f"{args.max_seconds:g}s", *extra, *fsdd.flags_tag(fit_flags)]) or "default"

    rows = []
    for speaker in args.speakers:
        fold = workdir / f"{tag}-{speaker}"
        train = fsdd.audiofolder(fold / "train-data", {"train": [r for r in recs if r.speaker != speaker]})
        test = fsdd.audiofolder(fold / "test-data", {"test": [r for r in recs if r.speaker == speaker]})
        more = ["--add-dataset", str(args.synth)] if args.synth else []
        fit_seconds, _ = fsdd.run_step(fsdd.fit_args(train, base, fold / "model", [*more, *fit_flags]), log_file)
        accuracy, n, eval_seconds = fsdd.eval_accuracy(fold / "model", test, log_file=log_file)
        metrics = json.loads((fold / "model" / "metrics.json").read_text())
        rows.append((speaker, accuracy, n, fit_seconds, metrics["accuracy"], eval_seconds))
        print(f"{speaker}: {accuracy:.4f} ({n} clips), fit {fit_seconds:.0f} s", file=sys.stderr, flush=True)

    fsdd.print_table(("unseen speaker", "accuracy", "clips", "fit s", "eval s", "val acc (seen speakers)"),
                     [(speaker, f"{accuracy:.2%}", n, f"{fit_s:.0f}", f"{eval_s:.0f}", f"{val:.2%}")
                      for speaker, accuracy, n, fit_s, val, eval_s in rows])
    worst = min(r[1] for r in rows)
    print(f"\nworst speaker {worst:.2%} (target >= {TARGET:.0%}: {'met' if worst >= TARGET else 'MISSED'}); "
          f"work folder {workdir}")
    return fsdd.finish(metrics, fit_flags, argv)


if __name__ == "__main__":
    sys.exit(main())
