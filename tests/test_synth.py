"""`intentd-train synth` end to end on a tiny intents file, with the TTS engines installed here."""

from __future__ import annotations

import argparse
import ast
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from intentd.train import accent, nonspeech, synth, tts
from intentd.train.errors import TrainError

datasets = pytest.importorskip("datasets")

HAS_ESPEAK = shutil.which("espeak-ng") is not None
HAS_FLITE = shutil.which("flite") is not None
HAS_FESTIVAL = shutil.which("festival") is not None and shutil.which("text2wave") is not None
needs_espeak = pytest.mark.skipif(not HAS_ESPEAK, reason="espeak-ng is not installed")
HAS_PIPER = bool(tts.tts_neural.piper_program()) and bool(tts.tts_neural.Piper().voices())
HAS_HIBARI = tts.tts_neural.installed("hibari")
NEURAL_ENGINES = [
    pytest.param("piper", marks=pytest.mark.skipif(not HAS_PIPER, reason="piper-tts is not installed")),
    pytest.param("hibari", marks=pytest.mark.skipif(not HAS_HIBARI, reason="hibari-tts is not installed")),
]

TINY = """
[slots]
account = ["checking", "savings"]
[intents]
balance = ["(what's|what is) my {account} balance", "how much (money|cash) do I have"]
freeze = ["(freeze|block) my card [please]", "stop my card"]
"""
PER_INTENT = 5
COLUMNS = [
    "path", "audio", "transcription", "english_transcription", "intent_class", "lang_id", "voice", "accent"
]  # fmt: skip
# Fast engines only where the test is about the pipeline; festival gets its own render test.
FAST_ENGINES = [e for e, present in (("espeak-ng", HAS_ESPEAK), ("flite", HAS_FLITE)) if present]


@pytest.fixture
def intents_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY, encoding="utf-8")
    return path


def _synth(intents_file: Path, out: Path, **kwargs: object) -> Path:
    options: dict[str, object] = {
        "seed": 3, "per_intent": PER_INTENT, "test_fraction": 0.4, "engines": FAST_ENGINES, "workers": 1,
        "progress": False,
    }  # fmt: skip
    options.update(kwargs)
    return synth.synthesize(intents_file, out, **options)  # type: ignore[arg-type]


@needs_espeak
def test_dataset_has_minds14_columns_and_types(intents_file: Path, tmp_path: Path) -> None:
    out = _synth(intents_file, tmp_path / "out")
    loaded = datasets.load_from_disk(str(out))
    assert set(loaded) == {"train", "test"}
    assert len(loaded["train"]) + len(loaded["test"]) == 2 * PER_INTENT
    assert len(loaded["test"]) == 2 * round(PER_INTENT * 0.4)
    features = loaded["train"].features
    assert list(features) == COLUMNS
    assert features["intent_class"].names == ["balance", "freeze"]
    assert features["lang_id"].names == ["en-US"]
    assert features["audio"].sampling_rate == 8000
    for name in ("path", "transcription", "english_transcription", "voice", "accent"):
        assert features[name].dtype == "string"

    row = loaded["train"][0]
    assert row["transcription"] == row["english_transcription"]
    assert Path(row["path"]).is_absolute() and Path(row["path"]).parent == out / "wav"
    tts.Voice.parse(row["voice"])  # engine/name/variant
    info = sf.info(row["path"])
    assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16")
    # Decoding goes through datasets' own audio decoder (torchcodec + FFmpeg), as training will.
    decoded = row["audio"].get_all_samples()
    assert decoded.sample_rate == 8000
    from_file, _ = sf.read(row["path"], dtype="float32")
    samples = decoded.data.numpy()[0]
    assert samples.shape == from_file.shape
    assert np.max(np.abs(samples - from_file)) < 1e-3
    assert np.max(np.abs(samples)) > 0.01  # speech, not silence


