"""Inference: the batched manual path agrees with the HF pipeline; eval and predict report what they should."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tone_clip

from intentd.daemon.classifier import Classifier
from intentd.daemon.resample import resample
from intentd.train import cli
from intentd.train.audio_io import read_native
from intentd.train.errors import TrainError
from intentd.train.evaluation import evaluate_model
from intentd.train.inference import PipelineClassifier, load_classifier
from intentd.train.predict import predict_files


@pytest.fixture(scope="module")
def mixed_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Clips of different lengths at 8 kHz mono, 16 kHz mono and 44.1 kHz stereo (two share a length)."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(3)
    files = []
    for i, (rate, channels, freq) in enumerate(
        [(8000, 1, 220.0), (16_000, 1, 880.0), (44_100, 2, 3000.0), (16_000, 1, 440.0), (8000, 1, 1500.0)]
    ):
        path = root / f"clip{i}.wav"
        sf.write(str(path), tone_clip(freq, rate, rng, channels), rate)
        files.append(path)
    same = np.asarray(sf.read(str(files[1]), dtype="float32")[0])
    sf.write(str(root / "same_len.wav"), same[::-1].copy(), 16_000)  # equal length: batched together
    files.append(root / "same_len.wav")
    return files


@pytest.mark.parametrize("kind", ["whisper", "wav2vec2"])
def test_manual_path_matches_pipeline(
    kind: str, mixed_files: list[Path], tiny_whisper_dir: Path, tiny_wav2vec2_dir: Path
) -> None:
    model_dir = tiny_whisper_dir if kind == "whisper" else tiny_wav2vec2_dir
    manual = Classifier.load(model_dir, device="cpu", top_k=2)
    pipe = PipelineClassifier(model_dir)
    clips = [read_native(p) for p in mixed_files]
    batched = manual.classify([resample(s, r) for s, r in clips])
    for (samples, rate), ours in zip(clips, batched, strict=True):
        reference = pipe.classify(samples, rate, 2)
        assert [label for label, _ in ours.top_k] == [label for label, _ in reference.top_k]
        np.testing.assert_allclose([s for _, s in ours.top_k], [s for _, s in reference.top_k], atol=1e-5)


@pytest.mark.parametrize("kind", ["whisper", "wav2vec2"])
def test_predict_scores_a_file_the_same_alone_or_among_others(
    kind: str, mixed_files: list[Path], tiny_whisper_dir: Path, tiny_wav2vec2_dir: Path
) -> None:
    model_dir = str(tiny_whisper_dir if kind == "whisper" else tiny_wav2vec2_dir)
    together = predict_files(model_dir, [str(p) for p in mixed_files], top_k=2)
    piped = predict_files(model_dir, [str(p) for p in mixed_files], top_k=2, via="pipeline")
    for path, batched, reference in zip(mixed_files, together, piped, strict=True):
        (alone,) = predict_files(model_dir, [str(path)], top_k=2)
        for one in (alone, reference):
            assert [label for label, _ in one.top_k] == [label for label, _ in batched.top_k]
            np.testing.assert_allclose([s for _, s in one.top_k], [s for _, s in batched.top_k], atol=1e-5)


def test_missing_or_broken_model_folder_is_one_train_error(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="does not exist"):
        load_classifier(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(TrainError, match="preprocessor_config.json"):
        PipelineClassifier(tmp_path / "half")


def test_predict_files_ranks_all_labels(mixed_files: list[Path], tiny_whisper_dir: Path) -> None:
    results = predict_files(str(tiny_whisper_dir), [str(p) for p in mixed_files], top_k=5)
    for prediction in results:
        assert len(prediction.top_k) == 2  # capped at the number of labels
        assert prediction.top_k[0] == (prediction.label, prediction.score)
        assert prediction.top_k[0][1] >= prediction.top_k[1][1]
        assert sum(score for _, score in prediction.top_k) == pytest.approx(1.0, abs=1e-5)


def test_predict_cli_json(mixed_files: list[Path], tiny_whisper_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["--log-level", "ERROR", "predict", "--model", str(tiny_whisper_dir), str(mixed_files[0]),
                     str(mixed_files[2]), "--top-k", "1", "--json", "--via", "pipeline"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert [p["file"] for p in doc["predictions"]] == [str(mixed_files[0]), str(mixed_files[2])]
    assert all(len(p["top"]) == 1 and p["top"][0]["label"] in ("a", "b") for p in doc["predictions"])


def test_eval_manual_and_pipeline_agree(tmp_path: Path, tiny_whisper_dir: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import write_tone_folder

    data = write_tone_folder(tmp_path / "ab", per_label=5, labels={"a": 300.0, "b": 2500.0})
    manual = evaluate_model(str(tiny_whisper_dir), str(data), via="manual")
    piped = evaluate_model(str(tiny_whisper_dir), str(data), via="pipeline")
    assert manual["n"] == piped["n"] == 10  # a folder without a test split is scored whole
    assert manual["accuracy"] == piped["accuracy"]
    assert manual["per_class"] == piped["per_class"]
    assert cli.main(["--log-level", "ERROR", "eval", "--model", str(tiny_whisper_dir), "--dataset", str(data),
                     "--split", "train", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 8 and 0.0 <= report["accuracy"] <= 1.0
    assert sum(row["support"] for row in report["per_class"].values()) == 8
    assert set(report["per_class"]) <= {"a", "b"}


def test_local_accuracy_metric_loads_offline() -> None:
    import evaluate

    from intentd.train.fit import ACCURACY_METRIC_DIR

    metric = evaluate.load(str(ACCURACY_METRIC_DIR))
    assert metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 0, 2]) == {"accuracy": 0.75}
