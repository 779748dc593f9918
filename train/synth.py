"""`intentd-train synth`: a MInDS-14-shaped speech dataset rendered from an intents file by local TTS engines.

Plan every clip up front from one seeded Generator (sentence, voice, rate, pitch, channel seed), render the plan
in a process pool, then write the wavs' index as a `datasets` DatasetDict split by speaker, and as the
`wav/metadata.jsonl` of an audio folder (Hugging Face's audiofolder convention): one line per clip with its
`file_name`, `intent` and captured `slots` ({name: canonical value}), so synth output and labelled recordings
evaluate alike.

Each clip goes through a telephone (8 kHz, train/channel.py `telephone`) or a room microphone (16 kHz, reverberant
and noisy: `microphone`), or, with --channel both, one of the two drawn per clip.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf

from intentd.daemon.audio import SAMPLE_RATE
from intentd.train import accent, channel, nonspeech, tts
from intentd.train.audio_io import SOUNDFILE_SUFFIXES
from intentd.train.data import SLOTS_COLUMN
from intentd.train.errors import TrainError
from intentd.train.intents import IntentSet, load_intents
from intentd.train.progress import track

log = logging.getLogger(__name__)

DEFAULT_INTENTS = Path(__file__).parent / "intents" / "minds14.toml"
DEFAULT_PER_INTENT = 50
DEFAULT_TEST_FRACTION = 0.2
# The band's lower edge is drawn per clip between 50 Hz (VoIP, wideband mobile) and 300 Hz (a classic line):
# synth-only digits -> real FSDD measured 96.70% against 96.45% with every clip cut at 300 Hz (bench/README.md).
DEFAULT_LOW_CUT_HZ = (50.0, channel.BAND_LOW_HZ)
DEFAULT_HIGH_CUT_HZ = (channel.BAND_HIGH_HZ, channel.BAND_HIGH_HZ)
# Speaking-rate and pitch factors drawn per clip; wider than this and espeak/flite stop sounding like speech.
RATE_RANGE = (0.8, 1.25)
PITCH_RANGE = (0.85, 1.2)
LANG_ID = "en-US"
SPLITS = ("train", "test")
WAV_DIR = "wav"
INFO_FILE = "synth.json"
# Files save_to_disk writes (plus the split folders); their presence marks a folder as an earlier synth output.
DATASET_MARKER = "dataset_dict.json"
SEED_BITS = 63
# Second seed word of the accent draws' own Generator (see assign_accents).
ACCENT_STREAM = 1
# Measured on synth-only digits -> real FSDD (bench/README.md): accents drawn for 30% of espeak-ng clips gained
# nothing (96.50% vs 96.70%), so they are opt-in; cutting half the clips tight like an endpointer (FSDD's own clips
# are cut so, some to 0.14 s) took 96.70% to 98.05%, and the weakest speaker from 92.4% to 95.6%.
DEFAULT_ACCENT_FRACTION = 0.0
DEFAULT_TRIM_FRACTION = 0.5
MAP_CHUNKSIZE = 4
# The `voice` of generated non-speech clips (nonspeech/<kind>), which no TTS engine renders.
NONSPEECH_ENGINE = "nonspeech"
NONSPEECH_SECONDS = (0.5, 3.0)
TELEPHONE = "telephone"
MICROPHONE = "microphone"
BOTH = "both"
CHANNEL_CHOICES = (TELEPHONE, MICROPHONE, BOTH)
# Second seed word of the per-clip channel draws with --channel both (a stream of its own, like the accents').
CHANNEL_STREAM = 2
METADATA_FILE = "metadata.jsonl"  # in WAV_DIR: the audio folder's index
# Noise recordings synth looks for under --noise-dir (soundfile reads these without ffmpeg).
NOISE_SUFFIXES = SOUNDFILE_SUFFIXES


@dataclass(frozen=True, slots=True)
class Clip:
    """One planned recording: everything needed to render it, so rendering is a pure function of the plan."""

    index: int
    split: str
    intent: str
    text: str
    voice: tts.Voice
    rate: float
    pitch: float
    channel_seed: int
    path: str
    accent: tuple[str, ...] = ()  # train/accent.py processes; only espeak-ng clips get one
    seconds: float = 0.0  # length of a generated non-speech clip (voice nonspeech/<kind>); speech takes its own
    slots: dict[str, str] = field(default_factory=dict)  # captured slot -> canonical value
    channel: str = TELEPHONE


def split_voices(
    voices: Mapping[str, Sequence[tts.Voice]], test_fraction: float, rng: np.random.Generator
) -> dict[tts.Voice, str]:
    """Assign whole speakers to train or test, per engine, so test voices are never heard in training.

    Each engine with two or more speakers sends about test_fraction of them (at least one) to test and keeps at
    least one for training. Engines are handled fewest-speakers-first because a speaker shared across engines
    (kal in flite and festival) is decided once, by the engine that can least afford to lose it.
    """
    speakers = {e: sorted({v.speaker for v in vs}) for e, vs in voices.items()}
    side: dict[str, str] = {}
    for engine in sorted(speakers, key=lambda e: (len(speakers[e]), e)):
        own = speakers[engine]
        undecided = [s for s in own if s not in side]
        n_test = 0
        if test_fraction > 0 and len(own) >= 2:
            have_test = sum(side.get(s) == "test" for s in own)
            keep_for_train = 0 if any(side.get(s) == "train" for s in own) else 1
            wanted = max(1, round(test_fraction * len(own))) - have_test
            n_test = max(0, min(wanted, len(undecided) - keep_for_train))
        order = rng.permutation(len(undecided))
        picked = {undecided[i] for i in order[:n_test]}
        for s in undecided:
            side[s] = "test" if s in picked else "train"
    if test_fraction > 0 and "test" not in side.values():
        raise TrainError(
            "cannot split by voice: every engine has a single speaker "
            f"({', '.join(f'{e}: {s}' for e, s in speakers.items())}); add an engine or use --test-fraction 0"
        )
    return {v: side[v.speaker] for vs in voices.values() for v in vs}


def plan_clips(
    intents: IntentSet,
    voices: Mapping[str, Sequence[tts.Voice]],
    sides: Mapping[tts.Voice, str],
    per_intent: int,
    test_fraction: float,
    rng: np.random.Generator,
    wav_dir: Path,
    keep: Callable[[str], bool] | None = None,
) -> list[Clip]:
    """Every clip of the dataset, in intent order; a fixed sequence of draws from rng (`keep` filters sentences)."""
    # Within a split, an engine is picked first and then one of its voices. Engine weights grow only with the
    # log of their speaker count, so flite's few voices are heard about a third as often as espeak-ng's hundreds
    # (variety of engines helped more than sheer numbers) while festival's single voice is not a third of the data.
    pools = {split: {e: [v for v in vs if sides[v] == split] for e, vs in voices.items()} for split in SPLITS}
    pools = {split: {e: vs for e, vs in by_engine.items() if vs} for split, by_engine in pools.items()}
    engine_weights = {split: _engine_weights(by_engine) for split, by_engine in pools.items() if by_engine}
    n_test = round(per_intent * test_fraction) if pools["test"] else 0
    clips: list[Clip] = []
    for intent in intents.names:
        commands = intents.sample_commands(intent, per_intent, rng, keep)
        if not commands:
            raise TrainError(f"intent {intent!r}: no sentence left to speak (all were filtered out)")
        # Fewer distinct sentences than clips (digits: one each): repeat them, each time with other voices.
        spoken = [commands[i % len(commands)] for i in range(per_intent)]
        is_test = np.zeros(per_intent, dtype=bool)
        is_test[rng.permutation(per_intent)[:n_test]] = True
        for k, command in enumerate(spoken):
            split = "test" if is_test[k] else "train"
            engines, weights = engine_weights[split]
            engine = engines[int(rng.choice(len(engines), p=weights))]
            pool = pools[split][engine]
            voice = pool[int(rng.integers(len(pool)))]
            index = len(clips)
            clips.append(
                Clip(
                    index=index,
                    split=split,
                    intent=intent,
                    text=command.text,
                    voice=voice,
                    rate=round(float(rng.uniform(*RATE_RANGE)), 3),
                    pitch=round(float(rng.uniform(*PITCH_RANGE)), 3),
                    channel_seed=int(rng.integers(2**SEED_BITS)),
                    path=str(wav_dir / f"{index:06d}-{intent}.wav"),
                    slots=dict(command.slots),
                )
            )
    return clips


def plan_nonspeech(count: int, label: str, test_fraction: float, rng: np.random.Generator, wav_dir: Path,
                   first_index: int) -> list[Clip]:
    """`count` clips of generated non-speech (train/nonspeech.py kinds, in turn) labelled `label`."""
    kinds = sorted(nonspeech.TRAINABLE_KINDS)
    clips = []
    for k in range(count):
        index = first_index + k
        kind = kinds[k % len(kinds)]
        clips.append(Clip(
            index=index, split="test" if rng.random() < test_fraction else "train", intent=label, text="",
            voice=tts.Voice(NONSPEECH_ENGINE, kind), rate=1.0, pitch=1.0, channel_seed=int(rng.integers(2**SEED_BITS)),
            path=str(wav_dir / f"{index:06d}-{label}-{kind}.wav"), seconds=round(float(rng.uniform(*NONSPEECH_SECONDS)), 3),
        ))
    return clips


def assign_accents(clips: Sequence[Clip], fraction: float, rng: np.random.Generator) -> list[Clip]:
    """Give about `fraction` of the espeak-ng clips a drawn accent (the only engine that speaks phonemes).

    rng is a stream of its own, so the rest of the plan (texts, voices, channel) is the same at any fraction.
    """
    if fraction <= 0:
        return list(clips)
    return [
        replace(c, accent=accent.draw(rng)) if c.voice.engine == tts.EspeakNg.name and rng.random() < fraction else c
        for c in clips
    ]


def assign_channels(clips: Sequence[Clip], choice: str, rng: np.random.Generator) -> list[Clip]:
    """Each clip's channel: all one (telephone, microphone), or drawn half and half (both) from rng, a stream of its
    own so texts, voices and channel seeds are the same whatever the choice."""
    if choice not in CHANNEL_CHOICES:
        raise TrainError(f"unknown channel {choice!r} (choose from {', '.join(CHANNEL_CHOICES)})")
    if choice != BOTH:
        return [replace(c, channel=choice) for c in clips]
    return [replace(c, channel=MICROPHONE if rng.random() < 0.5 else TELEPHONE) for c in clips]


def _engine_weights(voices: Mapping[str, Sequence[tts.Voice]]) -> tuple[list[str], np.ndarray]:
    """Engines in name order and their probabilities, 1 + log2(distinct speakers) each, normalised."""
    engines = sorted(voices)
    weights = np.array([1.0 + math.log2(len({v.speaker for v in voices[e]})) for e in engines])
    return engines, weights / weights.sum()


def render_clip(clip: Clip, config: channel.ChannelConfig,
                microphone: channel.MicrophoneConfig | None = None) -> tuple[float, float]:
    """Speak, pass through the clip's channel, write s16 wav (8 kHz telephone, 16 kHz microphone); returns the
    clip's seconds and the SNR its channel drew."""
    rng = np.random.default_rng(clip.channel_seed)
    if clip.voice.engine == NONSPEECH_ENGINE:
        samples, rate = nonspeech.KINDS[clip.voice.name](clip.seconds, SAMPLE_RATE, rng), SAMPLE_RATE
    else:
        samples, rate = tts.render(clip.text, clip.voice, clip.rate, clip.pitch, clip.accent)
    params: channel.MicrophoneParams | channel.ChannelParams
    if clip.channel == MICROPHONE:
        audio, params = channel.microphone(samples, rate, rng, microphone or channel.MicrophoneConfig())
        out_rate = channel.MICROPHONE_RATE
    else:
        audio, params = channel.telephone(samples, rate, rng, config)
        out_rate = channel.TELEPHONE_RATE
    sf.write(clip.path, audio, out_rate, subtype="PCM_16", format="WAV")
    return audio.size / out_rate, params.snr_db


