"""Intents files: TOML mapping intent names to phrase templates that expand into many sentences.

Template syntax (documented for users at the top of train/intents/minds14.toml):

    (a|b|c)   exactly one of the alternatives
    [a]       optional part; [a|b] is "a", "b" or nothing
    {slot}    one value of the list `slot` in the [slots] table (values may use the same syntax)
    {list:name}  one value of the list `list`, captured: the command's slot `name` takes its canonical value

Groups nest. The characters ( ) [ ] { } | are reserved and have no escape.

A slot list is either a list of values (each value is its own canonical value: what was spoken) or a table from
canonical value to its synonyms, e.g. `[slots.size]` with `large = ["large", "big", "grande"]`: a capture of any
synonym returns "large". A capture name occurs at most once on any one path through a phrase.
Rhino context YAML files (train/rhino.py) parse into the same tree.
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from intentd.daemon.grammar import EMPTY, Alt, Grammar, Node, Seq, Slot, Text, slot_nodes
from intentd.train.errors import TrainError

# A phrase expanding to more sentences than this is sampled by index instead of being listed; keeps a careless
# template with many slots from eating memory while staying deterministic.
ENUMERATE_LIMIT = 20_000
# Sentences taken, evenly spaced by index, from a phrase above ENUMERATE_LIMIT when listing an intent's sentences.
LISTING_SAMPLE = 2_000
# Random draws per wanted sentence before sampling gives up on finding new distinct sentences.
SAMPLE_ATTEMPTS_PER_SENTENCE = 20

SLOT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
INTENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.?!;:'])")
# Files read as Picovoice Rhino contexts (train/rhino.py) rather than TOML.
RHINO_SUFFIXES = (".yaml", ".yml")


# The template tree (Seq, Alt, Text, Slot) is daemon/grammar.py's, so a model folder can carry a grammar that serving
# reads without training code (the constrained decoder's automaton).
_EMPTY = EMPTY


class TemplateSyntaxError(ValueError):
    """A template that does not parse; the message says where."""


@dataclass(frozen=True, slots=True)
class TemplateSyntax:
    """How one phrase format spells groups, the separator between a group's items and slot references; TOML
    intents files (TOML_SYNTAX) and Rhino contexts (train/rhino.py) are two of these over one parser."""

    groups: Mapping[str, tuple[str, bool]]  # opener -> (closer, whether the group may be left out)
    separator: str
    references: Mapping[str, Callable[[str, int], tuple[Slot, int]]]  # first character -> (slot, end position)
    empty_item: Callable[[str, int, int, int], str]  # (source, group start, group end, item end) -> message
    stray: str = ""  # characters legal only inside a reference

    def describe_groups(self) -> str:
        """`(...) or [...]`, in the syntax's own order."""
        return " or ".join(f"{opener}...{closer}" for opener, (closer, _) in self.groups.items())


def parse_phrase(src: str, syntax: TemplateSyntax) -> Seq:
    """Parse one phrase of either format into the template tree; a TemplateSyntaxError names the column."""
    options, _ends, pos = _parse_group(src, 0, None, syntax)
    if pos != len(src):  # pragma: no cover - _parse_group only stops early on a closer, reported there
        raise TemplateSyntaxError(f"unexpected {src[pos]!r} at column {pos + 1}")
    return options[0]


def _parse_group(src: str, pos: int, closer: str | None, syntax: TemplateSyntax) -> tuple[list[Seq], list[int], int]:
    """Items until `closer` (or the end), the position each ended at, and the position after the closer."""
    closers = {c: o for o, (c, _) in syntax.groups.items()}
    options: list[Seq] = []
    ends: list[int] = []
    parts: list[Text | Alt | Slot] = []
    start = pos
    buf: list[str] = []

    def flush() -> None:
        if buf:
            parts.append(Text("".join(buf)))
            buf.clear()

    while pos < len(src):
        ch = src[pos]
        if ch in syntax.groups:
            flush()
            inner_closer, optional = syntax.groups[ch]
            items, item_ends, after = _parse_group(src, pos + 1, inner_closer, syntax)
            for item, at in zip(items, item_ends, strict=True):
                if all(isinstance(p, Text) and not p.text.strip() for p in item.parts):
                    raise TemplateSyntaxError(syntax.empty_item(src, pos + 1, after - 1, at))
            only = items[0].parts[0] if len(items) == 1 and len(items[0].parts) == 1 else None
            alt = only if isinstance(only, Alt) else Alt(tuple(items))
            parts.append(Alt(alt.options + (_EMPTY,)) if optional else alt)
            pos = after
            continue
        if ch in closers:
            if ch != closer:
                raise TemplateSyntaxError(f"unmatched {ch!r} at column {pos + 1}")
            flush()
            options.append(Seq(tuple(parts)))
            ends.append(pos)
            return options, ends, pos + 1
        if ch == syntax.separator:
            if closer is None:
                raise TemplateSyntaxError(f"{ch!r} outside {syntax.describe_groups()} at column {pos + 1}")
            flush()
            options.append(Seq(tuple(parts)))
            ends.append(pos)
            parts = []
            pos += 1
            continue
        if ch in syntax.references:
            flush()
            slot, pos = syntax.references[ch](src, pos)
            parts.append(slot)
            continue
        if ch in syntax.stray:
            raise TemplateSyntaxError(f"unmatched {ch!r} at column {pos + 1}")
        buf.append(ch)
        pos += 1
    if closer is not None:
        raise TemplateSyntaxError(f"unclosed {closers[closer]!r} opened at column {start}")
    flush()
    return [Seq(tuple(parts))], [pos], pos


