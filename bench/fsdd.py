"""Shared pieces of the FSDD benchmarks: find the recordings, lay them out as audiofolders of symlinks, run
`intentd-train` steps as subprocesses and time them.

The recordings are never copied: each benchmark builds `SPLIT/LABEL/FILE.wav` symlinks under a work folder
outside the repository, with labels named like train/intents/digits.toml (zero..nine).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intentd.train.backbones import DEFAULT_MAX_SECONDS

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FSDD = REPO.parent / "shared" / "data" / "fsdd" / "recordings"
DIGITS_INTENTS = REPO / "train" / "intents" / "digits.toml"
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPEAKERS = ("george", "jackson", "lucas", "nicolas")
# Exit status of a benchmark that could not run (data absent): distinct from a failure, like pytest's skip.
SKIP_STATUS = 0
# The backbone crop of the digit rows in bench/README.md: every FSDD clip is under 1.4 s, every synthetic digit
# under 2 s (the product keeps import-backbone's default for banking requests).
DIGITS_MAX_SECONDS = 2.0
# The synth digits set the README's rows train on: 340 per digit (~3,400 clips, the size the frozen floor was
# measured with), seed 0.
DIGITS_SYNTH_SEED, DIGITS_PER_INTENT = 0, 340
# Shown in each benchmark's summary: what the fit ran with, from its metrics.json, so defaults are never restated.
FIT_SUMMARY_KEYS = ("train_mode", "unfreeze_top", "learning_rate", "batch_size", "grad_accumulation", "epochs",
                    "warmup_ratio", "seed", "trim_perturb", "time_mask")


@dataclass(frozen=True, slots=True)
class Recording:
    """One FSDD file: {digit}_{speaker}_{take}.wav."""

    path: Path
    digit: int
    speaker: str
    take: int

    @property
    def label(self) -> str:
        return DIGIT_NAMES[self.digit]


def recordings(fsdd_dir: Path) -> list[Recording]:
    """Every recording under fsdd_dir, sorted by name; an absent folder gives an empty list."""
    found: list[Recording] = []
    if not fsdd_dir.is_dir():
        return found
    for path in sorted(fsdd_dir.glob("*.wav")):
        digit, speaker, take = path.stem.split("_")
        found.append(Recording(path.resolve(), int(digit), speaker, int(take)))
    return found


def require_fsdd(fsdd_dir: Path) -> list[Recording] | None:
    """The recordings, or None after printing why the benchmark is skipped."""
    found = recordings(fsdd_dir)
    if not found:
        print(f"SKIPPED: no FSDD recordings in {fsdd_dir} (pass --fsdd DIR)", file=sys.stderr)
        return None
    return found


def add_bench_args(parser: argparse.ArgumentParser, workdir_help: str, max_seconds: float = DEFAULT_MAX_SECONDS,
                   crop_note: str = ", the product's") -> None:
    """--fsdd, --workdir and --max-seconds, which every FSDD benchmark takes."""
    parser.add_argument("--fsdd", type=Path, default=DEFAULT_FSDD, help="FSDD recordings folder")
    parser.add_argument("--workdir", type=Path, help=f"{workdir_help} (default: a temp folder)")
    parser.add_argument("--max-seconds", type=float, default=max_seconds,
                        help=f"backbone crop (default {max_seconds:g}{crop_note})")


def add_synth_args(parser: argparse.ArgumentParser) -> None:
    """--synth, --seed and --per-intent: an existing digits synth folder, or how to render one."""
    parser.add_argument("--synth", type=Path, help="an existing digits synth folder (default: render one)")
    parser.add_argument("--seed", type=int, default=DIGITS_SYNTH_SEED, help="synth seed when rendering")
    parser.add_argument("--per-intent", type=int, default=DIGITS_PER_INTENT, help="synth clips per digit")


def synth_folder(args: argparse.Namespace, workdir: Path, log_file: Path) -> tuple[Path, float]:
    """add_synth_args' folder: --synth as given, else rendered under workdir (once); returns (folder, seconds)."""
    if args.synth is not None:
        return args.synth, 0.0
    out = workdir / f"digits-synth-seed{args.seed}-{args.per_intent}"
    return out, synth_digits(out, args.seed, args.per_intent, log_file)


def add_fit_flags(parser: argparse.ArgumentParser) -> None:
    """Everything after `--` goes to `intentd-train fit` as it is; without it fit runs on its own defaults."""
    parser.add_argument("fit_flags", nargs=argparse.REMAINDER, help="after --: extra `intentd-train fit` flags")


def fit_flags(args: argparse.Namespace) -> list[str]:
    """add_fit_flags' flags, without the `--`."""
    return [f for f in args.fit_flags if f != "--"]


