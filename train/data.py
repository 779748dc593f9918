"""Data in: a hub dataset, an audio folder or a save_to_disk folder -> labelled train/test splits -> model inputs.

A DATA argument is detected as one of three sources:
  * a `save_to_disk` folder (has dataset_dict.json or state.json): `datasets.load_from_disk`;
  * any other existing folder: the `audiofolder` builder (one folder per label, or a metadata.csv; train/ and
    test/ subfolders become splits);
  * otherwise a hub id such as `PolyAI/minds14` with a config such as `en-US` (the tutorial's path).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from intentd.daemon.audio import SAMPLE_RATE, to_mono
from intentd.train import channel
from intentd.train.audio_io import check_clip
from intentd.train.errors import TrainError

log = logging.getLogger(__name__)

# "intent": an audio folder's metadata.jsonl as synth writes it and barista-dev is labelled.
LABEL_COLUMN_CANDIDATES = ("intent_class", "label", "intent")
AUDIO_COLUMN = "audio"
# A command's slot values ({name: value}, None or missing where absent): metadata.jsonl's `slots`, synth's column.
SLOTS_COLUMN = "slots"
# fit's per-clip slot classes (daemon/slot_heads.py), one per slot; carried through prepare_features and the cache.
SLOT_TARGETS = "slot_targets"
# The column name Trainer and every HF classifier's forward() expect.
LABELS = "labels"
# With length-aware windows: the samples of the window each feature row was padded to (daemon/windows.py).
WINDOW = "window"
DEFAULT_MAX_SECONDS = 4.0  # banking requests take 2-4 s; the tutorial's 1 s cuts them
DEFAULT_TEST_FRACTION = 0.2
# Seed of the held-out split when DATA has none: fit and eval must draw the same split to score the same clips.
DEFAULT_SPLIT_SEED = 42
# Splits accepted as the held-out set when a dataset has no "test" split, in order of preference.
HELD_OUT_ALIASES = ("test", "validation", "valid", "dev")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(slots=True)
class LabelledSplits:
    """Named splits sharing one ClassLabel column, plus where they came from."""

    splits: Any  # datasets.DatasetDict; typed loosely so importing this module stays cheap
    label_column: str
    label_names: list[str]
    source: str  # "saved", "audiofolder", "hub", "combined", or a folder an out-of-scope part came from
    parts: tuple[str, ...] = ()  # what a "combined" set joined: each part's DATA (or folder)
    own_test: bool = False  # DATA came with a held-out split (test, validation...), not one drawn here

    def split(self, name: str) -> Any:
        """One split by name, or a TrainError listing the splits that exist."""
        if name not in self.splits:
            raise TrainError(f"dataset has no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[name]


def detect_source(spec: str) -> str:
    """'saved', 'audiofolder' or 'hub' for a DATA argument; a missing local folder is a TrainError."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return "saved"
        return "audiofolder"
    if path.exists():
        raise TrainError(f"dataset {spec} is a file; expected a folder or a hub id")
    looks_local = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
    if looks_local or not _HUB_ID.match(spec):
        raise TrainError(f"dataset folder {spec} does not exist")
    return "hub"


def load_labelled(
    spec: str,
    config: str | None = None,
    label_column: str | None = None,
    seed: int = DEFAULT_SPLIT_SEED,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    *,
    draw_test: bool = True,
) -> LabelledSplits:
    """Load DATA into train/test splits with a ClassLabel label column (string labels are class-encoded).

    DATA's own held-out split is its test split; without one, `draw_test` draws it from train (as fit does),
    else DATA stays whole in "train" (eval of a folder of recordings scores every one of them)."""
    import datasets

    source = detect_source(spec)
    raw = _load_raw(spec, source, config)
    if isinstance(raw, datasets.Dataset):
        raw = datasets.DatasetDict({"train": raw})
    if len(raw) == 0 or all(len(ds) == 0 for ds in raw.values()):
        raise TrainError(f"dataset {spec} has no rows")
    first = next(iter(raw.values()))
    column = _pick_label_column(first.column_names, label_column, spec)
    _find_audio_column(first, spec)
    raw, names = _encode_labels(raw, column, spec)
    own_test = any(alias in raw for alias in HELD_OUT_ALIASES)
    if own_test or draw_test:
        raw = _ensure_test_split(raw, column, seed, test_fraction)
    log.info("dataset %s (%s): %s, %d labels", spec, source, {k: len(v) for k, v in raw.items()}, len(names))
    return LabelledSplits(splits=raw, label_column=column, label_names=names, source=source, parts=(spec,),
                          own_test=own_test)


