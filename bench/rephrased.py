"""How does a 14-intent model cope with requests phrased the way nobody wrote them down (issue 16)? Speak the
test-only sentences of bench/minds14_rephrased.toml through synth's telephone channel and score a model on them
with `intentd-train eval`, beside its held-out accuracy on the synthetic voices of its own data set.

Each sentence is rendered `--renders` times (default 4) by voices whose speaker is in no train split of the
model's data sets (read from its metrics.json, as bench/rejection.py does), so neither the sentences nor the
voices were ever heard in training: all renders but the last by different voices of the engine with most unheard
speakers (espeak-ng), the last by the other engines' unheard voices in turn (flite and festival's slt). Speaking
rate, pitch and the telephone channel (band edges, codec, noise, half the clips trimmed) are drawn as synth draws
them for its own clips. The clips are rendered once per (sentences, voices, renders, seed) into the work folder.

    .venv/bin/python -m bench.rephrased --model models/default [--workdir W] [--renders 4] [--by-sentence]

Prints the re-phrased accuracy with a per-intent table, and the held-out accuracy of the same model on the test
split of the data set it was fit on (`--dataset` to choose another, `--dataset ''` to skip it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench import fsdd
from bench.rejection import trained_speakers

PHRASES = Path(__file__).parent / "minds14_rephrased.toml"
DEFAULT_RENDERS = 4
DEFAULT_SEED = 0
DEFAULT_WORKDIR = Path("/tmp/intentd-rephrased")
SENTENCES_FILE = "sentences.json"  # in the clips folder: file -> the sentence it speaks
DIGEST_CHARS = 12


def unheard_voices(model: Path) -> dict[str, list[object]]:
    """The installed TTS voices per engine whose speaker the model never trained on, engines with none left out."""
    from intentd.train import tts

    heard = trained_speakers(model)
    found = {e.name: [v for v in e.voices() if v.speaker not in heard] for e in tts.available_engines()}
    voices = {name: vs for name, vs in found.items() if vs}
    if not voices:
        sys.exit(f"no installed TTS voice is left that {model} never trained on")
    return voices


def plan(phrases: Path, voices: dict[str, list[object]], renders: int, seed: int, out: Path) -> list[object]:
    """synth Clips: each sentence `renders` times, voices as the module docstring says."""
    from intentd.train import synth
    from intentd.train.intents import load_intents

    intents = load_intents(phrases)
    rng = np.random.default_rng(seed)
    by_size = sorted(voices, key=lambda e: (-len({v.speaker for v in voices[e]}), e))
    main, others = by_size[0], by_size[1:] or by_size[:1]
    clips: list[object] = []
    for name in intents.names:
        for j, text in enumerate(intents.sentences(name)):
            main_pool = voices[main]
            picks = rng.choice(len(main_pool), size=renders - 1, replace=len(main_pool) < renders - 1)
            chosen = [main_pool[int(i)] for i in picks]
            last_pool = voices[others[(len(clips) // renders) % len(others)]]
            chosen.append(last_pool[int(rng.integers(len(last_pool)))])
            for k, voice in enumerate(chosen):
                clips.append(synth.Clip(
                    index=len(clips), split="test", intent=name, text=text, voice=voice,
                    rate=round(float(rng.uniform(*synth.RATE_RANGE)), 3),
                    pitch=round(float(rng.uniform(*synth.PITCH_RANGE)), 3),
                    channel_seed=int(rng.integers(2**synth.SEED_BITS)),
                    path=str(out / name / f"{j:02d}-{k}.wav"),
                ))  # fmt: skip
    return clips


def render(model: Path, phrases: Path, renders: int, seed: int, workdir: Path) -> Path:
    """The clips folder (INTENT/SS-K.wav and sentences.json) for this model's unheard voices, rendered once."""
    from intentd.train import channel, synth

    voices = unheard_voices(model)
    key = json.dumps([phrases.read_text(), sorted(v.id for vs in voices.values() for v in vs), renders, seed])
    out = workdir / f"clips-{hashlib.sha1(key.encode()).hexdigest()[:DIGEST_CHARS]}"
    if (out / SENTENCES_FILE).is_file():
        return out
    clips = plan(phrases, voices, renders, seed, out)
    for clip in clips:
        Path(clip.path).parent.mkdir(parents=True, exist_ok=True)
    codecs = ("none", "mulaw", "gsm") if channel.gsm_available() else ("none", "mulaw")
    config = channel.ChannelConfig(codecs=codecs, low_cut_hz=synth.DEFAULT_LOW_CUT_HZ,
                                   high_cut_hz=synth.DEFAULT_HIGH_CUT_HZ,
                                   trim_probability=synth.DEFAULT_TRIM_FRACTION)
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(synth.render_clip, clips, [config] * len(clips), chunksize=synth.MAP_CHUNKSIZE))
    sentences = {str(Path(c.path).relative_to(out)): {"text": c.text, "voice": c.voice.id} for c in clips}
    (out / SENTENCES_FILE).write_text(json.dumps(sentences, indent=1) + "\n")
    engines = Counter(c.voice.engine for c in clips)
    print(f"rendered {len(clips)} clips ({len(sentences) // renders} sentences x {renders}) into {out}: "
          f"{dict(engines)}; {sum(map(len, voices.values()))} unheard voices", file=sys.stderr)
    return out


