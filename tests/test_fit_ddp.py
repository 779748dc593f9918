"""`intentd-train fit` unchanged under torchrun (Trainer's DDP): 2 CPU processes on gloo train a tiny Whisper on a
tiny tone set and leave one complete model folder, written, calibrated and measured once by rank 0."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from intentd.daemon.classifier import CALIBRATION_FILE, Classifier
from tests.conftest import tone_clip, write_tone_folder
from tests.daemon_proc import clean_env, tool

pytestmark = pytest.mark.slow

PROCESSES = 2
BATCH = 4
EPOCHS = 3
TRAIN_CLIPS = 28  # write_tone_folder(per_label=12): 36 clips, 8 held out


def test_fit_under_torchrun_with_two_cpu_processes(tmp_path: Path, tiny_whisper_dir: Path) -> None:
    data = write_tone_folder(tmp_path / "tones", per_label=12, seed=1)
    out = tmp_path / "model"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(PROCESSES),
         "--no-python", *tool("intentd-train"), "--log-level", "INFO", "fit", "--dataset", str(data),
         "--base-model", str(tiny_whisper_dir), "--out", str(out), "--train-mode", "head", "--epochs", str(EPOCHS),
         "--batch-size", str(BATCH), "--learning-rate", "1e-2", "--no-out-of-scope"],
        capture_output=True, text=True, env=clean_env({"OMP_NUM_THREADS": "1"}), timeout=240, check=False,
    )  # fmt: skip
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-4000:]

    # The same folder a single process writes, written once.
    assert {p.name for p in out.iterdir()} == {
        "config.json", "model.safetensors", "preprocessor_config.json", CALIBRATION_FILE, "metrics.json",
        "training_curves.png", "confusion_matrix.png", "checkpoints", "README.md"}
    # Each checkpoint holds the whole classifier once (rank 0 writes it), loadable on its own.
    assert all((c / "model" / "config.json").is_file() for c in (out / "checkpoints").glob("checkpoint-*"))
    assert said.count("calibrated threshold") == 1 and said.count("model written to") == 1
    assert done.stdout.count("accuracy ") == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == PROCESSES
    assert metrics["dataset"]["sizes"] == {"train": TRAIN_CLIPS, "test": 8}
    assert json.loads((out / CALIBRATION_FILE).read_text()) == metrics["calibration"]
    # Each step took a batch on every process: half the steps a single process would take.
    steps = EPOCHS * math.ceil(TRAIN_CLIPS / (BATCH * PROCESSES))
    saved = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*"))
    assert saved and saved[-1] == steps, saved
    # And it serves: the daemon's core loads it and scores a clip.
    import numpy as np

    classifier = Classifier.load(str(out), device="cpu", threshold=0.0)
    probabilities = classifier.probabilities([tone_clip(880.0, 16_000, np.random.default_rng(0))])
    assert probabilities.shape == (1, 3) and abs(float(probabilities.sum()) - 1.0) < 1e-5
