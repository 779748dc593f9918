"""Rhino's coffee benchmark on barista-dev: whole commands (intent and every slot right) from a model made from the
grammar alone, on the clean recordings and with noise we generate and mix at 24, 18, 12 and 6 dB.

The noise is no benchmark file: a cafe-like mix made here (pink room noise whose level drifts, cups and clicks,
plucked music, and babble-like bursts of speech-shaped noise with a syllable rhythm), mixed as the benchmark mixes
(the SNR of the loudest 2048-sample frame energies of speech and noise), seeded per file and condition. Each
condition is an audio folder (wav + metadata.jsonl) scored by `intentd-train eval`'s own function; `--daemon`
also streams every file of each condition through a running intentd (one stream per file, VAD-cut) and scores its
intent events. Latency: each clean clip classified alone (whole file, as eval sees it), on this machine's cores.

    .venv/bin/python -m bench.barista --model models/barista-grammar [--snr clean 24 18 12 6] [--daemon]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from intentd.daemon.audio import SAMPLE_RATE

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "barista-dev" / "clean"
DEFAULT_WORKDIR = REPO / "runs" / "barista"
CONDITIONS = ("clean", "24", "18", "12", "6")
FRAME = 2048  # the benchmark's mixing frame
NOISE_SEED = 16
RHINO_NOISY_AVERAGE = 0.976
BABBLE_BAND_HZ = (200.0, 3400.0)
SYLLABLE_HZ = (3.0, 6.0)
BABBLE_TALKERS = 4


def peak_frame_energy(samples: np.ndarray) -> float:
    """The loudest FRAME-sample frame's mean energy (the benchmark's level for mixing)."""
    frames = len(samples) // FRAME
    if frames == 0:
        return float(np.mean(samples**2))
    return float(np.max(np.mean(samples[: frames * FRAME].reshape(frames, FRAME) ** 2, axis=1)))


def cafe_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """A cafe-like background of n samples at SAMPLE_RATE: room, clatter, music and babble-like noise."""
    from intentd.train import channel, nonspeech

    seconds = n / SAMPLE_RATE
    parts = [nonspeech.room(seconds, SAMPLE_RATE, rng), nonspeech.clicks(seconds, SAMPLE_RATE, rng),
             nonspeech.music(seconds, SAMPLE_RATE, rng)]
    t = np.arange(n) / SAMPLE_RATE
    babble = np.zeros(n)
    for _ in range(BABBLE_TALKERS):
        voice = channel.bandpass(channel.noise(n, "pink", rng), SAMPLE_RATE, *BABBLE_BAND_HZ)
        rhythm = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(*SYLLABLE_HZ) * t + rng.uniform(0, 2 * np.pi))
        babble += voice * rhythm**2
    parts.append(babble)
    weights = (1.0, 0.1, 0.3, 1.0)
    mix = sum(w * p[:n] / (np.std(p[:n]) or 1.0) for w, p in zip(weights, parts, strict=True))
    return np.asarray(mix, dtype=np.float64)


def mix(speech: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Speech plus cafe noise at `snr_db` by peak frame energies, kept inside [-1, 1]."""
    noise = cafe_noise(len(speech), rng)
    scale = np.sqrt(peak_frame_energy(speech) / (peak_frame_energy(noise) * 10 ** (snr_db / 10)))
    out = speech + scale * noise
    peak = float(np.max(np.abs(out)))
    return (out / peak * 0.99 if peak > 0.99 else out).astype(np.float32)


def write_condition(data: Path, workdir: Path, condition: str) -> Path:
    """The audio folder of one condition (clean: the data itself), written once."""
    if condition == "clean":
        return data
    folder = workdir / f"snr{condition}"
    meta = data / "metadata.jsonl"
    if (folder / "metadata.jsonl").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in meta.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, row in enumerate(rows):
        speech, rate = sf.read(str(data / row["file_name"]), dtype="float32")
        assert rate == SAMPLE_RATE, row["file_name"]
        rng = np.random.default_rng([NOISE_SEED, int(condition), i])
        sf.write(str(folder / row["file_name"]), mix(speech.astype(np.float64), float(condition), rng), rate,
                 subtype="PCM_16")
    (folder / "metadata.jsonl").write_text(meta.read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def evaluate(model: Path, folder: Path) -> dict[str, Any]:
    """eval's report for one folder (every clip) and the seconds it took."""
    from intentd.train.evaluation import evaluate_model

    start = time.perf_counter()
    report = evaluate_model(str(model), str(folder), batch_size=8)
    report["seconds"] = time.perf_counter() - start
    return report


def latency(model: Path, data: Path, limit: int) -> dict[str, float]:
    """Milliseconds to classify each clean clip alone (whole files, after a warm-up)."""
    from intentd.daemon.classifier import Classifier

    classifier = Classifier.load(model, device="cpu")
    classifier.warmup()
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    times = []
    for row in rows[:limit]:
        clip = sf.read(str(data / row["file_name"]), dtype="float32")[0]
        start = time.perf_counter()
        classifier.classify([clip])
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"n": len(times), "median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))],
            "mean_ms": statistics.fmean(times)}


