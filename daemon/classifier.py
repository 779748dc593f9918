"""Model folder -> labels and scores: load, preprocess, one batched forward, softmax, top-k."""

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

from daemon.errors import AudioError, ModelError
from daemon.frames import Prediction

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000  # every model intentd-train makes expects 16 kHz mono
UNKNOWN_LABEL = "unknown"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_WEIGHTS_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
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


@dataclass
class Classifier:
    """A loaded audio-classification model and its feature extractor; `classify` runs one batched forward."""

    model: Any  # a transformers PreTrainedModel for audio classification
    extractor: Any  # its feature extractor
    model_id: str
    device: torch.device
    dtype: torch.dtype
    labels: tuple[str, ...]
    top_k: int = 3
    threshold: float | None = None
    sample_rate: int = SAMPLE_RATE
    max_samples: int | None = None  # longer clips are truncated by the extractor; None: no fixed window

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        device: str = "auto",
        dtype: str = "auto",
        top_k: int = 3,
        threshold: float | None = None,
    ) -> Classifier:
        """Load a folder made by `intentd-train fit` (safetensors only); every failure is a ModelError."""
        folder = Path(model_dir)
        _check_folder(folder)
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
        max_samples = getattr(extractor, "n_samples", None)
        if max_samples is None and getattr(extractor, "chunk_length", None):
            max_samples = int(extractor.chunk_length * SAMPLE_RATE)
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
            max_samples=int(max_samples) if max_samples else None,
        )

    def classify(self, clips: Sequence[np.ndarray]) -> list[Prediction]:
        """Classify 16 kHz mono float32 clips in one batched forward; one Prediction per clip, in order."""
        if not clips:
            return []
        batch = [_as_clip(clip, i) for i, clip in enumerate(clips)]
        features = self._features(batch)
        with torch.inference_mode():
            logits = self.model(**features).logits
            probs = torch.softmax(logits.float(), dim=-1)
            scores, indices = torch.topk(probs, k=self.top_k, dim=-1)
        return [
            self._prediction(row_scores, row_indices)
            for row_scores, row_indices in zip(scores.cpu().tolist(), indices.cpu().tolist(), strict=True)
        ]

    def warmup(self) -> None:
        """Run a dummy batch so the first real request does not pay for lazy initialisation."""
        length = self.max_samples or int(WARMUP_SECONDS * SAMPLE_RATE)
        self.classify([np.zeros(length, dtype=np.float32) for _ in range(WARMUP_BATCH)])

    def _features(self, batch: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Run the feature extractor over the whole batch and move the tensors to the model."""
        if self.max_samples is not None:
            # Fixed-window extractors (Whisper) pad and truncate every clip to the window themselves.
            encoded = self.extractor(batch, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        else:
            encoded = self.extractor(
                batch,
                sampling_rate=SAMPLE_RATE,
                return_tensors="pt",
                padding="longest",
                return_attention_mask=True,
            )
        out: dict[str, torch.Tensor] = {}
        for key, value in encoded.items():
            value = value.to(self.device)
            out[key] = value.to(self.dtype) if value.is_floating_point() else value
        return out

    def _prediction(self, scores: list[float], indices: list[int]) -> Prediction:
        top_k = tuple((self.labels[i], float(s)) for s, i in zip(scores, indices, strict=True))
        label, score = top_k[0]
        if self.threshold is not None and score < self.threshold:
            label = UNKNOWN_LABEL
        return Prediction(label=label, score=score, top_k=top_k)


def _check_folder(folder: Path) -> None:
    """Refuse folders that cannot hold a usable model before transformers gives a vaguer error."""
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


def _as_clip(clip: np.ndarray, position: int) -> np.ndarray:
    """Check one clip is mono, finite and float32."""
    array = np.asarray(clip, dtype=np.float32)
    if array.ndim != 1:
        raise AudioError(f"clip {position}: expected mono 1-D samples, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise AudioError(f"clip {position}: NaN or infinite samples")
    return array
