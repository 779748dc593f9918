"""Slot heads: per-frame encoder states -> one value per captured slot ("absent" or one of its canonical values).

Each slot has its own attention pooling (a learned score per encoder frame, softmaxed over the clip's frames) and
its own linear classifier over "absent" + the slot's values, so a slot listens to the frames where its value is
said, not to the whole clip's mean as the intent head does. The heads read the same encoder states as the intent
head (the final layer norm's output), in training (train/frozen.py's WhisperTop) and in serving
(daemon/classifier.py), so both hear the same thing.

A model folder stores them beside the Hugging Face classifier, which stays loadable by
`pipeline("audio-classification")`: the weights in SLOT_HEADS_FILE, the slot names, their values and which
intents take which slots in intentd.json under SLOTS_KEY.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from intentd.daemon.errors import ModelError

SLOT_HEADS_FILE = "slot_heads.safetensors"
SLOTS_KEY = "slots"  # in intentd.json: {"values": {slot: [value, ...]}, "intents": {intent: [slot, ...]}}
ABSENT_INDEX = 0  # class 0 of every head: the slot was not said
IGNORE_INDEX = -100  # a slot target nobody labelled: left out of the loss (torch's cross-entropy default)


@dataclass(frozen=True)
class SlotSchema:
    """What the heads predict: each slot's canonical values (class i + 1 is values[i]) and each intent's slots."""

    values: Mapping[str, tuple[str, ...]]
    intents: Mapping[str, tuple[str, ...]]

    @property
    def names(self) -> tuple[str, ...]:
        """Slot names in head order."""
        return tuple(self.values)

    def to_json(self) -> dict[str, Any]:
        """The intentd.json form."""
        return {"values": {k: list(v) for k, v in self.values.items()},
                "intents": {k: list(v) for k, v in self.intents.items()}}

    @classmethod
    def from_json(cls, raw: Any, where: str) -> SlotSchema:
        """Parse the intentd.json form; anything malformed is a ModelError naming `where`."""
        try:
            values = {str(k): tuple(str(x) for x in v) for k, v in dict(raw["values"]).items()}
            intents = {str(k): tuple(str(x) for x in v) for k, v in dict(raw.get("intents", {})).items()}
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"{where}: {SLOTS_KEY} must be {{'values': {{slot: [values]}}, 'intents': "
                             f"{{intent: [slots]}}}}: {err!r}") from err
        if not values or any(not v for v in values.values()):
            raise ModelError(f"{where}: {SLOTS_KEY} needs at least one slot, each with at least one value")
        unknown = sorted({s for slots in intents.values() for s in slots} - set(values))
        if unknown:
            raise ModelError(f"{where}: {SLOTS_KEY} intents name slots with no values: {unknown}")
        return cls(values=values, intents=intents)

    def targets(self, intent: str, slots: Mapping[str, str] | None, absent_only: bool = False) -> list[int]:
        """One class index per slot for a clip: its value's, ABSENT_INDEX for a slot not said; every slot
        IGNORE_INDEX when `slots` is None (nobody labelled them) unless `absent_only` (no slot can be said)."""
        if absent_only:
            return [ABSENT_INDEX] * len(self.values)
        if slots is None:
            return [IGNORE_INDEX] * len(self.values)
        out = []
        for name, values in self.values.items():
            value = slots.get(name)
            out.append(ABSENT_INDEX if value is None else values.index(value) + 1)
        return out


class SlotHeads(nn.Module):
    """Attention pooling + a linear classifier per slot over (batch, frames, d_model) encoder states."""

    def __init__(self, d_model: int, schema: SlotSchema) -> None:
        super().__init__()
        self.schema = schema
        self.attention = nn.Linear(d_model, len(schema.values))  # one frame score per slot
        self.classifiers = nn.ModuleList(nn.Linear(d_model, 1 + len(v)) for v in schema.values.values())

    def forward(self, hidden: torch.Tensor, valid: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Logits per slot, each (batch, 1 + values); `valid` (batch, frames) masks padded frames out of the
        pooling, so a clip padded beside longer ones pools exactly its own frames."""
        scores = self.attention(hidden)  # (batch, frames, slots)
        if valid is not None:
            scores = scores.masked_fill(~valid[..., None], torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores.float(), dim=1).to(hidden.dtype)
        pooled = torch.einsum("bts,btd->bsd", weights, hidden)
        return [head(pooled[:, i]) for i, head in enumerate(self.classifiers)]

    def loss(self, logits: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor | None:
        """Summed cross-entropy of every slot over its labelled clips (targets (batch, slots)); None when no
        clip of the batch has a labelled slot."""
        total = None
        for i, slot_logits in enumerate(logits):
            wanted = targets[:, i]
            if bool((wanted != IGNORE_INDEX).any()):
                term = nn.functional.cross_entropy(slot_logits.float(), wanted, ignore_index=IGNORE_INDEX)
                total = term if total is None else total + term
        return total

    def save(self, folder: str | Path) -> None:
        """Write the weights to SLOT_HEADS_FILE (the schema goes to intentd.json: see `schema.to_json`)."""
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(Path(folder) / SLOT_HEADS_FILE))

    @classmethod
    def load(cls, folder: Path, schema: SlotSchema, d_model: int) -> SlotHeads:
        """The heads a folder stores for `schema`; a missing file or mismatched weights is a ModelError."""
        from safetensors.torch import load_file

        path = folder / SLOT_HEADS_FILE
        if not path.is_file():
            raise ModelError(f"{folder}: intentd.json names slots but there is no {SLOT_HEADS_FILE}")
        heads = cls(d_model, schema)
        try:
            heads.load_state_dict(load_file(str(path)), strict=True)
        except (RuntimeError, OSError, ValueError) as err:  # wrong shapes, missing keys, a bad file
            raise ModelError(f"{path}: does not match the slots in intentd.json: {err}") from err
        return heads.eval()


def decode_slots(probabilities: Sequence[Any], schema: SlotSchema) -> list[dict[str, tuple[str, float]]]:
    """Per clip, {slot: (value, score)} for each slot whose best class is a value (absent slots left out);
    `probabilities` holds one (clips, 1 + values) array per slot, in schema order."""
    clips = len(probabilities[0]) if probabilities else 0
    out: list[dict[str, tuple[str, float]]] = [{} for _ in range(clips)]
    for (name, values), rows in zip(schema.values.items(), probabilities, strict=True):
        for i, row in enumerate(rows):
            best = int(row.argmax())
            if best != ABSENT_INDEX:
                out[i][name] = (values[best - 1], float(row[best]))
    return out


def for_intent(slots: Mapping[str, tuple[str, float]], intent: str, schema: SlotSchema,
               unknown_label: str) -> dict[str, tuple[str, float]]:
    """The slots an answer carries: none for `unknown`, else those the intent can take (every slot when the
    schema lists no intents), so a head cannot attach a size to "cancel"."""
    if intent == unknown_label:
        return {}
    if not schema.intents:
        return dict(slots)
    allowed = schema.intents.get(intent, ())
    return {name: vs for name, vs in slots.items() if name in allowed}
