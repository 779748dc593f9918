"""Length-aware windows (daemon/windows.py): a Whisper classifier served at the shortest stated window that holds
each clip, equal to transformers at the full window, and one score per clip whatever shares its batch."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from intentd.daemon.classifier import CALIBRATION_FILE, Classifier, extract_features
from intentd.daemon.errors import ModelError
from intentd.daemon.windows import encoder_states, parse_windows, window_for

WINDOWS_S = [0.2, 0.5]  # the tiny model's full window is 1 s


def _with_windows(source: Path, folder: Path, windows: object) -> Path:
    shutil.copytree(source, folder)
    (folder / CALIBRATION_FILE).write_text(json.dumps({"windows_s": windows}))
    return folder


def _clip(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(round(seconds * 16_000)) * 0.2).astype(np.float32)


def test_the_windowed_encoder_is_transformers_at_the_full_window(tiny_whisper_dir: Path) -> None:
    model = Classifier.load(tiny_whisper_dir, device="cpu")
    features = extract_features(model.extractor, [_clip(0.7, 1), _clip(0.3, 2)])["input_features"]
    with torch.inference_mode():
        ours = encoder_states(model.model.encoder, features)
        theirs = model.model.encoder(features).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_each_clip_is_served_at_its_window(tiny_whisper_dir: Path, tmp_path: Path) -> None:
    windowed = Classifier.load(_with_windows(tiny_whisper_dir, tmp_path / "w", WINDOWS_S), device="cpu")
    plain = Classifier.load(tiny_whisper_dir, device="cpu")
    assert windowed.windows == (3200, 8000, 16_000) and plain.windows == ()
    assert [windowed.input_length(n) for n in (100, 3200, 3201, 9000, 40_000)] == [3200, 3200, 8000, 16_000, 16_000]
    clips = [_clip(s, i) for i, s in enumerate((0.15, 0.4, 0.9, 1.3, 0.45, 0.1))]
    together = windowed.probabilities(clips)
    for clip, row in zip(clips, together, strict=True):
        window = windowed.input_length(clip.size)
        features = extract_features(windowed.extractor, [clip], window=window)["input_features"]
        assert features.shape[-1] == window // 160
        with torch.inference_mode():
            states = encoder_states(windowed.model.encoder, features)
            expected = torch.softmax(windowed.model(encoder_outputs=(states,)).logits, dim=-1)[0].numpy()
        np.testing.assert_allclose(row, expected, atol=1e-5)
        np.testing.assert_allclose(windowed.probabilities([clip])[0], row, atol=1e-5)  # alone or among others
    # At the full window the two models agree; a short clip at its short window scores differently.
    np.testing.assert_allclose(together[2:4], plain.probabilities(clips[2:4]), atol=1e-5)
    assert not np.allclose(together[0], plain.probabilities(clips[:1])[0], atol=1e-4)
    windowed.warmup()


@pytest.mark.parametrize(("windows", "message"), [
    ([0.31], "multiple of 0.02"), ([2.0], "at most the model's 1 s"), ([-1], "positive"), ("0.5", "list of seconds"),
])
def test_bad_windows_are_one_model_error(tiny_whisper_dir: Path, tmp_path: Path, windows: object,
                                         message: str) -> None:
    with pytest.raises(ModelError, match=message):
        Classifier.load(_with_windows(tiny_whisper_dir, tmp_path / "bad", windows), device="cpu")


def test_windows_need_a_whisper_model(tiny_wav2vec2_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="needs a Whisper classifier"):
        Classifier.load(_with_windows(tiny_wav2vec2_dir, tmp_path / "w2v", WINDOWS_S), device="cpu")


def test_window_choice() -> None:
    assert parse_windows([0.5, 0.2, 0.5], 16_000, 320, "x") == (3200, 8000, 16_000)
    assert window_for(1, (3200, 16_000)) == 3200 and window_for(99_999, (3200, 16_000)) == 16_000


def test_the_top_layer_trained_on_padded_windows_equals_serving_each_alone(tiny_whisper_dir: Path) -> None:
    from intentd.train.frozen import WhisperTop, _whisper_prefix

    model = Classifier.load(tiny_whisper_dir, device="cpu")
    top = WhisperTop(model.model, unfreeze_top=1).eval()
    clips, windows = [_clip(0.15, 1), _clip(0.45, 2), _clip(0.9, 3)], [3200, 8000, 16_000]
    hidden = []
    with torch.inference_mode():
        for clip, window in zip(clips, windows, strict=True):
            features = extract_features(model.extractor, [clip], window=window)["input_features"]
            hidden.append(_whisper_prefix(model.model, features, len(model.model.encoder.layers) - 1)[0][0])
        frames = torch.tensor([h.shape[0] for h in hidden])
        padded = torch.stack([torch.nn.functional.pad(h, (0, 0, 0, 50 - h.shape[0])) for h in hidden])
        together = top(padded, frames=frames)["logits"]
        for i, h in enumerate(hidden):
            alone = top(h[None])["logits"][0]
            torch.testing.assert_close(together[i], alone, atol=1e-5, rtol=1e-5)
            served = model.probabilities([clips[i]])  # the plain model serves the full window...
            if windows[i] == 16_000:
                np.testing.assert_allclose(torch.softmax(alone, -1).numpy(), served[0], atol=1e-5)


def test_fit_with_windows_trains_what_the_daemon_serves(tiny_whisper_dir: Path, tmp_path: Path,
                                                        tiny_wav2vec2_dir: Path) -> None:
    from conftest import write_tone_folder

    from intentd.train.data import iter_clips, load_labelled
    from intentd.train.errors import TrainError
    from intentd.train.fit import FitSettings, fit

    data = write_tone_folder(tmp_path / "tones", per_label=8, seed=4)  # 0.4-0.9 s clips: 0.5 s and 1 s windows
    settings = FitSettings(dataset=str(data), base_model=str(tiny_whisper_dir), out=str(tmp_path / "model"),
                           train_mode="top", epochs=2, batch_size=4, seed=0, out_of_scope=False, windows=(0.5,))
    result = fit(settings)
    stored = json.loads((tmp_path / "model" / CALIBRATION_FILE).read_text())
    assert stored["windows_s"] == [0.5] and "threshold" in stored
    served = Classifier.load(tmp_path / "model", device="cpu", threshold=0.0)
    assert served.windows == (8000, 16_000)
    split = load_labelled(str(data), seed=0).splits["test"]
    clips = [c for batch, _ in iter_clips(split) for c in batch]
    assert {served.input_length(c.size) for c in clips} == {8000, 16_000}  # both windows were trained and served
    logits = result.test_logits
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(served.probabilities(clips), expected / expected.sum(axis=1, keepdims=True), atol=1e-5)
    for bad, message in (({"train_mode": "full"}, "head or top"),
                         ({"base_model": str(tiny_wav2vec2_dir), "train_mode": "head"}, "Whisper backbone")):
        with pytest.raises(TrainError, match=message):
            fit(dataclasses.replace(settings, out=str(tmp_path / "bad"), **bad))