def by_sentence(model: Path, clips: Path, log_file: Path) -> list[tuple[str, str, int, int, str]]:
    """(intent, sentence, right, renders, commonest wrong answer) per sentence, from `intentd-train predict`."""
    sentences = json.loads((clips / SENTENCES_FILE).read_text())
    files = sorted(sentences)
    _, out = fsdd.run_step(["predict", "--model", str(model), "--top-k", "1", "--json",
                            *(str(clips / f) for f in files)], log_file)
    report = json.loads(out.strip().splitlines()[-1])
    answers = _answers(report, [str(clips / f) for f in files])
    rows: dict[tuple[str, str], list[str]] = {}
    for f in files:
        rows.setdefault((Path(f).parent.name, sentences[f]["text"]), []).append(answers[str(clips / f)])
    table = []
    for (intent, text), got in rows.items():
        wrong = Counter(g for g in got if g != intent)
        table.append((intent, text, sum(g == intent for g in got), len(got),
                      ", ".join(f"{g} {n}" for g, n in wrong.most_common(2))))
    return table


def _answers(report: dict[str, object], paths: list[str]) -> dict[str, str]:
    """Each file's best label from predict's JSON (argmax, as eval's accuracy counts it, not the thresholded one)."""
    found = {str(p["file"]): str(p["top"][0]["label"]) for p in report["predictions"]}  # type: ignore[index,union-attr]
    missing = [p for p in paths if p not in found]
    if missing:
        sys.exit(f"predict gave no answer for {missing[0]} (and {len(missing) - 1} more)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=fsdd.REPO / "models" / "default", help="model folder")
    parser.add_argument("--phrases", type=Path, default=PHRASES, help="test sentences (default %(default)s)")
    parser.add_argument("--dataset", help="held-out data: its test split is scored (default: the data set the "
                                          "model was fit on, from its metrics.json; '' to skip)")
    parser.add_argument("--renders", type=int, default=DEFAULT_RENDERS, help="voices per sentence")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="voice, rate, pitch and channel draws")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="rendered clips and the log")
    parser.add_argument("--by-sentence", action="store_true", help="also list each sentence's score (predict)")
    args = parser.parse_args(argv)
    if args.renders < 1:
        parser.error("--renders must be at least 1")
    args.workdir.mkdir(parents=True, exist_ok=True)
    log_file = args.workdir / "steps.log"

    clips = render(args.model, args.phrases, args.renders, args.seed, args.workdir)
    _, out = fsdd.run_step(["eval", "--model", str(args.model), "--dataset", str(clips), "--split", "all", "--json"], log_file)
    report = json.loads(out.strip().splitlines()[-1])
    per = report["per_class"]
    intents = sorted(p.name for p in clips.iterdir() if p.is_dir())
    rows = []
    for name in intents:
        row = per.get(name, {"recall": 0.0, "precision": 0.0, "support": 0})
        rows.append((name, f"{row['recall']:.1%}", f"{row['precision']:.1%}", row["support"]))
    fsdd.print_table(("intent", "recall", "precision", "clips"), rows)
    wrong_labels = sorted(set(per) - set(intents))
    if wrong_labels:
        print(f"\nanswers outside the test's intents: {', '.join(wrong_labels)}")

    if args.by_sentence:
        print()
        table = by_sentence(args.model, clips, log_file)
        fsdd.print_table(("intent", "sentence", "right", "wrong answers"),
                         [(i, t, f"{r}/{n}", w) for i, t, r, n, w in sorted(table, key=lambda x: (x[2], x[0]))])

    dataset = args.dataset
    if dataset is None:
        dataset = json.loads((args.model / "metrics.json").read_text())["settings"]["dataset"]
    print(f"\nre-phrased accuracy: {report['accuracy']:.2%} of {report['n']} clips "
          f"({report['n'] // args.renders} sentences x {args.renders} unheard voices, telephone), model {args.model}")
    if dataset:
        accuracy, n, _ = fsdd.eval_accuracy(args.model, Path(dataset), "test", log_file)
        print(f"held-out accuracy: {accuracy:.2%} of {n} clips (test split of {dataset})")
    print(f"reproduce: {fsdd.reproduce_line(argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
