"""`intentd-train` entry point: one parser, one subcommand per module, one place that turns errors into a line."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from intentd.daemon.version import version_text
from intentd.train import progress
from intentd.train.errors import TrainError

# Each module exposes register(subparsers) and sets `func` on its parser; imported lazily-by-name here so a
# broken optional dependency of one subcommand names itself instead of breaking the whole CLI.
SUBCOMMAND_MODULES = tuple(f"intentd.train.{m}" for m in ("backbones", "synth", "fit", "evaluation", "predict",
                                                             "grammar_model"))

log = logging.getLogger("intentd-train")

# What `intentd-train --help` tells users (the module docstring above is for developers).
DESCRIPTION = (
    "Make, import, train, evaluate and try intent models for intentd: `synth` writes a spoken data set from an "
    "intents file, `fit` trains a model folder on it, `eval` scores a model on labelled recordings, `predict` "
    "labels audio files, `import` converts a backbone's weights. `intentd-train COMMAND --help` for each."
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="intentd-train", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=version_text("intentd-train"))
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default %(default)s)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; bad input ends with one `error:` line and exit status 2, never a traceback."""
    progress.configure()  # before datasets or transformers are imported: they read their switches once
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except TrainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