@needs_espeak
def test_transcriptions_belong_to_their_intent(intents_file: Path, tmp_path: Path) -> None:
    from intentd.train.intents import load_intents

    intents = load_intents(intents_file)
    loaded = datasets.load_from_disk(str(_synth(intents_file, tmp_path / "out")))
    for split in loaded.values():
        names = split.features["intent_class"].names
        for row in split:
            assert row["transcription"] in intents.sentences(names[row["intent_class"]])


@needs_espeak
def test_test_voices_never_appear_in_training(intents_file: Path, tmp_path: Path) -> None:
    out = _synth(intents_file, tmp_path / "out", per_intent=12)
    loaded = datasets.load_from_disk(str(out))
    train_voices = {tts.Voice.parse(v) for v in loaded["train"]["voice"]}
    test_voices = {tts.Voice.parse(v) for v in loaded["test"]["voice"]}
    assert test_voices
    assert not train_voices & test_voices
    # Stricter: whole speakers are held out, not just voice names.
    assert not {v.speaker for v in train_voices} & {v.speaker for v in test_voices}
    recorded = json.loads((out / synth.INFO_FILE).read_text())["voices"]
    assert not set(recorded["train"]) & set(recorded["test"])


def test_split_voices_holds_out_speakers_per_engine_and_keeps_each_engine_in_training() -> None:
    voices = {
        "espeak-ng": [
            tts.Voice("espeak-ng", lang, var) for lang in ("en-us", "en-gb") for var in ("", "m1", "f2")
        ],
        "flite": [tts.Voice("flite", n) for n in ("kal", "kal16", "awb", "slt")],
        "festival": [tts.Voice("festival", "kal_diphone")],
    }
    sides = synth.split_voices(voices, 0.3, np.random.default_rng(0))
    speaker_side: dict[str, str] = {}
    for voice, side in sides.items():
        assert speaker_side.setdefault(voice.speaker, side) == side, voice
    for engine, vs in voices.items():
        assert any(sides[v] == "train" for v in vs), engine
    assert sides[tts.Voice("festival", "kal_diphone")] == "train"  # a lone speaker stays in training
    assert any(sides[v] == "test" for v in voices["espeak-ng"])
    assert any(sides[v] == "test" for v in voices["flite"])


def test_split_needs_two_speakers() -> None:
    voices = {"festival": [tts.Voice("festival", "kal_diphone")]}
    with pytest.raises(TrainError, match="cannot split by voice"):
        synth.split_voices(voices, 0.2, np.random.default_rng(0))
    assert set(synth.split_voices(voices, 0.0, np.random.default_rng(0)).values()) == {"train"}


@needs_espeak
def test_same_seed_gives_identical_audio_and_split_whatever_the_worker_count(
    intents_file: Path, tmp_path: Path
) -> None:
    first = _synth(intents_file, tmp_path / "a", workers=1)
    second = _synth(intents_file, tmp_path / "b", workers=2)
    other = _synth(intents_file, tmp_path / "c", seed=4)

    def rows(out: Path) -> list[tuple[str, str, str, int]]:
        loaded = datasets.load_from_disk(str(out))
        return [
            (split, r["voice"], r["transcription"], r["intent_class"])
            for split in ("train", "test")
            for r in loaded[split].remove_columns("audio")
        ]

    def wavs(out: Path) -> list[bytes]:
        return [p.read_bytes() for p in sorted((out / "wav").iterdir())]

    assert rows(first) == rows(second)
    assert wavs(first) == wavs(second)
    assert wavs(first) != wavs(other)


@needs_espeak
def test_rerun_replaces_an_earlier_output(intents_file: Path, tmp_path: Path) -> None:
    out = _synth(intents_file, tmp_path / "out", per_intent=4)
    _synth(intents_file, out, per_intent=2, test_fraction=0.5)
    loaded = datasets.load_from_disk(str(out))
    assert len(loaded["train"]) + len(loaded["test"]) == 4
    assert len(list((out / "wav").glob("*.wav"))) == 4
    # The audio folder's index is rewritten too, not appended to.
    assert len((out / "wav" / synth.METADATA_FILE).read_text().splitlines()) == 4


