"""Slot heads in the one model core: a folder's heads load beside the HF classifier, a clip's slots do not depend on
its batch, training's cached path hears the same encoder states as serving, and intent events carry the slots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from intentd.daemon import events
from intentd.daemon.classifier import CALIBRATION_FILE, Classifier
from intentd.daemon.errors import ModelError
from intentd.daemon.frames import Prediction
from intentd.daemon.slot_heads import (
    ABSENT_INDEX,
    IGNORE_INDEX,
    SLOT_HEADS_FILE,
    SLOTS_KEY,
    SlotHeads,
    SlotSchema,
    decode_slots,
)
from tests.tiny_models import build_tiny_whisper

# Intents of tests/tiny_models.TINY_LABELS: transfer and balance take slots, stop none.
SCHEMA = SlotSchema(values={"amount": ("fifty", "ten", "twenty"), "account": ("checking", "savings")},
                    intents={"transfer": ("account", "amount"), "balance": ("account",)})
SAME = 1e-5


def _with_heads(folder: Path, windows_s: list[float] | None = None, seed: int = 3) -> Path:
    """The tiny Whisper folder plus random slot heads loud enough that clips get different values."""
    torch.manual_seed(seed)
    heads = SlotHeads(16, SCHEMA)
    with torch.no_grad():
        for name, p in heads.named_parameters():
            p.normal_(0.0, 1.0) if name.endswith("weight") else p.zero_()
    heads.save(folder)
    meta = {SLOTS_KEY: SCHEMA.to_json(), **({"windows_s": windows_s} if windows_s else {})}
    (folder / CALIBRATION_FILE).write_text(json.dumps(meta))
    return folder


def _clips(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1600, 16_000, n)  # 0.1-1 s: under and over a 0.5 s window
    return [(rng.standard_normal(int(k)) * rng.uniform(0.02, 0.5)).astype(np.float32) for k in lengths]


@pytest.fixture(scope="module", params=[None, [0.5]], ids=["full-window", "windows"])
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _with_heads(build_tiny_whisper(tmp_path_factory.mktemp("slots") / "m", seed=0), request.param)


def test_slot_scores_of_a_clip_do_not_depend_on_its_batch(model_dir: Path) -> None:
    classifier = Classifier.load(model_dir, device="cpu", threshold=0.0)
    assert classifier.slot_schema == SCHEMA and classifier.onnx is None
    clips = _clips(9)
    probs, slots = classifier.scores(clips, max_batch=4)
    heard = {(name, value, round(score, 3)) for clip_slots in slots for name, (value, score) in clip_slots.items()}
    assert len({h[:2] for h in heard}) >= 2 and len(heard) >= 4, slots  # random heads tell clips apart, so equality below means something
    for i, clip in enumerate(clips):
        alone_probs, (alone,) = classifier.scores([clip])
        np.testing.assert_allclose(alone_probs[0], probs[i], atol=SAME)
        assert alone.keys() == slots[i].keys()
        for name, (value, score) in alone.items():
            assert slots[i][name][0] == value and slots[i][name][1] == pytest.approx(score, abs=SAME)
    # The intent scores are the pipeline-loadable classifier's own: the heads change nothing there.
    plain = Classifier.load(model_dir, device="cpu", threshold=0.0)
    plain.slot_heads = None
    np.testing.assert_allclose(plain.probabilities(clips), probs, atol=SAME)


def test_answers_carry_only_the_intents_slots(model_dir: Path) -> None:
    classifier = Classifier.load(model_dir, device="cpu", threshold=0.0)
    clips = _clips(12, seed=1)
    _, slots = classifier.scores(clips)
    for p, heard in zip(classifier.classify(clips), slots, strict=True):
        allowed = set(SCHEMA.intents.get(p.label, ()))
        assert set(p.slots) == set(heard) & allowed, (p, heard)
    rejecting = Classifier.load(model_dir, device="cpu", threshold=1.0)
    assert all(p.label == events.UNKNOWN_LABEL and not p.slots for p in rejecting.classify(clips))


def test_training_cache_hears_what_serving_hears(model_dir: Path) -> None:
    """fit's cached path (the frozen prefix, then WhisperTop's layers and norm, padded windows masked) gives the
    slot heads the states the serving core gives them: same values, same scores."""
    import datasets

    from intentd.train.data import extract, max_samples_for
    from intentd.train.frozen import build_cache, small_module

    classifier = Classifier.load(model_dir, device="cpu", threshold=0.0)
    clips = _clips(6, seed=2)
    rows = extract(classifier.extractor, clips, max_samples_for(classifier.extractor, 4.0), classifier.windows)
    features = datasets.Dataset.from_dict({**rows, "labels": [0] * len(clips)})
    for top in (0, 1):  # head mode with slots (no trained layer) and top-1
        cache, _ = build_cache(classifier.model, features, "top", top)
        module = small_module(classifier.model, "top", top, classifier.slot_heads).eval()
        with torch.no_grad():
            if "frames" in cache.extra:
                states, valid = module.window_states(cache.inputs, cache.extra["frames"])
            else:
                states, valid = module.encode(cache.inputs)[0], None
            logits = module.slot_heads(states, valid)
        trained = decode_slots([torch.softmax(x, -1).numpy() for x in logits], SCHEMA)
        _, served = classifier.scores(clips)
        for got, want in zip(trained, served, strict=True):
            assert got.keys() == want.keys()
            for name in got:
                assert got[name][0] == want[name][0] and got[name][1] == pytest.approx(want[name][1], abs=1e-4)


def test_targets_absent_and_masked() -> None:
    assert SCHEMA.targets("transfer", {"amount": "ten"}) == [2, ABSENT_INDEX]  # amount "ten", account absent
    assert SCHEMA.targets("transfer", None) == [IGNORE_INDEX, IGNORE_INDEX]  # nobody labelled this clip
    assert SCHEMA.targets("unknown", None, absent_only=True) == [ABSENT_INDEX, ABSENT_INDEX]
    heads = SlotHeads(4, SCHEMA)
    logits = heads(torch.randn(3, 5, 4))
    assert heads.loss(logits, torch.full((3, 2), IGNORE_INDEX)) is None
    assert heads.loss(logits, torch.tensor([[0, 1], [IGNORE_INDEX, 2], [3, 0]])) is not None


def test_a_folder_naming_slots_without_their_weights_is_refused(tmp_path: Path) -> None:
    folder = _with_heads(build_tiny_whisper(tmp_path / "m", seed=0))
    (folder / SLOT_HEADS_FILE).unlink()
    with pytest.raises(ModelError, match=SLOT_HEADS_FILE):
        Classifier.load(folder, device="cpu")
    _with_heads(folder)
    with pytest.raises(ModelError, match="PyTorch"):
        Classifier.load(folder, device="cpu", runtime="onnx")


def test_intent_events_carry_slots_and_events_without_them_are_unchanged() -> None:
    from intentd.daemon.frames import Classified, Utterance

    def event(prediction: Prediction) -> events.IntentEvent:
        u = Utterance(stream_id="s", index=0, samples=np.zeros(1600, np.float32), sample_rate=16_000,
                      start_sample=0, end_sample=1600, stream_origin_wall=1.0, closed_monotonic=0.0,
                      hangover_samples=0, truncated=False)
        return events.IntentEvent.from_classified(Classified(u, prediction, "m@1", 1.0, 2.0, 1), 0.5)

    with_slots = event(Prediction("transfer", 0.9, (("transfer", 0.9),), {"amount": ("ten", 0.8123456789)}))
    topic, body = events.encode(with_slots, seq=5, published_wall=2.0)
    raw = json.loads(body)
    assert raw["slots"] == {"amount": {"value": "ten", "score": 0.812346}} and raw["schema"] == 1
    assert list(raw).index("slots") == list(raw).index("top_k") + 1
    back = events.decode([topic, body])
    assert isinstance(back, events.IntentEvent) and back.slots == {"amount": events.SlotValue("ten", 0.812346)}
    assert "amount=ten" in back.summary()
    plain = event(Prediction("stop", 0.7, (("stop", 0.7),)))
    _, body = events.encode(plain, seq=6, published_wall=2.0)
    assert "slots" not in json.loads(body)
    back = events.decode([b"intent.stop", body])
    assert isinstance(back, events.IntentEvent) and back.slots == {} and back.data() == plain.data()
