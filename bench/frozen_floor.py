"""The floor fine-tuning must beat: frozen Whisper-tiny.en encoder, mean-pooled, + logistic regression.

Usage: .venv/bin/python -m bench.frozen_floor [--fsdd DIR] [--workdir DIR] [--max-seconds S] [--synth DIR]
                                              [--pool all|speech] [--no-synth]

Same splits as bench.fsdd_speakers (fit on three FSDD speakers, test on the fourth) and bench.fsdd_synth (fit on
the train split of `intentd-train synth` digits, test on all 2,000 FSDD clips). Features: the imported backbone's
last encoder layer averaged over every frame of the padded window (what the model's own pooling sees), then
sklearn's LogisticRegression with its defaults (C=1; standardising the features first lost 1-5 points on every
split, so the floor is the stronger, plain one). Features are computed once per clip and kept in the work folder.
`--pool speech` averages only the frames that see the clip (the rest see the extractor's zero padding): what an
attention-masked mean would give, which WhisperForAudioClassification does not offer. `--no-synth` skips the
synth-only split (worth it at long crops, where features cost ~0.26 s per clip at 30 s).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import fsdd

FEATURE_BATCH = 32  # clips through the frozen encoder at once; the floor trains no network, so no fit setting


def pooled_features(base: Path, paths: list[Path], pool: str = "all") -> np.ndarray:
    """(clips, d_model) mean-pooled last-layer states of the frozen encoder, over every frame or the clip's own."""
    import torch
    from transformers import AutoFeatureExtractor, WhisperForAudioClassification

    from intentd.daemon.classifier import extract_features
    from intentd.train.audio_io import read_audio

    extractor = AutoFeatureExtractor.from_pretrained(str(base))
    model = WhisperForAudioClassification.from_pretrained(str(base), num_labels=2).eval()
    samples_per_frame = extractor.hop_length * 2  # conv2 has stride 2
    out = []
    with torch.inference_mode():
        for start in range(0, len(paths), FEATURE_BATCH):
            clips = [read_audio(p)[: extractor.n_samples] for p in paths[start : start + FEATURE_BATCH]]
            feats = extract_features(extractor, clips)["input_features"]
            states = model.encoder(feats).last_hidden_state
            if pool == "all":
                out.append(states.mean(dim=1).numpy())
                continue
            for row, clip in zip(states, clips):
                out.append(row[: max(1, math.ceil(len(clip) / samples_per_frame))].mean(dim=0, keepdim=True).numpy())
    return np.concatenate(out)


def cached_features(cache: Path, base: Path, paths: list[Path], pool: str = "all") -> np.ndarray:
    """pooled_features, stored as cache (.npy) after the first call."""
    if cache.is_file():
        return np.load(cache)
    started = time.perf_counter()
    feats = pooled_features(base, paths, pool)
    np.save(cache, feats)
    print(f"features of {len(paths)} clips in {time.perf_counter() - started:.0f} s -> {cache}", file=sys.stderr)
    return feats


def logistic_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> tuple[float, np.ndarray, float]:
    """(accuracy, predictions, fit seconds) of logistic regression on the raw pooled features."""
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    clf: Any = LogisticRegression(max_iter=3000)
    clf.fit(x_train, y_train)
    seconds = time.perf_counter() - started
    predicted = clf.predict(x_test)
    return float(np.mean(predicted == y_test)), predicted, seconds


def synth_rows(synth_dir: Path) -> tuple[list[Path], np.ndarray]:
    """Paths and digit ids of a synth dataset's train split."""
    import datasets

    train = datasets.load_from_disk(str(synth_dir))["train"]
    names = train.features["intent_class"].names
    to_digit = [fsdd.DIGIT_NAMES.index(n) for n in names]
    return [Path(p) for p in train["path"]], np.array([to_digit[i] for i in train["intent_class"]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsdd.add_bench_args(parser, "backbone, features, synth")
    fsdd.add_synth_args(parser)
    parser.add_argument("--pool", choices=("all", "speech"), default="all",
                        help="mean over every frame (the model's pooling, default) or the clip's own frames only")
    parser.add_argument("--no-synth", dest="synth_split", action="store_false", help="skip the synth-only split")
    args = parser.parse_args(argv)

    bench = fsdd.open_bench(args, "intentd-frozen-floor-")
    if bench is None:
        return fsdd.SKIP_STATUS
    recs, workdir, base = bench.recordings, bench.workdir, bench.base
    crop = f"{args.max_seconds:g}s" + ("" if args.pool == "all" else f"-{args.pool}")
    x_real = cached_features(workdir / f"fsdd-{crop}.npy", base, [r.path for r in recs], args.pool)
    y_real = np.array([r.digit for r in recs])
    speakers = np.array([r.speaker for r in recs])

    print("| split | accuracy | clips | LR fit s |")
    print("|---|---|---|---|")
    for speaker in fsdd.SPEAKERS:
        held = speakers == speaker
        acc, _, secs = logistic_accuracy(x_real[~held], y_real[~held], x_real[held], y_real[held])
        print(f"| 3 speakers -> {speaker} | {acc:.2%} | {held.sum()} | {secs:.1f} |", flush=True)
    if not args.synth_split:
        print(f"\nbackbone crop {crop}; work folder {workdir}\nreproduce: {fsdd.reproduce_line(argv)}")
        return 0

    synth_dir, _ = fsdd.synth_folder(args, workdir, bench.log_file)
    paths, y_synth = synth_rows(synth_dir)
    x_synth = cached_features(workdir / f"synth-{synth_dir.name}-{crop}.npy", base, paths, args.pool)
    acc, predicted, secs = logistic_accuracy(x_synth, y_synth, x_real, y_real)
    print(f"| synth ({len(paths)} train clips) -> all 4 speakers | {acc:.2%} | {len(y_real)} | {secs:.1f} |")
    for speaker in fsdd.SPEAKERS:
        held = speakers == speaker
        print(f"| synth -> {speaker} | {np.mean(predicted[held] == y_real[held]):.2%} | {held.sum()} | |")
    print(f"\nbackbone crop {crop}; synth {synth_dir}; work folder {workdir}")
    print(f"reproduce: {fsdd.reproduce_line(argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