def _toml_reference(src: str, pos: int) -> tuple[Slot, int]:
    """`{list}` or `{list:name}` at `pos`."""
    end = src.find("}", pos)
    if end < 0:
        raise TemplateSyntaxError(f"unclosed '{{' at column {pos + 1}")
    name, colon, capture = (piece.strip() for piece in src[pos + 1 : end].partition(":"))
    if not SLOT_NAME.fullmatch(name):
        raise TemplateSyntaxError(f"bad slot name {name!r} at column {pos + 1}")
    if colon and not SLOT_NAME.fullmatch(capture):
        raise TemplateSyntaxError(f"bad capture name {capture!r} in {{{name}:...}} at column {pos + 1}")
    return Slot(name, capture if colon else None, pos + 1), end + 1


def _toml_empty(src: str, start: int, end: int, _item_end: int) -> str:
    # Empty alternatives are almost always typos; optional parts have their own [...] syntax.
    return f"empty alternative in {src[start - 1 : end + 1]!r} (use [...] for an optional part)"


TOML_SYNTAX = TemplateSyntax(groups={"(": (")", False), "[": ("]", True)}, separator="|",
                             references={"{": _toml_reference}, empty_item=_toml_empty, stray="}")


def parse_template(template: str) -> Seq:
    """Parse one phrase template into its tree."""
    return parse_phrase(template, TOML_SYNTAX)


def _normalise(sentence: str) -> str:
    """Collapse the spaces left behind by empty optional parts; no space before punctuation."""
    return _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(sentence.split()))


class _Expander:
    """Counts and indexes the sentences of template trees against one slot table."""

    def __init__(self, slots: Mapping[str, tuple[Seq, ...]],
                 canonical: Mapping[str, tuple[str | None, ...]] | None = None) -> None:
        self.slots = slots
        self.canonical = canonical or {}
        # Counts by node identity: nth() asks for the same subtree's count once per sentence.
        self._counts: dict[int, int] = {}

    def count(self, node: Node) -> int:
        """Number of (not necessarily distinct) sentences the node yields."""
        if isinstance(node, Text):
            return 1
        cached = self._counts.get(id(node))
        if cached is not None:
            return cached
        if isinstance(node, Seq):
            n = math.prod(self.count(p) for p in node.parts)
        else:
            options = node.options if isinstance(node, Alt) else self.slots[node.name]
            n = sum(self.count(o) for o in options)
        self._counts[id(node)] = n
        return n

    def every(self, node: Node) -> list[str]:
        """All sentences of a node in nth() order; only for nodes whose count() is small."""
        if isinstance(node, Text):
            return [node.text]
        if isinstance(node, Seq):
            return ["".join(p) for p in itertools.product(*(self.every(part) for part in node.parts))]
        options = node.options if isinstance(node, Alt) else self.slots[node.name]
        return [sentence for option in options for sentence in self.every(option)]

    def nth(self, node: Node, index: int) -> str:
        """The index-th sentence in a fixed mixed-radix order, so sampling needs no enumeration."""
        out: list[str] = []
        self._walk(node, index, out, None)
        return "".join(out)

    def command(self, node: Node, index: int) -> tuple[str, dict[str, str]]:
        """The index-th sentence (normalised) and the canonical values of the slots it captured."""
        out: list[str] = []
        captures: dict[str, str] = {}
        self._walk(node, index, out, captures)
        return _normalise("".join(out)), captures

    def value(self, slot: str, option: int, spoken: str) -> str:
        """A captured option's canonical value: the table's key for it, or else what was spoken."""
        values = self.canonical.get(slot)
        named = values[option] if values else None
        return named if named is not None else _normalise(spoken)

    def _walk(self, node: Node, index: int, out: list[str], captures: dict[str, str] | None) -> None:
        if isinstance(node, Text):
            out.append(node.text)
            return
        if isinstance(node, Seq):
            rems = []
            for part in reversed(node.parts):
                index, rem = divmod(index, self.count(part))
                rems.append(rem)
            for part, rem in zip(node.parts, reversed(rems), strict=True):
                self._walk(part, rem, out, captures)
            return
        options = node.options if isinstance(node, Alt) else self.slots[node.name]
        for k, option in enumerate(options):
            n = self.count(option)
            if index < n:
                start = len(out)
                self._walk(option, index, out, captures)
                if captures is not None and isinstance(node, Slot) and node.capture is not None:
                    captures[node.capture] = self.value(node.name, k, "".join(out[start:]))
                return
            index -= n
        raise IndexError(index)  # pragma: no cover - callers stay below count()


