"""What a recognised intent says as text: the model's labels and, for each, its canonical command sentence.

A speech-to-text client (Home Assistant over Wyoming) wants words, not a label. A model folder may carry one
sentence per label under `texts` in intentd.json (`{"texts": {"balance": "what is my balance"}}`), written by
hand or by a tool; a label without one says its own name. Read from the folder's JSON files only: no torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from intentd.daemon.errors import ModelError

CONFIG_FILE: Final = "config.json"  # the Hugging Face config, whose id2label names the classes
SERVING_FILE: Final = "intentd.json"  # daemon.classifier.CALIBRATION_FILE (not imported: that module is torch)
TEXTS_KEY: Final = "texts"


@dataclass(frozen=True, slots=True)
class CommandTexts:
    """A model's labels, in class order, and the sentence each one is answered with."""

    model_id: str
    labels: tuple[str, ...]
    texts: Mapping[str, str] = field(default_factory=dict)

    def text(self, label: str) -> str:
        """The canonical sentence for a label: the model folder's, else the label itself."""
        return self.texts.get(label, label)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}: cannot be read as JSON: {err}") from err
    if not isinstance(value, dict):
        raise ModelError(f"{path}: not a JSON object")
    return value


def _labels(folder: Path) -> tuple[str, ...]:
    path = folder / CONFIG_FILE
    id2label = _read_json(path).get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        raise ModelError(f"{path}: no id2label")
    try:
        ordered = sorted((int(i), str(label)) for i, label in id2label.items())
    except ValueError as err:
        raise ModelError(f"{path}: id2label keys must be class numbers: {err}") from err
    return tuple(label for _, label in ordered)


def _texts(folder: Path, labels: tuple[str, ...]) -> dict[str, str]:
    path = folder / SERVING_FILE
    if not path.is_file():
        return {}
    texts = _read_json(path).get(TEXTS_KEY, {})
    where = f"{path}: {TEXTS_KEY}"
    if not isinstance(texts, dict):
        raise ModelError(f"{where} must map labels to sentences, got {texts!r}")
    for label, sentence in texts.items():
        if label not in labels:
            raise ModelError(f"{where}: {label!r} is not one of the model's labels ({', '.join(labels)})")
        if not isinstance(sentence, str) or not sentence.strip():
            raise ModelError(f"{where}: the sentence for {label!r} must be a non-empty string")
    return {label: " ".join(sentence.split()) for label, sentence in texts.items()}


def load_command_texts(folder: Path, model_id: str) -> CommandTexts:
    """The labels and sentences of a model folder (ModelError naming the file), read when the model is loaded."""
    labels = _labels(folder)
    return CommandTexts(model_id, labels, _texts(folder, labels))
