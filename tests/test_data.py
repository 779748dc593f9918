"""Data in: every DATA form loads into labelled train/test splits; audio becomes 16 kHz mono model inputs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import TONE_LABELS, tone_clip, write_tone_folder, write_tone_saved

from intentd.train import audio_io
from intentd.train.data import (
    change_speed,
    detect_source,
    iter_clips,
    load_combined,
    load_labelled,
    max_samples_for,
    prepare_features,
)
from intentd.train.errors import TrainError


def test_label_folders_load_with_string_labels_encoded(tone_folder: Path) -> None:
    data = load_labelled(str(tone_folder), seed=0)
    assert data.source == "audiofolder"
    assert data.label_column == "label"
    assert sorted(data.label_names) == sorted(TONE_LABELS)
    assert set(data.splits) == {"train", "test"}
    assert len(data.splits["train"]) + len(data.splits["test"]) == 3 * 6
    # stratified: every label in the held-out split
    assert len(set(data.splits["test"]["label"])) == 3


def test_train_test_subfolders_are_honoured(tmp_path: Path) -> None:
    root = write_tone_folder(tmp_path / "splits", per_label=8, layout="splits")
    data = load_labelled(str(root))
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 18, "test": 6}


def test_metadata_csv_stereo_44k_decodes_to_16k_mono(tmp_path: Path) -> None:
    root = write_tone_folder(tmp_path / "meta", per_label=4, rate=44_100, channels=2, layout="metadata")
    data = load_labelled(str(root), seed=1)
    assert data.label_names == sorted(TONE_LABELS)  # string labels encoded jointly, sorted
    clips, rows = next(iter_clips(data.splits["train"], batch_size=4))
    source_frames = [sf.info(str(root / Path(r["path"]).name)).frames for r in rows["audio"]]
    for clip, frames in zip(clips, source_frames):
        assert clip.ndim == 1 and clip.dtype == np.float32
        assert abs(len(clip) - frames * 16_000 / 44_100) <= 2


@pytest.mark.parametrize("dict_splits", [True, False])
def test_save_to_disk_dataset_or_datasetdict(tmp_path: Path, dict_splits: bool) -> None:
    root = write_tone_saved(tmp_path / "saved", per_label=5, dict_splits=dict_splits)
    assert detect_source(str(root)) == "saved"
    data = load_labelled(str(root), seed=0)
    assert data.label_column == "intent_class"
    assert data.label_names == list(TONE_LABELS)
    assert set(data.splits) == {"train", "test"}
    assert sum(len(s) for s in data.splits.values()) == 15


def test_label_column_override(tmp_path: Path) -> None:
    root = write_tone_saved(tmp_path / "saved", per_label=4)
    data = load_labelled(str(root), label_column="transcription")
    assert data.label_column == "transcription"
    assert data.label_names == sorted(TONE_LABELS)


def _dominant_hz(clip: np.ndarray, rate: int = 16_000) -> float:
    spectrum = np.abs(np.fft.rfft(clip))
    return float(np.argmax(spectrum) * rate / len(clip))


def test_combined_datasets_match_labels_by_name_and_keep_each_held_out_split(tmp_path: Path) -> None:
    # A folder with one label of its own ("top") and one shared with the saved set ("mid"), at another rate and
    # with another label column: the join must map every clip to the right name, not the right index.
    folder = write_tone_folder(tmp_path / "mine", per_label=5, rate=16_000, labels={"top": 5000.0, "mid": 880.0},
                               layout="splits")
    saved = write_tone_saved(tmp_path / "synth", per_label=4)
    data = load_combined([str(folder), str(saved)], seed=0)
    assert data.source == "combined"
    assert data.label_column == "label"  # the first dataset's column
    assert data.label_names == ["mid", "top", "low", "high"]  # first's order, then the new ones
    alone = [load_labelled(str(folder), seed=0), load_labelled(str(saved), seed=0)]
    for split in ("train", "test"):
        assert len(data.splits[split]) == sum(len(d.splits[split]) for d in alone)
    hz = {"top": 5000.0, "mid": 880.0, "low": 220.0, "high": 3000.0}
    for split in ("train", "test"):
        for clips, rows in iter_clips(data.splits[split], batch_size=8):
            for clip, label in zip(clips, rows["label"], strict=True):
                assert abs(_dominant_hz(clip) - hz[data.label_names[label]]) < 0.05 * hz[data.label_names[label]]


def test_change_speed_shortens_and_raises_pitch_by_the_factor() -> None:
    t = np.arange(16_000) / 16_000
    tone = np.sin(2 * np.pi * 1000.0 * t).astype(np.float32)
    faster = change_speed(tone, 1.25)
    assert abs(len(faster) - 16_000 / 1.25) <= 2
    assert abs(_dominant_hz(faster) - 1250.0) < 10
    slower = change_speed(tone, 0.8)
    assert abs(len(slower) - 16_000 / 0.8) <= 2
    assert abs(_dominant_hz(slower) - 800.0) < 10
    assert change_speed(tone, 1.0) is tone


def test_speed_perturbed_features_add_one_labelled_copy_per_speed(tone_folder: Path, tiny_whisper_dir: Path) -> None:
    from transformers import AutoFeatureExtractor

    extractor = AutoFeatureExtractor.from_pretrained(str(tiny_whisper_dir))
    data = load_labelled(str(tone_folder), seed=0)
    train = data.splits["train"]
    plain = prepare_features(train, data.label_column, extractor, 4.0)
    perturbed = prepare_features(train, data.label_column, extractor, 4.0, speeds=(1.0, 0.9, 1.1))
    assert len(perturbed) == 3 * len(plain)
    assert list(perturbed["labels"]) == list(plain["labels"]) * 3  # one batch: copies follow the originals
    first = np.asarray(perturbed["input_features"][: len(plain)])
    assert np.allclose(first, np.asarray(plain["input_features"]))  # speed 1.0 is the clip itself
    assert not np.allclose(np.asarray(perturbed["input_features"][len(plain):2 * len(plain)]), first)


def test_trim_perturbed_features_add_one_copy_cut_tight_per_level(tmp_path: Path, tiny_whisper_dir: Path) -> None:
    import soundfile as sf
    from transformers import AutoFeatureExtractor

    from intentd.train import channel
    from intentd.train.data import extract

    rate, rng = 8000, np.random.default_rng(3)
    silence = np.zeros(int(0.3 * rate), np.float32)
    for label, freq in TONE_LABELS.items():
        (tmp_path / "quiet" / label).mkdir(parents=True)
        for i in range(3):
            clip = np.concatenate([silence, tone_clip(freq, rate, rng), silence])
            sf.write(tmp_path / "quiet" / label / f"{i}.wav", clip, rate)
    extractor = AutoFeatureExtractor.from_pretrained(str(tiny_whisper_dir))
    data = load_labelled(str(tmp_path / "quiet"), seed=0)
    train = data.splits["train"]
    plain = prepare_features(train, data.label_column, extractor, 4.0)
    trimmed = prepare_features(train, data.label_column, extractor, 4.0, trims=(20.0,))
    assert len(trimmed) == 2 * len(plain)
    assert list(trimmed["labels"]) == list(plain["labels"]) * 2
    first = np.asarray(trimmed["input_features"][: len(plain)])
    assert np.allclose(first, np.asarray(plain["input_features"]))
    # The copy is the clip without its 0.3 s of silence on each side, exactly as channel.trim_edges cuts it.
    clip = decode_first_clip(train)
    expected = extract(extractor, [channel.trim_edges(clip, 16_000, 20.0)], 4 * 16_000)["input_features"][0]
    assert np.allclose(np.asarray(trimmed["input_features"][len(plain)]), np.asarray(expected), atol=1e-5)
    assert not np.allclose(np.asarray(trimmed["input_features"][len(plain)]), first[0])


def decode_first_clip(split: object) -> np.ndarray:
    """The first clip of a split as prepare_features decodes it (16 kHz mono float32)."""
    import datasets

    from intentd.train.data import AUDIO_COLUMN, decode_clip

    plain = split.cast_column(AUDIO_COLUMN, datasets.Audio(decode=False))  # type: ignore[attr-defined]
    return decode_clip(plain[0][AUDIO_COLUMN], "row 0")


def test_training_clips_are_the_audio_the_daemon_and_predict_classify(tmp_path: Path) -> None:
    """8 kHz phone audio upsampled by datasets (FFmpeg) differs from torchaudio's; training must see the daemon's."""
    import soundfile as sf

    from intentd.daemon.audio import to_mono
    from intentd.daemon.resample import resample
    from intentd.train.audio_io import read_audio
    from intentd.train.data import decode_clip

    for rate, channels in ((8000, 1), (44_100, 2)):
        clip = tone_clip(700.0, rate, np.random.default_rng(rate), channels)
        path = tmp_path / f"clip-{rate}.wav"
        sf.write(path, clip, rate, subtype="FLOAT")
        trained = decode_clip({"path": str(path), "bytes": None}, "row 0")
        # The same samples, not merely close ones: one mixdown and one resampler serve training and serving.
        np.testing.assert_array_equal(trained, resample(to_mono(clip, channels_axis=1), rate))
        np.testing.assert_array_equal(trained, read_audio(path))


def test_combined_with_one_dataset_is_load_labelled(tmp_path: Path) -> None:
    saved = write_tone_saved(tmp_path / "synth", per_label=4)
    data = load_combined([str(saved)], seed=0)
    assert data.source == "saved" and data.label_column == "intent_class"


def test_detect_source() -> None:
    assert detect_source("PolyAI/minds14") == "hub"
    with pytest.raises(TrainError, match="does not exist"):
        detect_source("./no/such/folder")


def test_whisper_features_use_its_own_chunk(tone_folder: Path, tiny_whisper_dir: Path) -> None:
    from transformers import AutoFeatureExtractor

    extractor = AutoFeatureExtractor.from_pretrained(str(tiny_whisper_dir))
    assert max_samples_for(extractor, 4.0) == 16_000  # the extractor's 1 s chunk wins over --max-seconds
    data = load_labelled(str(tone_folder))
    features = prepare_features(data.splits["test"], data.label_column, extractor, 4.0)
    assert features.column_names == ["input_features", "labels"]
    assert np.asarray(features[0]["input_features"]).shape == (80, 100)


def test_long_clips_are_truncated_to_max_seconds(tmp_path: Path, tiny_wav2vec2_dir: Path) -> None:
    from transformers import AutoFeatureExtractor

    rng = np.random.default_rng(0)
    for label, freq in (("a", 300.0), ("b", 2000.0)):
        (tmp_path / "long" / label).mkdir(parents=True)
        for i in range(3):
            clip = np.tile(tone_clip(freq, 16_000, rng), 4)  # 1.6-3.6 s
            sf.write(str(tmp_path / "long" / label / f"{i}.wav"), clip, 16_000)
    data = load_labelled(str(tmp_path / "long"))
    extractor = AutoFeatureExtractor.from_pretrained(str(tiny_wav2vec2_dir))
    features = prepare_features(data.splits["train"], data.label_column, extractor, max_seconds=0.5)
    assert {len(x) for x in features["input_values"]} == {8_000}


def test_read_audio_any_rate_and_format(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stereo = tone_clip(440.0, 44_100, rng, channels=2)
    sf.write(str(tmp_path / "s.flac"), stereo, 44_100)
    clip = audio_io.read_audio(tmp_path / "s.flac")
    assert clip.ndim == 1 and abs(len(clip) - len(stereo) * 16_000 / 44_100) <= 2
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not on PATH")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(tmp_path / "s.flac"), str(tmp_path / "s.mp3")],
                   check=True)
    mp3, rate = audio_io.read_native(tmp_path / "s.mp3")
    assert rate == 44_100 and mp3.ndim == 1 and np.max(np.abs(mp3)) > 0.1