@dataclass(frozen=True, slots=True)
class Command:
    """One sentence of an intent and the canonical value of each slot it captured."""

    intent: str
    text: str
    slots: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Intent:
    """One intent: its name and parsed phrase templates (source text kept for error messages)."""

    name: str
    phrases: tuple[str, ...]
    templates: tuple[Seq, ...]


@dataclass(frozen=True, slots=True)
class IntentSet:
    """All intents of one file, in file order, with the slot table they share.

    `canonical` gives, per slot list, each option's canonical value (None: the option's spoken text is its value);
    lists missing from it are all None.
    """

    source: str
    intents: tuple[Intent, ...]
    slots: Mapping[str, tuple[Seq, ...]]
    canonical: Mapping[str, tuple[str | None, ...]] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        """Intent names in file order (this order defines the class ids)."""
        return tuple(i.name for i in self.intents)

    def intent(self, name: str) -> Intent:
        """The intent called `name`."""
        for intent in self.intents:
            if intent.name == name:
                return intent
        raise TrainError(f"{self.source}: no intent named {name!r}")

    def grammar(self) -> Grammar:
        """The intents and slot tables as the serving side's Grammar (daemon/grammar.py), for a model folder."""
        return Grammar({i.name: i.templates for i in self.intents}, dict(self.slots), dict(self.canonical))

    def _expander(self) -> _Expander:
        return _Expander(self.slots, self.canonical)

    def sentences(self, name: str) -> list[str]:
        """Every distinct sentence of an intent, sorted; phrases above ENUMERATE_LIMIT give LISTING_SAMPLE of theirs."""
        expander = self._expander()
        found: set[str] = set()
        for template in self.intent(name).templates:
            n = expander.count(template)
            if n <= ENUMERATE_LIMIT:
                found.update(_normalise(sentence) for sentence in expander.every(template))
            else:
                indices = np.linspace(0, n - 1, LISTING_SAMPLE, dtype=np.int64)
                found.update(_normalise(expander.nth(template, int(i))) for i in indices)
        found.discard("")
        return sorted(found)

    def sample(self, name: str, n: int, rng: np.random.Generator,
               keep: Callable[[str], bool] | None = None) -> list[str]:
        """Up to n distinct sentences of an intent (the texts of sample_commands)."""
        return [command.text for command in self.sample_commands(name, n, rng, keep)]

    def sample_commands(self, name: str, n: int, rng: np.random.Generator,
                        keep: Callable[[str], bool] | None = None) -> list[Command]:
        """Up to n commands with distinct sentences, spread evenly over the intent's phrases; deterministic given
        rng. `keep` rejects sentences (they count as tried), e.g. out-of-scope speech that a model's labels use.

        Spreading over phrases (rather than over all sentences) stops one slot-heavy phrase from crowding out
        the short ones, which are the most common way callers actually speak. A sentence two slot readings share
        is kept with the first reading drawn.
        """
        expander = self._expander()
        templates = self.intent(name).templates
        counts = [expander.count(t) for t in templates]
        chosen: list[Command] = []
        seen: set[str] = set()
        exhausted = [False] * len(templates)
        attempts = 0
        max_attempts = SAMPLE_ATTEMPTS_PER_SENTENCE * max(n, 1) + sum(min(c, ENUMERATE_LIMIT) for c in counts)
        tried: list[set[int]] = [set() for _ in templates]
        order = rng.permutation(len(templates))
        turn = 0
        while len(chosen) < n and not all(exhausted) and attempts < max_attempts:
            k = int(order[turn % len(templates)])
            turn += 1
            if exhausted[k]:
                continue
            attempts += 1
            remaining = counts[k] - len(tried[k])
            if remaining <= 0:
                exhausted[k] = True
                continue
            index = int(rng.integers(counts[k]))
            while index in tried[k]:  # a small dense phrase: step to the next untried index
                index = (index + 1) % counts[k]
            tried[k].add(index)
            sentence, captures = expander.command(templates[k], index)
            if sentence and sentence not in seen and (keep is None or keep(sentence)):
                seen.add(sentence)
                chosen.append(Command(name, sentence, captures))
        return chosen

    def slot_values(self, name: str | None = None) -> dict[str, tuple[str, ...]]:
        """Each captured slot of one intent (or of all) and every canonical value it can take, sorted."""
        expander = self._expander()
        found: dict[str, set[str]] = {}
        intents = self.intents if name is None else (self.intent(name),)
        for slot in slot_nodes((t for intent in intents for t in intent.templates), self.slots):
            if slot.capture is None:
                continue
            values = found.setdefault(slot.capture, set())
            for k, option in enumerate(self.slots[slot.name]):
                if self.canonical.get(slot.name) and self.canonical[slot.name][k] is not None:
                    values.add(expander.value(slot.name, k, ""))
                else:
                    values.update(_normalise(s) for s in expander.every(option))
        return {slot: tuple(sorted(values)) for slot, values in sorted(found.items())}


