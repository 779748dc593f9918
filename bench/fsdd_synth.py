"""Synthetic-only training, real-speech test: fit on `intentd-train synth` digits, score all 2,000 FSDD clips.

Usage: .venv/bin/python -m bench.fsdd_synth [--fsdd DIR] [--workdir DIR] [--max-seconds S] [--synth DIR]
                                            [--per-intent N] [--seed N] [-- FIT FLAGS...]

Steps, each timed: import the backbone, render the ten digit words with every installed TTS engine (skipped when
--synth names an existing folder), fit on its train voices (its test voices pick the best epoch), then
`intentd-train eval` on one audiofolder of symlinks per FSDD speaker. No real speech is used before the final
scoring. Target: >= 97% over the four speakers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import fsdd

TARGET = 0.97
DEFAULT_PER_INTENT = 340  # ~3,400 clips, the size the frozen floor was measured with


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsdd.add_bench_args(parser, "where synth, symlinks and models go", 4.0, ", the product's")
    parser.add_argument("--synth", type=Path, help="use this digits synth folder instead of rendering one")
    parser.add_argument("--per-intent", type=int, default=DEFAULT_PER_INTENT, help="synth clips per digit")
    parser.add_argument("--seed", type=int, default=0, help="synth seed")
    parser.add_argument("fit_flags", nargs=argparse.REMAINDER, help="after --: extra `intentd-train fit` flags")
    args = parser.parse_args(argv)
    fit_flags = [f for f in args.fit_flags if f != "--"]

    bench = fsdd.open_bench(args, "intentd-fsdd-synth-")
    if bench is None:
        return fsdd.SKIP_STATUS
    recs, workdir, log_file, base, import_s = (
        bench.recordings, bench.workdir, bench.log_file, bench.base, bench.import_seconds)
    synth = args.synth or workdir / f"digits-synth-seed{args.seed}-{args.per_intent}"
    synth_s = 0.0 if args.synth else fsdd.synth_digits(synth, args.seed, args.per_intent, log_file)
    tag = "-".join([f"{args.max_seconds:g}s", synth.name, *fsdd.flags_tag(fit_flags)])
    model = workdir / f"model-{tag}"
    fit_s, _ = fsdd.run_step(fsdd.fit_args(synth, base, model, fit_flags), log_file)
    metrics = json.loads((model / "metrics.json").read_text())

    results = []
    for speaker in fsdd.SPEAKERS:
        folder = workdir / f"fsdd-{speaker}"
        if not folder.exists():
            fsdd.audiofolder(folder, {"test": [r for r in recs if r.speaker == speaker]})
        results.append((speaker, *fsdd.eval_accuracy(model, folder, log_file=log_file)))
    n = sum(r[2] for r in results)
    overall = sum(r[1] * r[2] for r in results) / n
    eval_s = sum(r[3] for r in results)

    print("| test speaker | accuracy | clips |")
    print("|---|---|---|")
    for speaker, accuracy, clips, _ in results:
        print(f"| {speaker} | {accuracy:.2%} | {clips} |")
    print(f"| **all four** | **{overall:.2%}** | {n} |")
    sizes = metrics["dataset"]["sizes"]
    print(f"\nsynth-only -> real FSDD {overall:.2%} (target >= {TARGET:.0%}: {'met' if overall >= TARGET else 'MISSED'});"
          f" synthetic test voices {metrics['accuracy']:.2%}; synth clips {sizes}")
    print(f"timings: import-backbone {import_s:.0f} s, synth {synth_s:.0f} s{' (reused ' + str(synth) + ')' if args.synth else ''},"
          f" fit {fit_s:.0f} s, eval {eval_s:.0f} s; fit flags: {' '.join(fit_flags) or '(defaults)'}")
    print(f"reproduce: {fsdd.reproduce_line(argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
