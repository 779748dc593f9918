"""The CPU forward on ONNX Runtime (daemon/onnx_forward.py) gives PyTorch's scores, at every window and batch
size, and is chosen only where it applies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from intentd.daemon import onnx_forward
from intentd.daemon.classifier import CALIBRATION_FILE, Classifier
from intentd.daemon.errors import ModelError

pytestmark = pytest.mark.skipif(not onnx_forward.available(), reason="onnxruntime and onnx are not installed")


def _clips(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(round(s * 16_000)) * 0.2).astype(np.float32) for s in (0.1, 0.3, 0.45, 0.8, 1.4)]


def test_onnx_scores_equal_torch_at_every_window_and_batch(tiny_whisper_dir: Path, tmp_path: Path) -> None:
    windowed = tmp_path / "w"
    shutil.copytree(tiny_whisper_dir, windowed)
    (windowed / CALIBRATION_FILE).write_text(json.dumps({"windows_s": [0.2, 0.5]}))
    for folder in (tiny_whisper_dir, windowed):
        onnx = Classifier.load(folder, device="cpu", runtime="onnx")
        plain = Classifier.load(folder, device="cpu", runtime="torch")
        assert onnx.onnx is not None and plain.onnx is None
        clips = _clips(1)
        np.testing.assert_allclose(onnx.probabilities(clips), plain.probabilities(clips), atol=1e-5)
        np.testing.assert_allclose(onnx.probabilities(clips[:1]), plain.probabilities(clips[:1]), atol=1e-5)
        np.testing.assert_allclose(onnx.probabilities(clips * 7, max_batch=32),
                                   plain.probabilities(clips * 7), atol=1e-5)


def test_auto_takes_onnx_only_where_it_applies(tiny_whisper_dir: Path, tiny_wav2vec2_dir: Path) -> None:
    assert Classifier.load(tiny_whisper_dir, device="cpu").onnx is not None  # auto
    assert Classifier.load(tiny_wav2vec2_dir, device="cpu").onnx is None
    cpu = torch.device("cpu")
    model = Classifier.load(tiny_whisper_dir, device="cpu", runtime="torch").model
    assert onnx_forward.choose("auto", model, cpu, torch.bfloat16) == "torch"
    with pytest.raises(ModelError, match="Whisper classifiers"):
        Classifier.load(tiny_wav2vec2_dir, device="cpu", runtime="onnx")
    with pytest.raises(ModelError, match="not one of auto, torch, onnx"):
        Classifier.load(tiny_whisper_dir, device="cpu", runtime="tensorrt")