def load_intents(path: str | Path) -> IntentSet:
    """Read and validate an intents file (TOML, or a Rhino context .yaml/.yml); every problem is a TrainError
    naming the file (and intent/phrase)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise TrainError(f"intents file {path} does not exist") from err
    except (OSError, UnicodeDecodeError) as err:
        raise TrainError(f"cannot read intents file {path}: {err}") from err
    if path.suffix.lower() in RHINO_SUFFIXES:
        from intentd.train.rhino import parse_context

        return parse_context(text, source=str(path))
    return parse_intents(text, source=str(path))


def parse_intents(text: str, source: str = "<intents>") -> IntentSet:
    """Parse intents TOML text (see module docstring for the template syntax)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise TrainError(f"{source}: TOML syntax error: {err}") from err
    unknown = set(data) - {"slots", "intents"}
    if unknown:
        raise TrainError(
            f"{source}: unknown top-level key(s) {sorted(unknown)}; expected [slots] and [intents]"
        )
    slots, canonical = _parse_slots(data.get("slots", {}), source)
    raw_intents = data.get("intents")
    if not isinstance(raw_intents, dict) or not raw_intents:
        raise TrainError(f"{source}: no [intents] table (or it is empty)")

    intents = []
    for name, phrases in raw_intents.items():
        if not INTENT_NAME.fullmatch(name):
            raise TrainError(f"{source}: bad intent name {name!r} (letters, digits, _ . -)")
        if isinstance(phrases, str):
            phrases = [phrases]
        if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
            raise TrainError(f"{source}: intent {name!r} must be a list of phrase strings")
        if not phrases:
            raise TrainError(f"{source}: intent {name!r} has no phrases")
        templates = []
        for phrase in phrases:
            where = f"{source}: intent {name!r}, phrase {phrase!r}"
            try:
                template = parse_template(phrase)
            except TemplateSyntaxError as err:
                raise TrainError(f"{where}: {err}") from err
            templates.append(template)
        intents.append(Intent(name, tuple(phrases), tuple(templates)))
    return build_intent_set(source, intents, slots, canonical)


def build_intent_set(source: str, intents: Sequence[Intent], slots: dict[str, tuple[Seq, ...]],
                     canonical: Mapping[str, tuple[str | None, ...]], phrase_word: str = "phrase") -> IntentSet:
    """Check parsed intents against their slot table (references, recursion, captures) and bundle them;
    `phrase_word` is what errors call a phrase (a Rhino context says "expression")."""
    for name, values in slots.items():
        for value in values:
            _check_slots(value, slots, f"{source}: slot {name!r}", visiting=(name,))
    captured: dict[str, dict[str, int]] = {}
    for intent in intents:
        for phrase, template in zip(intent.phrases, intent.templates, strict=True):
            where = f"{source}: intent {intent.name!r}, {phrase_word} {phrase!r}"
            _check_slots(template, slots, where)
            _captures(template, slots, where, captured)
    result = IntentSet(source, tuple(intents), slots, canonical)
    for intent in intents:
        if not result.sample(intent.name, 1, np.random.default_rng(0)):
            raise TrainError(f"{source}: intent {intent.name!r} expands to no non-empty sentence")
    return result


