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

from bench import fsdd

TARGET = 0.97


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsdd.add_bench_args(parser, "where synth, symlinks and models go")
    fsdd.add_synth_args(parser)
    fsdd.add_fit_flags(parser)
    args = parser.parse_args(argv)
    fit_flags = fsdd.fit_flags(args)

    bench = fsdd.open_bench(args, "intentd-fsdd-synth-")
    if bench is None:
        return fsdd.SKIP_STATUS
    recs, workdir, log_file, base, import_s = (
        bench.recordings, bench.workdir, bench.log_file, bench.base, bench.import_seconds)
    synth, synth_s = fsdd.synth_folder(args, workdir, log_file)
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

    fsdd.print_table(("test speaker", "accuracy", "clips"),
                     [*((speaker, f"{accuracy:.2%}", clips) for speaker, accuracy, clips, _ in results),
                      ("**all four**", f"**{overall:.2%}**", n)])
    sizes = metrics["dataset"]["sizes"]
    print(f"\nsynth-only -> real FSDD {overall:.2%} (target >= {TARGET:.0%}: {'met' if overall >= TARGET else 'MISSED'});"
          f" synthetic test voices {metrics['accuracy']:.2%}; synth clips {sizes}")
    print(f"timings: import-backbone {import_s:.0f} s, synth {synth_s:.0f} s{' (reused ' + str(synth) + ')' if args.synth else ''},"
          f" fit {fit_s:.0f} s, eval {eval_s:.0f} s")
    return fsdd.finish(metrics, fit_flags, argv)


if __name__ == "__main__":
    sys.exit(main())
