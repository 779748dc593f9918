"""Time `make model`'s three steps for the default 14-intent model and report its held-out accuracy.

Usage: .venv/bin/python -m bench.train_default [--workdir DIR] [--seed N] [-- FIT FLAGS...]

Runs exactly the Makefile's commands (import-backbone whisper-tiny.en, synth with train/intents/minds14.toml,
fit with the defaults) into a work folder instead of models/ and data/, so an existing build is left alone.
Accuracy is on the synthetic test voices, which fit never trains on.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from bench import fsdd

MINDS14_INTENTS = fsdd.REPO / "train" / "intents" / "minds14.toml"


def makefile_per_intent() -> str:
    """The default build's clips per intent, read from the Makefile so this benchmark cannot drift from it."""
    match = re.search(r"synth .*--per-intent (\d+)", (fsdd.REPO / "Makefile").read_text())
    if match is None:
        raise SystemExit("bench.train_default: no `synth ... --per-intent N` in the Makefile")
    return match.group(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="where the three outputs go (default: a temp folder)")
    parser.add_argument("--seed", type=int, default=0, help="the Makefile's SEED (default 0)")
    parser.add_argument("fit_flags", nargs=argparse.REMAINDER, help="after --: extra `intentd-train fit` flags")
    args = parser.parse_args(argv)
    fit_flags = [f for f in args.fit_flags if f != "--"]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="intentd-train-default-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = workdir / "steps.log"
    backbone, data, model = workdir / "backbone", workdir / "minds14-synth", workdir / "model"

    import_s, _ = fsdd.run_step(["import-backbone", "whisper-tiny.en", "--out", str(backbone), "--force"], log_file)
    synth_s, _ = fsdd.run_step(["synth", "--intents", str(MINDS14_INTENTS), "--out", str(data), "--seed",
                                str(args.seed), "--per-intent", makefile_per_intent(), "--no-progress"], log_file)
    fit_s, _ = fsdd.run_step(["fit", "--dataset", str(data), "--base-model", str(backbone), "--out", str(model),
                              "--seed", str(args.seed), *fit_flags], log_file)
    metrics = json.loads((model / "metrics.json").read_text())
    sizes = metrics["dataset"]["sizes"]
    print("| step | seconds |")
    print("|---|---|")
    print(f"| import-backbone | {import_s:.0f} |")
    print(f"| synth ({sum(sizes.values())} clips) | {synth_s:.0f} |")
    print(f"| fit ({metrics['settings']['train_mode']}, {metrics['settings']['epochs']:g} epochs; training alone "
          f"{metrics['train_time_seconds']:.0f} s) | {fit_s:.0f} |")
    print(f"| **total** | **{import_s + synth_s + fit_s:.0f}** |")
    print(f"\naccuracy on the synthetic test voices: {metrics['accuracy']:.2%} ({sizes.get('test')} clips); "
          f"{os.cpu_count()} CPUs; fit flags: {' '.join(fit_flags) or '(defaults)'}")
    print(f"reproduce: {fsdd.reproduce_line(argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
