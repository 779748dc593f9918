"""An intents file made into a model through intentd-train's CLI (synth, then fit a tiny Whisper), as the end-to-end
tests need it; skips where no TTS engine is installed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from intentd.train import cli

QUIET = ["--log-level", "ERROR"]


def tts_available() -> bool:
    from intentd.train import tts
    from intentd.train.errors import TrainError

    try:
        return bool(tts.available_engines())
    except TrainError:
        return False


def synth_and_fit(tmp_path: Path, intents: str, base_model: Path, synth: Sequence[str] = (),
                  fit: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write `intents`, synth it (seed 1) into tmp_path/data and fit base_model on it into tmp_path/model, with a
    small out-of-scope class (6 spoken clips, 5 noise clips) so fit's defaults stay in the test."""
    if not tts_available():
        pytest.skip("no TTS engine on PATH")
    (tmp_path / "intents.toml").write_text(intents)
    data, model = tmp_path / "data", tmp_path / "model"
    assert cli.main([*QUIET, "synth", "--intents", str(tmp_path / "intents.toml"), "--out", str(data),
                     "--seed", "1", "--workers", "2", "--no-progress", *synth]) == 0
    assert cli.main([*QUIET, "fit", "--dataset", str(data), "--base-model", str(base_model), "--out", str(model),
                     "--batch-size", "4", "--out-of-scope-clips", "6", "--out-of-scope-noise", "5", *fit]) == 0
    return data, model
