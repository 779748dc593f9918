"""Intents files: template syntax, slots, deterministic sampling, and errors that name the phrase at fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from intentd.train.errors import TrainError
from intentd.train.intents import load_intents, parse_intents

INTENTS_DIR = Path(__file__).resolve().parents[1] / "train" / "intents"
MINDS14_INTENTS = (
    "abroad", "address", "app_error", "atm_limit", "balance", "business_loan", "card_issues", "cash_deposit",
    "direct_debit", "freeze", "high_value_payment", "joint_account", "latest_transactions", "pay_bill",
)  # fmt: skip
MIN_SENTENCES_PER_INTENT = 100

SMALL = """
[slots]
account = ["checking", "savings"]
[intents]
balance = ["I (want|need) to check my {account} balance [please]"]
bye = "goodbye"
"""


def test_alternatives_optional_parts_and_slots_expand_to_every_combination() -> None:
    intents = parse_intents(SMALL)
    assert intents.names == ("balance", "bye")
    expected = {
        f"I {verb} to check my {account} balance{tail}"
        for verb in ("want", "need")
        for account in ("checking", "savings")
        for tail in ("", " please")
    }
    assert set(intents.sentences("balance")) == expected
    assert intents.sentences("bye") == ["goodbye"]


def test_nested_groups_and_slot_values_with_syntax() -> None:
    text = """
    [slots]
    card = ["(debit|credit) card", "card"]
    [intents]
    lost = ["[I (have|'ve)] lost my {card}[, (help|please)]"]
    """
    sentences = set(parse_intents(text).sentences("lost"))
    assert "lost my debit card" in sentences
    assert "I've lost my card, please" in sentences  # no space is left before the apostrophe
    assert "I have lost my credit card, help" in sentences
    # 3 prefixes x 3 cards x 3 endings
    assert len(sentences) == 27


def test_sampling_is_deterministic_distinct_and_covers_every_phrase() -> None:
    text = """
    [slots]
    n = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
    [intents]
    a = ["short", "number {n} {n} {n}"]
    """
    intents = parse_intents(text)
    first = intents.sample("a", 20, np.random.default_rng(5))
    again = intents.sample("a", 20, np.random.default_rng(5))
    other = intents.sample("a", 20, np.random.default_rng(6))
    assert first == again
    assert first != other
    assert len(set(first)) == len(first) == 20
    # The one-sentence phrase is not drowned by the 512-sentence one.
    assert "short" in first


def test_sampling_more_than_exist_returns_all_distinct() -> None:
    intents = parse_intents(SMALL)
    assert sorted(intents.sample("balance", 100, np.random.default_rng(0))) == intents.sentences("balance")


@pytest.mark.parametrize(
    ("phrase", "problem"),
    [
        ("check (my|the balance", "unclosed '('"),
        ("check my] balance", "unmatched ']'"),
        ("check | balance", "'|' outside"),
        ("check (my||the) balance", "empty alternative"),
        ("check my {acount} balance", "unknown slot {acount}"),
        ("check my {account balance", "unclosed '{'"),
        ("check my {a b} balance", "bad slot name"),
    ],
)
def test_syntax_errors_name_intent_phrase_and_problem(phrase: str, problem: str) -> None:
    text = f'[slots]\naccount = ["checking"]\n[intents]\nok = ["fine"]\nbalance = ["{phrase}"]\n'
    with pytest.raises(TrainError) as info:
        parse_intents(text, source="bank.toml")
    message = str(info.value)
    assert "bank.toml" in message
    assert "'balance'" in message
    assert phrase in message
    assert problem in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[intents]\nbalance = [\n", "TOML syntax error"),
        ("[intents]\nbalance = []\n", "intent 'balance' has no phrases"),
        ("[intents]\n", "no [intents]"),
        ('[intent]\nbalance = ["x"]\n', "unknown top-level key"),
        ("[intents]\nbalance = [1]\n", "list of phrase strings"),
        ('[slots]\naccount = []\n[intents]\nbalance = ["x"]\n', "slot 'account' must be a non-empty list"),
        ('[slots]\na = ["{b}"]\nb = ["{a}"]\n[intents]\nx = ["{a}"]\n', "refers to itself"),
    ],
)
def test_file_level_errors(text: str, problem: str) -> None:
    with pytest.raises(TrainError, match="bank.toml") as info:
        parse_intents(text, source="bank.toml")
    assert problem in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(TrainError, match="nope.toml does not exist"):
        load_intents(missing)


def test_minds14_covers_the_14_intents_with_many_sentences_each() -> None:
    intents = load_intents(INTENTS_DIR / "minds14.toml")
    assert intents.names == MINDS14_INTENTS
    for name in intents.names:
        assert len(intents.sentences(name)) >= MIN_SENTENCES_PER_INTENT, name
    # Sentences are labelled by intent: one sentence under two intents would be a contradictory label.
    owners: dict[str, str] = {}
    for name in intents.names:
        for sentence in intents.sentences(name):
            assert owners.setdefault(sentence, name) == name, (sentence, owners[sentence], name)


def test_digits_are_just_the_words() -> None:
    intents = load_intents(INTENTS_DIR / "digits.toml")
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    assert intents.names == words
    for word in words:
        assert intents.sentences(word) == [word]


COFFEE = """
[slots]
drink = ["latte", "(mocha|mochaccino)"]
shots = ["{n} shots"]
n = ["two", "three"]
[slots.size]
large = ["large", "big", "grande"]
small = "small"
[intents]
order = ["[can I (get|have)] a [{size:size}] {drink:drink} [with {shots:shots}] [please]"]
cancel = ["cancel [my order]"]
"""


def test_captured_slots_come_back_with_canonical_values_and_synonyms_map_to_theirs() -> None:
    intents = parse_intents(COFFEE)
    commands = intents.sample_commands("order", 200, np.random.default_rng(0))
    assert len({c.text for c in commands}) == len(commands) == 200
    sizes = {"large": ("large", "big", "grande"), "small": ("small",)}
    seen_synonyms = set()
    for command in commands:
        words = command.text.split()
        assert command.slots["drink"] in words  # a list value is what was said: mocha or mochaccino
        if "size" in command.slots:
            said = [w for w in words if w in sizes["large"] + sizes["small"]]
            assert len(said) == 1 and said[0] in sizes[command.slots["size"]]
            seen_synonyms.add(said[0])
        else:
            assert not set(words) & {"large", "big", "grande", "small"}
        if "shots" in command.slots:  # a captured list whose values use another list: the whole spoken value
            assert command.text.endswith((f"with {command.slots['shots']}", f"with {command.slots['shots']} please"))
    assert seen_synonyms == {"large", "big", "grande", "small"}
    assert intents.sample_commands("cancel", 5, np.random.default_rng(0))[0].slots == {}
    assert intents.slot_values() == {"drink": ("latte", "mocha", "mochaccino"), "shots": ("three shots", "two shots"),
                                     "size": ("large", "small")}
    # The texts are exactly sample()'s, draw for draw.
    assert [c.text for c in commands] == intents.sample("order", 200, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("phrase", "problem"),
    [
        ("a {size:size} {drink:size}", "slot 'size' is captured twice on one path (columns 3 and 15)"),
        ("a ({size:s}|{drink:s}) {size:s}", "slot 's' is captured twice on one path (columns 4 and 24)"),
        ("a {size:} latte", "bad capture name '' in {size:...} at column 3"),
        ("a {sise:size} latte", "unknown slot {sise} at column 3"),
        ("a {size:big size} latte", "bad capture name 'big size'"),
    ],
)
def test_capture_errors_name_intent_phrase_and_column(phrase: str, problem: str) -> None:
    text = COFFEE.replace('cancel = ["cancel [my order]"]', f'cancel = ["{phrase}"]')
    with pytest.raises(TrainError) as info:
        parse_intents(text, source="coffee.toml")
    message = str(info.value)
    assert message.startswith(f"coffee.toml: intent 'cancel', phrase {phrase!r}: ")
    assert problem in message


def test_captures_in_exclusive_alternatives_are_allowed() -> None:
    text = COFFEE.replace('cancel = ["cancel [my order]"]', 'cancel = ["({size:size} one|one {size:size})"]')
    commands = parse_intents(text).sample_commands("cancel", 10, np.random.default_rng(0))
    assert {c.slots["size"] for c in commands} == {"large", "small"}


@pytest.mark.parametrize(
    ("slots", "problem"),
    [
        ('[slots.size]\nlarge = []\n', "slot 'size' must be a non-empty list of strings, or a table"),
        ('[slots.size]\n" " = ["big"]\n', "slot 'size' has an empty canonical value"),
        ('[slots.size]\nlarge = [1]\n', "slot 'size' must be a non-empty list"),
    ],
)
def test_bad_synonym_tables_are_named(slots: str, problem: str) -> None:
    with pytest.raises(TrainError, match="coffee.toml") as info:
        parse_intents(slots + '[intents]\norder = ["a {size:size} latte"]\n', source="coffee.toml")
    assert problem in str(info.value)
