"""Shared fixtures: tiny classifier folders built from configs and tiny tone datasets written to tmp."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.tiny_models import make_tiny_wav2vec2, make_tiny_whisper

# Pitches far apart on the mel scale, so even a random tiny encoder separates them.
TONE_LABELS: dict[str, float] = {"low": 220.0, "mid": 880.0, "high": 3000.0}


def tone_clip(freq_hz: float, rate: int, rng: np.random.Generator, channels: int = 1) -> np.ndarray:
    """A 0.4-0.9 s tone with random level, phase and a little noise; (frames,) or (frames, channels)."""
    n = int(rate * rng.uniform(0.4, 0.9))
    t = np.arange(n) / rate
    wave = rng.uniform(0.2, 0.6) * np.sin(
        2 * np.pi * freq_hz * rng.uniform(0.97, 1.03) * t + rng.uniform(0, 6.28)
    )
    wave = (wave + 0.01 * rng.standard_normal(n)).astype(np.float32)
    if channels == 1:
        return wave
    return np.stack([wave * (0.5 + 0.5 * c / channels) for c in range(channels)], axis=1)


def write_tone_folder(
    root: Path,
    per_label: int = 6,
    rate: int = 8000,
    channels: int = 1,
    layout: str = "labels",
    labels: dict[str, float] | None = None,
    seed: int = 0,
) -> Path:
    """Write a tone dataset as an audiofolder: layout 'labels' (label/x.wav), 'splits' (train|test/label/x.wav)
    or 'metadata' (flat WAVs plus metadata.csv with file_name,label)."""
    import soundfile as sf

    labels = labels or TONE_LABELS
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    for label, freq in labels.items():
        for i in range(per_label):
            if layout == "splits":
                split = "test" if i % 4 == 3 else "train"
                rel = Path(split) / label / f"{label}_{i}.wav"
            elif layout == "metadata":
                rel = Path(f"{label}_{i}.wav")
            else:
                rel = Path(label) / f"{label}_{i}.wav"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(root / rel), tone_clip(freq, rate, rng, channels), rate)
            rows.append((rel.as_posix(), label))
    if layout == "metadata":
        with open(root / "metadata.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file_name", "label"])
            writer.writerows(rows)
    return root


def write_tone_saved(
    root: Path, per_label: int = 6, rate: int = 8000, seed: int = 0, dict_splits: bool = True
) -> Path:
    """Write a save_to_disk tone dataset with MInDS-14-like columns (audio, intent_class ClassLabel)."""
    import datasets

    rng = np.random.default_rng(seed)
    names = list(TONE_LABELS)
    rows: dict[str, list] = {"audio": [], "intent_class": [], "transcription": []}
    for label_id, (label, freq) in enumerate(TONE_LABELS.items()):
        for _ in range(per_label):
            rows["audio"].append({"array": tone_clip(freq, rate, rng), "sampling_rate": rate})
            rows["intent_class"].append(label_id)
            rows["transcription"].append(label)
    features = datasets.Features(
        {
            "audio": datasets.Audio(sampling_rate=rate),
            "intent_class": datasets.ClassLabel(names=names),
            "transcription": datasets.Value("string"),
        }
    )
    ds = datasets.Dataset.from_dict(rows, features=features)
    if dict_splits:
        ds = ds.train_test_split(test_size=0.25, seed=seed, stratify_by_column="intent_class")
    ds.save_to_disk(str(root))
    return root


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained Whisper classifier folder (labels a, b), shared read-only across tests."""
    return make_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


@pytest.fixture(scope="session")
def tiny_wav2vec2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained Wav2Vec2 classifier folder (labels a, b), shared read-only across tests."""
    return make_tiny_wav2vec2(tmp_path_factory.mktemp("tiny-wav2vec2"))


@pytest.fixture(scope="session")
def tone_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-label (low/mid/high) tone audiofolder at 8 kHz mono, one folder per label, shared read-only."""
    return write_tone_folder(tmp_path_factory.mktemp("tones"), per_label=6)


@pytest.fixture()
def tone_folder_factory(tmp_path: Path) -> Callable[..., Path]:
    """Build a fresh tone audiofolder in tmp with write_tone_folder's options."""

    def build(name: str = "tones", **kwargs: object) -> Path:
        return write_tone_folder(tmp_path / name, **kwargs)  # type: ignore[arg-type]

    return build
