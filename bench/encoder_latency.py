"""Latency of the imported Whisper encoder + classifier head on CPU, per crop length and batch size.

Usage: .venv/bin/python -m bench.encoder_latency [--seconds 2 3 4 5] [--batches 1 8] [--threads 2] [--repeats 20]

Converts whisper-tiny.en once per crop into a temporary folder, then times feature extraction and the model
forward separately (float32, torch.inference_mode). Prints one table row per (seconds, batch): min and median ms.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from intentd.daemon.audio import SAMPLE_RATE
from intentd.train.backbones import import_named_backbone

# Clips shorter than the crop, as real requests mostly are; the extractor pads them either way.
CLIP_SECONDS = 1.7
WARMUP_RUNS = 3
LABELS = 8


def _timed(fn: Callable[[], object], repeats: int) -> list[float]:
    for _ in range(WARMUP_RUNS):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def _stats(times: list[float]) -> str:
    # min is the least disturbed by other processes on a shared machine; median is the typical case.
    return f"{min(times):>8.1f} {statistics.median(times):>8.1f}"


def _measure(
    extractor: Any, model: Any, audio: list[np.ndarray], repeats: int
) -> tuple[list[float], list[float]]:
    """Feature-extraction and forward times (ms) for one batch."""
    import torch

    def extract() -> Any:
        return extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features

    features = extract()

    def forward() -> None:
        with torch.inference_mode():
            model(input_features=features)

    return _timed(extract, repeats), _timed(forward, repeats)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the latency table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, nargs="+", default=[2, 3, 4, 5])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    clips = [
        (0.1 * rng.standard_normal(int(CLIP_SECONDS * SAMPLE_RATE))).astype(np.float32) for _ in range(8)
    ]

    print(
        f"torch {torch.__version__}, {args.threads} threads, float32, {args.repeats} runs after {WARMUP_RUNS}"
    )
    header = f"{'S':>4} {'batch':>5} | {'features ms':>17} | {'forward ms':>17} | {'min total/clip ms':>17}"
    print(header)
    print(f"{'':>4} {'':>5} | {'min':>8} {'median':>8} | {'min':>8} {'median':>8} |")
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in args.seconds:
            folder = import_named_backbone("whisper-tiny.en", Path(tmp) / f"s{seconds:g}", seconds)
            extractor = transformers.AutoFeatureExtractor.from_pretrained(folder)
            model = transformers.AutoModelForAudioClassification.from_pretrained(folder, num_labels=LABELS)
            model.eval()
            for batch in args.batches:
                feat_ms, fwd_ms = _measure(extractor, model, clips[:batch], args.repeats)
                per_clip = (min(feat_ms) + min(fwd_ms)) / batch
                print(f"{seconds:>4g} {batch:>5} | {_stats(feat_ms)} | {_stats(fwd_ms)} | {per_clip:>17.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
