"""The README.md model card fit writes into every model folder: what the model recognises, what it was made from,
how well it did, and the command that made it (the Hugging Face model-card layout: YAML metadata, then prose)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Final

from intentd.daemon.version import version

MODEL_CARD_FILE: Final = "README.md"


def _fit_command(settings: Mapping[str, Any], flags: Mapping[str, str], defaults: Mapping[str, Any]) -> str:
    """`intentd-train fit` with the flags that differ from their defaults, in FitSettings' order."""
    words = ["intentd-train", "fit"]
    for name, flag in flags.items():
        value = settings.get(name)
        if name in defaults and value == defaults[name]:
            continue
        if isinstance(value, bool):
            if value != defaults.get(name):
                words.append(flag)
        elif isinstance(value, list | tuple):
            if name == "add_datasets":
                for item in value:
                    words += [flag, str(item)]
            elif value:
                words += [flag, ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)]
        elif value is not None:
            words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(words)


def render(metrics: Mapping[str, Any], flags: Mapping[str, str], defaults: Mapping[str, Any]) -> str:
    """The card's text from fit's metrics.json contents and its flags (field name -> flag) and their defaults."""
    s = metrics["settings"]
    data = metrics["dataset"]
    labels: Sequence[str] = data["labels"]
    calibration = metrics.get("calibration") or {}
    base = s["base_model"]
    sizes = ", ".join(f"{name} {count}" for name, count in data["sizes"].items())
    meta = {
        "library_name": "transformers",
        "pipeline_tag": "audio-classification",
        "base_model": base,
        "tags": ["intentd", "speech-intent", "audio-classification"],
        "model-index": [{"name": Path(s["out"]).name, "results": [{
            "task": {"type": "audio-classification"},
            "dataset": {"name": " + ".join(data["parts"]) or s["dataset"], "type": data["source"]},
            "metrics": [{"type": "accuracy", "value": round(float(metrics["accuracy"]), 4),
                         "name": "held-out accuracy"}],
        }]}],
    }
    threshold = calibration.get("threshold")
    lines = [
        "---",
        # JSON is YAML: the metadata needs no YAML library to write or to read back.
        *(f"{key}: {json.dumps(value)}" for key, value in meta.items()),
        "---",
        "",
        f"# {Path(s['out']).name}",
        "",
        (f"A speech-intent classifier made by intentd {version()}: it hears a short spoken "
        f"command and answers one of {len(labels)} labels. Serve it with `intentd --model {Path(s['out']).name}`, "
        "or load it with `pipeline(\"audio-classification\", model=FOLDER)`."),
        "",
        "## Intents",
        "",
        ", ".join(f"`{label}`" for label in labels),
        "",
        "## How it was made",
        "",
        f"- Base model: `{base}`, trained in `{s['train_mode']}` mode"
        + (f" (top {s['unfreeze_top']} encoder layers)" if s["train_mode"] == "top" else "")
        + f", {s['epochs']:g} epochs, learning rate {s['learning_rate']:g}, batch size {s['batch_size']}, seed "
        f"{s['seed']}; {metrics['train_time_seconds']:.1f} s of training on {metrics.get('processes', 1)} "
        "process(es).",
        (f"- Data: {', '.join(f'`{p}`' for p in data['parts']) or '`' + s['dataset'] + '`'} ({data['source']}); "
        f"clips per split: {sizes}."),
        "- Command:",
        "",
        "```sh",
        _fit_command(s, flags, defaults),
        "```",
        "",
        "## Metrics",
        "",
        f"- Accuracy on the held-out split: {float(metrics['accuracy']):.4f}.",
    ]
    if threshold is not None:
        lines.append(f"- Rejection threshold {float(threshold):.4f}, calibrated to keep "
                     f"{float(s['keep_in_domain']):.2%} of held-out in-domain commands (`intentd.json`).")
    lines += ["", ("metrics.json holds every number above and the per-epoch history; training_curves.png and "
              "confusion_matrix.png show them."), ""]
    return "\n".join(lines)


def write(out: Path, metrics: Mapping[str, Any], settings_type: type) -> Path:
    """Write OUT/README.md for a fit whose settings are a `settings_type` dataclass (FitSettings)."""
    from intentd.train.fit import flag_of  # the flag names are fit's; imported here to keep this module light

    defaults = {f.name: f.default for f in fields(settings_type) if f.default is not MISSING}
    flags = {f.name: flag_of(f.name) for f in fields(settings_type)}
    path = out / MODEL_CARD_FILE
    path.write_text(render(metrics, flags, defaults), encoding="utf-8")
    return path
