"""Does a model answer commands and reject everything else? In-domain acceptance against out-of-domain false
acceptance, at the threshold fit calibrated (train/out_of_scope.py), with `intentd-train eval`.

Out-of-domain speech comes from two places:
  * generated: sentences and single words of bench/ood_phrases.toml (none of them in the out-of-scope list fit
    trains on, and none using a word of the model's labels), spoken through the telephone channel by TTS voices
    whose speaker is in no train split of the model's datasets (read from the ones its metrics.json names);
  * real: recordings that are no command for the model, e.g. ../shared/data/barista-dev/clean (coffee orders).

Two modes:
  fsdd   fit on three FSDD speakers (+ `--synth` digits) with fit's defaults (out-of-scope class included); the
         synth digits and the out-of-scope speech come from espeak-ng, flite and festival only, so piper's and
         hibari's voices, which speak the generated test, are voices the model never trained on; then
         score the fourth speaker's real digits as in-domain, each speaker in turn (as bench/fsdd_speakers.py)
  model  an existing model (`--model`, e.g. models/default) on `--dataset`'s held-out split as in-domain

    .venv/bin/python -m bench.rejection fsdd --workdir W --max-seconds 2 --synth DIGITS_SYNTH [-- FIT FLAGS]
    .venv/bin/python -m bench.rejection model --model models/default --dataset data/minds14-synth --workdir W
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench import fsdd

PHRASES = Path(__file__).parent / "ood_phrases.toml"
DEFAULT_REAL = fsdd.REPO.parent / "shared" / "data" / "barista-dev" / "clean"
DEFAULT_OOD_CLIPS = 300
OOD_SEED = 7
TARGET_FALSE_ACCEPTANCE = 0.02
TARGET_IN_DOMAIN = 0.98
HEARD_ENGINES = "espeak-ng,flite,festival"  # fsdd mode: piper and hibari speak only the test's non-commands


def trained_speakers(model: Path) -> set[str]:
    """Speakers (tts Voice.speaker) of the train split of every dataset the model was fit on (its metrics.json
    names them: the in-domain data, --add-dataset folders and the out-of-scope set).

    synth holds whole speakers out of training, so the voices of its test splits remain: with the same seed for
    synth and fit (as `make model` does) the in-domain and out-of-scope sets hold out the same speakers.
    """
    import datasets

    from intentd.train.tts import Voice

    metrics = json.loads((model / "metrics.json").read_text())
    settings = metrics["settings"]
    parts = {*metrics["dataset"].get("parts", []), settings["dataset"], *settings["add_datasets"]}
    speakers: set[str] = set()
    for part in sorted(parts):
        folder = Path(part)
        if not (folder / "dataset_dict.json").is_file():
            continue
        train = datasets.load_from_disk(str(folder)).get("train")
        if train is not None and "voice" in train.column_names:
            speakers |= {Voice.parse(v).speaker for v in set(train["voice"]) if not v.startswith("nonspeech/")}
    return speakers


def heard_only(synth: Path, workdir: Path) -> Path:
    """A copy of a synth set without the clips of engines outside HEARD_ENGINES (made once in workdir), so the
    generated test's piper and hibari voices are voices the model never trained on at all."""
    import datasets

    out = workdir / f"{synth.name}-{HEARD_ENGINES.replace(',', '-')}"
    if (out / "dataset_dict.json").is_file():
        return out
    engines = tuple(f"{engine}/" for engine in HEARD_ENGINES.split(","))
    data = datasets.load_from_disk(str(synth))
    kept = datasets.DatasetDict({name: split.filter(lambda voice: voice.startswith(engines), input_columns="voice")
                                 for name, split in data.items()})
    kept.save_to_disk(str(out))
    print(f"{synth.name}: kept {sum(map(len, kept.values()))} of {sum(map(len, data.values()))} clips "
          f"({HEARD_ENGINES})", file=sys.stderr)
    return out


