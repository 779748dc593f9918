"""End to end through the CLI: synth a 2-intent set -> fit a tiny Whisper (with its out-of-scope class and
calibrated threshold, fit's defaults) -> eval -> predict."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from intentd.train import cli
from tests.grammar_fits import QUIET, synth_and_fit

synth = pytest.importorskip("intentd.train.synth", reason="train.synth is not written yet")

INTENTS = """
[intents]
balance = ["check my balance", "what is my balance"]
freeze = ["freeze my card", "block my card"]
"""


def test_synth_fit_eval_predict(tmp_path: Path, tiny_whisper_dir: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENTD_CACHE", str(tmp_path / "cache"))
    data, model = synth_and_fit(tmp_path, INTENTS, tiny_whisper_dir, synth=["--per-intent", "6"],
                                fit=["--train-mode", "head", "--epochs", "3"])
    quiet = QUIET
    capsys.readouterr()
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["dataset"]["labels"] == ["balance", "freeze", "unknown"]
    oos = metrics["dataset"]["sizes"]["test"] - len(datasets.load_from_disk(str(data))["test"])
    assert oos > 0  # the out-of-scope clips' held-out part joined the test split
    stored = json.loads((model / "intentd.json").read_text())
    calibration = metrics["calibration"]
    assert stored == calibration and 0.0 <= stored["threshold"] <= 1.0
    assert (calibration["out_of_scope"], calibration["out_of_scope_label"]) == (oos, "unknown")
    assert calibration["in_domain_acceptance"] >= 0.98 or calibration["threshold"] == 0.0

    assert cli.main([*quiet, "eval", "--model", str(model), "--dataset", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == len(datasets.load_from_disk(str(data))["test"]) and 0.0 <= report["accuracy"] <= 1.0
    assert report["threshold"] == stored["threshold"]
    assert report["in_domain_n"] == report["n"] and report["out_of_domain_false_acceptance"] is None
    # A second fit of the same recipe reuses the rendered out-of-scope clips.
    cached = list((tmp_path / "cache" / "out-of-scope").iterdir())
    assert len(cached) == 1 and (cached[0] / "dataset_dict.json").is_file()

    wav = next((data / "wav").rglob("*.wav"))
    assert cli.main([*quiet, "predict", "--model", str(model), str(wav), "--top-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(wav)) and "balance" in line and "freeze" in line