def _render_all(clips: Sequence[Clip], config: channel.ChannelConfig, microphone: channel.MicrophoneConfig,
                workers: int, progress: bool) -> tuple[float, list[float]]:
    """Render in a pool (spawned workers: safe even when the caller has torch threads running); total seconds and
    each clip's drawn SNR."""
    def results() -> Iterator[tuple[float, float]]:
        if workers <= 1:
            yield from (render_clip(c, config, microphone) for c in clips)
            return
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
        try:
            yield from pool.map(render_clip, clips, [config] * len(clips), [microphone] * len(clips),
                                chunksize=MAP_CHUNKSIZE)
        finally:
            # map() queued every clip up front; on a failure or Ctrl-C, drop the rest instead of rendering it.
            pool.shutdown(wait=True, cancel_futures=True)

    total = 0.0
    snrs = []
    for seconds, snr_db in track(results(), total=len(clips), desc="synth", unit="clip", enabled=progress):
        total += seconds
        snrs.append(snr_db)
    return total, snrs


def _prepare_out_dir(out_dir: Path, replace: bool) -> Path:
    """Create out_dir, or clear an earlier synth output there when `replace`; refuse to mix into anything else."""
    out_dir = out_dir.expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainError(f"--out {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / DATASET_MARKER).exists():
            raise TrainError(
                f"--out {out_dir} is not empty and holds no earlier synth output; choose another"
            )
        if not replace:  # rendering took minutes to hours: never replaced without being asked
            raise TrainError(f"--out {out_dir} holds an earlier synth output; pass --force to replace it, "
                             "or choose another folder")
        log.info("replacing the earlier synth output in %s", out_dir)
        for name in (WAV_DIR, *SPLITS):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in (DATASET_MARKER, INFO_FILE):
            (out_dir / name).unlink(missing_ok=True)
    try:
        (out_dir / WAV_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrainError(f"cannot create --out {out_dir}: {err}") from err
    if not os.access(out_dir / WAV_DIR, os.W_OK):
        raise TrainError(f"--out {out_dir} is not writable")
    return out_dir


def _write_metadata(wav_dir: Path, clips: Sequence[Clip], snrs: Sequence[float]) -> None:
    """The audio folder's index: one JSON line per clip, file names relative to wav_dir (audiofolder's convention);
    `slots` holds only the slots the sentence captured."""
    lines = [
        json.dumps({
            "file_name": Path(clip.path).name, "intent": clip.intent, "slots": clip.slots, "text": clip.text,
            "split": clip.split, "voice": clip.voice.id, "channel": clip.channel, "snr_db": round(snr_db, 2),
        }) + "\n"
        for clip, snr_db in zip(clips, snrs, strict=True)
    ]  # fmt: skip
    (wav_dir / METADATA_FILE).write_text("".join(lines), encoding="utf-8")


def _write_dataset(out_dir: Path, intents: IntentSet, clips: Sequence[Clip], progress: bool,
                   audio_rate: int = channel.TELEPHONE_RATE) -> None:
    """MInDS-14's columns plus `voice` (and `slots` when the intents capture any: each slot's value or None),
    saved with save_to_disk; audio refers to the wavs under out_dir."""
    try:
        import datasets
    except ImportError as err:
        raise TrainError("synth needs the training extras: pip install 'intentd[train]'") from err
    slot_names = list(intents.slot_values())
    columns = {
        "path": datasets.Value("string"),
        "audio": datasets.Audio(sampling_rate=audio_rate),
        "transcription": datasets.Value("string"),
        "english_transcription": datasets.Value("string"),
        "intent_class": datasets.ClassLabel(names=list(intents.names)),
        "lang_id": datasets.ClassLabel(names=[LANG_ID]),
        "voice": datasets.Value("string"),
        "accent": datasets.Value("string"),
    }
    if slot_names:
        columns[SLOTS_COLUMN] = {name: datasets.Value("string") for name in slot_names}
    features = datasets.Features(columns)
    splits = {}
    for split in SPLITS:
        rows = [c for c in clips if c.split == split]
        if not rows:
            continue  # --test-fraction 0: an empty split would save as a folder load_from_disk cannot read
        splits[split] = datasets.Dataset.from_dict(
            {
                "path": [c.path for c in rows],
                "audio": [c.path for c in rows],
                "transcription": [c.text for c in rows],
                "english_transcription": [c.text for c in rows],
                "intent_class": [intents.names.index(c.intent) for c in rows],
                "lang_id": [0] * len(rows),
                "voice": [c.voice.id for c in rows],
                "accent": [",".join(c.accent) for c in rows],
                **({SLOTS_COLUMN: [{name: c.slots.get(name) for name in slot_names} for c in rows]}
                   if slot_names else {}),
            },
            features=features,
            split=datasets.NamedSplit(split),
        )
    # datasets' progress switch is process-wide: put it back as it was.
    bars_were_on = datasets.is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        datasets.DatasetDict(splits).save_to_disk(str(out_dir))
    except OSError as err:
        raise TrainError(f"cannot write dataset to {out_dir}: {err}") from err
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


def synthesize(
    intents_path: str | Path,
    out_dir: str | Path,
    seed: int = 0,
    per_intent: int = DEFAULT_PER_INTENT,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    engines: Sequence[str] | None = None,
    workers: int | None = None,
    codecs: Sequence[str] | None = None,
    low_cut_hz: tuple[float, float] | None = None,
    high_cut_hz: tuple[float, float] | None = None,
    accent_fraction: float = DEFAULT_ACCENT_FRACTION,
    trim_fraction: float = DEFAULT_TRIM_FRACTION,
    progress: bool = True,
    keep_sentence: Callable[[str], bool] | None = None,
    nonspeech_clips: int = 0,
    channel_choice: str = TELEPHONE,
    noise_dir: str | Path | None = None,
    snr_db: tuple[float, float] | None = None,
    replace: bool = True,
) -> Path:
    """Render a dataset from an intents file (TOML or Rhino YAML) into out_dir (wavs, their metadata.jsonl and a
    DatasetDict); returns out_dir's absolute path.

    keep_sentence filters the sentences spoken; nonspeech_clips adds that many generated non-speech clips
    (room noise, music, breathing, clicks: train/nonspeech.py) labelled as the file's last intent, as
    the out-of-scope class wants them (train/out_of_scope.py). channel_choice is telephone, microphone or both;
    the microphone mixes noise at an SNR drawn from snr_db, from generated kinds and noise_dir's recordings.
    An earlier synth output in out_dir is replaced only with `replace` (the CLI's --force).
    """
    if per_intent < 1:
        raise TrainError(f"--per-intent must be at least 1, not {per_intent}")
    if not 0 <= test_fraction < 1:
        raise TrainError(f"--test-fraction must be in [0, 1), not {test_fraction}")
    if not 0 <= accent_fraction <= 1:
        raise TrainError(f"--accent-fraction must be in [0, 1], not {accent_fraction}")
    started = time.monotonic()
    intents = load_intents(intents_path)
    found = tts.available_engines(engines)
    voices = {e.name: e.voices() for e in found}
    if codecs is None:
        codecs = ("none", "mulaw", "gsm") if channel.gsm_available() else ("none", "mulaw")
    if not 0 <= trim_fraction <= 1:
        raise TrainError(f"--trim-fraction must be in [0, 1], not {trim_fraction}")
    config = channel.ChannelConfig(codecs=tuple(codecs), low_cut_hz=low_cut_hz or DEFAULT_LOW_CUT_HZ,
                                   high_cut_hz=high_cut_hz or DEFAULT_HIGH_CUT_HZ, trim_probability=trim_fraction)
    if channel_choice not in CHANNEL_CHOICES:
        raise TrainError(f"--channel must be one of {', '.join(CHANNEL_CHOICES)}, not {channel_choice!r}")
    if noise_dir is not None and channel_choice == TELEPHONE:
        raise TrainError("--noise-dir is for the microphone channel: add --channel microphone (or both)")
    mic_config = channel.MicrophoneConfig(
        snr_db=snr_db or channel.MIC_SNR_DB, trim_probability=trim_fraction,
        noise_files=tuple(str(f) for f in noise_files(noise_dir)) if noise_dir is not None else (),
    )  # fmt: skip
    out = _prepare_out_dir(Path(out_dir), replace)

    rng = np.random.default_rng(seed)
    sides = split_voices(voices, test_fraction, rng)
    clips = plan_clips(intents, voices, sides, per_intent, test_fraction, rng, out / WAV_DIR, keep_sentence)
    if nonspeech_clips:
        clips += plan_nonspeech(nonspeech_clips, intents.names[-1], test_fraction, rng, out / WAV_DIR, len(clips))
    clips = assign_accents(clips, accent_fraction, np.random.default_rng([seed, ACCENT_STREAM]))
    clips = assign_channels(clips, channel_choice, np.random.default_rng([seed, CHANNEL_STREAM]))
    for engine, vs in voices.items():
        log.info(
            "%s: %d voices (%d train, %d test)",
            engine, len(vs), sum(sides[v] == "train" for v in vs), sum(sides[v] == "test" for v in vs),
        )  # fmt: skip
    workers = max(1, workers if workers is not None else os.cpu_count() or 1)
    log.info("rendering %d clips (%d intents) with %d workers; codecs %s", len(clips), len(intents.names),
             workers, ", ".join(codecs))  # fmt: skip
    seconds, snrs = _render_all(clips, config, mic_config, workers, progress)
    _write_metadata(out / WAV_DIR, clips, snrs)
    rate = channel.TELEPHONE_RATE if channel_choice == TELEPHONE else channel.MICROPHONE_RATE
    _write_dataset(out, intents, clips, progress, audio_rate=rate)
    info = {
        "intents_file": str(Path(intents_path).resolve()),
        "seed": seed,
        "per_intent": per_intent,
        "test_fraction": test_fraction,
        "channel_choice": channel_choice,
        "channel": asdict(config),
        **({"microphone": asdict(mic_config)} if channel_choice != TELEPHONE else {}),
        "clips_by_channel": {name: sum(c.channel == name for c in clips) for name in (TELEPHONE, MICROPHONE)},
        "slots": {name: list(values) for name, values in intents.slot_values().items()},
        "voices": {split: sorted(v.id for v, s in sides.items() if s == split) for split in SPLITS},
        "clips": {split: sum(c.split == split for c in clips) for split in SPLITS},
        "accent_fraction": accent_fraction,
        "accented_clips": sum(bool(c.accent) for c in clips),
        "audio_seconds": round(seconds, 1),
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    log.info("wrote %s: %d clips, %.0f s of audio, in %.1f s", out, len(clips), seconds,
             time.monotonic() - started)  # fmt: skip
    return out


def noise_files(folder: str | Path) -> list[Path]:
    """The audio files under a --noise-dir, sorted; none is a TrainError."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise TrainError(f"--noise-dir {root} is not a folder")
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in NOISE_SUFFIXES)
    if not found:
        raise TrainError(f"--noise-dir {root} holds no audio files ({', '.join(sorted(NOISE_SUFFIXES))})")
    return [p.resolve() for p in found]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `synth` subcommand."""
    parser = subparsers.add_parser(
        "synth",
        help="render a speech dataset from an intents file with local TTS engines",
        description="Render a spoken data set from an intents file (TOML phrase templates, or a Rhino context "
        ".yaml) with the text-to-speech engines installed here: many voices, speeds and pitches, through a "
        "telephone line or a room microphone. --out gets WAV files with a metadata.jsonl (intent and slots per "
        "clip) and a data set split by voice, ready for `intentd-train fit --dataset OUT`.",
    )
    parser.add_argument(
        "--intents", type=Path, default=DEFAULT_INTENTS,
        help="intents TOML file, or a Picovoice Rhino context .yaml (default: the MInDS-14 set)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder (wavs + load_from_disk dataset)"
    )
    parser.add_argument("--seed", type=int, default=0, help="same seed, same audio and split (default 0)")
    parser.add_argument(
        "--per-intent",
        type=int,
        default=DEFAULT_PER_INTENT,
        help=f"clips per intent (default {DEFAULT_PER_INTENT})",
    )
    parser.add_argument(
        "--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
        help=f"share of clips (and of speakers) held out for test (default {DEFAULT_TEST_FRACTION})",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=None, help="render processes (default: CPU count)")
    parser.add_argument(
        "--engines", default=",".join(tts.ENGINES),
        help=f"comma-separated TTS engines to use where installed (default {','.join(tts.ENGINES)})",
    )  # fmt: skip
    parser.add_argument(
        "--codecs", default=None,
        help=f"comma-separated channel codecs from {','.join(channel.CODECS)} (default: all that are available)",
    )  # fmt: skip
    parser.add_argument(
        "--low-cut-hz", type=_hz_range, default=DEFAULT_LOW_CUT_HZ, metavar="LOW[,HIGH]",
        help="the channel's lower band edge in Hz, or a range drawn per clip (default "
             f"{','.join(f'{f:g}' for f in DEFAULT_LOW_CUT_HZ)})",
    )  # fmt: skip
    parser.add_argument(
        "--high-cut-hz", type=_hz_range, default=DEFAULT_HIGH_CUT_HZ, metavar="LOW[,HIGH]",
        help="the channel's upper band edge in Hz, or a range drawn per clip (at most 3950; default "
             f"{','.join(f'{f:g}' for f in DEFAULT_HIGH_CUT_HZ)})",
    )  # fmt: skip
    parser.add_argument(
        "--accent-fraction", type=float, default=DEFAULT_ACCENT_FRACTION, metavar="F",
        help="share of espeak-ng clips spoken with a drawn foreign accent (th-stopping, tense vowels, ...; "
             f"default {DEFAULT_ACCENT_FRACTION:g})",
    )  # fmt: skip
    parser.add_argument(
        "--trim-fraction", type=float, default=DEFAULT_TRIM_FRACTION, metavar="F",
        help="share of clips cut tight at an energy threshold "
             f"{'-'.join(f'{d:g}' for d in channel.TRIM_DB_RANGE)} dB below their peak, as an endpointer or "
             f"VAD cuts recordings (weak onsets like the s of 'six' go too; default {DEFAULT_TRIM_FRACTION:g})",
    )  # fmt: skip
    parser.add_argument(
        "--channel", choices=CHANNEL_CHOICES, default=TELEPHONE,
        help="telephone (8 kHz line and codecs), microphone (16 kHz: room reverberation, distance, microphone "
             "colour, background noise) or both, drawn per clip (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--noise-dir", type=Path, default=None, metavar="DIR",
        help="your own background recordings, mixed under half the microphone clips (the rest get generated noise)",
    )  # fmt: skip
    parser.add_argument(
        "--snr-db", type=_db_range, default=channel.MIC_SNR_DB, metavar="LOW[,HIGH]",
        help="the microphone's speech-to-noise ratio in dB, drawn per clip (default "
             f"{','.join(f'{v:g}' for v in channel.MIC_SNR_DB)})",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true",
                        help="replace an earlier synth output in --out (without it, synth refuses)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _db_range(text: str) -> tuple[float, float]:
    """`10` -> (10, 10); `0,30` -> (0, 30)."""
    try:
        return _hz_range(text)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(str(err).replace("Hz like 300 or 50,300", "dB like 10 or 0,30")) from err


def _hz_range(text: str) -> tuple[float, float]:
    """`300` -> (300, 300); `50,300` -> (50, 300)."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected Hz like 300 or 50,300, got {text!r}") from err
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected one or two values, got {text!r}")
    return (values[0], values[-1])


def run(args: argparse.Namespace) -> int:
    """Run `synth` from parsed arguments."""
    names = load_intents(args.intents).names
    if len(names) < 2:
        # One command (Rhino's coffee maker context is one `orderBeverage` intent with slots) is a model when
        # fit adds its out-of-scope class: the model tells the command from everything else.
        log.warning("%s has one intent (%s): fit must keep its out-of-scope class (no --no-out-of-scope) to tell "
                    "it from other speech", args.intents, ", ".join(names))
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()] if args.codecs else None
    synthesize(
        args.intents,
        args.out,
        seed=args.seed,
        per_intent=args.per_intent,
        test_fraction=args.test_fraction,
        engines=engines,
        workers=args.workers,
        codecs=codecs,
        low_cut_hz=args.low_cut_hz,
        high_cut_hz=args.high_cut_hz,
        accent_fraction=args.accent_fraction,
        trim_fraction=args.trim_fraction,
        progress=not args.no_progress,
        channel_choice=args.channel,
        noise_dir=args.noise_dir,
        snr_db=args.snr_db,
        replace=args.force,
    )
    return 0
