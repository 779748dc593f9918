"""`intentd-train predict`: top-k labels with scores for audio files (any rate; stereo is mixed down)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from intentd.daemon.frames import Prediction
from intentd.train.audio_io import check_clip, read_native
from intentd.train.inference import VIA_CHOICES, PipelineClassifier, check_model_dir, load_classifier

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 3


def predict_files(model_dir: str, files: list[str], top_k: int = DEFAULT_TOP_K, via: str = "manual",
                  threshold: float | None = None) -> list[Prediction]:
    """One Prediction per file, in file order: its best top_k labels, and the daemon's answer at the model's
    calibrated threshold (or `threshold`); every file is read and checked first."""
    from intentd.daemon.classifier import calibrated_threshold
    from intentd.daemon.resample import resample

    check_model_dir(model_dir)  # a wrong --model says so before any file is read
    clips = []
    for path in files:
        samples, rate = read_native(path)
        clips.append((check_clip(samples, path), rate))
    if via == "pipeline":
        pipe = PipelineClassifier(model_dir)
        if threshold is None:
            threshold = calibrated_threshold(Path(model_dir))
        return [pipe.classify(samples, rate, top_k, threshold) for samples, rate in clips]
    return load_classifier(model_dir, top_k, threshold).classify([resample(s, r) for s, r in clips])


def register(subparsers: Any) -> None:
    """Add the `predict` subcommand."""
    p = subparsers.add_parser("predict", help="classify audio files with a trained model")
    p.add_argument("--model", required=True, metavar="DIR", help="model folder written by fit")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (WAV/FLAC directly, others via ffmpeg)")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help=f"labels per file (default {DEFAULT_TOP_K})")
    p.add_argument("--via", choices=VIA_CHOICES, default="manual", help="manual (batched) or the HF pipeline")
    p.add_argument("--threshold", type=float, default=None,
                   help="answer unknown below this top score instead of the model's calibrated threshold (0: never)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """CLI entry."""
    results = predict_files(args.model, args.files, args.top_k, args.via, args.threshold)
    if args.json:
        doc = {
            "model": args.model,
            "predictions": [
                {"file": f, "label": p.label, "score": p.score,
                 "top": [{"label": label, "score": score} for label, score in p.top_k],
                 **({"slots": {name: {"value": value, "score": score} for name, (value, score) in p.slots.items()}}
                    if p.slots else {}),
                 **({"text": p.text} if p.text else {})}
                for f, p in zip(args.files, results)
            ],
        }
        print(json.dumps(doc))
    else:
        for f, p in zip(args.files, results):
            slots = "".join(f"\t{name}={value} {score:.3f}" for name, (value, score) in p.slots.items())
            text = f"\t{p.text!r}" if p.text else ""
            print(f"{f}\t{p.label}\t" + "  ".join(f"{label} {score:.3f}" for label, score in p.top_k) + slots + text)
    return 0
