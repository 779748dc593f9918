"""End to end through the CLI: synth a 2-intent set -> fit a tiny Whisper -> eval -> predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train import cli

synth = pytest.importorskip("train.synth", reason="train.synth is not written yet")

INTENTS = """
[intents]
balance = ["check my balance", "what is my balance"]
freeze = ["freeze my card", "block my card"]
"""


def _tts_available() -> bool:
    from train import tts
    from train.errors import TrainError

    try:
        return bool(tts.available_engines())
    except TrainError:
        return False


def test_synth_fit_eval_predict(tmp_path: Path, tiny_whisper_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not _tts_available():
        pytest.skip("no TTS engine on PATH")
    (tmp_path / "intents.toml").write_text(INTENTS)
    data, model = tmp_path / "data", tmp_path / "model"
    quiet = ["--log-level", "ERROR"]
    assert cli.main([*quiet, "synth", "--intents", str(tmp_path / "intents.toml"), "--out", str(data),
                     "--per-intent", "6", "--seed", "1", "--workers", "2", "--no-progress"]) == 0
    assert cli.main([*quiet, "fit", "--dataset", str(data), "--base-model", str(tiny_whisper_dir), "--out",
                     str(model), "--train-mode", "head", "--epochs", "3", "--batch-size", "4"]) == 0
    capsys.readouterr()
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["dataset"]["labels"] == ["balance", "freeze"]

    assert cli.main([*quiet, "eval", "--model", str(model), "--dataset", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == metrics["dataset"]["sizes"]["test"] and 0.0 <= report["accuracy"] <= 1.0
    assert report["accuracy"] == pytest.approx(metrics["accuracy"])

    wav = next((data / "wav").rglob("*.wav"))
    assert cli.main([*quiet, "predict", "--model", str(model), str(wav), "--top-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(wav)) and "balance" in line and "freeze" in line
