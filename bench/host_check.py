"""How fast is this host right now? Run beside bench.daemon_load so a latency table can be read against it.

Usage: .venv/bin/python -m bench.host_check --model DIR

Prints, with no daemon: two small torch ops and one `Classifier.classify` of a 1 s clip (median of 12; back to
back and after 1 s idle) on the main thread, then the same on a second thread once the main thread has used torch's
OpenMP pool (the situation daemon/threads.py avoids; a large gap there means a second pool is parking its workers).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from intentd.daemon.audio import SAMPLE_RATE
from intentd.daemon.classifier import Classifier

CLIP_S = 1.0
REPEATS = 12
OP_WARMUP, OP_REPEATS = 50, 2000


def classify_ms(classifier: Classifier, idle_s: float) -> float:
    """Median ms of one classify after idle_s of sleep."""
    clip = (np.random.default_rng(0).standard_normal(int(CLIP_S * SAMPLE_RATE)) * 0.1).astype(np.float32)
    times = []
    for _ in range(REPEATS):
        time.sleep(idle_s)
        start = time.perf_counter()
        classifier.classify([clip])
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def op_us() -> dict[str, float]:
    """Mean us of an elementwise add and a layer norm, on the calling thread."""
    big = torch.randn(200 * 1536)
    ops: dict[str, Callable[[], object]] = {
        "add": lambda: big + big,
        "layer_norm": lambda: torch.nn.functional.layer_norm(big.view(200, 1536), (1536,)),
    }
    out = {}
    for name, op in ops.items():
        for _ in range(OP_WARMUP):
            op()
        start = time.perf_counter()
        for _ in range(OP_REPEATS):
            op()
        out[name] = (time.perf_counter() - start) / OP_REPEATS * 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model folder made by intentd-train fit")
    args = parser.parse_args(argv)
    with open("/proc/loadavg", encoding="ascii") as fh:
        print(f"# host check, load average {' '.join(fh.read().split()[:3])}, {torch.get_num_threads()} torch threads")
    main_ops = op_us()
    second: dict[str, float] = {}
    worker = threading.Thread(target=lambda: second.update(op_us()))
    worker.start()
    worker.join()
    for name in main_ops:
        print(f"{name}: main thread {main_ops[name]:.1f} us, second thread {second[name]:.1f} us")
    classifier = Classifier.load(args.model, device="cpu")
    classifier.warmup()
    print(f"classify 1 s clip: back to back {classify_ms(classifier, 0.0):.1f} ms, "
          f"after 1 s idle {classify_ms(classifier, 1.0):.1f} ms")
    on_second: list[float] = []
    worker = threading.Thread(target=lambda: on_second.append(classify_ms(classifier, 0.0)))
    worker.start()
    worker.join()
    print(f"classify 1 s clip back to back on a second thread, the main thread's pool alive: {on_second[0]:.1f} ms "
          "(what the daemon did before daemon/threads.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
