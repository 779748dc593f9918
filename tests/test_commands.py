"""Command acceptance as Rhino's benchmark counts it, on hand-made cases, and through `intentd-train eval` on an
audio folder whose metadata.jsonl labels slots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tone_clip

from intentd.train import cli
from intentd.train.commands import ABSENT, CommandPrediction, command_report, slot_labels

TRUTH = [
    ("order", {"size": "large", "drink": "latte"}),
    ("order", {"size": "small", "drink": "mocha"}),
    ("cancel", {}),
    ("order", {"drink": "latte"}),
    ("order", {"drink": " Latte "}),
]
PREDICTED = [
    CommandPrediction("order", {"size": "large", "drink": "latte"}),  # all right
    CommandPrediction("order", {"size": "large", "drink": "mocha"}),  # wrong size
    CommandPrediction("cancel"),  # right, no slots
    CommandPrediction("order", {"drink": "latte", "size": "large"}),  # a slot nobody said
    CommandPrediction("cancel"),  # wrong intent, drink missed
]


def _report(predicted: Sequence[CommandPrediction], predicts_slots: bool = True) -> dict:
    return command_report([t for t, _ in TRUTH], [s for _, s in TRUTH], predicted, predicts_slots)


def test_acceptance_needs_the_intent_and_exactly_the_said_slots() -> None:
    report = _report(PREDICTED)
    assert report["command_n"] == 5
    assert report["command_acceptance"] == pytest.approx(2 / 5)
    assert report["command_intent_accuracy"] == pytest.approx(4 / 5)
    # drink is said or predicted in commands 1, 2, 4, 5 and right in 1, 2, 4 (" Latte " is latte);
    # size in 1, 2, 4 and right only in 1.
    assert report["slots"] == {"drink": {"accuracy": 0.75, "n": 4}, "size": {"accuracy": pytest.approx(1 / 3), "n": 3}}
    confusions = {(c["slot"], c["truth"], c["predicted"]): c["count"] for c in report["slot_confusions"]}
    assert confusions == {("size", "small", "large"): 1, ("size", ABSENT, "large"): 1, ("drink", "latte", ABSENT): 1}


def test_an_intent_only_model_is_accepted_only_on_commands_without_slots() -> None:
    report = _report([CommandPrediction(p.intent) for p in PREDICTED], predicts_slots=False)
    assert report["command_acceptance"] == pytest.approx(1 / 5)  # only "cancel"
    assert report["command_intent_accuracy"] == pytest.approx(4 / 5)
    assert all(row["accuracy"] == 0 for row in report["slots"].values())
    # A rejected clip (intent None) is never accepted, even with nothing to say about slots.
    rejected = _report([CommandPrediction(None)] * 5)
    assert rejected["command_acceptance"] == 0 and rejected["command_intent_accuracy"] == 0


def test_slot_labels_from_struct_rows_json_and_nothing() -> None:
    assert slot_labels({"size": " Large ", "roast": None, "milk": ""}) == {"size": "large"}
    assert slot_labels('{"drink": "soy  milk"}') == {"drink": "soy milk"}
    assert slot_labels(None) == {}


class SlotsFromPitch:
    """A stand-in slot model: intent from the clip's pitch, and a 'pitch' slot on every high one."""

    predicts_slots = True

    def predict(self, clips: Sequence[np.ndarray]) -> list[CommandPrediction]:
        out = []
        for clip in clips:
            spectrum = np.abs(np.fft.rfft(clip))
            hz = np.argmax(spectrum) * 16_000 / clip.size
            out.append(CommandPrediction("b", {"pitch": "high"}) if hz > 1000 else CommandPrediction("a"))
        return out


def test_eval_reports_command_acceptance_from_metadata_jsonl(tmp_path: Path, tiny_whisper_dir: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Labels a (300 Hz) and b (2500 Hz); half the b clips say a slot. The intent-only tiny model can be accepted
    only on slot-free commands; a model that returns slots plugs into the same report."""
    from intentd.train.evaluation import evaluate_model

    root = tmp_path / "folder"
    root.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(8):
        label, hz = ("a", 300.0) if i % 2 == 0 else ("b", 2500.0)
        sf.write(root / f"{i}.wav", tone_clip(hz, 16_000, rng), 16_000)
        slots = {"pitch": "high"} if label == "b" and i % 4 == 1 else {}
        lines.append(json.dumps({"file_name": f"{i}.wav", "intent": label, "slots": slots}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    assert cli.main(["--log-level", "ERROR", "eval", "--model", str(tiny_whisper_dir), "--dataset", str(root),
                     "--split", "all", "--threshold", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == report["command_n"] == 8
    assert report["predicts_slots"] is False
    # Accepted commands are right-intent commands without slots; the two with a slot never are.
    assert report["command_acceptance"] <= report["accuracy"]
    assert report["slots"]["pitch"] == {"accuracy": 0.0, "n": 2}

    assert cli.main(["--log-level", "ERROR", "eval", "--model", str(tiny_whisper_dir), "--dataset", str(root),
                     "--split", "all", "--threshold", "0"]) == 0
    text = capsys.readouterr().out
    assert "command acceptance" in text and "predicts intents only" in text and "pitch: high -> (absent)" in text

    with_slots = evaluate_model(str(tiny_whisper_dir), str(root), split="all", threshold=0.0,
                                predictor=SlotsFromPitch())
    # The stand-in hears every intent; it says "pitch" for every b clip, but only half of them said it.
    assert with_slots["command_intent_accuracy"] == 1.0
    assert with_slots["command_acceptance"] == pytest.approx(6 / 8)
    assert with_slots["slots"]["pitch"] == {"accuracy": 0.5, "n": 4}
    assert with_slots["predicts_slots"] is True