def load_combined(
    specs: list[str],
    config: str | None = None,
    label_column: str | None = None,
    seed: int = DEFAULT_SPLIT_SEED,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> LabelledSplits:
    """Several DATA as one: each loaded as by load_labelled, labels matched by name, splits joined by name.

    The first dataset's label column and label order come first; labels only later datasets have are appended.
    Each dataset keeps its own held-out split (or its own stratified split), so no test clip of one dataset
    can be a training clip of another. Only the audio and label columns survive the join.
    """
    if len(specs) == 1:
        return load_labelled(specs[0], config, label_column, seed, test_fraction)
    return join_labelled([load_labelled(spec, config, label_column, seed, test_fraction) for spec in specs],
                         " + ".join(specs))


def join_labelled(parts: Sequence[LabelledSplits], name: str) -> LabelledSplits:
    """Loaded datasets as one, as load_combined describes: labels matched by name, splits joined by name."""
    import datasets

    column = parts[0].label_column
    names = list(parts[0].label_names)
    for part in parts[1:]:
        names.extend(n for n in part.label_names if n not in names)
    # Slot labels survive as JSON text (parts' slot structs differ); None for a part that labels none.
    with_slots = any(SLOTS_COLUMN in ds.column_names for part in parts for ds in part.splits.values())
    features = datasets.Features({
        AUDIO_COLUMN: datasets.Audio(sampling_rate=SAMPLE_RATE),
        column: datasets.ClassLabel(names=names),
        **({SLOTS_COLUMN: datasets.Value("string")} if with_slots else {}),
    })
    joined: dict[str, list[Any]] = {}
    for part in parts:
        mapping = [names.index(n) for n in part.label_names]
        for split, ds in part.splits.items():
            has_slots = SLOTS_COLUMN in ds.column_names
            ds = ds.select_columns([AUDIO_COLUMN, part.label_column, *([SLOTS_COLUMN] if has_slots else [])])
            if part.label_column != column:
                ds = ds.rename_column(part.label_column, column)
            ds = ds.cast_column(AUDIO_COLUMN, datasets.Audio(sampling_rate=SAMPLE_RATE))
            ds = ds.map(lambda batch, m=mapping, h=has_slots: {
                column: [m[i] for i in batch[column]],
                **({SLOTS_COLUMN: [_slots_text(v) for v in batch[SLOTS_COLUMN]] if h else
                    [None] * len(batch[column])} if with_slots else {}),
            }, batched=True, features=features, desc=f"labels of {part.source} ({split})")
            joined.setdefault(split, []).append(ds)
    splits = datasets.DatasetDict({k: datasets.concatenate_datasets(v) for k, v in joined.items()})
    log.info("combined %s: %s, %d labels", name, {k: len(v) for k, v in splits.items()}, len(names))
    return LabelledSplits(splits=splits, label_column=column, label_names=names, source="combined",
                          parts=tuple(p for part in parts for p in (part.parts or (part.source,))))


def _slots_text(value: Any) -> str | None:
    """A row's slot labels as JSON text ({slot: value}, absent slots dropped); None stays None."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps({k: v for k, v in dict(value).items() if v is not None}, ensure_ascii=False)


def _load_raw(spec: str, source: str, config: str | None) -> Any:
    """The dataset as stored, before any relabelling."""
    import datasets

    if source == "saved":
        try:
            return datasets.load_from_disk(spec)
        except (FileNotFoundError, ValueError, OSError, IndexError) as err:  # IndexError: a split with no data
            raise TrainError(f"cannot load saved dataset {spec}: {err}") from err
    if source == "audiofolder":
        kwargs = _audiofolder_options(Path(spec).expanduser(), spec)
        try:
            return datasets.load_dataset("audiofolder", data_dir=spec, **kwargs)
        except Exception as err:  # the builder raises ValueError/FileNotFoundError/DatasetGenerationError alike
            raise TrainError(f"cannot load audio folder {spec}: {_first_line(err)}") from err
    try:
        return datasets.load_dataset(spec, config)
    except Exception as err:  # hub failures surface as many types (connection, HfHub, DatasetNotFound, ValueError)
        raise TrainError(
            f"cannot load dataset {spec!r} (config {config!r}) from the hub and no such local folder exists: "
            f"{_first_line(err)}"
        ) from err


def _audiofolder_options(root: Path, spec: str) -> dict[str, Any]:
    """Check a folder holds audio before `datasets` reads it (its own message for none is "Instruction 'train'
    corresponds to no data!"); labels come from subfolder names even when there is only one, which `datasets`
    otherwise drops without a word (an eval of one intent's recordings is legitimate)."""
    from datasets.packaged_modules.audiofolder.audiofolder import AudioFolder

    files = [f for f in root.rglob("*") if f.is_file() and not any(p.startswith(".") for p in f.relative_to(root).parts)]
    audio = [f for f in files if f.suffix.lower() in AudioFolder.EXTENSIONS]
    if not audio:
        others = sorted({f.suffix or f.name for f in files})
        found = f"only {len(files)} other files ({', '.join(others[:5])})" if files else "it is empty"
        raise TrainError(f"dataset folder {spec} has no audio files: {found}; expected WAV/FLAC/MP3/OGG files in "
                         "one subfolder per intent (DATA/INTENT/x.wav) or beside a metadata.jsonl/csv")
    has_metadata = any(f.name in AudioFolder.METADATA_FILENAMES for f in files)
    split_names = {"train", *HELD_OUT_ALIASES}
    if has_metadata or any(f.parent == root or f.parent.name in split_names for f in audio):
        return {}
    return {"drop_labels": False}


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _pick_label_column(columns: list[str], wanted: str | None, spec: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise TrainError(f"dataset {spec} has no label column {wanted!r}; columns found: {columns}")
        return wanted
    for name in LABEL_COLUMN_CANDIDATES:
        if name in columns:
            return name
    raise TrainError(
        f"dataset {spec} has no label column (looked for {', '.join(LABEL_COLUMN_CANDIDATES)}; pass "
        f"--label-column); columns found: {columns}"
    )


def _find_audio_column(ds: Any, spec: str) -> None:
    import datasets

    feature = ds.features.get(AUDIO_COLUMN)
    if not isinstance(feature, datasets.Audio):
        raise TrainError(
            f"dataset {spec} has no audio column {AUDIO_COLUMN!r} of type Audio; columns found: "
            f"{ {name: type(f).__name__ for name, f in ds.features.items()} }"
        )


def _encode_labels(raw: Any, column: str, spec: str) -> tuple[Any, list[str]]:
    """Make the label column one ClassLabel shared by all splits; strings are encoded jointly, sorted."""
    import datasets

    first = next(iter(raw.values()))
    feature = first.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return raw, list(feature.names)
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise TrainError(
            f"dataset {spec}: label column {column!r} is {feature}; expected a ClassLabel or string labels"
        )
    values: set[str] = set()
    for ds in raw.values():
        values.update(v for v in ds.unique(column) if v is not None)
    names = sorted(values)
    if not names:
        raise TrainError(f"dataset {spec}: label column {column!r} is empty")
    return raw.cast_column(column, datasets.ClassLabel(names=names)), names


def _ensure_test_split(raw: Any, column: str, seed: int, test_fraction: float) -> Any:
    """Keep an existing held-out split (renamed 'test'); otherwise split 'train' stratified where possible."""
    import datasets

    for alias in HELD_OUT_ALIASES:
        if alias in raw:
            if alias != "test":
                raw = datasets.DatasetDict({("test" if k == alias else k): v for k, v in raw.items()})
            return raw
    if "train" not in raw:
        raise TrainError(f"dataset has neither a train nor a test split; splits found: {sorted(raw)}")
    if not 0.0 < test_fraction < 1.0:
        raise TrainError(f"--test-fraction must be between 0 and 1 (the share held out to test), got {test_fraction:g}")
    train = raw["train"]
    try:
        parts = train.train_test_split(test_size=test_fraction, seed=seed, stratify_by_column=column)
    except ValueError as err:
        # Stratifying needs at least two rows of every label; tiny datasets fall back to a plain split.
        log.warning("cannot stratify the train/test split (%s); splitting at random", err)
        parts = train.train_test_split(test_size=test_fraction, seed=seed)
    return datasets.DatasetDict({**{k: v for k, v in raw.items() if k != "train"}, **parts})


# ----------------------------------------------------------------------------------------------- decoding


def decode_clip(value: dict[str, Any], where: str) -> np.ndarray:
    """One stored audio value ({'path','bytes'}) -> checked mono float32 at 16 kHz.

    datasets decodes at the file's own rate and channel count; the mean of the channels is resampled by
    torchaudio, exactly as the daemon and `predict` do:
    datasets' own resampling (FFmpeg's) shapes upsampled 8 kHz audio differently near and above 4 kHz, which
    log-mel features magnify: a model trained on one and served the other lost up to 0.6 points on a real FSDD
    speaker (bench/README.md, "Training hears what the daemon hears").
    """
    import datasets

    from intentd.daemon.resample import resample

    name = value.get("path") or where
    try:
        # No num_channels: FFmpeg's downmix scales by 1/sqrt(2) where predict and the daemon take the mean.
        decoded = datasets.Audio().decode_example(value).get_all_samples()
        samples, rate = decoded.data.numpy(), int(decoded.sample_rate)
    except Exception as err:  # torchcodec raises RuntimeError/ValueError/OSError for bad or missing files
        raise TrainError(f"cannot read audio {name}: {_first_line(err)}") from err
    return resample(check_clip(to_mono(samples, channels_axis=0), name), rate)


def iter_clips(ds: Any, batch_size: int = 32) -> Any:
    """Yield (list of 16 kHz mono clips, list of label ids) batches from a labelled split, decoding ourselves
    so a bad file raises a TrainError naming it."""
    import datasets

    plain = ds.cast_column(AUDIO_COLUMN, datasets.Audio(decode=False))
    for start in range(0, len(plain), batch_size):
        rows = plain[start : start + batch_size]
        clips = [decode_clip(v, f"row {start + i}") for i, v in enumerate(rows[AUDIO_COLUMN])]
        yield clips, rows


def iter_all_clips(spec: str, config: str | None = None, batch_size: int = 32) -> Any:
    """Every clip of DATA, all splits, labels or none: lists of 16 kHz mono clips (for speech that is no command).

    An audio folder is read file by file (audiofolder would want label folders); a saved or hub dataset split
    by split.
    """
    import datasets

    from intentd.train.audio_io import SOUNDFILE_SUFFIXES, read_audio

    source = detect_source(spec)
    if source == "audiofolder":
        files = sorted(p for p in Path(spec).expanduser().rglob("*")
                       if p.is_file() and p.suffix.lower() in SOUNDFILE_SUFFIXES | {".mp3", ".m4a", ".opus"})
        if not files:
            raise TrainError(f"dataset folder {spec} holds no audio files")
        for start in range(0, len(files), batch_size):
            yield [read_audio(f) for f in files[start : start + batch_size]]
        return
    raw = _load_raw(spec, source, config)
    for split in raw.values() if isinstance(raw, datasets.DatasetDict) else [raw]:
        _find_audio_column(split, spec)
        for clips, _ in iter_clips(split, batch_size):
            yield clips


def max_samples_for(extractor: Any, max_seconds: float) -> int:
    """Clip length cap in samples: a fixed-window model's own window (Whisper), otherwise max_seconds."""
    from intentd.daemon.classifier import fixed_window

    return fixed_window(extractor) or round(max_seconds * SAMPLE_RATE)


def extract(extractor: Any, clips: list[np.ndarray], max_samples: int, windows: Sequence[int] = ()) -> dict[str, Any]:
    """Training features of 16 kHz clips cut to max_samples, through the serving core's extractor call (Whisper
    pads to its window; other models' clips stay ragged and Trainer's collator pads them).

    With `windows` (samples, daemon/windows.py) each clip is padded to the window it will be served at, as the
    daemon pads it, and a `window` column says which.
    """
    from intentd.daemon.classifier import extract_features
    from intentd.daemon.windows import window_for

    cut = [c[:max_samples] for c in clips]
    if not windows:
        return extract_features(extractor, cut, return_tensors=None)
    chosen = [window_for(len(c), windows) for c in cut]
    rows: list[Any] = [None] * len(cut)
    for window in sorted(set(chosen)):
        idx = [i for i, w in enumerate(chosen) if w == window]
        for i, row in zip(idx, extract_features(extractor, [cut[i] for i in idx], return_tensors=None,
                                                window=window)["input_features"], strict=True):
            rows[i] = row
    return {"input_features": rows, WINDOW: chosen}


def change_speed(clip: np.ndarray, factor: float) -> np.ndarray:
    """Play a 16 kHz clip `factor` times faster (tempo and pitch together, as Kaldi's speed perturbation does)."""
    from intentd.daemon.resample import resample

    if factor == 1.0:
        return clip
    # Reading the clip as if recorded at factor x 16 kHz and resampling to 16 kHz shortens it by the factor.
    return resample(clip, round(SAMPLE_RATE * factor))


def prepare_features(
    ds: Any,
    label_column: str,
    extractor: Any,
    max_seconds: float,
    batch_size: int = 32,
    speeds: Sequence[float] = (1.0,),
    trims: Sequence[float] = (),
    windows: Sequence[int] = (),
) -> Any:
    """A split -> a Dataset of model inputs (input_features or input_values) and `labels`, kept in memory.

    Each clip yields one row per entry of `speeds` (speed perturbation for the train split; 1.0 is the clip),
    then one per entry of `trims`: the clip cut tight at that many dB below its loudest frame (channel.trim_edges).
    """
    import datasets

    max_samples = max_samples_for(extractor, max_seconds)
    plain = ds.cast_column(AUDIO_COLUMN, datasets.Audio(decode=False))

    def batch_features(batch: dict[str, list], indices: list[int]) -> dict[str, Any]:
        clips = [decode_clip(v, f"row {i}") for v, i in zip(batch[AUDIO_COLUMN], indices)]
        variants = [change_speed(clip, factor) for factor in speeds for clip in clips]
        variants += [channel.trim_edges(clip, SAMPLE_RATE, db) for db in trims for clip in clips]
        features = extract(extractor, variants, max_samples, windows)
        features[LABELS] = list(batch[label_column]) * (len(speeds) + len(trims))
        if SLOT_TARGETS in batch:  # each perturbed copy says the same slot values as its clip
            features[SLOT_TARGETS] = list(batch[SLOT_TARGETS]) * (len(speeds) + len(trims))
        return features

    return plain.map(
        batch_features,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        remove_columns=plain.column_names,
        keep_in_memory=True,
        desc="extracting features",
    )


def map_labels_to_model(names: list[str], label2id: dict[str, int], spec: str) -> list[int]:
    """Dataset label id -> model label id, by name; a label the model does not know is a TrainError."""
    unknown = [n for n in names if n not in label2id]
    if unknown:
        raise TrainError(
            f"dataset {spec} has labels the model does not know: {unknown}; the model knows {sorted(label2id)}"
        )
    return [label2id[n] for n in names]
