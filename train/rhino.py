"""Picovoice Rhino contexts (the YAML a Rhino console exports) read as intents files, so a Rhino user moves over in
one command: `intentd-train synth --intents coffee_maker.yaml`.

A context is `context: {expressions: {intent: [expression, ...]}, slots: {type: [value, ...]}, macros: {name:
[phrase, ...]}}`. Expression syntax (Picovoice's "Rhino Syntax Cheat Sheet"):

    word word         a phrase, spoken as written
    [a, b, c]         choice: exactly one of the comma-separated items
    (a, b)            optional: one of the items or nothing
    $type:name        one value of slot type `type`, captured as the command's slot `name`
    @macro            one phrase of the macro list `macro` (not captured)

Items of choices and optionals may themselves be phrases, slots, macros or groups. Each slot value is its own
canonical value (Rhino returns the value as listed). The context becomes the same template tree as a TOML intents
file (train/intents.py), so sampling, synth and the capture checks are shared.
"""

from __future__ import annotations

import re
from typing import Any

from intentd.train.errors import TrainError
from intentd.train.intents import (
    INTENT_NAME,
    Alt,
    Intent,
    IntentSet,
    Seq,
    Slot,
    TemplateSyntax,
    TemplateSyntaxError,
    Text,
    build_intent_set,
    parse_phrase,
)

CONTEXT_KEYS = frozenset({"expressions", "slots", "macros"})
# Slot types and macros live in one table of lists; macros are keyed with their sigil so the names never clash.
MACRO_PREFIX = "@"
_SLOT_REF = re.compile(r"\$([A-Za-z_][\w.]*):([A-Za-z_]\w*)")
_MACRO_REF = re.compile(r"@([A-Za-z_]\w*)")
# Picovoice's built-in slot types (numbers, letters, percentages) have no value list in the YAML.
BUILTIN_PREFIX = "pv."


def _slot_reference(src: str, pos: int) -> tuple[Slot, int]:
    match = _SLOT_REF.match(src, pos)
    if match is None:
        raise TemplateSyntaxError(f"bad slot reference at column {pos + 1} (expected $type:name)")
    return Slot(match.group(1), match.group(2), pos + 1), match.end()


def _macro_reference(src: str, pos: int) -> tuple[Slot, int]:
    match = _MACRO_REF.match(src, pos)
    if match is None:
        raise TemplateSyntaxError(f"bad macro reference at column {pos + 1} (expected @name)")
    return Slot(MACRO_PREFIX + match.group(1), None, pos + 1), match.end()


def _empty_item(_src: str, start: int, _end: int, item_end: int) -> str:
    return f"empty item in the group opened at column {start} (column {item_end + 1})"


# Commas separate items only inside [...] (a choice) and (...) (optional); the parser is the intents file's.
RHINO_SYNTAX = TemplateSyntax(groups={"[": ("]", False), "(": (")", True)}, separator=",",
                              references={"$": _slot_reference, "@": _macro_reference}, empty_item=_empty_item)


def parse_expression(src: str) -> Seq:
    """One Rhino expression -> the template tree; a TemplateSyntaxError says what is wrong and at which column."""
    return parse_phrase(src, RHINO_SYNTAX)


def parse_context(text: str, source: str = "<context>") -> IntentSet:
    """A Rhino context YAML -> an IntentSet; every problem is one TrainError naming the file, intent, expression
    (or slot) and column."""
    try:
        import yaml
    except ImportError as err:  # pragma: no cover - PyYAML comes with the training extras
        raise TrainError("reading Rhino contexts needs PyYAML: pip install 'intentd[train]'") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise TrainError(f"{source}: YAML syntax error: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("context"), dict):
        raise TrainError(f"{source}: not a Rhino context (expected a top-level 'context:' mapping)")
    context = data["context"]
    unknown = set(context) - CONTEXT_KEYS
    if unknown:
        raise TrainError(f"{source}: unknown key(s) under context: {sorted(unknown)}; "
                         f"expected {', '.join(sorted(CONTEXT_KEYS))}")
    slots: dict[str, tuple[Seq, ...]] = {}
    for name, values in _mapping(context.get("slots"), "slots", source).items():
        phrases = _strings(values, f"slot {name!r}", source)
        slots[name] = tuple(Seq((Text(" ".join(v.split())),)) for v in phrases)
    for name, phrases in _mapping(context.get("macros"), "macros", source).items():
        parsed = []
        for phrase in _strings(phrases, f"macro {name!r}", source):
            parsed.append(_parse_or_raise(phrase, f"{source}: macro {name!r}, phrase {phrase!r}", slots))
        slots[MACRO_PREFIX + name] = tuple(parsed)
    expressions = _mapping(context.get("expressions"), "expressions", source)
    if not expressions:
        raise TrainError(f"{source}: context has no expressions")
    intents = []
    for name, raw in expressions.items():
        name = str(name)
        if not INTENT_NAME.fullmatch(name):
            raise TrainError(f"{source}: bad intent name {name!r} (letters, digits, _ . -)")
        phrases = _strings(raw, f"intent {name!r}", source)
        templates = tuple(_parse_or_raise(p, f"{source}: intent {name!r}, expression {p!r}", slots)
                          for p in phrases)
        intents.append(Intent(name, tuple(phrases), templates))
    return build_intent_set(source, intents, slots, {}, phrase_word="expression")


def _parse_or_raise(phrase: str, where: str, slots: dict[str, tuple[Seq, ...]]) -> Seq:
    """Parse one expression; syntax errors and references to undefined slot types or macros name the column."""
    try:
        template = parse_expression(phrase)
    except TemplateSyntaxError as err:
        raise TrainError(f"{where}: {err}") from err
    for ref in _references(template):
        if ref.name.startswith(BUILTIN_PREFIX):
            raise TrainError(f"{where}: built-in slot type ${ref.name} at column {ref.column} is not supported; "
                             "list its values under slots instead")
        if ref.name not in slots:
            kind = ("macro @" + ref.name[len(MACRO_PREFIX):]) if ref.name.startswith(MACRO_PREFIX) else \
                "slot type $" + ref.name
            raise TrainError(f"{where}: unknown {kind} at column {ref.column}")
    return template


def _references(node: Seq | Text | Alt | Slot) -> list[Slot]:
    if isinstance(node, Slot):
        return [node]
    if isinstance(node, Seq):
        return [ref for part in node.parts for ref in _references(part)]
    if isinstance(node, Alt):
        return [ref for option in node.options for ref in _references(option)]
    return []


def _mapping(value: Any, key: str, source: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TrainError(f"{source}: context {key} must be a mapping of names to lists")
    return {str(k): v for k, v in value.items()}


def _strings(values: Any, what: str, source: str) -> list[str]:
    """A non-empty list of phrases; YAML numbers become their text, anything else must be quoted."""
    if not isinstance(values, list) or not values:
        raise TrainError(f"{source}: {what} must be a non-empty list of phrases")
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise TrainError(f"{source}: {what}: {value!r} is not a phrase (quote it in the YAML)")
        if not str(value).strip():
            raise TrainError(f"{source}: {what} has an empty phrase")
        out.append(str(value))
    return out