def check_disjoint() -> None:
    """The benchmark's phrases are not fit's out-of-scope phrases."""
    from intentd.train.intents import load_intents
    from intentd.train.out_of_scope import PHRASES as TRAINED

    bench, trained = load_intents(PHRASES), load_intents(TRAINED)
    ours = {s for name in bench.names for s in bench.sample(name, 100_000, np.random.default_rng(0))}
    theirs = set(trained.sample(trained.names[0], 100_000, np.random.default_rng(0)))
    if ours & theirs:
        sys.exit(f"bench/ood_phrases.toml repeats fit's out-of-scope phrases: {sorted(ours & theirs)[:5]}")


def render_ood(out: Path, labels: Sequence[str], exclude: set[str], clips: int, seed: int = OOD_SEED) -> Path:
    """`clips` out-of-domain utterances (half sentences, half words) as 8 kHz WAVs in out (once)."""
    import soundfile as sf

    from intentd.train import channel, synth, tts
    from intentd.train.intents import load_intents
    from intentd.train.out_of_scope import sentence_filter

    if out.is_dir() and len(list(out.glob("*.wav"))) == clips:
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    voices = [v for e in tts.available_engines() for v in e.voices() if v.speaker not in exclude]
    if not voices:
        sys.exit("no TTS voice is left that the model did not train on")
    phrases = load_intents(PHRASES)
    keep = sentence_filter(labels, [])
    texts = {name: phrases.sample(name, clips, rng, keep) for name in phrases.names}
    config = channel.ChannelConfig()
    for i in range(clips):
        pool = texts[phrases.names[i % len(phrases.names)]]
        text = pool[int(rng.integers(len(pool)))]
        voice = voices[int(rng.integers(len(voices)))]
        samples, rate = tts.render(text, voice, float(rng.uniform(*synth.RATE_RANGE)),
                                   float(rng.uniform(*synth.PITCH_RANGE)))
        audio, _ = channel.telephone(samples, rate, rng, config)
        sf.write(str(out / f"{i:04d}.wav"), audio, channel.TELEPHONE_RATE, subtype="PCM_16")
    print(f"rendered {clips} out-of-domain clips with {len(voices)} voices of {len({v.speaker for v in voices})} "
          f"speakers the model never trained on into {out}", file=sys.stderr)
    return out


def evaluate(model: Path, dataset: Path, split: str, ood: dict[str, Path], log_file: Path) -> dict[str, object]:
    """`intentd-train eval --json` with every out-of-domain set."""
    args = ["eval", "--model", str(model), "--dataset", str(dataset), "--split", split, "--json"]
    for folder in ood.values():
        args += ["--ood-dataset", str(folder)]
    _, out = fsdd.run_step(args, log_file)
    return json.loads(out.strip().splitlines()[-1])


