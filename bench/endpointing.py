"""Whole commands or pieces? The daemon's own segmentation (daemon/vad.py + daemon/segmenter.py, chunk by chunk as
a socket delivers audio) on real spoken coffee orders, and what waiting longer for the end of speech costs.

* barista-dev (../shared/data/barista-dev: 120 real orders, 16 kHz), each recording streamed as its own stream as
  `intentd-send FILE` sends it: how many give exactly one utterance, how many are split into 2+ and the unvoiced
  gap at each split (from one piece's last voiced frame to the next one's first).
* End-of-speech delay: from the last voiced frame to the utterance's close (the hangover actually waited, counted
  in samples), for the orders and for FSDD digits (ordinary short commands) streamed with 2 s of room noise after
  them so a hangover, not the stream's end, closes them. The daemon adds its processing on top.
* FSDD alone (exactly one utterance per recording) and phantoms per hour on generated non-speech, as
  bench/segmentation.py measures them, so a rule that joins pieces is seen not to open or keep noise.

Each row is a set of `vad.*` overrides (`--row KEY=VALUE,KEY=VALUE`); the first default row is the daemon's
settings. The recordings are read in place, never copied; without them the script says so and exits 0.

    .venv/bin/python -m bench.endpointing [--minutes 10] [--row hangover_ms=500 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import fsdd
from bench.segmentation import CHUNK_MS, NOISE_RATES, PAD_ROOM_DBFS
from bench.segmentation import utterances as count_utterances
from intentd.daemon.frames import AudioChunk, Utterance
from intentd.daemon.segmenter import Segmenter, SegmentEvent, SpeechStarted
from intentd.daemon.settings import VadSettings
from intentd.daemon.vad import StreamSegmenter
from intentd.train import nonspeech
from intentd.train.channel import noise

DEFAULT_BARISTA = fsdd.REPO.parent / "shared" / "data" / "barista-dev" / "clean"
# Room noise after each digit: longer than any hangover compared, so the hangover closes every utterance.
TAIL_S = 2.0
PERCENTILES = (50, 95)
MINUTES_PER_HOUR = 60
# The rows compared by default: the daemon's defaults, the fixed 300 ms before them, fixed longer hangovers (also the delay a rule that joins
# pieces closer than X would add to every command, since it must wait X to know none follows), and the adaptive
# long hangover at a few lengths and voice thresholds.
DEFAULT_ROWS = (
    "",
    "long_hangover_ms=300",  # off: 300 ms for every utterance, the default before the long hangover
    "hangover_ms=500,long_hangover_ms=500",
    "hangover_ms=800,long_hangover_ms=800",
    "long_hangover_ms=600",
    "long_hangover_ms=1000",
    "long_hangover_after_ms=600",
)


class _WatchedSegmenter(Segmenter):
    """The daemon's segmenter, also noting each utterance's first voiced frame (to measure gaps)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.onsets: list[int] = []

    def push(self, is_speech: bool) -> SegmentEvent | None:
        event = super().push(is_speech)
        if isinstance(event, SpeechStarted):
            self.onsets.append(self._onset)
        return event


@dataclass(frozen=True, slots=True)
class Piece:
    """One utterance of a stream, in ms of stream time."""

    onset_ms: float  # first voiced frame
    end_ms: float  # one past the last voiced frame
    delay_ms: float | None  # hangover waited before it closed; None when the stream's end closed it
    peak_dbfs: float  # loudest 30 ms of the utterance


def segment(samples: np.ndarray, rate: int, vad: VadSettings) -> list[Piece]:
    """The utterances the daemon's segmentation cuts from one stream, fed in CHUNK_MS chunks."""
    seg = StreamSegmenter("bench", rate, vad.segmenter(), vad.aggressiveness, stream_origin_wall=0.0)
    watched = _WatchedSegmenter(vad.segmenter())
    seg.segmenter = watched
    step = rate * CHUNK_MS // 1000
    closed: list[tuple[Utterance, bool]] = []
    for start in range(0, samples.size, step):
        chunk = AudioChunk("bench", samples[start : start + step], rate, start, 0.0)
        closed += [(e, True) for e in seg.push(chunk) if isinstance(e, Utterance)]
    closed += [(e, False) for e in seg.flush(0.0) if isinstance(e, Utterance)]
    # Discarded blips also started, so match each utterance to its own onset by position.
    onsets_ms = [o * seg.frame_samples * 1000 / rate for o in watched.onsets]
    pieces = []
    for u, by_hangover in closed:
        start_ms, end_ms = u.start_sample * 1000 / rate, u.end_sample * 1000 / rate
        onset = max((o for o in onsets_ms if start_ms <= o < end_ms), default=start_ms)
        frames = u.samples[: u.samples.size // seg.frame_samples * seg.frame_samples].reshape(-1, seg.frame_samples)
        peak = float(np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)).max()) if frames.size else 0.0
        delay = u.hangover_samples * 1000 / rate if by_hangover else None
        pieces.append(Piece(onset, end_ms, delay, 20 * np.log10(peak + 1e-9)))
    return pieces