def print_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A Markdown table, as bench/README.md quotes them."""
    print(f"| {' | '.join(header)} |\n|{'---|' * len(header)}")
    for row in rows:
        print(f"| {' | '.join(str(cell) for cell in row)} |")


def finish(metrics: dict[str, Any], flags: Sequence[str], argv: Sequence[str] | None) -> int:
    """A fit benchmark's last lines: what the fit ran with (from its metrics.json, so fit's defaults are shown,
    never restated), the flags that changed them, and the command that reproduces the run; returns 0."""
    settings = metrics["settings"]
    shown = ", ".join(f"{key} {settings[key]}" for key in FIT_SUMMARY_KEYS if settings.get(key) not in (None, []))
    print(f"fit: {shown} ({'flags ' + ' '.join(flags) if flags else 'all fit defaults'})")
    print(f"reproduce: {reproduce_line(argv)}")
    return 0


@dataclass(frozen=True, slots=True)
class Bench:
    """What a benchmark starts from: the recordings, its work folder and log, and the imported backbone."""

    recordings: list[Recording]
    workdir: Path
    log_file: Path
    base: Path
    import_seconds: float


def open_bench(args: argparse.Namespace, prefix: str) -> Bench | None:
    """Find the recordings (None, after saying why, when absent), make the work folder, import the backbone."""
    recs = require_fsdd(args.fsdd)
    if recs is None:
        return None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=prefix))
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = workdir / "steps.log"
    base, seconds = backbone(workdir, args.max_seconds, log_file)
    return Bench(recs, workdir, log_file, base, seconds)


def audiofolder(root: Path, splits: dict[str, Iterable[Recording]]) -> Path:
    """root/SPLIT/LABEL/FILE.wav symlinks for each split; returns root (which must not exist yet)."""
    root.mkdir(parents=True)
    for split, rows in splits.items():
        for rec in rows:
            folder = root / split / rec.label
            folder.mkdir(parents=True, exist_ok=True)
            (folder / rec.path.name).symlink_to(rec.path)
    return root


def intentd_train() -> list[str]:
    """The CLI as a command line: the venv's console script beside this interpreter, else `-m intentd.train.cli`."""
    script = Path(sys.executable).parent / "intentd-train"
    return [str(script)] if script.exists() else [sys.executable, "-m", "intentd.train.cli"]


def run_step(args: Sequence[str], log_file: Path | None = None) -> tuple[float, str]:
    """Run `intentd-train ARGS`; returns (seconds, stdout). stderr goes to log_file; a failure exits with it."""
    cmd = [*intentd_train(), "--log-level", "WARNING", *args]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                               "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    if log_file is not None:
        with log_file.open("a") as f:
            f.write(f"$ {shlex.join(cmd)}\n{proc.stderr}\n")
    if proc.returncode != 0:
        sys.exit(f"step failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr.strip()[-3000:]}")
    return seconds, proc.stdout


def eval_accuracy(model: Path, dataset: Path, split: str = "test", log_file: Path | None = None) -> tuple[float, int, float]:
    """(accuracy, clips, seconds) of `intentd-train eval --json` on one split."""
    seconds, out = run_step(["eval", "--model", str(model), "--dataset", str(dataset), "--split", split, "--json"],
                            log_file)
    report = json.loads(out.strip().splitlines()[-1])
    return float(report["accuracy"]), int(report["n"]), seconds


def fit_args(dataset: Path, base_model: Path, out: Path, extra: Sequence[str]) -> list[str]:
    """`intentd-train fit` arguments: DATA, MODEL, DIR, then the caller's extra flags."""
    return ["fit", "--dataset", str(dataset), "--base-model", str(base_model), "--out", str(out), *extra]


def backbone(workdir: Path, max_seconds: float, log_file: Path | None = None) -> tuple[Path, float]:
    """Import whisper-tiny.en cropped to max_seconds under workdir (once); returns (folder, seconds)."""
    out = workdir / f"backbone-whisper-tiny.en-{max_seconds:g}s"
    if (out / "config.json").is_file():
        return out, 0.0
    seconds, _ = run_step(["import-backbone", "whisper-tiny.en", "--out", str(out), "--max-seconds", f"{max_seconds:g}",
                           "--force"], log_file)
    return out, seconds


def flags_tag(flags: Sequence[str]) -> list[str]:
    """Fit flags as folder-name parts: dashes stripped, paths reduced to their last part."""
    return [Path(f).name if "/" in f else f.lstrip("-") for f in flags]


def reproduce_line(argv: Sequence[str] | None = None) -> str:
    """The command line that reproduces this run, from the repository root."""
    args = list(sys.argv[1:] if argv is None else argv)
    module = Path(sys.argv[0]).stem
    return shlex.join([".venv/bin/python", "-m", f"bench.{module}", *args])


def synth_digits(out: Path, seed: int, per_intent: int, log_file: Path | None = None,
                 extra: Sequence[str] = ()) -> float:
    """`intentd-train synth` of the ten digit words into out, unless a finished one is there; returns seconds."""
    if (out / "synth.json").is_file():
        return 0.0
    seconds, _ = run_step(["synth", "--intents", str(DIGITS_INTENTS), "--out", str(out), "--seed", str(seed),
                           "--per-intent", str(per_intent), "--no-progress", "--force", *extra], log_file)
    return seconds
