"""Whole commands scored as Rhino's benchmark scores them: an intent and every slot value right, or not accepted.

A model plugs in through `CommandPredictor`: clips in, one `CommandPrediction` (intent, or None when rejected, and
{slot: value}) per clip out. Intent-only models predict no slots, so with them a command is accepted only when its
intent is right and it has no slots. Values compare after collapsing spaces and case ("Soy  milk" = "soy milk").
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

# Stands for "no value" in a confusion: a slot said but not predicted, or predicted but not said.
ABSENT = "(absent)"
TOP_CONFUSIONS = 10


@dataclass(frozen=True, slots=True)
class CommandPrediction:
    """What a model heard in one clip: the intent (None: rejected, nothing published) and its slot values."""

    intent: str | None
    slots: Mapping[str, str] = field(default_factory=dict)


class CommandPredictor(Protocol):
    """Anything that turns 16 kHz mono clips into commands (a slot model, or an intent model with no slots)."""

    predicts_slots: bool

    def predict(self, clips: Sequence[np.ndarray]) -> list[CommandPrediction]:
        """One prediction per clip, in order."""
        ...


def normalise_value(value: object) -> str:
    """A slot value as compared: spaces collapsed, case folded."""
    return " ".join(str(value).split()).casefold()


def slot_labels(raw: object) -> dict[str, str]:
    """A row's slot labels as {name: normalised value}: from a dict (metadata.jsonl, a struct column where absent
    slots are None) or its JSON text; None or empty values are absent slots."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        raw = json.loads(raw)
    if not isinstance(raw, Mapping):
        raise TypeError(f"slot labels must be a mapping of slot to value, not {raw!r}")
    return {str(k): normalise_value(v) for k, v in raw.items() if v is not None and normalise_value(v)}


def command_report(
    truth_intents: Sequence[str], truth_slots: Sequence[Mapping[str, str]], predictions: Sequence[CommandPrediction],
    predicts_slots: bool = True, top_confusions: int = TOP_CONFUSIONS,
) -> dict[str, Any]:
    """Command acceptance (intent and exactly the true slots, each with its value), intent accuracy, per-slot
    accuracy and the commonest slot confusions.

    A slot is scored on every command where it was said or predicted: right only when both agree, so a slot the
    model invents counts against it as much as one it misses.
    """
    if not len(truth_intents) == len(truth_slots) == len(predictions):
        raise ValueError(f"{len(truth_intents)} intents, {len(truth_slots)} slot labels, {len(predictions)} predictions")
    accepted = intents_right = 0
    scored: Counter[str] = Counter()
    right: Counter[str] = Counter()
    confusions: Counter[tuple[str, str, str]] = Counter()
    for intent, said, heard in zip(truth_intents, truth_slots, predictions, strict=True):
        said = {k: normalise_value(v) for k, v in said.items()}
        got = {k: normalise_value(v) for k, v in heard.slots.items()}
        intent_ok = heard.intent == intent
        intents_right += intent_ok
        accepted += intent_ok and said == got
        for name in said.keys() | got.keys():
            scored[name] += 1
            truth_value, predicted_value = said.get(name, ABSENT), got.get(name, ABSENT)
            if truth_value == predicted_value:
                right[name] += 1
            else:
                confusions[(name, truth_value, predicted_value)] += 1
    n = len(truth_intents)
    return {
        "command_n": n,
        "command_acceptance": accepted / n if n else None,
        "command_intent_accuracy": intents_right / n if n else None,
        "predicts_slots": predicts_slots,
        "slots": {name: {"accuracy": right[name] / scored[name], "n": scored[name]} for name in sorted(scored)},
        "slot_confusions": [
            {"slot": name, "truth": t, "predicted": p, "count": count}
            for (name, t, p), count in sorted(confusions.items(), key=lambda item: (-item[1], item[0]))[:top_confusions]
        ],
    }


def format_command_report(report: Mapping[str, Any]) -> list[str]:
    """Readable lines: acceptance, then per-slot accuracy, then the commonest confusions."""
    if not report.get("command_n"):
        return []
    lines = [(f"command acceptance {report['command_acceptance']:.4f} of {report['command_n']} commands "
              f"(intent and every slot right; intent alone {report['command_intent_accuracy']:.4f})")]
    if not report["predicts_slots"]:
        lines.append("  the model predicts intents only: only commands without slots can be accepted")
    if report["slots"]:
        width = max(len(name) for name in report["slots"]) + 2
        lines.append(f"{'slot':<{width}}accuracy      n")
        lines += [f"{name:<{width}}{row['accuracy']:8.4f}  {row['n']:5d}" for name, row in report["slots"].items()]
    if report["slot_confusions"]:
        lines.append("commonest slot confusions (said -> predicted):")
        lines += [f"  {c['slot']}: {c['truth']} -> {c['predicted']}  x{c['count']}" for c in report["slot_confusions"]]
    return lines