def percentiles(values: Sequence[float]) -> str:
    """'p50 / p95' in ms, or '-' when there is nothing to measure."""
    if not values:
        return "-"
    return " / ".join(f"{np.percentile(values, p):.0f}" for p in PERCENTILES)


def parse_row(text: str) -> VadSettings:
    """`KEY=VALUE,...` over the daemon's vad defaults (checked like a config file)."""
    overrides = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        overrides[key.strip()] = int(value)
    return dataclasses.replace(VadSettings(), **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Print one table row per vad setting, then the split orders of the first row and of the others."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--barista", type=Path, default=DEFAULT_BARISTA, help="barista-dev clean/ folder")
    parser.add_argument("--fsdd", type=Path, default=fsdd.DEFAULT_FSDD, help="FSDD recordings folder")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="minutes of each non-speech sound per rate for the phantom columns (0: skip them)")
    parser.add_argument("--row", nargs="+", default=list(DEFAULT_ROWS),
                        help="vad overrides per row, e.g. long_hangover_ms=800,long_hangover_after_ms=1000")
    args = parser.parse_args(argv)
    import soundfile as sf

    orders = sorted(args.barista.glob("*.wav"))
    digits = fsdd.require_fsdd(args.fsdd)
    if not orders or digits is None:
        print(f"barista-dev ({args.barista}) or FSDD absent: nothing to measure")
        return fsdd.SKIP_STATUS
    order_audio = [(p.name, *sf.read(str(p), dtype="float32")) for p in orders]
    digit_audio = [sf.read(str(r.path), dtype="float32") for r in digits]
    rng = np.random.default_rng(0)
    padded_digits = []
    for samples, rate in digit_audio:
        stream = np.concatenate([samples, np.zeros(round(TAIL_S * rate), np.float32)])
        bed = noise(stream.size, "pink", rng) * 10 ** (PAD_ROOM_DBFS / 20)
        padded_digits.append(((stream + bed).astype(np.float32), rate))
    kinds = list(nonspeech.KINDS) if args.minutes > 0 else []
    sounds = {(kind, rate): make(args.minutes * 60, rate, np.random.default_rng(rate)).astype(np.float32)
              for kind, make in nonspeech.KINDS.items() for rate in NOISE_RATES} if kinds else {}

    print(f"barista-dev: {len(orders)} orders, each its own stream; FSDD: {len(digit_audio)} digits alone, and "
          f"with {TAIL_S:g} s room noise after for the delay; end-of-speech delay = last voiced frame -> close "
          f"(ms, p50 / p95)" + (f"; phantoms per hour of {args.minutes:g} min of each sound" if kinds else ""))
    print("| vad overrides | orders: exactly one | split 2+ | gaps at splits ms | orders delay | "
          "FSDD alone: exactly one | FSDD delay | " + " | ".join(kinds) + (" | " if kinds else "") + "seconds |")
    print("|---" * (8 + len(kinds)) + "|")
    splits: dict[str, list[tuple[str, list[Piece]]]] = {}
    for row in args.row:
        started = time.monotonic()
        vad = parse_row(row)
        counts: Counter[int] = Counter()
        gaps: list[float] = []
        order_delays: list[float] = []
        splits[row] = []
        for name, samples, rate in order_audio:
            pieces = segment(samples, rate, vad)
            counts[len(pieces)] += 1
            order_delays += [p.delay_ms for p in pieces if p.delay_ms is not None]
            if len(pieces) > 1:
                splits[row].append((name, pieces))
                gaps += [b.onset_ms - a.end_ms for a, b in itertools.pairwise(pieces)]
        alone = Counter(count_utterances(s, r, vad) for s, r in digit_audio)
        digit_delays = [p.delay_ms for s, r in padded_digits for p in segment(s, r, vad) if p.delay_ms is not None]
        hours = args.minutes * len(NOISE_RATES) / MINUTES_PER_HOUR
        phantoms = [sum(count_utterances(sounds[(kind, rate)], rate, vad) for rate in NOISE_RATES) / hours
                    for kind in kinds]
        split = sum(n for k, n in counts.items() if k > 1)
        print(f"| {row or 'defaults'} | {counts[1]}/{len(orders)} ({counts[1] / len(orders):.1%}) | {split} | "
              f"{', '.join(f'{g:.0f}' for g in sorted(gaps)) or '-'} | {percentiles(order_delays)} | "
              f"{alone[1] / len(digit_audio):.2%} | {percentiles(digit_delays)} | "
              + "".join(f"{p:.0f} | " for p in phantoms) + f"{time.monotonic() - started:.0f} |", flush=True)
    for row, found in splits.items():
        print(f"\nsplit orders, {row or 'defaults'}: (onset-end s, peak dBFS) per piece")
        for name, pieces in found:
            print(f"  {name}: " + "; ".join(f"{p.onset_ms / 1000:.2f}-{p.end_ms / 1000:.2f} s {p.peak_dbfs:.0f} dB"
                                            for p in pieces))
    print(f"\ncommand: .venv/bin/python -m bench.endpointing --minutes {args.minutes:g} --row "
          + " ".join(repr(r) if r else "''" for r in args.row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
