"""What fit needs to train slot heads (daemon/slot_heads.py) beside the intent head: the slot schema a dataset
implies, each clip's slot targets, and the checks that the run can train them.

Targets: a clip from data that labels slots (a `slots` column: synth's, a metadata.jsonl's) gets each slot's value,
and "absent" for a slot it does not name (synth lists every slot its sentence captured, so one it does not list
was not said). A clip of the out-of-scope class gets "absent" for every slot: it is no command, and the heads
should learn to hear nothing there as the intent head learns `unknown`. A clip from data without slot labels
(e.g. your recordings joined with --add-dataset) is left out of the slot loss (masked): its audio may well say
values nobody wrote down, and calling them "absent" would teach the heads to miss them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from intentd.daemon.slot_heads import SlotHeads, SlotSchema
from intentd.train.data import SLOT_TARGETS, SLOTS_COLUMN, LabelledSplits
from intentd.train.errors import TrainError
from intentd.train.out_of_scope import OUT_OF_SCOPE_LABEL


def row_slots(raw: Any) -> dict[str, str] | None:
    """A row's slot labels as written ({slot: canonical value}; absent slots dropped), or None when the row has
    none at all (a dataset without slot labels)."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        raw = json.loads(raw)
    if not isinstance(raw, Mapping):
        raise TrainError(f"slot labels must be a mapping of slot to value, not {raw!r}")
    return {str(k): str(v) for k, v in raw.items() if v is not None and str(v).strip()}


def schema_of(data: LabelledSplits) -> SlotSchema | None:
    """The slots DATA labels (every split, so a value only the held-out part says still has a class): each
    slot's values, sorted, and each intent's slots; None when no clip labels a slot."""
    values: dict[str, set[str]] = {}
    intents: dict[str, set[str]] = {}
    for split in data.splits.values():
        if SLOTS_COLUMN not in split.column_names:
            continue
        for label, raw in zip(split[data.label_column], split[SLOTS_COLUMN], strict=True):
            slots = row_slots(raw)
            intent = data.label_names[label]
            if slots is None or intent == OUT_OF_SCOPE_LABEL:
                continue
            taken = intents.setdefault(intent, set())
            for name, value in slots.items():
                values.setdefault(name, set()).add(value)
                taken.add(name)
    if not values:
        return None
    return SlotSchema(values={k: tuple(sorted(v)) for k, v in sorted(values.items())},
                      intents={k: tuple(sorted(v)) for k, v in sorted(intents.items())})


def with_targets(data: LabelledSplits, schema: SlotSchema) -> LabelledSplits:
    """DATA with a SLOT_TARGETS column on every split: one class index per slot and clip (module docstring)."""

    def targets(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        raws = batch.get(SLOTS_COLUMN) or [None] * len(batch[data.label_column])
        return {SLOT_TARGETS: [
            schema.targets(data.label_names[label], row_slots(raw),
                           absent_only=data.label_names[label] == OUT_OF_SCOPE_LABEL)
            for label, raw in zip(batch[data.label_column], raws, strict=True)
        ]}

    splits = type(data.splits)({name: split.map(targets, batched=True, desc=f"slot targets ({name})")
                                for name, split in data.splits.items()})
    return replace(data, splits=splits)


def check_run(model: Any, train_mode: str, cache: bool, weighted_layer_sum: bool) -> None:
    """Slot heads train on the frozen-prefix cache of a Whisper encoder (head or top mode); else a TrainError."""
    if type(model).__name__ != "WhisperForAudioClassification":
        raise TrainError(f"DATA labels slots: slot heads need a Whisper backbone, not {type(model).__name__} "
                         "(or pass --no-slots to train the intent alone)")
    if train_mode == "full" or not cache or weighted_layer_sum:
        raise TrainError("DATA labels slots: slot heads train on the frozen-prefix cache, with --train-mode head or "
                         "top, without --weighted-layer-sum (or pass --no-slots to train the intent alone)")


def new_heads(model: Any, schema: SlotSchema, seed: int) -> SlotHeads:
    """Fresh slot heads for a Whisper classifier, initialised from `seed` (the intent head's seed)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SlotHeads(int(model.config.d_model), schema)