def row(name: str, report: dict[str, object], ood: dict[str, Path]) -> list[object]:
    """One table row: accuracy, in-domain acceptance, threshold, false acceptance per set and overall."""
    per = report["out_of_domain_datasets"]
    assert isinstance(per, dict)
    cells: list[object] = [name, f"{report['accuracy']:.2%}", f"{report['in_domain_acceptance']:.2%}",
                           f"{report['threshold']:.3f}"]
    cells += [f"{per[str(folder)]['false_acceptance']:.2%} of {per[str(folder)]['n']}" for folder in ood.values()]
    cells.append(f"{report['out_of_domain_false_acceptance']:.2%}")
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("fsdd", "model"))
    fsdd.add_bench_args(parser, "where models, symlinks and rendered clips go", max_seconds=fsdd.DIGITS_MAX_SECONDS,
                        crop_note=", the digits benchmarks'")
    parser.add_argument("--synth", type=Path, help="fsdd: also train on this digits synth folder")
    parser.add_argument("--speakers", nargs="+", default=list(fsdd.SPEAKERS), help="fsdd: unseen speakers to run")
    parser.add_argument("--model", type=Path, help="model: the model folder")
    parser.add_argument("--dataset", type=Path, help="model: its in-domain data (the held-out split is scored)")
    parser.add_argument("--split", default="test", help="model: the in-domain split (default %(default)s)")
    parser.add_argument("--real", type=Path, nargs="*", default=[DEFAULT_REAL],
                        help="real recordings that are no command (default %(default)s; skipped where absent)")
    parser.add_argument("--ood-clips", type=int, default=DEFAULT_OOD_CLIPS, help="generated out-of-domain clips")
    given = list(sys.argv[1:] if argv is None else argv)
    # Flags after `--` go to `intentd-train fit` (fsdd mode); split by hand, as a positional mode before them
    # would let argparse's REMAINDER swallow this script's own options.
    flags = given[given.index("--") + 1 :] if "--" in given else []
    args = parser.parse_args(given[: given.index("--")] if "--" in given else given)
    check_disjoint()
    real = {f"real {p.parent.name}": p for p in args.real if p.is_dir()}

    rows, reports = [], []
    if args.mode == "model":
        if args.model is None or args.dataset is None:
            parser.error("model mode needs --model and --dataset")
        workdir = args.workdir or Path("/tmp/intentd-rejection")
        workdir.mkdir(parents=True, exist_ok=True)
        ood = {"generated": render_ood(workdir / f"ood-{args.model.resolve().name}", _labels(args.model),
                                       trained_speakers(args.model), args.ood_clips), **real}
        report = evaluate(args.model, args.dataset, args.split, ood, workdir / "steps.log")
        rows.append(row(str(args.model), report, ood))
        reports.append(report)
    else:
        bench = fsdd.open_bench(args, "intentd-rejection-")
        if bench is None:
            return fsdd.SKIP_STATUS
        if not any(f.startswith("--out-of-scope-engines") for f in flags):
            # Keep two engines' voices out of training altogether (here and in heard_only), so the generated test
            # has whole unheard voices (the neural ones, the most human-like).
            flags = [*flags, "--out-of-scope-engines", HEARD_ENGINES]
        tag = "-".join([f"{args.max_seconds:g}s", *([f"plus-{args.synth.name}"] if args.synth else []),
                        *fsdd.flags_tag(flags)])
        for speaker in args.speakers:
            fold = bench.workdir / f"{tag}-{speaker}"
            if not (fold / "model" / "intentd.json").is_file():
                train = fsdd.audiofolder(fold / "train-data", {"train": [r for r in bench.recordings
                                                                         if r.speaker != speaker]})
                more = ["--add-dataset", str(heard_only(args.synth, bench.workdir))] if args.synth else []
                fsdd.run_step(fsdd.fit_args(train, bench.base, fold / "model", [*more, *flags]), bench.log_file)
            test = fold / "test-data"
            if not test.is_dir():
                fsdd.audiofolder(test, {"test": [r for r in bench.recordings if r.speaker == speaker]})
            ood = {"generated": render_ood(fold / "ood", _labels(fold / "model"), trained_speakers(fold / "model"),
                                           args.ood_clips), **real}
            report = evaluate(fold / "model", test, "test", ood, bench.log_file)
            rows.append(row(speaker, report, ood))
            reports.append(report)
            print(f"{speaker}: {rows[-1]}", file=sys.stderr, flush=True)
    fsdd.print_table(["in-domain", "accuracy", "in-domain accepted", "threshold",
                      *[f"false acceptance: {name}" for name in ood], "false acceptance: all"], rows)
    worst_in = min(float(r["in_domain_acceptance"]) for r in reports)
    worst_out = max(float(r["out_of_domain_false_acceptance"]) for r in reports)
    met = worst_in >= TARGET_IN_DOMAIN and worst_out <= TARGET_FALSE_ACCEPTANCE
    print(f"\nworst in-domain acceptance {worst_in:.2%} (target >= {TARGET_IN_DOMAIN:.0%}), worst false acceptance "
          f"{worst_out:.2%} (target <= {TARGET_FALSE_ACCEPTANCE:.0%}): {'met' if met else 'MISSED'}")
    print(f"reproduce: {fsdd.reproduce_line(argv)}")
    return 0


def _labels(model: Path) -> list[str]:
    config = json.loads((model / "config.json").read_text())
    return [str(v) for v in config["id2label"].values()]


if __name__ == "__main__":
    sys.exit(main())
