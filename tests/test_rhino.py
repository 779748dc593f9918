"""Rhino contexts as intents files: choices, optionals, captured slots and macros expand as Picovoice documents
them, sampling returns each sentence's slot values, and errors name the intent, expression and column."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from intentd.train.errors import TrainError
from intentd.train.intents import load_intents
from intentd.train.rhino import parse_context

FIXTURE = Path(__file__).parent / "fixtures" / "smart_lights.yaml"
BARISTA_CONTEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "barista-dev" / "coffee_maker.yaml"


def test_fixture_expands_choices_optionals_slots_and_macros() -> None:
    intents = load_intents(FIXTURE)
    assert intents.names == ("changeColor", "changeState", "copyColor")
    sentences = set(intents.sentences("changeState"))
    # [switch, turn] x 2 states + [switch, turn] x 3 locations x 2 states
    assert len(sentences) == 2 * 2 + 2 * 3 * 2
    assert "switch on the lights" in sentences
    assert "turn the living room lights off" in sentences
    colour = set(intents.sentences("changeColor"))
    assert "turn kitchen lights red" in colour  # every optional left out
    assert "could you make all the bedroom lights blue" in colour  # the macro, both optionals taken
    assert "set the green of the lights in the kitchen" in colour
    assert not any(s.startswith("(") or "@" in s or "$" in s for s in colour)


def test_sampled_commands_carry_the_values_their_sentence_says() -> None:
    intents = load_intents(FIXTURE)
    commands = intents.sample_commands("changeColor", 40, np.random.default_rng(0))
    assert len(commands) == 40
    for command in commands:
        assert command.intent == "changeColor"
        assert command.slots["color"] in ("blue", "green", "red")
        assert re.search(rf"\b{command.slots['color']}\b", command.text)
        if "location" in command.slots:
            assert command.slots["location"] in command.text
        else:  # only the optional "(in the $location:location)" may leave the location out
            assert command.text.startswith(("change", "set"))
    copied = intents.sample_commands("copyColor", 9, np.random.default_rng(1))
    assert len(copied) == 9  # 3 x 3 pairs, the same slot type captured under two names
    for command in copied:
        assert command.text == f"make the {command.slots['to']} lights like the {command.slots['from']} ones"
    assert intents.slot_values("copyColor") == {"from": ("bedroom", "kitchen", "living room"),
                                                "to": ("bedroom", "kitchen", "living room")}


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("[turn, switch the lights", "unclosed '[' opened at column 1"),
        ("turn on) the lights", "unmatched ')' at column 8"),
        ("turn, on the lights", "',' outside [...] or (...) at column 5"),
        ("[turn, , switch] on", "empty item"),
        ("turn on the $location lights", "bad slot reference at column 13"),
        ("turn on the $place:place lights", "unknown slot type $place at column 13"),
        ("@rude turn on the lights", "unknown macro @rude at column 1"),
        ("turn $state:state the $state:state lights", "captured twice on one path (columns 6 and 23)"),
        ("set $pv.TwoDigitInteger:level percent", "built-in slot type $pv.TwoDigitInteger at column 5"),
    ],
)
def test_expression_errors_name_intent_expression_and_column(expression: str, problem: str) -> None:
    text = FIXTURE.read_text(encoding="utf-8").replace('"[switch, turn] $state:state the lights"', f'"{expression}"')
    with pytest.raises(TrainError) as info:
        parse_context(text, source="lights.yaml")
    message = str(info.value)
    assert message.startswith("lights.yaml: intent 'changeState', expression ")
    assert expression in message
    assert problem in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("context: [\n", "YAML syntax error"),
        ("intents: {}\n", "expected a top-level 'context:'"),
        ("context:\n  expressions: {}\n", "no expressions"),
        ("context:\n  expression:\n    a: ['hi']\n", "unknown key(s) under context"),
        ("context:\n  expressions:\n    a: []\n", "intent 'a' must be a non-empty list"),
        ("context:\n  expressions:\n    a: ['$x:y']\n  slots:\n    x: [yes]\n", "quote it"),
    ],
)
def test_file_level_errors_name_the_file(text: str, problem: str) -> None:
    with pytest.raises(TrainError, match="lights.yaml") as info:
        parse_context(text, source="lights.yaml")
    assert problem in str(info.value)


@pytest.mark.skipif(not BARISTA_CONTEXT.is_file(), reason="../shared/data/barista-dev is not present")
def test_the_benchmark_coffee_context_loads_with_its_six_slots() -> None:
    intents = load_intents(BARISTA_CONTEXT)
    assert intents.names == ("orderDrink",)
    values = intents.slot_values()
    assert set(values) == {"coffeeDrink", "size", "roast", "numberOfShots", "milkAmount", "sugarAmount"}
    assert "iced mocha" in values["coffeeDrink"]
    for command in intents.sample_commands("orderDrink", 50, np.random.default_rng(0)):
        assert command.slots["coffeeDrink"] in command.text
        assert all(value in command.text for value in command.slots.values())