def _parse_slots(raw: object, source: str) -> tuple[dict[str, tuple[Seq, ...]], dict[str, tuple[str | None, ...]]]:
    """Slot lists: name -> values (each itself a template), and each value's canonical value.

    A list's values are their own canonical values; a table maps each canonical value to one synonym or a list.
    """
    if not isinstance(raw, dict):
        raise TrainError(f"{source}: [slots] must be a table of lists")
    slots: dict[str, tuple[Seq, ...]] = {}
    canonical: dict[str, tuple[str | None, ...]] = {}
    for name, values in raw.items():
        if not SLOT_NAME.fullmatch(name):
            raise TrainError(f"{source}: bad slot name {name!r} (letters, digits, _)")
        if isinstance(values, dict):
            pairs: list[tuple[str | None, object]] = []
            for value, synonyms in values.items():
                if not value.strip():
                    raise TrainError(f"{source}: slot {name!r} has an empty canonical value")
                for synonym in synonyms if isinstance(synonyms, list) and synonyms else [synonyms]:
                    pairs.append((" ".join(value.split()), synonym))
        elif isinstance(values, list):
            pairs = [(None, value) for value in values]
        else:
            pairs = []
        if not pairs or not all(isinstance(text, str) for _, text in pairs):
            raise TrainError(
                f"{source}: slot {name!r} must be a non-empty list of strings, or a table from each canonical "
                "value to its synonyms (a string or a non-empty list of strings)"
            )
        parsed = []
        for _, value in pairs:
            assert isinstance(value, str)
            try:
                parsed.append(parse_template(value))
            except TemplateSyntaxError as err:
                raise TrainError(f"{source}: slot {name!r}, value {value!r}: {err}") from err
        slots[name] = tuple(parsed)
        if any(value is not None for value, _ in pairs):
            canonical[name] = tuple(value for value, _ in pairs)
    return slots, canonical


def _check_slots(
    node: Node,
    slots: Mapping[str, Sequence[Seq]],
    where: str,
    visiting: tuple[str, ...] = (),
) -> None:
    """Every slot referenced exists, and no slot refers back to itself (which would never finish)."""
    if isinstance(node, Seq):
        for part in node.parts:
            _check_slots(part, slots, where, visiting)
    elif isinstance(node, Alt):
        for option in node.options:
            _check_slots(option, slots, where, visiting)
    elif isinstance(node, Slot):
        if node.name not in slots:
            known = ", ".join(sorted(slots)) or "none defined"
            raise TrainError(f"{where}: unknown slot {{{node.name}}} at column {node.column} (slots: {known})")
        if node.name in visiting:
            raise TrainError(f"{where}: slot {{{node.name}}} refers to itself via {' -> '.join(visiting)}")
        for value in slots[node.name]:
            _check_slots(value, slots, where, visiting + (node.name,))


def _captures(node: Node, slots: Mapping[str, Sequence[Seq]], where: str,
              lists: dict[str, dict[str, int]], column: int | None = None) -> dict[str, int]:
    """The capture names on the node's paths, each with the phrase column it comes from; a name captured twice on
    one path would give a command two values for one slot, so that is a TrainError naming both columns.

    Captures inside a slot list's values are reported at the column of the phrase's reference to the list;
    `lists` memoises each list's own captures.
    """
    if isinstance(node, Text):
        return {}
    if isinstance(node, Seq):
        found: dict[str, int] = {}
        for part in node.parts:
            for name, col in _captures(part, slots, where, lists, column).items():
                if name in found:
                    raise TrainError(
                        f"{where}: slot {name!r} is captured twice on one path (columns {found[name]} and {col})"
                    )
                found[name] = col
        return found
    if isinstance(node, Alt):
        merged: dict[str, int] = {}
        for option in node.options:
            for name, col in _captures(option, slots, where, lists, column).items():
                merged.setdefault(name, col)
        return merged
    at = column if column is not None else node.column
    if node.name not in lists:
        inner: dict[str, int] = {}
        for option in slots[node.name]:
            for name in _captures(option, slots, f"{where} (in slot list {node.name!r})", lists, 0):
                inner.setdefault(name, 0)
        lists[node.name] = inner
    own = {name: at for name in lists[node.name]}
    if node.capture is not None:
        if node.capture in own:
            raise TrainError(
                f"{where}: slot {node.capture!r} at column {at} is captured again inside list {node.name!r}"
            )
        own[node.capture] = at
    return own
