"""`intentd-train predict`: top-k labels with scores for audio files (any rate; stereo is mixed down)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from train.audio_io import check_clip, read_native, resample
from train.inference import VIA_CHOICES, Classifier, PipelineClassifier, Ranked, check_model_dir

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 3


def predict_files(model_dir: str, files: list[str], top_k: int = DEFAULT_TOP_K, via: str = "manual") -> list[list[Ranked]]:
    """Best top_k labels per file, in file order; every file is read (and checked) before the model runs."""
    check_model_dir(model_dir)
    clips = []
    for path in files:
        samples, rate = read_native(path)
        check_clip(samples, path)
        clips.append((samples, rate))
    if via == "pipeline":
        pipe = PipelineClassifier(model_dir)
        return [pipe.top_k(samples, rate, top_k) for samples, rate in clips]
    return Classifier.load(model_dir).top_k([resample(s, r) for s, r in clips], top_k)


def register(subparsers: Any) -> None:
    """Add the `predict` subcommand."""
    p = subparsers.add_parser("predict", help="classify audio files with a trained model")
    p.add_argument("--model", required=True, metavar="DIR", help="model folder written by fit")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (WAV/FLAC directly, others via ffmpeg)")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help=f"labels per file (default {DEFAULT_TOP_K})")
    p.add_argument("--via", choices=VIA_CHOICES, default="manual", help="manual (batched) or the HF pipeline")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """CLI entry."""
    results = predict_files(args.model, args.files, args.top_k, args.via)
    if args.json:
        doc = {
            "model": args.model,
            "predictions": [
                {"file": f, "top": [{"label": r.label, "score": r.score} for r in ranked]}
                for f, ranked in zip(args.files, results)
            ],
        }
        print(json.dumps(doc))
    else:
        for f, ranked in zip(args.files, results):
            print(f + "\t" + "  ".join(f"{r.label} {r.score:.3f}" for r in ranked))
    return 0
