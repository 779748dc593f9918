"""The daemon against the tutorial's way of serving, side by side in one run on the same utterances and model.

The tutorial serves with `pipeline("audio-classification")`: a loop over clips (batch 1) or over lists of them
(`batch_size`). The daemon gets the same FSDD files as recorded streams from 4 concurrent `intentd-send` loops
(bench/file_flood.py's flood: nothing dropped, each file answered by its stream.end) and is timed from the first
send to the last answer, socket ingest, VAD and events included. Prints utterances/s of each and the ratio.

    .venv/bin/python -m bench.vs_pipeline --model DIR [--files 400] [--batch-sizes 1 4 16 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from bench.file_flood import pick_files, run_flood, work_folder
from tests.daemon_proc import FSDD

SENDERS = 4
FILES_PER_SEND = 25


def pipeline_rate(model: Path, clips: list[tuple[np.ndarray, int]], batch_size: int) -> float:
    """Utterances/s of a `pipeline("audio-classification")` loop over the clips at `batch_size`."""
    from transformers import pipeline

    pipe = pipeline("audio-classification", model=str(model), device="cpu")
    inputs = [{"raw": samples, "sampling_rate": rate} for samples, rate in clips]
    pipe(inputs[:2], batch_size=min(2, batch_size))  # warm-up
    started = time.perf_counter()
    if batch_size == 1:
        for item in inputs:
            pipe(item)
    else:
        pipe(inputs, batch_size=batch_size)
    return len(inputs) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--fsdd", type=Path, default=FSDD)
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    import soundfile as sf

    if not args.fsdd.is_dir():
        print(f"SKIPPED: no FSDD recordings in {args.fsdd}", file=sys.stderr)
        return 0
    files = pick_files(args.fsdd, args.files)
    clips = [sf.read(f, dtype="float32") for f in files]
    rates = {b: pipeline_rate(args.model, clips, b) for b in args.batch_sizes}
    for b, r in rates.items():
        print(f"pipeline batch {b}: {r:.1f} utterances/s", file=sys.stderr, flush=True)
    with work_folder(args.keep_logs) as workdir:
        flood = run_flood(workdir, args.model, {}, files, SENDERS, FILES_PER_SEND, live=False)
    utterances = sum(e.utterances for e in flood.ends.values())
    daemon = utterances / flood.wall_s if flood.wall_s else 0.0
    best = max(rates, key=lambda b: rates[b])
    print("| serving | utterances | utterances/s |\n|---|---|---|")
    for b, r in rates.items():
        print(f"| `pipeline(\"audio-classification\")`, batch {b} | {len(clips)} | {r:.1f} |")
    print(f"| intentd, {SENDERS} intentd-send loops, recorded streams | {utterances} "
          f"({len(flood.ends)}/{len(files)} files answered, {flood.dropped_events} dropped) | {daemon:.1f} |")
    print(f"\ndaemon / best pipeline (batch {best}): x{daemon / rates[best]:.2f}; model {args.model}")
    print(f"command: .venv/bin/python -m bench.vs_pipeline --model {args.model} --files {args.files} "
          f"--batch-sizes {' '.join(map(str, args.batch_sizes))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
