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


def makefile_value(pattern: str, what: str) -> str:
    """A setting of the default build read from the Makefile (pattern's group 1), so this benchmark cannot drift
    from it."""
    match = re.search(pattern, (fsdd.REPO / "Makefile").read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"bench.train_default: no `{what}` in the Makefile")
    return match.group(1)


def makefile_per_intent() -> str:
    """The default build's clips per intent."""
    return makefile_value(r"synth .*--per-intent (\d+)", "synth ... --per-intent N")


def makefile_seed() -> int:
    """The default build's SEED, which it passes to synth and fit."""
    return int(makefile_value(r"^SEED \?= (\d+)", "SEED ?= N"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="where the three outputs go (default: a temp folder)")
    parser.add_argument("--seed", type=int, default=makefile_seed(), help="the Makefile's SEED (default %(default)s)")
    fsdd.add_fit_flags(parser)
    args = parser.parse_args(argv)
    fit_flags = fsdd.fit_flags(args)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="intentd-train-default-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = workdir / "steps.log"
    backbone, data, model = workdir / "backbone", workdir / "minds14-synth", workdir / "model"

    import_s, _ = fsdd.run_step(["import-backbone", "whisper-tiny.en", "--out", str(backbone), "--force"], log_file)
    synth_s, _ = fsdd.run_step(["synth", "--intents", str(MINDS14_INTENTS), "--out", str(data), "--seed",
                                str(args.seed), "--per-intent", makefile_per_intent(), "--no-progress",
                                "--force"], log_file)
    fit_s, _ = fsdd.run_step(fsdd.fit_args(data, backbone, model, ["--seed", str(args.seed), *fit_flags]), log_file)
    metrics = json.loads((model / "metrics.json").read_text())
    sizes = metrics["dataset"]["sizes"]
    fit_row = (f"fit ({metrics['settings']['train_mode']}, {metrics['settings']['epochs']:g} epochs; training alone "
               f"{metrics['train_time_seconds']:.0f} s)")
    fsdd.print_table(("step", "seconds"), [
        ("import-backbone", f"{import_s:.0f}"), (f"synth ({sum(sizes.values())} clips)", f"{synth_s:.0f}"),
        (fit_row, f"{fit_s:.0f}"), ("**total**", f"**{import_s + synth_s + fit_s:.0f}**")])
    print(f"\naccuracy on the synthetic test voices: {metrics['accuracy']:.2%} ({sizes.get('test')} clips); "
          f"{os.cpu_count()} CPUs")
    return fsdd.finish(metrics, fit_flags, argv)


if __name__ == "__main__":
    sys.exit(main())
