"""The classifier on a CUDA GPU: latency and utterances/s per batch size in bf16/fp16 against fp32, and how far
the GPU's scores are from the CPU's, for one model folder. Prints one Markdown table; run by bench/gpu_check.sh.

    .venv/bin/python -m bench.gpu_check --model models/default [--batches 1 2 4 8 16 32 64] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from intentd.daemon.audio import SAMPLE_RATE

CLIP_SECONDS = (0.4, 0.8, 1.6, 3.2)  # command lengths, so length-aware windows (if the model has them) all run
WARMUP_RUNS = 3


def clips(n: int, seed: int = 0) -> list[np.ndarray]:
    """n noise-and-tone clips of the command lengths above, in turn (scores are compared, not judged)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = np.arange(round(CLIP_SECONDS[i % len(CLIP_SECONDS)] * SAMPLE_RATE)) / SAMPLE_RATE
        wave = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.05 * rng.standard_normal(t.size)
        out.append(wave.astype(np.float32))
    return out


def timed(fn: object, repeats: int) -> list[float]:
    """Milliseconds per call after warm-up, synchronising CUDA around each call."""
    import torch

    for _ in range(WARMUP_RUNS):
        fn()  # type: ignore[operator]
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    import torch

    from intentd.daemon.classifier import Classifier

    if not torch.cuda.is_available():
        print("SKIPPED: no CUDA device", file=sys.stderr)
        return 0
    reference = Classifier.load(args.model, device="cpu", dtype="float32")
    batch = clips(max(args.batches))
    cpu = reference.probabilities(batch)
    print(f"device: {torch.cuda.get_device_name(0)}; model {reference.model_id}; torch {torch.__version__}")
    print("| dtype | batch | median ms | p90 ms | utterances/s | max abs score diff vs CPU fp32 | same top label |")
    print("|---|---|---|---|---|---|---|")
    half = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    for dtype in ("float32", half):
        model = Classifier.load(args.model, device="cuda", dtype=dtype)
        for size in args.batches:
            times = timed(lambda m=model, s=size: m.probabilities(batch[:s]), args.repeats)
            probs = model.probabilities(batch[:size])
            diff = float(np.abs(probs - cpu[:size]).max())
            same = float(np.mean(probs.argmax(axis=1) == cpu[:size].argmax(axis=1)))
            median = statistics.median(times)
            p90 = sorted(times)[int(0.9 * (len(times) - 1))]
            print(f"| {dtype} | {size} | {median:.2f} | {p90:.2f} | {size / median * 1000:.0f} | {diff:.1e} | "
                  f"{same:.0%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
