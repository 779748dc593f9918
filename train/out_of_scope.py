"""What `fit` adds so a model can say "that was no command": an out-of-scope class, and a calibrated threshold.

A classifier trained only on its intents labels every sound as one of them: a TV, a chat in the room, a cough.
fit therefore adds a class `unknown` (the label the daemon publishes as `intent.unknown`) trained on
  * speech that is no intent: sentences from train/intents/out_of_scope.toml spoken by synth's TTS engines through
    the same telephone channel, minus every sentence that uses a word of the model's own labels or repeats one of
    its training transcriptions (a user's "stop" intent is never taught as out of scope);
  * generated non-speech: room noise, music-like tones, breathing, clicks (train/nonspeech.py);
  * optionally the user's own recordings of non-commands (a folder of audio files, all out of scope).
The synthesized part is rendered once per distinct recipe and cached (INTENTD_CACHE, default ~/.cache/intentd).

Then `calibrate` picks the score threshold on the held-out split: the highest one that still keeps the stated
share of in-domain commands, and `write_calibration` stores it in the model folder, where the daemon, `predict`
and `eval` read it (daemon/classifier.py, CALIBRATION_FILE).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from intentd.daemon.classifier import CALIBRATION_FILE
from intentd.daemon.events import UNKNOWN_LABEL
from intentd.train.errors import TrainError
from intentd.train.nonspeech import TRAINABLE_KINDS

log = logging.getLogger(__name__)

OUT_OF_SCOPE_LABEL = UNKNOWN_LABEL
PHRASES = Path(__file__).parent / "intents" / "out_of_scope.toml"
CACHE_ENV = "INTENTD_CACHE"
DEFAULT_CACHE = Path("~/.cache/intentd")
# Bumped whenever what a recipe renders changes, so an old cache entry is never reused for a new recipe.
RECIPE_VERSION = 2
DEFAULT_KEEP_IN_DOMAIN = 0.98
_WORD = re.compile(r"[a-z0-9']+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aiff", ".au")


def _words(text: str) -> set[str]:
    """Lower-case words of a label or a sentence; labels split at camelCase, '_', '-' and '.'."""
    return set(_WORD.findall(_CAMEL.sub(" ", text).replace("_", " ").lower()))


def sentence_filter(label_names: Iterable[str], transcriptions: Iterable[str]) -> Callable[[str], bool]:
    """Keep an out-of-scope sentence unless it uses a label's word or equals a training transcription."""
    banned = set().union(*(_words(n) for n in label_names if n != OUT_OF_SCOPE_LABEL))
    said = {" ".join(_WORD.findall(t.lower())) for t in transcriptions}

    def keep(sentence: str) -> bool:
        words = _WORD.findall(sentence.lower())
        return not (banned & set(words)) and " ".join(words) not in said

    return keep


