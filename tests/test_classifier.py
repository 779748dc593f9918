"""Classifier tests on a tiny real Whisper classifier built from a config (no downloads)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from intentd.daemon.audio import SAMPLE_RATE
from intentd.daemon.classifier import UNKNOWN_LABEL, Classifier, batch_groups, extract_features, fixed_window
from intentd.daemon.errors import AudioError, ModelError
from intentd.daemon.frames import Prediction, Utterance
from intentd.daemon.resample import Resampler
from intentd.daemon.utterance_classifier import UtteranceClassifier
from tests.tiny_models import TINY_LABELS, build_tiny_whisper

RATE = SAMPLE_RATE


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("models") / "tiny-intents")


@pytest.fixture(scope="module")
def classifier(tiny_dir: Path) -> Classifier:
    return Classifier.load(tiny_dir, device="cpu")


def _clips() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    # Different lengths (short, exactly one window, longer than the window) and loudness.
    return [
        (rng.standard_normal(n) * amp).astype(np.float32)
        for n, amp in ((8000, 0.1), (16000, 0.5), (24000, 0.01))
    ]


def test_loads_with_metadata(classifier: Classifier, tiny_dir: Path) -> None:
    assert classifier.labels == TINY_LABELS
    assert classifier.sample_rate == RATE
    assert classifier.max_samples == RATE  # chunk_length=1 s
    name, digest = classifier.model_id.split("@")
    assert name == tiny_dir.name
    assert len(digest) == 8 and int(digest, 16) >= 0
    assert str(classifier.dtype) == "torch.float32"


def test_batch_of_three_gives_three_predictions(classifier: Classifier) -> None:
    predictions = classifier.classify(_clips())
    assert len(predictions) == 3
    for prediction in predictions:
        assert isinstance(prediction, Prediction)
        assert prediction.label in TINY_LABELS
        assert len(prediction.top_k) == 3
        assert prediction.top_k[0] == (prediction.label, prediction.score)
        scores = [score for _, score in prediction.top_k]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)  # top 3 of 3 labels: the whole softmax
    # The tiny model is random but not degenerate: different clips get different scores.
    assert len({round(p.score, 4) for p in predictions}) > 1


def test_batched_equals_one_by_one(classifier: Classifier) -> None:
    clips = _clips()
    batched = classifier.classify(clips)
    for clip, together in zip(clips, batched, strict=True):
        (alone,) = classifier.classify([clip])
        assert alone.label == together.label
        for (la, sa), (lb, sb) in zip(alone.top_k, together.top_k, strict=True):
            assert la == lb
            assert sa == pytest.approx(sb, abs=1e-5)


def _others(count: int, seed: int) -> list[np.ndarray]:
    """`count` noise clips of lengths 0.1-2.5 s, none of them the probe's length."""
    rng = np.random.default_rng(seed)
    lengths = rng.choice(np.arange(1600, 40_000, 160), size=count, replace=False)
    return [(rng.standard_normal(int(n)) * rng.uniform(0.01, 0.5)).astype(np.float32) for n in lengths]


@pytest.mark.parametrize("kind", ["whisper", "wav2vec2"])
def test_a_clip_scores_the_same_alone_or_among_15_of_other_lengths(
    kind: str, tiny_whisper_dir: Path, tiny_wav2vec2_dir: Path
) -> None:
    """Fixed-window models pad every clip to the window; variable-length ones batch equal lengths only, so
    no neighbour's padding reaches a clip's score (padding to the longest moved wav2vec2 scores)."""
    model = Classifier.load(tiny_whisper_dir if kind == "whisper" else tiny_wav2vec2_dir, device="cpu")
    probe = (np.random.default_rng(11).standard_normal(12_345) * 0.2).astype(np.float32)
    alone = model.probabilities([probe])[0]
    others = _others(15, seed=5)
    together = model.probabilities([*others[:7], probe, *others[7:]])
    np.testing.assert_allclose(together[7], alone, atol=1e-5)
    # And each neighbour scores as it does alone, in small batches too.
    small = model.probabilities(others, max_batch=4)
    for i, other in enumerate(others):
        np.testing.assert_allclose(small[i], model.probabilities([other])[0], atol=1e-5)
    (prediction,) = model.classify([probe])
    assert prediction.score == pytest.approx(float(alone.max()), abs=1e-7)


def test_batch_groups_policy() -> None:
    assert batch_groups([9, 9, 9, 9]) == [[0, 1, 2, 3]]  # one fixed window: one forward
    assert batch_groups([9, 9, 9, 9], max_batch=3) == [[0, 1, 2], [3]]
    assert batch_groups([5, 7, 5, 9, 5]) == [[0, 2, 4], [1], [3]]
    assert batch_groups([5, 7, 5, 9, 5], max_batch=2) == [[0, 2], [4], [1], [3]]
    assert batch_groups([]) == []


def test_fixed_window_is_decided_once(tiny_whisper_dir: Path, tiny_wav2vec2_dir: Path) -> None:
    whisper = Classifier.load(tiny_whisper_dir, device="cpu")
    wav2vec2 = Classifier.load(tiny_wav2vec2_dir, device="cpu")
    assert fixed_window(whisper.extractor) == whisper.max_samples == RATE
    assert fixed_window(wav2vec2.extractor) is None and wav2vec2.max_samples is None
    with pytest.raises(AudioError, match="equal length"):
        extract_features(wav2vec2.extractor, [np.zeros(100, np.float32), np.zeros(200, np.float32)])


