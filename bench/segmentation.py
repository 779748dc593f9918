"""Does the segmenter hear every short command and nothing else? Both sides, measured offline on the daemon's own
segmentation (daemon/vad.py: webrtcvad + the segmenter state machine), chunk by chunk as a socket delivers audio.

* Commands: every FSDD recording streamed as its own stream, alone (as `intentd-send FILE` sends it) and between
  1 s silences with room noise under the whole stream; the share that gives exactly one utterance.
* Non-commands: minutes of generated silence, room noise, music-like tones, breathing and clicks
  (train/nonspeech.py) at 8 and 16 kHz; the utterances they open (phantoms), per hour.

Each `--min-utterance-ms` value is a row; the default compares the daemon's setting with the values around it.

    .venv/bin/python -m bench.segmentation [--minutes 10] [--min-utterance-ms 200 120 90]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench import fsdd
from intentd.daemon.audio import SAMPLE_RATE
from intentd.daemon.frames import AudioChunk, Utterance
from intentd.daemon.settings import VadSettings
from intentd.daemon.vad import StreamSegmenter
from intentd.train import nonspeech
from intentd.train.channel import noise

CHUNK_MS = 20  # intentd-send's default chunk
PAD_S = 1.0
PAD_ROOM_DBFS = -55.0
NOISE_RATES = (8000, SAMPLE_RATE)  # a phone line and the models' own wideband rate
MINUTES_PER_HOUR = 60


def utterances(samples: np.ndarray, rate: int, vad: VadSettings) -> int:
    """Utterances the daemon's segmentation cuts from one stream of float32 audio."""
    segmenter = StreamSegmenter("bench", rate, vad.segmenter(), vad.aggressiveness, stream_origin_wall=0.0)
    step = rate * CHUNK_MS // 1000
    found = 0
    for start in range(0, samples.size, step):
        chunk = AudioChunk("bench", samples[start : start + step], rate, start, 0.0)
        found += sum(isinstance(e, Utterance) for e in segmenter.push(chunk))
    return found + sum(isinstance(e, Utterance) for e in segmenter.flush(0.0))


def command_row(clips: Sequence[tuple[np.ndarray, int]], vad: VadSettings, padded: bool) -> Counter[int]:
    """How many clips gave 0, 1, 2... utterances."""
    counts: Counter[int] = Counter()
    rng = np.random.default_rng(0)
    for samples, rate in clips:
        if padded:
            # The room goes on under the speech too: one noise bed under silence + clip + silence.
            pad = np.zeros(round(PAD_S * rate))
            stream = np.concatenate([pad, samples, pad])
            samples = (stream + noise(stream.size, "pink", rng) * 10 ** (PAD_ROOM_DBFS / 20)).astype(np.float32)
        counts[utterances(samples, rate, vad)] += 1
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Print one table row per minimum-utterance setting."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fsdd", type=Path, default=fsdd.DEFAULT_FSDD, help="FSDD recordings folder")
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of each non-speech sound per rate")
    parser.add_argument("--min-utterance-ms", type=int, nargs="+",
                        default=[VadSettings().min_utterance_ms, 150, 120, 90],
                        help="vad.min_utterance_ms values to compare (first: the daemon's default)")
    args = parser.parse_args(argv)
    import soundfile as sf

    found = fsdd.require_fsdd(args.fsdd)
    if found is None:
        return fsdd.SKIP_STATUS
    clips = [sf.read(str(r.path), dtype="float32") for r in found]
    sounds = {(kind, rate): make(args.minutes * 60, rate, np.random.default_rng(rate)).astype(np.float32)
              for kind, make in nonspeech.KINDS.items() for rate in NOISE_RATES}
    kinds = list(nonspeech.KINDS)
    print(f"FSDD: {len(clips)} recordings, each its own stream; non-speech: {args.minutes:g} min of each kind "
          f"at {' and '.join(str(r) for r in NOISE_RATES)} Hz; phantoms per hour of that sound")
    print("| min_utterance_ms | FSDD alone: exactly one | lost | FSDD between room noise: exactly one | "
          + " | ".join(kinds) + " | seconds |")
    print("|---" * (5 + len(kinds)) + "|")
    for min_ms in args.min_utterance_ms:
        started = time.monotonic()
        vad = dataclasses.replace(VadSettings(), min_utterance_ms=min_ms)
        alone = command_row(clips, vad, padded=False)
        padded = command_row(clips, vad, padded=True)
        hours = args.minutes * len(NOISE_RATES) / MINUTES_PER_HOUR
        phantoms = [sum(utterances(sounds[(kind, rate)], rate, vad) for rate in NOISE_RATES) / hours
                    for kind in kinds]
        print(f"| {min_ms} | {alone[1] / len(clips):.2%} | {alone[0]} | {padded[1] / len(clips):.2%} | "
              + " | ".join(f"{p:.0f}" for p in phantoms) + f" | {time.monotonic() - started:.0f} |", flush=True)
    print(f"\ncommand: .venv/bin/python -m bench.segmentation --minutes {args.minutes:g} --min-utterance-ms "
          + " ".join(str(m) for m in args.min_utterance_ms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