@needs_espeak
def test_cli_register_and_run(intents_file: Path, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="intentd-train")
    synth.register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cli"
    args = parser.parse_args(
        ["synth", "--intents", str(intents_file), "--out", str(out), "--seed", "1", "--per-intent", "2",
         "--test-fraction", "0.5", "--workers", "1", "--engines", ",".join(FAST_ENGINES), "--no-progress"]
    )  # fmt: skip
    assert args.func(args) == 0
    assert len(datasets.load_from_disk(str(out))["test"]) == 2


def test_missing_intents_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="nope.toml does not exist"):
        synth.synthesize(tmp_path / "nope.toml", tmp_path / "out", progress=False)


def test_no_tts_engine_is_an_error(
    intents_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(tts.tts_neural, "installed", lambda module: False)  # and no pip-installed voices
    monkeypatch.setattr(tts.tts_neural, "piper_program", lambda: "")
    with pytest.raises(TrainError, match="no TTS engine available"):
        synth.synthesize(intents_file, tmp_path / "out", progress=False)


def test_unknown_engine_is_named(intents_file: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="unknown TTS engine 'sam'"):
        synth.synthesize(intents_file, tmp_path / "out", engines=["sam"], progress=False)


@needs_espeak
@pytest.mark.parametrize("problem", ["file", "under-a-file", "foreign"])
def test_unusable_out_dir_is_refused(intents_file: Path, tmp_path: Path, problem: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    out = {"file": blocker, "under-a-file": blocker / "out", "foreign": tmp_path}[problem]
    with pytest.raises(TrainError, match="--out|cannot create"):
        _synth(intents_file, out)
    assert blocker.read_text() == "not a folder"  # nothing of the user's was touched


def test_bad_sizes_are_refused(intents_file: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="--per-intent"):
        synth.synthesize(intents_file, tmp_path / "o", per_intent=0, progress=False)
    with pytest.raises(TrainError, match="--test-fraction"):
        synth.synthesize(intents_file, tmp_path / "o", test_fraction=1.0, progress=False)
    with pytest.raises(TrainError, match="--accent-fraction"):
        synth.synthesize(intents_file, tmp_path / "o", accent_fraction=1.5, progress=False)


@needs_espeak
def test_accents_change_only_the_espeak_clips_they_are_drawn_for(intents_file: Path, tmp_path: Path) -> None:
    plain = _synth(intents_file, tmp_path / "plain", per_intent=12)
    accented = _synth(intents_file, tmp_path / "accented", per_intent=12, accent_fraction=0.5)

    def rows(out: Path) -> list[dict[str, str]]:
        loaded = datasets.load_from_disk(str(out))
        return [r for split in ("train", "test") for r in loaded[split].remove_columns("audio")]

    before, after = rows(plain), rows(accented)
    # The accent draws have their own stream: texts, voices and the split are those of the plain dataset.
    assert [(r["voice"], r["transcription"]) for r in before] == [(r["voice"], r["transcription"]) for r in after]
    assert not any(r["accent"] for r in before)
    marked = [r for r in after if r["accent"]]
    assert marked and all(r["voice"].startswith("espeak-ng/") for r in marked)
    assert len(marked) < sum(r["voice"].startswith("espeak-ng/") for r in after)
    for r in marked:
        assert set(r["accent"].split(",")) <= set(accent.PROCESSES)
    same_audio = [Path(o["path"]).read_bytes() == Path(n["path"]).read_bytes() for o, n in zip(before, after)]
    assert all(same for same, r in zip(same_audio, after) if not r["accent"])
    # An accent can leave a sentence as it was ("do I have" has no sound that any drawn process rewrites).
    assert not all(same for same, r in zip(same_audio, after) if r["accent"])
    info = json.loads((accented / synth.INFO_FILE).read_text())
    assert info["accented_clips"] == len(marked)


@pytest.mark.parametrize(
    "engine",
    [
        pytest.param("espeak-ng", marks=needs_espeak),
        pytest.param("flite", marks=pytest.mark.skipif(not HAS_FLITE, reason="flite is not installed")),
        pytest.param(
            "festival", marks=pytest.mark.skipif(not HAS_FESTIVAL, reason="festival is not installed")
        ),
        *NEURAL_ENGINES,
    ],
)
def test_each_engine_speaks_and_rate_changes_duration(engine: str) -> None:
    voice = tts.engine_by_name(engine).voices()[0]
    normal, rate = tts.render("check my balance please", voice, 1.0, 1.0)
    fast, fast_rate = tts.render("check my balance please", voice, 1.25, 1.1)
    assert normal.dtype == np.float32 and normal.ndim == 1 and rate == fast_rate
    assert np.max(np.abs(normal)) > 0.05
    assert fast.size < 0.9 * normal.size


@needs_espeak
def test_espeak_voices_are_distinct_and_mbrola_free() -> None:
    voices = tts.EspeakNg().voices()
    assert len(voices) > 10
    assert len(set(voices)) == len(voices)
    assert all(v.name.startswith("en") for v in voices)
    assert not any(v.name.startswith("mb-") for v in voices) or shutil.which("mbrola")


@pytest.mark.parametrize("engine", NEURAL_ENGINES)
def test_neural_voices_repeat_exactly_so_a_seed_gives_the_same_dataset(engine: str) -> None:
    voice = tts.engine_by_name(engine).voices()[0]
    first, rate = tts.render("seven", voice, 1.1, 1.0)
    again, _ = tts.render("seven", voice, 1.1, 1.0)
    assert rate >= 16_000
    assert np.array_equal(first, again)


@needs_espeak
def test_no_test_voices_gives_a_train_only_dataset_that_loads(intents_file: Path, tmp_path: Path) -> None:
    from intentd.train.data import load_labelled

    out = _synth(intents_file, tmp_path / "out", test_fraction=0.0)
    assert set(datasets.load_from_disk(str(out))) == {"train"}
    data = load_labelled(str(out), seed=0)  # fit then holds out its own stratified part
    assert set(data.splits) == {"train", "test"}
    assert len(data.splits["train"]) + len(data.splits["test"]) == 2 * PER_INTENT


TONE_PITCHES_HZ = {"low": 150.0, "mid": 220.0, "high": 330.0}
TONE_RATE = 22_050  # espeak-ng's rate: synth takes whatever rate an engine speaks at
TONE_SECONDS_PER_CHAR = 0.04


class ToneEngine:
    """A TtsEngine that needs no program: each voice hums its own pitch for as long as the text is."""

    name = "tone"

    def voices(self) -> list[tts.Voice]:
        return [tts.Voice(self.name, voice) for voice in TONE_PITCHES_HZ]

    def render(self, text: str, voice: tts.Voice, rate: float, pitch: float) -> tuple[np.ndarray, int]:
        t = np.arange(round(len(text) * TONE_SECONDS_PER_CHAR / rate * TONE_RATE)) / TONE_RATE
        hum = 0.3 * np.sin(2 * np.pi * TONE_PITCHES_HZ[voice.name] * pitch * t)
        return hum.astype(np.float32), TONE_RATE


def test_a_registered_engine_is_all_synth_needs(
    intents_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An engine is a class with name, voices() and render() plus its ENGINES entry (here no programs, no packages).
    monkeypatch.setitem(tts.ENGINES, ToneEngine.name, (ToneEngine, (), ()))
    out = _synth(intents_file, tmp_path / "out", engines=[ToneEngine.name])
    loaded = datasets.load_from_disk(str(out))
    voices = {tts.Voice.parse(v) for split in loaded.values() for v in split["voice"]}
    assert voices and all(v.engine == ToneEngine.name for v in voices)
    assert len(loaded["train"]) + len(loaded["test"]) == 2 * PER_INTENT


def test_tts_modules_do_not_import_each_other() -> None:
    # tts registers the neural engines; both build on tts_base, so no module imports one that imports it back,
    # not even inside a function (the old way round the circle).
    allowed = {"tts_base": set(), "tts_neural": {"intentd.train.tts_base"},
               "tts": {"intentd.train.tts_base", "intentd.train.tts_neural"}}
    for module, may_import in allowed.items():
        tree = ast.parse((Path(tts.__file__).parent / f"{module}.py").read_text(encoding="utf-8"))
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported |= {f"{node.module}.{a.name}" for a in node.names}  # from intentd.train import tts
        tts_modules = imported & {f"intentd.train.{name}" for name in allowed}
        assert tts_modules <= may_import, (module, tts_modules)


def test_sentence_filter_and_nonspeech_clips(intents_file: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """What the out-of-scope class is rendered with: only kept sentences are spoken, and generated non-speech
    clips join the last intent with their kind as voice."""
    monkeypatch.setitem(tts.ENGINES, ToneEngine.name, (ToneEngine, (), ()))
    out = _synth(intents_file, tmp_path / "out", engines=[ToneEngine.name], nonspeech_clips=7,
                 keep_sentence=lambda sentence: "please" not in sentence)
    loaded = datasets.load_from_disk(str(out))
    rows = [row for split in loaded.values() for row in split.cast_column("audio", datasets.Audio(decode=False))]
    names = loaded["train"].features["intent_class"].names
    spoken = [r for r in rows if not r["voice"].startswith(synth.NONSPEECH_ENGINE + "/")]
    assert spoken and not any("please" in r["transcription"] for r in spoken)
    noise = [r for r in rows if r["voice"].startswith(synth.NONSPEECH_ENGINE + "/")]
    assert len(noise) == 7 and {names[r["intent_class"]] for r in noise} == {names[-1]}
    assert {r["voice"].split("/")[1] for r in noise} <= set(nonspeech.KINDS) and all(r["transcription"] == ""
                                                                                      for r in noise)
    again = _synth(intents_file, tmp_path / "again", engines=[ToneEngine.name], nonspeech_clips=7,
                   keep_sentence=lambda sentence: "please" not in sentence)
    first = sf.read(io.BytesIO(noise[0]["audio"]["bytes"]))[0]
    second = [r for split in datasets.load_from_disk(str(again)).values()
              for r in split.cast_column("audio", datasets.Audio(decode=False)) if r["path"] == noise[0]["path"]
              .replace(str(out), str(again))]
    assert len(second) == 1 and np.array_equal(first, sf.read(io.BytesIO(second[0]["audio"]["bytes"]))[0])


CAPTURING = """
[slots]
drink = ["latte", "mocha"]
[slots.size]
large = ["large", "big"]
small = "small"
[intents]
order = ["[can I get] a [{size:size}] {drink:drink} [please]"]
cancel = ["cancel (that|my order)"]
"""


@needs_espeak
@pytest.mark.parametrize("channel_choice", ["telephone", "microphone"])
def test_slots_are_captured_per_clip_in_metadata_and_dataset(tmp_path: Path, channel_choice: str) -> None:
    """Each clip's metadata.jsonl line and `slots` column hold what its sentence says, and the wav folder loads
    as a Hugging Face audio folder with those labels; the microphone writes 16 kHz."""
    intents_file = tmp_path / "coffee.toml"
    intents_file.write_text(CAPTURING, encoding="utf-8")
    out = _synth(intents_file, tmp_path / "out", per_intent=6, engines=["espeak-ng"], channel_choice=channel_choice)
    lines = [json.loads(line) for line in (out / "wav" / synth.METADATA_FILE).read_text().splitlines()]
    assert len(lines) == 12 and {line["intent"] for line in lines} == {"order", "cancel"}
    rate = 8000 if channel_choice == "telephone" else 16_000
    for line in lines:
        assert (out / "wav" / line["file_name"]).is_file()
        assert sf.info(out / "wav" / line["file_name"]).samplerate == rate
        assert line["channel"] == channel_choice
        words = line["text"].split()
        if line["intent"] == "cancel":
            assert line["slots"] == {}
            continue
        assert line["slots"]["drink"] in words
        said = [w for w in words if w in ("large", "big", "small")]
        assert [line["slots"].get("size")] == ([{"big": "large"}.get(said[0], said[0])] if said else [None])
    if channel_choice == "microphone":
        assert all(0.0 <= line["snr_db"] <= 30.0 for line in lines)
    # The same labels in the saved dataset's slots column, row for row.
    saved = datasets.load_from_disk(str(out))
    by_file = {line["file_name"]: line for line in lines}
    for split in saved.values():
        assert split.features["audio"].sampling_rate == rate
        for row in split.cast_column("audio", datasets.Audio(decode=False)):
            expected = by_file[Path(row["path"]).name]["slots"]
            assert {k: v for k, v in row["slots"].items() if v is not None} == expected
    folder = datasets.load_dataset("audiofolder", data_dir=str(out / "wav"))["train"]
    assert len(folder) == 12 and set(folder.features["slots"]) == {"drink", "size"}


def test_both_channels_are_drawn_per_clip_without_changing_the_rest_of_the_plan(
    intents_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(tts.ENGINES, ToneEngine.name, (ToneEngine, (), ()))
    both = _synth(intents_file, tmp_path / "both", engines=[ToneEngine.name], per_intent=10, channel_choice="both")
    phone = _synth(intents_file, tmp_path / "phone", engines=[ToneEngine.name], per_intent=10)
    lines = [json.loads(line) for line in (both / "wav" / synth.METADATA_FILE).read_text().splitlines()]
    plain = [json.loads(line) for line in (phone / "wav" / synth.METADATA_FILE).read_text().splitlines()]
    assert {line["channel"] for line in lines} == {"telephone", "microphone"}
    for line, same in zip(lines, plain, strict=True):
        assert (line["text"], line["voice"], line["split"]) == (same["text"], same["voice"], same["split"])
        rate = sf.info(both / "wav" / line["file_name"]).samplerate
        assert rate == (16_000 if line["channel"] == "microphone" else 8000)
        if line["channel"] == "telephone":  # the same clip, bit for bit, as a telephone-only run renders it
            assert np.array_equal(sf.read(both / "wav" / line["file_name"])[0],
                                  sf.read(phone / "wav" / same["file_name"])[0])
    info = json.loads((both / synth.INFO_FILE).read_text())
    assert info["channel_choice"] == "both" and sum(info["clips_by_channel"].values()) == len(lines)


def test_noise_dir_feeds_the_microphone_and_is_checked(intents_file: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(tts.ENGINES, ToneEngine.name, (ToneEngine, (), ()))
    with pytest.raises(TrainError, match="--noise-dir is for the microphone"):
        _synth(intents_file, tmp_path / "a", engines=[ToneEngine.name], noise_dir=tmp_path)
    with pytest.raises(TrainError, match="holds no audio files"):
        _synth(intents_file, tmp_path / "b", engines=[ToneEngine.name], noise_dir=tmp_path, channel_choice="microphone")
    noise = tmp_path / "noise"
    noise.mkdir()
    sf.write(noise / "fan.wav", 0.1 * np.random.default_rng(0).standard_normal(16_000), 16_000)
    out = _synth(intents_file, tmp_path / "c", engines=[ToneEngine.name], noise_dir=noise, channel_choice="microphone")
    info = json.loads((out / synth.INFO_FILE).read_text())
    assert info["microphone"]["noise_files"] == [str((noise / "fan.wav").resolve())]