def cache_root() -> Path:
    """Where synthesized out-of-scope datasets are kept between fits."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser() / "out-of-scope"


def synth_dataset(label_names: Sequence[str], transcriptions: Iterable[str], speech_clips: int, noise_clips: int,
                  seed: int, engines: Sequence[str] | None = None, root: Path | None = None) -> Path:
    """The out-of-scope speech and non-speech of this recipe as a save_to_disk folder, rendered on first use."""
    from intentd.train import synth

    said = sorted({t.strip() for t in transcriptions if t and t.strip()})
    recipe = {"version": RECIPE_VERSION, "phrases": PHRASES.read_text(encoding="utf-8"),
              "labels": sorted(label_names), "transcriptions": said, "speech": speech_clips, "noise": noise_clips,
              "seed": seed, "engines": sorted(engines) if engines else None, "noise_kinds": TRAINABLE_KINDS}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    folder = (root or cache_root()) / key
    if (folder / synth.DATASET_MARKER).is_file():
        log.info("out-of-scope clips: reusing %s", folder)
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log.info("out-of-scope clips: rendering %d spoken and %d non-speech clips into %s", speech_clips, noise_clips,
             folder)
    synth.synthesize(PHRASES, partial, seed=seed, per_intent=max(1, speech_clips), engines=engines,
                     keep_sentence=sentence_filter(label_names, said), nonspeech_clips=noise_clips,
                     progress=log.isEnabledFor(logging.INFO))
    # Rendered under another name and renamed: an interrupted render is never mistaken for a finished one (the
    # saved dataset holds its audio itself, so the rename moves nothing it refers to).
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return folder


def folder_dataset(folder: str | Path, seed: int, test_fraction: float) -> Any:
    """Every audio file under `folder` as out-of-scope clips, held out by test_fraction: LabelledSplits."""
    import datasets

    from intentd.train.data import AUDIO_COLUMN, LabelledSplits

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise TrainError(f"out-of-scope folder {root} does not exist")
    files = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if len(files) < 2:
        raise TrainError(f"out-of-scope folder {root} holds {len(files)} audio files; it needs at least 2 "
                         f"({', '.join(AUDIO_SUFFIXES)})")
    column = "label"
    rows = datasets.Dataset.from_dict(
        {AUDIO_COLUMN: files, column: [0] * len(files)},
        features=datasets.Features({AUDIO_COLUMN: datasets.Audio(decode=False),
                                    column: datasets.ClassLabel(names=[OUT_OF_SCOPE_LABEL])}))
    parts = rows.train_test_split(test_size=test_fraction, seed=seed)
    return LabelledSplits(splits=parts, label_column=column, label_names=[OUT_OF_SCOPE_LABEL], source=str(root))


@dataclass(frozen=True, slots=True)
class Calibration:
    """The threshold fit chose and what it does on the held-out split."""

    threshold: float
    keep_in_domain: float  # the target: share of in-domain held-out commands still accepted
    in_domain: int
    in_domain_acceptance: float
    out_of_scope: int
    out_of_scope_false_acceptance: float | None  # None without out-of-scope held-out clips
    out_of_scope_label: str | None  # the model's out-of-scope class, if it has one


def accepted(probabilities: np.ndarray, labels: Sequence[str], threshold: float) -> np.ndarray:
    """Per clip: not the out-of-scope class, and a top score at or above the threshold (the daemon's rule)."""
    top = probabilities.argmax(axis=1)
    ok = probabilities.max(axis=1) >= threshold
    if OUT_OF_SCOPE_LABEL in labels:
        ok &= top != list(labels).index(OUT_OF_SCOPE_LABEL)
    return ok


def calibrate(probabilities: np.ndarray, truth: Sequence[str], labels: Sequence[str],
              keep_in_domain: float = DEFAULT_KEEP_IN_DOMAIN) -> Calibration:
    """The highest threshold that still accepts `keep_in_domain` of the in-domain clips (truth not out of scope).

    Clips the out-of-scope class wins are rejected at any threshold; if they alone exceed the allowance the
    threshold is 0 (and the shortfall shows in in_domain_acceptance).
    """
    if not 0 < keep_in_domain <= 1:
        raise TrainError(f"keep-in-domain target must be in (0, 1], got {keep_in_domain}")
    inside = np.array([t != OUT_OF_SCOPE_LABEL for t in truth], dtype=bool)
    threshold = 0.0
    n_in = int(inside.sum())
    if n_in:
        candidates = accepted(probabilities[inside], labels, 0.0)
        scores = np.sort(probabilities[inside].max(axis=1)[candidates])
        allowance = int(np.floor((1.0 - keep_in_domain) * n_in + 1e-9)) - int((~candidates).sum())
        if allowance > 0 and scores.size:
            # Clips scoring below the threshold are rejected; ties at it are kept, so at most `allowance` go.
            threshold = float(scores[min(allowance, scores.size - 1)])
    in_rate = float(accepted(probabilities[inside], labels, threshold).mean()) if n_in else 0.0
    n_out = int((~inside).sum())
    out_rate = float(accepted(probabilities[~inside], labels, threshold).mean()) if n_out else None
    return Calibration(threshold=threshold, keep_in_domain=keep_in_domain, in_domain=n_in, in_domain_acceptance=in_rate,
                       out_of_scope=n_out, out_of_scope_false_acceptance=out_rate,
                       out_of_scope_label=OUT_OF_SCOPE_LABEL if OUT_OF_SCOPE_LABEL in labels else None)


def write_serving_meta(folder: str | Path, values: dict[str, Any]) -> None:
    """Add `values` to what the model folder tells the serving core (CALIBRATION_FILE), keeping the rest."""
    path = Path(folder) / CALIBRATION_FILE
    meta = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    path.write_text(json.dumps({**meta, **values}, indent=2) + "\n", encoding="utf-8")


def write_calibration(folder: str | Path, calibration: Calibration) -> None:
    """Store the calibration in the model folder, where Classifier.load finds its threshold."""
    write_serving_meta(folder, asdict(calibration))
