"""The out-of-scope class's data and the calibrated threshold: fit's side (train/out_of_scope.py) and the
serving side that honours it (daemon/classifier.py, predict, eval, the daemon's model loading)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from intentd.daemon.classifier import CALIBRATION_FILE, Classifier
from intentd.daemon.errors import ModelError
from intentd.daemon.settings import DEFAULTS
from intentd.daemon.settings import load as load_settings
from intentd.daemon.utterance_classifier import UtteranceClassifier
from intentd.train import nonspeech
from intentd.train.errors import TrainError
from intentd.train.evaluation import evaluate_model
from intentd.train.out_of_scope import (
    OUT_OF_SCOPE_LABEL,
    accepted,
    calibrate,
    folder_dataset,
    sentence_filter,
    write_calibration,
)
from intentd.train.predict import predict_files

LABELS = ("balance", "freeze", OUT_OF_SCOPE_LABEL)


def test_out_of_scope_sentences_never_use_the_models_own_words() -> None:
    keep = sentence_filter(["balance", "freezeCard", "stop_now", OUT_OF_SCOPE_LABEL], ["What is the weather?"])
    assert keep("tell grandma I'll be late")
    assert not keep("is my balance okay")  # a label
    assert not keep("please freeze it") and not keep("card")  # camelCase split
    assert not keep("stop")  # snake_case split
    assert not keep("what is the weather")  # a training transcription, punctuation and case aside
    assert keep("unknown things happen")  # the out-of-scope label itself bans nothing


def _probabilities(rows: list[tuple[float, float, float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def test_calibration_keeps_the_target_share_and_reports_false_acceptance() -> None:
    # Ten in-domain clips with top scores 0.55..1.0 and four out-of-scope ones.
    inside = [(s, 1 - s, 0.0) for s in np.linspace(0.55, 1.0, 10)]
    outside = [(0.6, 0.1, 0.3), (0.2, 0.1, 0.7), (0.9, 0.05, 0.05), (0.5, 0.45, 0.05)]
    probs = _probabilities(inside + outside)
    truth = ["balance"] * 10 + [OUT_OF_SCOPE_LABEL] * 4
    at_90 = calibrate(probs, truth, LABELS, keep_in_domain=0.9)
    assert at_90.threshold == pytest.approx(0.6)  # rejects exactly the lowest in-domain clip (0.55)
    assert at_90.in_domain_acceptance == pytest.approx(0.9) and at_90.in_domain == 10
    # Out of scope: 0.6 accepted (at the threshold), the class wins one, 0.9 accepted, 0.5 rejected.
    assert at_90.out_of_scope_false_acceptance == pytest.approx(0.5) and at_90.out_of_scope == 4
    everything = calibrate(probs, truth, LABELS, keep_in_domain=1.0)
    assert everything.threshold == 0.0 and everything.in_domain_acceptance == 1.0


def test_calibration_with_ties_and_with_the_class_already_over_the_allowance() -> None:
    tied = _probabilities([(0.7, 0.3, 0.0)] * 10)
    result = calibrate(tied, ["freeze"] * 10, LABELS, keep_in_domain=0.8)
    assert result.in_domain_acceptance == 1.0  # ties at the threshold are kept, never over-rejected
    swallowed = _probabilities([(0.1, 0.1, 0.8)] * 3 + [(0.9, 0.1, 0.0)] * 7)
    result = calibrate(swallowed, ["balance"] * 10, LABELS, keep_in_domain=0.9)
    assert result.threshold == 0.0 and result.in_domain_acceptance == pytest.approx(0.7)
    assert result.out_of_scope_false_acceptance is None
    assert list(accepted(swallowed[:4], LABELS, 0.0)) == [False, False, False, True]
    with pytest.raises(TrainError, match="keep-in-domain"):
        calibrate(swallowed, ["balance"] * 10, LABELS, keep_in_domain=0.0)


def test_nonspeech_is_deterministic_and_never_clips() -> None:
    for kind, make in nonspeech.KINDS.items():
        a, b = make(2.0, 8000, np.random.default_rng(3)), make(2.0, 8000, np.random.default_rng(3))
        assert a.shape == (16000,) and np.array_equal(a, b), kind
        assert np.max(np.abs(a)) < 1.0, kind


def test_a_folder_of_non_commands(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="does not exist"):
        folder_dataset(tmp_path / "none", 0, 0.2)
    (tmp_path / "noise").mkdir()
    with pytest.raises(TrainError, match="holds 0 audio files"):
        folder_dataset(tmp_path / "noise", 0, 0.2)
    for i in range(5):
        sf.write(str(tmp_path / "noise" / f"tv{i}.wav"), np.random.default_rng(i).normal(0, 0.1, 4000), 8000)
    data = folder_dataset(tmp_path / "noise", 0, 0.2)
    assert data.label_names == [OUT_OF_SCOPE_LABEL]
    assert (len(data.splits["train"]), len(data.splits["test"])) == (4, 1)


@pytest.fixture()
def strict_model(tiny_whisper_dir: Path, tmp_path: Path) -> Path:
    """The tiny model with a stored threshold nothing reaches (two labels: top scores are below 0.9999)."""
    folder = tmp_path / "strict"
    shutil.copytree(tiny_whisper_dir, folder)
    calibration = calibrate(np.array([[0.5, 0.5]] * 1, np.float32), ["a"], ("a", "b"), 1.0)
    write_calibration(folder, calibration)
    stored = json.loads((folder / CALIBRATION_FILE).read_text())
    stored["threshold"] = 0.9999
    (folder / CALIBRATION_FILE).write_text(json.dumps(stored))
    return folder


def test_the_stored_threshold_is_the_default_everywhere(strict_model: Path, tmp_path: Path) -> None:
    clip = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    assert Classifier.load(strict_model, device="cpu").threshold == 0.9999
    (answer,) = Classifier.load(strict_model, device="cpu").classify([clip])
    assert answer.label == "unknown" and answer.top_k[0][0] in ("a", "b")
    (plain,) = Classifier.load(strict_model, device="cpu", threshold=0.0).classify([clip])
    assert plain.label == answer.top_k[0][0]

    wav = tmp_path / "clip.wav"
    sf.write(str(wav), clip, 16000)
    for via in ("manual", "pipeline"):
        (p,) = predict_files(str(strict_model), [str(wav)], via=via)
        assert p.label == "unknown", via
        (p,) = predict_files(str(strict_model), [str(wav)], via=via, threshold=0.0)
        assert p.label in ("a", "b"), via

    config = tmp_path / "intentd.toml"
    config.write_text(f'[model]\npath = "{strict_model}"\ndevice = "cpu"\n')
    assert load_settings(config).model.threshold == DEFAULTS.model.threshold == -1.0
    assert UtteranceClassifier.load(load_settings(config))._classifier.threshold == 0.9999  # type: ignore[attr-defined]
    config.write_text(f'[model]\npath = "{strict_model}"\ndevice = "cpu"\nthreshold = 0.25\n')
    assert UtteranceClassifier.load(load_settings(config))._classifier.threshold == 0.25  # type: ignore[attr-defined]


def test_eval_reports_acceptance_and_out_of_domain_false_acceptance(strict_model: Path, tmp_path: Path) -> None:
    from conftest import write_tone_folder

    data = write_tone_folder(tmp_path / "ab", per_label=5, labels={"a": 300.0, "b": 2500.0})
    other = write_tone_folder(tmp_path / "other", per_label=3, labels={"x": 1000.0})
    strict = evaluate_model(str(strict_model), str(data), split="train", ood_datasets=[str(other)])
    assert strict["threshold"] == 0.9999 and strict["in_domain_acceptance"] == 0.0
    assert strict["out_of_domain_n"] == 3 and strict["out_of_domain_false_acceptance"] == 0.0
    lax = evaluate_model(str(strict_model), str(data), split="train", ood_datasets=[str(other)], threshold=0.0)
    assert lax["in_domain_acceptance"] == 1.0 and lax["out_of_domain_false_acceptance"] == 1.0
    assert lax["out_of_domain_datasets"][str(other)] == {"n": 3, "false_acceptance": 1.0}
    assert lax["accuracy"] == strict["accuracy"]  # accuracy is the argmax's, rejection aside


def test_a_broken_calibration_file_is_a_model_error(strict_model: Path) -> None:
    (strict_model / CALIBRATION_FILE).write_text('{"threshold": 2}')
    with pytest.raises(ModelError, match="threshold must be a number in"):
        Classifier.load(strict_model, device="cpu")
    (strict_model / CALIBRATION_FILE).write_text("{")
    with pytest.raises(ModelError, match="unreadable calibration"):
        Classifier.load(strict_model, device="cpu")