def test_empty_batch_and_bad_clips(classifier: Classifier) -> None:
    assert classifier.classify([]) == []
    with pytest.raises(AudioError, match="clip 1"):
        classifier.classify([np.zeros(100, np.float32), np.zeros((2, 100), np.float32)])
    with pytest.raises(AudioError, match="NaN"):
        classifier.classify([np.full(100, np.nan, np.float32)])
    with pytest.raises(AudioError, match="clip 0: audio clip is empty"):
        classifier.classify([np.zeros(0, np.float32)])


def test_top_k_is_capped_and_configurable(tiny_dir: Path) -> None:
    one = Classifier.load(tiny_dir, device="cpu", top_k=1)
    assert all(len(p.top_k) == 1 for p in one.classify(_clips()))
    many = Classifier.load(tiny_dir, device="cpu", top_k=10)
    assert all(len(p.top_k) == len(TINY_LABELS) for p in many.classify(_clips()))


def test_threshold_yields_unknown_with_top_k_attached(tiny_dir: Path, classifier: Classifier) -> None:
    plain = classifier.classify(_clips())
    strict = Classifier.load(tiny_dir, device="cpu", threshold=0.999).classify(_clips())
    for before, after in zip(plain, strict, strict=True):
        assert after.label == UNKNOWN_LABEL
        assert after.score == pytest.approx(before.score)
        assert after.top_k[0][0] == before.label
    lax = Classifier.load(tiny_dir, device="cpu", threshold=0.0).classify(_clips())
    assert [p.label for p in lax] == [p.label for p in plain]


def test_warmup_runs(classifier: Classifier) -> None:
    classifier.warmup()


def test_model_id_stable_across_copy_and_changed_by_weights(tiny_dir: Path, tmp_path: Path) -> None:
    original = Classifier.load(tiny_dir, device="cpu").model_id
    copy = tmp_path / tiny_dir.name
    shutil.copytree(tiny_dir, copy)
    assert Classifier.load(copy, device="cpu").model_id == original
    retrained = build_tiny_whisper(tmp_path / "other" / tiny_dir.name, seed=1)
    changed = Classifier.load(retrained, device="cpu").model_id
    assert changed.split("@")[0] == original.split("@")[0]
    assert changed != original


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing", "does not exist"),
        ("file", "not a folder"),
        ("no_config", "no config.json"),
        ("bad_config", "cannot load"),
        ("no_extractor", "preprocessor_config.json"),
        ("no_weights", "no model.safetensors"),
        ("pickle_only", "pickle"),
        ("truncated_weights", "cannot load the model"),
        ("garbage_weights", "cannot load the model"),
        ("wrong_shapes", "tiny-intents"),
    ],
)
def test_broken_folders_raise_model_error(
    tiny_dir: Path, tmp_path: Path, breakage: str, message: str
) -> None:
    folder = tmp_path / "tiny-intents"
    if breakage == "file":
        folder.write_text("not a model")
    elif breakage != "missing":
        shutil.copytree(tiny_dir, folder)
    weights = folder / "model.safetensors"
    if breakage == "no_config":
        (folder / "config.json").unlink()
    elif breakage == "bad_config":
        (folder / "config.json").write_text("{ not json")
    elif breakage == "no_extractor":
        (folder / "preprocessor_config.json").unlink()
    elif breakage == "no_weights":
        weights.unlink()
    elif breakage == "pickle_only":
        weights.rename(folder / "pytorch_model.bin")
    elif breakage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif breakage == "garbage_weights":
        weights.write_bytes(b"\x00" * 64)
    elif breakage == "wrong_shapes":
        # Weights from a model with a different width: loading must refuse, not re-initialise at random.
        config = json.loads((folder / "config.json").read_text())
        config["d_model"] = 32
        (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=message) as caught:
        Classifier.load(folder, device="cpu")
    assert str(folder) in str(caught.value)


def test_bad_device_and_dtype_raise_model_error(tiny_dir: Path) -> None:
    with pytest.raises(ModelError, match="dtype"):
        Classifier.load(tiny_dir, device="cpu", dtype="int8")
    with pytest.raises(ModelError, match="device"):
        Classifier.load(tiny_dir, device="not-a-device")


def _utterance(samples: np.ndarray, rate: int, index: int) -> Utterance:
    return Utterance(
        stream_id="s",
        index=index,
        samples=samples,
        sample_rate=rate,
        start_sample=0,
        end_sample=len(samples),
        truncated=False,
        hangover_samples=0,
        closed_monotonic=0.0,
        stream_origin_wall=0.0,
    )


def test_engine_resamples_then_classifies_in_one_batch(classifier: Classifier) -> None:
    clips = _clips()
    resampler = Resampler()
    engine = UtteranceClassifier(classifier, resampler)
    assert engine.model_id == classifier.model_id
    at_8k = clips[1][::2].copy()
    utterances = [_utterance(clips[0], RATE, 0), _utterance(at_8k, 8000, 1), _utterance(clips[2], RATE, 2)]
    predictions = engine.classify(utterances)
    assert resampler.cached_rates == (8000,)
    expected = classifier.classify([clips[0], resampler(at_8k, 8000), clips[2]])
    assert [p.label for p in predictions] == [p.label for p in expected]
    assert [p.score for p in predictions] == pytest.approx([p.score for p in expected], abs=1e-6)
    assert engine.classify([]) == []


def test_engine_refuses_a_resampler_for_another_rate(classifier: Classifier) -> None:
    with pytest.raises(ModelError, match="8000 Hz"):
        UtteranceClassifier(classifier, Resampler(target_rate=8000))