def through_daemon(model: Path, folder: Path, workdir: Path) -> dict[str, Any]:
    """Every file of a folder streamed through intentd (one stream each); a command is right when the stream's
    best-scoring intent event has the right intent and slots. Also counts streams cut into several utterances."""
    from intentd.clients.subscriber import Subscriber
    from intentd.daemon import events
    from intentd.train.commands import CommandPrediction, command_report, slot_labels
    from tests.daemon_proc import collect, running_daemon, send_files

    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    files = [folder / row["file_name"] for row in rows]
    by_stream: dict[str, list[events.IntentEvent]] = {}
    ended: set[str] = set()
    with running_daemon(workdir / "daemon", model) as daemon, \
            Subscriber(daemon.events_uri, recv_timeout_s=600.0) as sub:
        assert sub.wait_connected(60.0)
        start = time.perf_counter()
        send_files(daemon.audio_uri, files, timeout_s=1800.0)
        for e in collect(sub, lambda kept: sum(isinstance(k, events.StreamEndEvent) for k in kept) >= len(files),
                         1800.0, keep=lambda e: isinstance(e, events.IntentEvent | events.StreamEndEvent)):
            stream = str(e.raw.get("stream_id", ""))
            if isinstance(e, events.StreamEndEvent):
                ended.add(stream)
            else:
                by_stream.setdefault(stream, []).append(e)
        seconds = time.perf_counter() - start
    predictions = []
    split = 0
    for f in files:
        got = next((v for k, v in by_stream.items() if k.endswith(f.name) or f.stem in k), [])
        split += len(got) > 1
        best = max(got, key=lambda e: e.score, default=None)
        if best is None or best.label == events.UNKNOWN_LABEL:
            predictions.append(CommandPrediction(None))
        else:
            predictions.append(CommandPrediction(best.label, {k: s.value for k, s in best.slots.items()}))
    report = command_report([row["intent"] for row in rows], [slot_labels(row["slots"]) for row in rows],
                            predictions)
    report.update(streams=len(files), streams_ended=len(ended), split_streams=split, seconds=seconds)
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the conditions, print a table, write WORKDIR/results.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--snr", nargs="+", default=list(CONDITIONS), help="conditions: clean and/or SNRs in dB")
    parser.add_argument("--daemon", action="store_true", help="also stream every condition through intentd")
    parser.add_argument("--no-eval", action="store_true", help="with --daemon: skip the eval pass (run it apart)")
    parser.add_argument("--latency-clips", type=int, default=40, help="clean clips timed alone (0: none)")
    args = parser.parse_args(argv)
    if args.no_eval and not args.daemon:
        parser.error("--no-eval leaves nothing to run without --daemon")
    args.workdir = args.workdir.resolve()  # the daemon subprocess runs in its own folder
    args.model = args.model.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    passes = (*(() if args.no_eval else ("eval",)), *(("daemon",) if args.daemon else ()))
    results: dict[str, Any] = {"model": str(args.model), "conditions": {}}
    for condition in args.snr:
        folder = write_condition(args.data, args.workdir, condition)
        row: dict[str, Any] = {}
        for how in passes:
            row[how] = (evaluate(args.model, folder) if how == "eval" else
                        through_daemon(args.model, folder, args.workdir / f"daemon-{condition}"))
        results["conditions"][condition] = row
        print(f"{condition:>5}", flush=True)
        for how, report in row.items():
            print(f"       {how}: commands {report['command_acceptance']:.3f}  intent "
                  f"{report['command_intent_accuracy']:.3f}  " +
                  " ".join(f"{k}={v['accuracy']:.2f}" for k, v in report["slots"].items()) +
                  (f"  split {report['split_streams']}/{report['streams']}" if how == "daemon" else "") +
                  f"  ({report['command_n']} clips, {report['seconds']:.0f} s)", flush=True)
            for c in report["slot_confusions"][:5]:
                print(f"         {c['slot']}: {c['truth']} -> {c['predicted']} x{c['count']}")
    noisy = [c for c in args.snr if c != "clean"]
    for how in passes if noisy else ():
        average = statistics.fmean(results["conditions"][c][how]["command_acceptance"] for c in noisy)
        results[f"noisy_average_{how}"] = average
        print(f"noisy average ({how}): {average:.3f}   Rhino's published noisy average: {RHINO_NOISY_AVERAGE}")
    if args.latency_clips:
        results["latency"] = latency(args.model, args.data, args.latency_clips)
        lat = results["latency"]
        print(f"latency per clean clip alone: median {lat['median_ms']:.0f} ms, p90 {lat['p90_ms']:.0f} ms "
              f"({lat['n']} clips)")
    (args.workdir / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
