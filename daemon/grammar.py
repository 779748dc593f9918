"""A command grammar as an automaton: which texts are sentences of it, and what a sentence means (intent + slots).

The grammar is the template tree that `intentd-train` parses from an intents file or a Rhino context (Seq, Alt,
Text, Slot: train/intents.py and train/rhino.py build it, synth expands it). A model folder stores it as JSON
(`Grammar.to_json`), so serving needs no training code: `Automaton` compiles it into a byte-level NFA whose
lazily determinised states answer, one byte at a time, "can the text so far still become a sentence?". A
constrained decoder (daemon/grammar_decoder.py) asks that of every token (`TokenConstraint`), and `Automaton.parse`
reads an accepted sentence back into its intent and each captured slot's canonical value.

What counts as the same sentence, so a speech recogniser's spelling is not held against it: case is ignored,
words are separated by one space (a hyphen may stand for it, "eight-ounce"), a leading space is allowed (Whisper's
first token has one), one of , . ? ! may follow any word, and number words may be written as digits ("12 ounce").
No import here is heavy: no torch.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from intentd.daemon.errors import ModelError

GRAMMAR_FORMAT: Final = "intentd-grammar/1"
SPACE: Final = 0x20
HYPHEN: Final = 0x2D
PUNCTUATION: Final = frozenset(b",.?!")
# Spoken numbers a recogniser may write as digits; both spellings are sentences of the grammar.
NUMBER_WORDS: Final = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14",
    "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20",
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90",
    "hundred": "100",
}
_DIGITS_TO_WORDS: Final = {digits: word for word, digits in NUMBER_WORDS.items()}

# Where a text is between bytes: at the start, inside a word, after a word separator, after punctuation.
START, WORD, SEPARATOR, PUNCT = range(4)
DEAD: Final = -1


# The template tree. A Seq is a list of parts; Alt picks one Seq; Slot is looked up in the slot table.
@dataclass(frozen=True, slots=True)
class Text:
    """Literal text."""

    text: str


@dataclass(frozen=True, slots=True)
class Alt:
    """One of several sequences; an optional part is an Alt whose last option is empty."""

    options: tuple[Seq, ...]


@dataclass(frozen=True, slots=True)
class Slot:
    """A reference to a slot list; `capture` names the command slot that takes its value (None: text only)."""

    name: str
    capture: str | None = None
    column: int = 0  # 1-based, in the phrase's source text, for error messages


@dataclass(frozen=True, slots=True)
class Seq:
    """Parts spoken one after another."""

    parts: tuple[Text | Alt | Slot, ...]


Node = Seq | Text | Alt | Slot
EMPTY: Final = Seq(())


def node_to_json(node: Node) -> Any:
    """A tree as JSON: a string, {"seq": [...]}, {"alt": [...]} or {"slot": list, "capture": name}."""
    if isinstance(node, Text):
        return node.text
    if isinstance(node, Seq):
        return {"seq": [node_to_json(p) for p in node.parts]}
    if isinstance(node, Alt):
        return {"alt": [node_to_json(o) for o in node.options]}
    return {"slot": node.name, "capture": node.capture}


def node_from_json(raw: Any) -> Node:
    """The tree `node_to_json` wrote; ValueError on anything else."""
    if isinstance(raw, str):
        return Text(raw)
    if isinstance(raw, dict) and "seq" in raw:
        return Seq(tuple(_part(node_from_json(p)) for p in raw["seq"]))
    if isinstance(raw, dict) and "alt" in raw:
        return Alt(tuple(_seq(node_from_json(o)) for o in raw["alt"]))
    if isinstance(raw, dict) and isinstance(raw.get("slot"), str):
        capture = raw.get("capture")
        return Slot(raw["slot"], str(capture) if capture is not None else None)
    raise ValueError(f"not a grammar node: {raw!r}")


def slot_nodes(roots: Iterable[Node], slots: Mapping[str, Sequence[Node]] | None = None) -> Iterator[Slot]:
    """Every slot reference under `roots`; with `slots`, also those inside each referenced list's options, each
    list walked once however often it is referenced (lists nest, and a list used twice must not double work)."""
    walked: set[str] = set()

    def walk(node: Node) -> Iterator[Slot]:
        if isinstance(node, Seq):
            for part in node.parts:
                yield from walk(part)
        elif isinstance(node, Alt):
            for option in node.options:
                yield from walk(option)
        elif isinstance(node, Slot):
            yield node
            if slots is not None and node.name not in walked:
                walked.add(node.name)
                for option in slots[node.name]:
                    yield from walk(option)

    for root in roots:
        yield from walk(root)


def _seq(node: Node) -> Seq:
    if not isinstance(node, Seq):
        raise TypeError(f"expected a sequence, got {node!r}")
    return node


def _part(node: Node) -> Text | Alt | Slot:
    if isinstance(node, Seq):
        raise TypeError("a sequence directly inside a sequence")
    return node


@dataclass(frozen=True)
class Grammar:
    """Intents (name -> phrase trees, in label order), slot lists (name -> option trees) and, per list, each
    option's canonical value (None: what was spoken is the value)."""

    intents: Mapping[str, tuple[Seq, ...]]
    slots: Mapping[str, tuple[Seq, ...]]
    canonical: Mapping[str, tuple[str | None, ...]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The model folder's form."""
        return {
            "format": GRAMMAR_FORMAT,
            "intents": {name: [node_to_json(t) for t in templates] for name, templates in self.intents.items()},
            "slots": {name: [node_to_json(o) for o in options] for name, options in self.slots.items()},
            "canonical": {name: list(values) for name, values in self.canonical.items()},
        }

    @classmethod
    def from_json(cls, raw: Any, where: str) -> Grammar:
        """Parse `to_json`'s form; anything malformed is a ModelError naming `where`."""
        try:
            if raw.get("format") != GRAMMAR_FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, expected {GRAMMAR_FORMAT!r}")
            intents = {str(k): tuple(_seq(node_from_json(t)) for t in v) for k, v in raw["intents"].items()}
            slots = {str(k): tuple(_seq(node_from_json(o)) for o in v) for k, v in raw["slots"].items()}
            canonical = {str(k): tuple(None if x is None else str(x) for x in v)
                         for k, v in raw.get("canonical", {}).items()}
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise ModelError(f"{where}: not a grammar: {err}") from err
        if not intents or not all(intents.values()):
            raise ModelError(f"{where}: the grammar needs at least one intent, each with a phrase")
        for name, values in canonical.items():
            if name not in slots or len(values) != len(slots[name]):
                raise ModelError(f"{where}: canonical values of slot list {name!r} do not match its options")
        grammar = cls(intents, slots, canonical)
        missing = sorted(grammar.referenced() - set(slots))
        if missing:
            raise ModelError(f"{where}: the grammar refers to undefined slot lists {missing}")
        return grammar

    def referenced(self) -> set[str]:
        """Every slot list a phrase or slot option refers to."""
        roots = (t for templates in (*self.intents.values(), *self.slots.values()) for t in templates)
        return {slot.name for slot in slot_nodes(roots)}

    def captures(self) -> dict[str, tuple[str, ...]]:
        """Each intent's captured slot names, sorted (through slot lists too)."""
        return {intent: tuple(sorted({s.capture for s in slot_nodes(templates, self.slots) if s.capture is not None}))
                for intent, templates in self.intents.items()}


# Marks on epsilon edges, read back by `Automaton.parse`: which intent a path takes, where a capture opens and
# which option of which list closes it.
@dataclass(frozen=True, slots=True)
class _IntentMark:
    intent: str


@dataclass(frozen=True, slots=True)
class _Open:
    capture: str


@dataclass(frozen=True, slots=True)
class _Close:
    capture: str
    slot: str
    option: int


_Mark = _IntentMark | _Open | _Close


@dataclass(frozen=True, slots=True)
class Parse:
    """What an accepted sentence means: its intent, each captured slot's canonical value and the sentence as the
    grammar spells it (lower case, one space between words); `spans` gives each captured slot's bytes in the
    parsed text as [start, end)."""

    intent: str
    slots: Mapping[str, str]
    text: str
    spans: Mapping[str, tuple[int, int]] = field(default_factory=dict)


class Automaton:
    """A grammar's sentences as a byte-level NFA, determinised lazily: states are small ints, `step` moves one
    byte (DEAD when no sentence starts with the text so far), `accepts` says a sentence may end here."""

    def __init__(self, grammar: Grammar) -> None:
        self.grammar = grammar
        self._byte: list[tuple[int, int] | None] = []  # position -> (byte, next position)
        self._space: list[int | None] = []  # position -> next position across a word separator
        self._eps: list[list[tuple[int, _Mark | None]]] = []
        self._start = self._new()
        self._final = self._new()
        for intent, templates in grammar.intents.items():
            for template in templates:
                entry = self._new()
                self._eps[self._start].append((entry, _IntentMark(intent)))
                exit_ = self._build(template, entry)
                self._eps[exit_].append((self._final, None))
        self.forget()

    def forget(self) -> None:
        """Drop every determinised state (the memo grows with the prefixes decoding has met): state ids from
        before are void, so call it only between decodings."""
        self._states: list[tuple[frozenset[int], int]] = []
        self._ids: dict[tuple[frozenset[int], int], int] = {}
        self._steps: dict[tuple[int, int], int] = {}
        self._accepting: dict[int, bool] = {}
        self._out: dict[int, frozenset[int]] = {}
        self.start = self._intern(self._spaces_star(self._closure({self._start})), START)

    @property
    def states(self) -> int:
        """Determinised states met so far."""
        return len(self._states)

    # -- construction --
    def _new(self) -> int:
        self._byte.append(None)
        self._space.append(None)
        self._eps.append([])
        return len(self._byte) - 1

    def _bytes(self, data: bytes, at: int) -> int:
        for b in data:
            nxt = self._new()
            self._byte[at] = (b, nxt)
            at = nxt
        return at

    def _text(self, text: str, at: int) -> int:
        """A literal: word bytes (lower case; a number word also as digits) and a separator per whitespace run."""
        words = text.lower().split()
        if not words:
            return self._separator(at) if text else at
        if text[0].isspace():
            at = self._separator(at)
        for i, word in enumerate(words):
            if i:
                at = self._separator(at)
            if word in NUMBER_WORDS:
                end = self._new()
                for spelling in (word, NUMBER_WORDS[word]):
                    branch = self._new()
                    self._eps[at].append((branch, None))
                    self._eps[self._bytes(spelling.encode(), branch)].append((end, None))
                at = end
            else:
                at = self._bytes(word.encode(), at)
        if text[-1].isspace():
            at = self._separator(at)
        return at

    def _separator(self, at: int) -> int:
        nxt = self._new()
        self._space[at] = nxt
        return nxt

    def _build(self, node: Node, at: int) -> int:
        if isinstance(node, Text):
            return self._text(node.text, at)
        if isinstance(node, Seq):
            for part in node.parts:
                at = self._build(part, at)
            return at
        options = node.options if isinstance(node, Alt) else self.grammar.slots[node.name]
        end = self._new()
        capture = node.capture if isinstance(node, Slot) else None
        for k, option in enumerate(options):
            entry = self._new()
            self._eps[at].append((entry, _Open(capture) if capture else None))
            exit_ = self._build(option, entry)
            self._eps[exit_].append((end, _Close(capture, node.name, k) if capture and isinstance(node, Slot)
                                     else None))
        return end

    # -- determinisation --
    def _closure(self, positions: Iterable[int]) -> frozenset[int]:
        stack = list(positions)
        seen = set(stack)
        while stack:
            p = stack.pop()
            for q, _ in self._eps[p]:
                if q not in seen:
                    seen.add(q)
                    stack.append(q)
        return frozenset(seen)

    def _spaces_plus(self, positions: frozenset[int]) -> frozenset[int]:
        """Positions one or more separators on (empty optional parts leave several in a row)."""
        out: set[int] = set()
        frontier = positions
        while True:
            crossed = self._closure(q for p in frontier if (q := self._space[p]) is not None)
            new = crossed - out
            if not new:
                return frozenset(out)
            out |= new
            frontier = frozenset(new)

    def _spaces_star(self, positions: frozenset[int]) -> frozenset[int]:
        return positions | self._spaces_plus(positions)

    def _intern(self, positions: frozenset[int], where: int) -> int:
        if not positions:
            return DEAD
        key = (positions, where)
        state = self._ids.get(key)
        if state is None:
            state = self._ids[key] = len(self._states)
            self._states.append(key)
        return state

    def step(self, state: int, byte: int) -> int:
        """The state after one more byte (matched case-insensitively), DEAD if no sentence continues so."""
        if state == DEAD:
            return DEAD
        key = (state, byte)
        found = self._steps.get(key)
        if found is None:
            found = self._steps[key] = self._step(state, byte)
        return found

    def _step(self, state: int, byte: int) -> int:
        positions, where = self._states[state]
        if byte == SPACE or byte == HYPHEN:
            if where == START and byte == SPACE:
                return self._intern(positions, SEPARATOR)
            if where == WORD or (where == PUNCT and byte == SPACE):
                return self._intern(self._spaces_plus(positions), SEPARATOR)
            return DEAD
        if byte in PUNCTUATION:
            if where == WORD and (self._spaces_plus(positions) or self._final in self._spaces_star(positions)):
                return self._intern(positions, PUNCT)
            return DEAD
        if where == PUNCT:
            return DEAD
        lower = byte + 32 if 0x41 <= byte <= 0x5A else byte
        moved = [nxt for p in positions if (edge := self._byte[p]) is not None and edge[0] == lower
                 for nxt in (edge[1],)]
        return self._intern(self._closure(moved), WORD)

    def accepts(self, state: int) -> bool:
        """Whether a sentence may end at this state (not right after a separator)."""
        if state == DEAD:
            return False
        found = self._accepting.get(state)
        if found is None:
            positions, where = self._states[state]
            found = where in (WORD, PUNCT) and self._final in self._spaces_star(positions)
            self._accepting[state] = found
        return found

    def next_bytes(self, state: int) -> frozenset[int]:
        """Bytes (lower case) worth trying from a state: a superset of those `step` does not send to DEAD."""
        if state == DEAD:
            return frozenset()
        found = self._out.get(state)
        if found is None:
            positions, where = self._states[state]
            found_set = {edge[0] for p in positions if (edge := self._byte[p]) is not None}
            if where == PUNCT:
                found_set = {SPACE}
            elif where == WORD:
                found_set |= {SPACE, HYPHEN} | set(PUNCTUATION)
            elif where == START:
                found_set.add(SPACE)
            found = self._out[state] = frozenset(found_set)
        return found

    def matches(self, text: str) -> bool:
        """Whether `text` is a sentence of the grammar (as the module docstring counts sameness)."""
        state = self.start
        for b in text.encode("utf-8"):
            state = self.step(state, b)
        return self.accepts(state)

    # -- parse back --
    def parse(self, text: str) -> Parse | None:
        """The intent and canonical slot values of a sentence, None if it is none. One path is followed per NFA
        position (the first found), so an ambiguous grammar gives one of its readings."""
        data = text.encode("utf-8")
        # Per position: the marks and bytes on the path that reached it, as a linked list (item, parent).
        paths: dict[int, Any] = {}
        self._walk_eps({self._start: None}, paths)
        paths = self._cross_spaces(paths, at_least_one=False)
        where = START
        for at, b in enumerate(data):
            if b == SPACE or b == HYPHEN:
                if where in (WORD, PUNCT):
                    paths = self._cross_spaces(paths, at_least_one=True)
                    where = SEPARATOR
                elif where == START and b == SPACE:
                    where = SEPARATOR
                else:
                    return None
                continue
            if b in PUNCTUATION:
                if where != WORD:
                    return None
                where = PUNCT
                continue
            if where == PUNCT:
                return None
            lower = b + 32 if 0x41 <= b <= 0x5A else b
            moved: dict[int, Any] = {}
            for p, path in paths.items():
                edge = self._byte[p]
                if edge is not None and edge[0] == lower and edge[1] not in moved:
                    moved[edge[1]] = ((lower, at), path)
            paths = {}
            self._walk_eps(moved, paths)
            where = WORD
            if not paths:
                return None
        if where not in (WORD, PUNCT):
            return None
        paths = self._cross_spaces(paths, at_least_one=False)
        if self._final not in paths:
            return None
        return self._read(paths[self._final])

    def _walk_eps(self, seeds: Mapping[int, Any], out: dict[int, Any]) -> None:
        stack = list(seeds.items())
        for p, path in stack:
            out.setdefault(p, path)
        while stack:
            p, path = stack.pop()
            for q, mark in self._eps[p]:
                if q not in out:
                    out[q] = (mark, path) if mark is not None else path
                    stack.append((q, out[q]))

    def _cross_spaces(self, paths: dict[int, Any], at_least_one: bool) -> dict[int, Any]:
        out: dict[int, Any] = {} if at_least_one else dict(paths)
        frontier = paths
        while frontier:
            crossed: dict[int, Any] = {}
            for p, path in frontier.items():
                q = self._space[p]
                if q is not None and q not in out and q not in crossed:
                    crossed[q] = (SPACE, path)
            reached: dict[int, Any] = {}
            self._walk_eps(crossed, reached)
            frontier = {q: path for q, path in reached.items() if q not in out}
            out.update(frontier)
        return out

    def _read(self, path: Any) -> Parse:
        items: list[Any] = []
        while path is not None:
            item, path = path
            items.append(item)
        items.reverse()
        intent = ""
        slots: dict[str, str] = {}
        spans: dict[str, tuple[int, int]] = {}
        spoken: list[tuple[bytearray, list[int]]] = []  # per open capture: its bytes and input offsets
        text = bytearray()
        for item in items:
            if item == SPACE:
                if text and text[-1] != SPACE:
                    text.append(SPACE)
                for buf, _offsets in spoken:
                    if buf and buf[-1] != SPACE:
                        buf.append(SPACE)
            elif isinstance(item, tuple):
                byte, at = item
                text.append(byte)
                for buf, offsets in spoken:
                    buf.append(byte)
                    offsets.append(at)
            elif isinstance(item, _IntentMark):
                intent = item.intent
            elif isinstance(item, _Open):
                spoken.append((bytearray(), []))
            elif isinstance(item, _Close):
                buf, offsets = spoken.pop()
                values = self.grammar.canonical.get(item.slot)
                named = values[item.option] if values else None
                slots[item.capture] = named if named is not None else _words(buf.decode("utf-8", "replace"))
                if offsets:
                    spans[item.capture] = (offsets[0], offsets[-1] + 1)
        return Parse(intent, slots, _words(text.decode("utf-8", "replace")), spans)


def _words(text: str) -> str:
    """Digits back to the number words the grammar spells, one space between words."""
    return " ".join(_DIGITS_TO_WORDS.get(word, word) for word in text.split())


def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet (each byte drawn as a printable character) read back to bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_bytes(tokenizer_file: Path) -> dict[int, bytes]:
    """Every ordinary token's bytes from a byte-level BPE tokenizer.json (special tokens left out)."""
    try:
        raw = json.loads(tokenizer_file.read_text(encoding="utf-8"))
        vocab = raw["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelError(f"{tokenizer_file}: not a byte-level BPE tokenizer.json: {err}") from err
    decoder = byte_decoder()
    special = {int(t["id"]) for t in raw.get("added_tokens", []) if t.get("special")}
    out: dict[int, bytes] = {}
    for text, token in vocab.items():
        if int(token) in special:
            continue
        try:
            out[int(token)] = bytes(decoder[ch] for ch in text)
        except KeyError:
            continue  # not byte-level text: never allowed by the grammar
    return out


class TokenConstraint:
    """Which tokens keep a text a prefix of some grammar sentence: for an automaton state, every (token, state
    after it). Tokens are matched by their lower-cased bytes, walking a sorted list like a trie; memoised per
    state, so a decoder pays for each grammar position once."""

    def __init__(self, automaton: Automaton, tokens: Mapping[int, bytes]) -> None:
        self.automaton = automaton
        pairs = sorted((data.lower(), token) for token, data in tokens.items() if data)
        self._keys = [key for key, _ in pairs]
        self._ids = [token for _, token in pairs]
        self._allowed: dict[int, tuple[tuple[int, int], ...]] = {}

    def forget(self) -> None:
        """Drop the memo with the automaton's (`Automaton.forget`)."""
        self._allowed.clear()

    def allowed(self, state: int) -> tuple[tuple[int, int], ...]:
        """(token, next state) for every token the grammar allows at `state`."""
        found = self._allowed.get(state)
        if found is None:
            out: list[tuple[int, int]] = []
            self._walk(state, b"", 0, len(self._keys), out)
            found = self._allowed[state] = tuple(out)
        return found

    def _walk(self, state: int, prefix: bytes, lo: int, hi: int, out: list[tuple[int, int]]) -> None:
        keys = self._keys
        for b in sorted(self.automaton.next_bytes(state)):
            nxt = self.automaton.step(state, b)
            if nxt == DEAD:
                continue
            wanted = prefix + bytes((b,))
            start = bisect.bisect_left(keys, wanted, lo, hi)
            end = _prefix_end(keys, wanted, start, hi)
            if start >= end:
                continue
            i = start
            while i < end and keys[i] == wanted:
                out.append((self._ids[i], nxt))
                i += 1
            if i < end:
                self._walk(nxt, wanted, i, end, out)


def _prefix_end(keys: Sequence[bytes], prefix: bytes, lo: int, hi: int) -> int:
    """The first index in [lo, hi) whose key does not start with `prefix` (keys sorted, those from lo on do)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if keys[mid].startswith(prefix):
            lo = mid + 1
        else:
            hi = mid
    return lo
