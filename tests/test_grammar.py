"""The grammar automaton (daemon/grammar.py): it accepts exactly the sentences synth expands, every token path the
constraint allows ends in one, and an accepted sentence parses back to the intent and canonical slots synth
records for it. Then a tiny whisper-grammar folder through the Classifier: every answer is a grammar sentence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from intentd.daemon.grammar import DEAD, Automaton, Grammar, TokenConstraint
from intentd.train.intents import load_intents, parse_intents

INTENTS = """
[slots]
drink = ["latte", "mocha", "iced mocha"]
[slots.size]
large = ["large", "big"]
small = ["small", "eight ounce"]
[intents]
order = ["[can I get] (a|an) {size:size} {drink:drink} [with milk]", "I'd like a {drink:drink}"]
cancel = "cancel [my order]"
"""
RHINO = """
context:
  expressions:
    orderDrink:
      - "[can I get, give me] a $size:size $coffeeDrink:coffeeDrink (please)"
  slots:
    size: ["small", "twelve ounce"]
    coffeeDrink: ["latte", "drip coffee"]
"""


@pytest.fixture(scope="module")
def automaton() -> Automaton:
    return Automaton(parse_intents(INTENTS).grammar())


def test_every_sentence_synth_expands_is_accepted_and_parses_to_what_synth_records(automaton: Automaton) -> None:
    intents = parse_intents(INTENTS)
    rng = np.random.default_rng(0)
    for name in intents.names:
        commands = intents.sample_commands(name, 200, rng)
        assert len(commands) == len(intents.sentences(name))  # every sentence of these small intents
        for command in commands:
            parsed = automaton.parse(command.text)
            assert parsed is not None, command.text
            assert (parsed.intent, dict(parsed.slots)) == (name, dict(command.slots)), command.text


@pytest.mark.parametrize("text", [
    "can I get a large", "a large latte with", "a large coffee", "an big mocha milk", "cancel my", "I'd like mocha",
    "a  large latte", "a large latte..", "large latte", "a large latte with milk please", ", a large latte", "",
])
def test_texts_that_are_no_sentence_are_refused(automaton: Automaton, text: str) -> None:
    assert not automaton.matches(text)
    assert automaton.parse(text) is None


@pytest.mark.parametrize(("text", "intent", "slots", "canonical"), [
    (" Can I get a big latte with milk.", "order", {"size": "large", "drink": "latte"},
     "can i get a big latte with milk"),
    ("AN EIGHT OUNCE ICED MOCHA", "order", {"size": "small", "drink": "iced mocha"}, "an eight ounce iced mocha"),
    ("a 8-ounce mocha?", "order", {"size": "small", "drink": "mocha"}, "a eight ounce mocha"),
    ("I'd like a latte", "order", {"drink": "latte"}, "i'd like a latte"),
    ("Cancel, my order!", "cancel", {}, "cancel my order"),
])
def test_a_recogniser_s_spelling_parses_to_canonical_values(automaton: Automaton, text: str, intent: str,
                                                            slots: dict[str, str], canonical: str) -> None:
    """Case, a leading space, punctuation after words, hyphens and digits for number words are the same sentence."""
    parsed = automaton.parse(text)
    assert parsed is not None
    assert (parsed.intent, dict(parsed.slots), parsed.text) == (intent, slots, canonical)


def test_a_rhino_context_parses_back_too(tmp_path: Path) -> None:
    path = tmp_path / "coffee.yaml"
    path.write_text(RHINO, encoding="utf-8")
    automaton = Automaton(load_intents(path).grammar())
    parsed = automaton.parse("Give me a 12 ounce drip coffee, please.")
    assert parsed is not None and dict(parsed.slots) == {"size": "twelve ounce", "coffeeDrink": "drip coffee"}
    assert not automaton.matches("give me a twelve ounce coffee")


def test_the_grammar_survives_its_json_form() -> None:
    grammar = parse_intents(INTENTS).grammar()
    again = Grammar.from_json(json.loads(json.dumps(grammar.to_json())), "test")
    assert again.to_json() == grammar.to_json()
    assert again.captures() == {"order": ("drink", "size"), "cancel": ()}


def test_every_token_path_the_constraint_allows_ends_in_a_sentence(automaton: Automaton) -> None:
    """Random walks over allowed tokens (end allowed only where `accepts`) always spell a grammar sentence, and
    reach every sentence of the small intents."""
    words = ["can", "I", "get", "a", "an", "large", "big", "small", "eight", "ounce", "latte", "mocha", "iced",
             "with", "milk", "cancel", "my", "order", "I'd", "like", "coffee", "please", "8", "lat", "te"]
    pieces = {*words, *(" " + w for w in words), *(" " + w.capitalize() for w in words), ",", ".", " ", "-",
              *"abcdefghijklmnopqrstuvwxyz'"}
    tokens = {i: piece.encode() for i, piece in enumerate(sorted(pieces))}
    constraint = TokenConstraint(automaton, tokens)
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(400):
        state, text = automaton.start, b""
        while True:
            allowed = constraint.allowed(state)
            if automaton.accepts(state) and (not allowed or rng.random() < 0.3):
                break
            assert allowed, text  # a live state always has a way on
            token, state = allowed[int(rng.integers(len(allowed)))]
            assert state != DEAD
            text += tokens[token]
        parsed = automaton.parse(text.decode())
        assert parsed is not None, text
        seen.add(parsed.text)
    sentences = {s.lower() for name in ("order", "cancel") for s in parse_intents(INTENTS).sentences(name)}
    assert seen <= sentences and len(seen) > len(sentences) // 2


@pytest.fixture(scope="module")
def grammar_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import build_tiny_grammar_model

    folder = tmp_path_factory.mktemp("grammar")
    intents = folder / "intents.toml"
    intents.write_text(INTENTS, encoding="utf-8")
    return build_tiny_grammar_model(folder / "model", intents)


def test_a_tiny_grammar_model_answers_each_clip_with_a_grammar_sentence_whatever_its_batch(
        grammar_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from intentd.daemon import grammar_decoder
    from intentd.daemon.classifier import Classifier

    classifier = Classifier.load(grammar_model, device="cpu", threshold=0.0)
    assert classifier.labels == ("order", "cancel") and classifier.predicts_slots
    rng = np.random.default_rng(0)
    clips = [rng.normal(0, 0.2, n).astype(np.float32) for n in (3000, 8000, 12000, 16000, 24000)]
    together = classifier.classify(clips)
    automaton = classifier.decoder.automaton  # type: ignore[union-attr]
    for clip, answer in zip(clips, together, strict=True):
        assert answer.text is not None
        parsed = automaton.parse(answer.text)
        assert parsed is not None and parsed.text == answer.text
        assert answer.label == parsed.intent and {k: v for k, (v, _s) in answer.slots.items()} == parsed.slots
        assert 0.0 < answer.score <= 1.0
        (alone,) = classifier.classify([clip])
        assert (alone.label, alone.text) == (answer.label, answer.text)
        assert alone.score == pytest.approx(answer.score, rel=1e-4)
    # A memo past its cap starts again between decodings, and answers do not change.
    monkeypatch.setattr(grammar_decoder, "MAX_CACHED_STATES", 0)
    assert [(p.label, p.text) for p in classifier.classify(clips[:2])] == [(p.label, p.text) for p in together[:2]]
    assert automaton.states < 100


def test_parse_says_where_each_slot_was_spelled(automaton: Automaton) -> None:
    """Spans index the text as given (digits, hyphens, punctuation and all), so a decoder can score each slot by
    the tokens that spelled it."""
    text = " Can I get an 8-ounce iced mocha, with milk."
    parsed = automaton.parse(text)
    assert parsed is not None
    assert {name: text[a:b] for name, (a, b) in parsed.spans.items()} == {"size": "8-ounce", "drink": "iced mocha"}


def test_intent_events_carry_a_grammar_model_s_sentence_and_others_are_unchanged() -> None:
    from intentd.daemon import events
    from intentd.daemon.frames import Classified, Prediction, Utterance

    def event(prediction: Prediction) -> events.IntentEvent:
        u = Utterance(stream_id="s", index=0, samples=np.zeros(1600, np.float32), sample_rate=16_000,
                      start_sample=0, end_sample=1600, stream_origin_wall=1.0, closed_monotonic=0.0,
                      hangover_samples=0, truncated=False)
        return events.IntentEvent.from_classified(Classified(u, prediction, "m@1", 1.0, 2.0, 1), 0.5)

    heard = event(Prediction("order", 0.9, (("order", 0.9),), {"size": ("large", 0.8)}, "a large latte"))
    topic, body = events.encode(heard, seq=5, published_wall=2.0)
    raw = json.loads(body)
    assert raw["text"] == "a large latte" and raw["schema"] == 1
    back = events.decode([topic, body])
    assert isinstance(back, events.IntentEvent) and back.text == "a large latte"
    assert back.summary().startswith('stream=s #0 order 0.90 size=large "a large latte"')
    plain = event(Prediction("stop", 0.7, (("stop", 0.7),)))
    _, body = events.encode(plain, seq=6, published_wall=2.0)
    assert "text" not in json.loads(body)
    back = events.decode([b"intent.stop", body])
    assert isinstance(back, events.IntentEvent) and back.text == "" and back.data() == plain.data()
