"""Model folder -> labels and scores: load, features, batched forwards, softmax, top-k (serving and training alike)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from daemon.audio import SAMPLE_RATE, check_clip
from daemon.errors import AudioError, ModelError
from daemon.events import UNKNOWN_LABEL
from daemon.frames import Prediction

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_WEIGHTS_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
# Written by `intentd-train fit` (train/out_of_scope.py): the rejection threshold calibrated on held-out data.
CALIBRATION_FILE = "intentd.json"
MODEL_ID_HASH_CHARS = 8
HASH_BLOCK_BYTES = 1 << 20
WARMUP_BATCH = 2
WARMUP_SECONDS = 1.0

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def weights_digest(folder: Path) -> str:
    """sha256 hex of the folder's safetensors weights (the single file, or every shard in index order)."""
    single = folder / WEIGHTS_FILE
    if single.is_file():
        files = [single]
    else:
        index = json.loads((folder / WEIGHTS_INDEX_FILE).read_text(encoding="utf-8"))
        files = [folder / name for name in sorted(set(index["weight_map"].values()))]
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as fh:
            while block := fh.read(HASH_BLOCK_BYTES):
                digest.update(block)
    return digest.hexdigest()


def resolve_device(device: str) -> torch.device:
    """'auto' -> the first CUDA device when there is one, else the CPU; anything else as torch spells it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ModelError(f"device {device!r} is not a torch device name: {err}") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} was asked for but CUDA is not available")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' -> bf16 (or fp16) on CUDA, float32 on the CPU, where half precision is slow and lossy."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in _DTYPES:
        raise ModelError(f"dtype {dtype!r} is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def fixed_window(extractor: Any) -> int | None:
    """Samples every clip is padded or cut to when the extractor has a fixed window (Whisper), else None.

    The one place that answers "is this a fixed-window model": serving, training features and eval all ask here.
    """
    n_samples = getattr(extractor, "n_samples", None)
    if n_samples:
        return int(n_samples)
    chunk = getattr(extractor, "chunk_length", None)
    return int(chunk * SAMPLE_RATE) if chunk else None


def extract_features(extractor: Any, clips: Sequence[np.ndarray], return_tensors: str | None = "pt") -> dict[str, Any]:
    """16 kHz clips -> the model's inputs: fixed-window extractors pad every clip to the window themselves;
    others get the clips as they are, so with tensors every clip must have one length (see `batch_groups`)."""
    if fixed_window(extractor) is not None:
        # Whisper's classifier takes no attention mask: the whole window, padding included, is its input.
        return dict(extractor(list(clips), sampling_rate=SAMPLE_RATE, return_attention_mask=False,
                              return_tensors=return_tensors))
    if return_tensors is not None and len({len(clip) for clip in clips}) > 1:
        raise AudioError("clips of a variable-length model must be batched by equal length (batch_groups)")
    return dict(extractor(list(clips), sampling_rate=SAMPLE_RATE, return_tensors=return_tensors))


def batch_groups(lengths: Sequence[int], fixed: bool, max_batch: int | None = None) -> list[list[int]]:
    """Clip indices grouped into forwards whose result for a clip does not depend on its neighbours.

    A fixed-window model pads every clip to the same window, so any clips may share a forward. A variable-length
    model would pad to the longest clip, and padding (with or without a mask: wav2vec2-base has no usable one)
    changes every shorter clip's score; so only clips of equal length share a forward.
    """
    if fixed:
        order = list(range(len(lengths)))
        groups = [order]
    else:
        by_length: dict[int, list[int]] = {}
        for i, length in enumerate(lengths):
            by_length.setdefault(length, []).append(i)
        groups = list(by_length.values())
    if max_batch is None:
        return [g for g in groups if g]
    return [g[i : i + max_batch] for g in groups for i in range(0, len(g), max_batch)]


def top_k_of(probabilities: np.ndarray, labels: Sequence[str], k: int) -> list[tuple[tuple[str, float], ...]]:
    """The k best (label, score) pairs of each row, best first; ties keep label order."""
    k = max(1, min(k, probabilities.shape[1]))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [tuple((labels[int(j)], float(row[j])) for j in idx) for row, idx in zip(probabilities, order, strict=True)]


def decide(top_k: tuple[tuple[str, float], ...], threshold: float | None) -> Prediction:
    """The answer for ranked scores: the best label, or `unknown` when its score is below the threshold (a model
    fit gave an out-of-scope class names it `unknown` itself, so winning it answers `unknown` too)."""
    label, score = top_k[0]
    if threshold is not None and score < threshold:
        label = UNKNOWN_LABEL
    return Prediction(label=label, score=score, top_k=top_k)


@dataclass
class Classifier:
    """A loaded audio-classification model and its feature extractor: 16 kHz clips -> softmax scores -> labels.

    The one model core: the daemon, `intentd-train predict` and `eval` all score clips through `probabilities`,
    so a clip gets the same score whichever clips share its batch (`batch_groups`).
    """

    model: Any  # a transformers PreTrainedModel for audio classification
    extractor: Any  # its feature extractor
    model_id: str
    device: torch.device
    dtype: torch.dtype
    labels: tuple[str, ...]
    top_k: int = 3
    threshold: float | None = None
    sample_rate: int = SAMPLE_RATE
    max_samples: int | None = None  # the fixed window (longer clips are cut); None: the clip's own length

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        device: str = "auto",
        dtype: str = "auto",
        top_k: int = 3,
        threshold: float | None = None,
    ) -> Classifier:
        """Load a folder made by `intentd-train fit` (safetensors only); every failure is a ModelError.

        threshold None: the model's own calibrated threshold (CALIBRATION_FILE), none if it has no such file;
        a number overrides it (0 rejects nothing by score).
        """
        folder = check_model_folder(model_dir)
        if threshold is None:
            threshold = calibrated_threshold(folder)
        if top_k < 1:
            raise ModelError(f"{folder}: top_k must be at least 1, got {top_k}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ModelError(f"{folder}: threshold must be in [0, 1], got {threshold}")
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)

        # Imported here so importing this module (e.g. for type checks) stays cheap.
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

        try:
            extractor = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
        except Exception as err:  # transformers raises OSError, ValueError, JSONDecodeError...
            raise ModelError(f"{folder}: cannot load the feature extractor: {err}") from err
        try:
            model, info = AutoModelForAudioClassification.from_pretrained(
                folder,
                use_safetensors=True,
                local_files_only=True,
                output_loading_info=True,
                dtype=torch_dtype,
            )
        except Exception as err:
            raise ModelError(f"{folder}: cannot load the model: {err}") from err
        # A weight missing from the file would be silently initialised at random: refuse instead.
        missing = sorted(info.get("missing_keys") or ())
        mismatched = sorted(str(key) for key in info.get("mismatched_keys") or ())
        if missing or mismatched:
            raise ModelError(
                f"{folder}: {WEIGHTS_FILE} does not match {CONFIG_FILE}: "
                f"missing {missing[:5]}, mismatched {mismatched[:5]}"
            )
        extractor_rate = getattr(extractor, "sampling_rate", SAMPLE_RATE)
        if extractor_rate != SAMPLE_RATE:
            raise ModelError(
                f"{folder}: feature extractor expects {extractor_rate} Hz, intentd feeds {SAMPLE_RATE}"
            )

        model.to(torch_device).eval()
        labels = tuple(str(model.config.id2label[i]) for i in range(model.config.num_labels))
        try:
            digest = weights_digest(folder)
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"{folder}: cannot hash the weights for the model id: {err}") from err
        model_id = f"{folder.resolve().name}@{digest[:MODEL_ID_HASH_CHARS]}"
        log.info("loaded %s on %s as %s (%d labels)", model_id, torch_device, torch_dtype, len(labels))
        return cls(
            model=model,
            extractor=extractor,
            model_id=model_id,
            device=torch_device,
            dtype=torch_dtype,
            labels=labels,
            top_k=min(top_k, len(labels)),
            threshold=threshold,
            max_samples=fixed_window(extractor),
        )

    @property
    def label2id(self) -> dict[str, int]:
        """Label name -> the model's class index."""
        return {label: i for i, label in enumerate(self.labels)}

    def probabilities(self, clips: Sequence[np.ndarray], max_batch: int | None = None) -> np.ndarray:
        """(clips, labels) float32 softmax scores of 16 kHz mono float32 clips, in order.

        Clips run in as few forwards as `batch_groups` allows (at most `max_batch` clips each when given).
        """
        batch = [check_clip(clip, f"clip {i}", allow_silence=True) for i, clip in enumerate(clips)]
        out = np.zeros((len(batch), len(self.labels)), dtype=np.float32)
        groups = batch_groups([len(c) for c in batch], self.max_samples is not None, max_batch)
        with torch.inference_mode():
            for idx in groups:
                logits = self.model(**self._features([batch[i] for i in idx])).logits
                out[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return out

    def classify(self, clips: Sequence[np.ndarray]) -> list[Prediction]:
        """One Prediction per clip, in order: top-k labels, and `unknown` below the threshold."""
        if not clips:
            return []
        ranked = top_k_of(self.probabilities(clips), self.labels, self.top_k)
        return [self._prediction(top_k) for top_k in ranked]

    def warmup(self) -> None:
        """Run a dummy batch so the first real request does not pay for lazy initialisation."""
        length = self.max_samples or int(WARMUP_SECONDS * SAMPLE_RATE)
        self.classify([np.zeros(length, dtype=np.float32) for _ in range(WARMUP_BATCH)])

    def _features(self, batch: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """The extractor's tensors for one forward, on the model's device and dtype."""
        out: dict[str, torch.Tensor] = {}
        for key, value in extract_features(self.extractor, batch).items():
            value = value.to(self.device)
            out[key] = value.to(self.dtype) if value.is_floating_point() else value
        return out

    def _prediction(self, top_k: tuple[tuple[str, float], ...]) -> Prediction:
        return decide(top_k, self.threshold)


def calibrated_threshold(folder: Path) -> float | None:
    """The threshold fit stored in the model folder, or None when it stored none."""
    path = folder / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))["threshold"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelError(f"{path}: unreadable calibration ({err}); delete it or refit") from err
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ModelError(f"{path}: threshold must be a number in [0, 1], got {value!r}")
    return float(value)


def check_model_folder(model_dir: str | Path) -> Path:
    """The folder, if it can hold a usable model; else a ModelError saying what is missing (before transformers
    gives a vaguer one)."""
    folder = Path(model_dir)
    if not folder.exists():
        raise ModelError(f"{folder}: model folder does not exist")
    if not folder.is_dir():
        raise ModelError(f"{folder}: model path is not a folder")
    if not (folder / CONFIG_FILE).is_file():
        raise ModelError(f"{folder}: no {CONFIG_FILE} (not a folder made by `intentd-train fit`)")
    if not (folder / PREPROCESSOR_FILE).is_file():
        raise ModelError(
            f"{folder}: no {PREPROCESSOR_FILE} (the feature extractor was not saved with the model)"
        )
    if not (folder / WEIGHTS_FILE).is_file() and not (folder / WEIGHTS_INDEX_FILE).is_file():
        if any((folder / name).is_file() for name in PICKLE_WEIGHTS_FILES):
            raise ModelError(
                f"{folder}: only pickle weights (pytorch_model.bin), which intentd refuses to load; "
                "re-save the model with safe_serialization=True"
            )
        raise ModelError(f"{folder}: no {WEIGHTS_FILE}")
    return folder
