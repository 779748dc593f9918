"""Where a digits model fails on FSDD: clip lengths per speaker, how hard each speaker's clips are cut at their edges,
lengths of wrong vs right clips, the commonest confusions, and what changes of the input (padding, gain, tiling,
tempo) do to accuracy.

Usage: .venv/bin/python -m bench.fsdd_errors --model DIR [--fsdd DIR] [--speakers S ...] [--variants]

The model is any digits classifier whose labels are zero..nine (e.g. the one bench.fsdd_synth writes). Classifies
in process through daemon/classifier.py (the path the daemon and `intentd-train eval` use), so no work folder is needed.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench import fsdd
from intentd.daemon.audio import SAMPLE_RATE


def _load(recording: fsdd.Recording) -> np.ndarray:
    from intentd.train.audio_io import read_audio

    return read_audio(recording.path, SAMPLE_RATE)


def edge_levels(clip: np.ndarray, rate: int = SAMPLE_RATE) -> tuple[float, float]:
    """dB of the first and last 10 ms relative to the loudest 10 ms: near 0 means the cut went through the word."""
    from intentd.train.channel import frame_levels

    level = frame_levels(clip, rate)
    return (0.0, 0.0) if level is None else (float(level[0]), float(level[-1]))


def _variants(rng: np.random.Generator) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Input changes that test a hypothesis each: silence/noise around the word, level, window fill, tempo."""
    from intentd.train.data import change_speed

    def noise(n: int) -> np.ndarray:
        return rng.normal(0.0, 0.002, n).astype(np.float32)

    return {
        "as recorded": lambda c: c,
        "0.3 s silence before": lambda c: np.concatenate([np.zeros(SAMPLE_RATE * 3 // 10, np.float32), c]),
        "0.25 s noise each side": lambda c: np.concatenate([noise(SAMPLE_RATE // 4), c, noise(SAMPLE_RATE // 4)]),
        "gain x2": lambda c: np.clip(2 * c, -1, 1),
        "peak normalised to 0.5": lambda c: c * (0.5 / max(float(np.abs(c).max()), 1e-9)),
        "tiled to 2 s": lambda c: np.tile(c, -(-2 * SAMPLE_RATE // c.size))[: 2 * SAMPLE_RATE],
        "0.8x tempo": lambda c: change_speed(c, 0.8),  # tempo and pitch together, as fit --speed-perturb
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="digits model folder")
    parser.add_argument("--fsdd", type=Path, default=fsdd.DEFAULT_FSDD, help="FSDD recordings folder")
    parser.add_argument("--speakers", nargs="+", default=list(fsdd.SPEAKERS))
    parser.add_argument("--variants", action="store_true", help="also score the changed inputs (slower)")
    args = parser.parse_args(argv)
    found = fsdd.require_fsdd(args.fsdd)
    if found is None:
        return fsdd.SKIP_STATUS

    from intentd.train.inference import load_classifier

    model = load_classifier(args.model)
    missing = [d for d in fsdd.DIGIT_NAMES if d not in model.label2id]
    if missing:
        print(f"error: {args.model} has no label(s) {', '.join(missing)}; it is not a digits model", file=sys.stderr)
        return 2
    print("| speaker | clips | mean length s | shortest s | first / last 10 ms, median dB | variant | accuracy "
          "| wrong: mean length s | right: mean length s |")
    print("|---|---|---|---|---|---|---|---|---|")
    confusions: dict[str, Counter[tuple[str, str]]] = {}
    for speaker in args.speakers:
        recs = [r for r in found if r.speaker == speaker]
        if not recs:
            print(f"error: no recordings of speaker {speaker!r}", file=sys.stderr)
            return 2
        clips = [_load(r) for r in recs]
        truth = np.array([model.label2id[r.label] for r in recs])
        lengths = np.array([c.size / SAMPLE_RATE for c in clips])
        edges = np.median(np.array([edge_levels(c) for c in clips]), axis=0)
        variants = _variants(np.random.default_rng(0))
        names = list(variants) if args.variants else ["as recorded"]
        for name in names:
            predicted = model.probabilities([variants[name](c) for c in clips]).argmax(axis=1)
            right = predicted == truth
            if name == "as recorded":
                confusions[speaker] = Counter(
                    (r.label, model.labels[int(p)]) for r, p, ok in zip(recs, predicted, right, strict=True) if not ok
                )
            wrong_len = f"{lengths[~right].mean():.2f}" if (~right).any() else "-"
            print(f"| {speaker} | {len(recs)} | {lengths.mean():.2f} | {lengths.min():.2f} | "
                  f"{edges[0]:.0f} / {edges[1]:.0f} | {name} | "
                  f"{right.mean():.1%} | {wrong_len} | {lengths[right].mean():.2f} |", flush=True)  # fmt: skip
    for speaker, pairs in confusions.items():
        top = ", ".join(f"{said} -> {heard} x{n}" for (said, heard), n in pairs.most_common(5)) or "none"
        print(f"{speaker}: commonest confusions {top}")
    print(f"reproduce: {fsdd.reproduce_line(argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
