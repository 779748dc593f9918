"""Model folder -> labels and scores: load, features, batched forwards, softmax, top-k (serving and training alike)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from intentd.daemon import onnx_forward
from intentd.daemon.audio import SAMPLE_RATE, check_clip
from intentd.daemon.errors import AudioError, ModelError
from intentd.daemon.events import UNKNOWN_LABEL
from intentd.daemon.frames import Prediction
from intentd.daemon.grammar_decoder import RECOGNISER_KEY, WHISPER_GRAMMAR, GrammarDecoder
from intentd.daemon.slot_heads import SLOTS_KEY, SlotHeads, SlotSchema, decode_slots, for_intent
from intentd.daemon.windows import encoder_states, parse_windows, whisper_logits, window_for, window_step

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_WEIGHTS_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
# config.json `architectures` that classify audio clips (Whisper's is ...ForAudioClassification, wav2vec2's and
# most others' ...ForSequenceClassification); a backbone alone (WhisperModel, Wav2Vec2Model) is not one.
CLASSIFIER_ARCHITECTURES = ("ForAudioClassification", "ForSequenceClassification")
# Written by `intentd-train fit` (train/out_of_scope.py): the rejection threshold calibrated on held-out data.
CALIBRATION_FILE = "intentd.json"
MODEL_ID_HASH_CHARS = 8
HASH_BLOCK_BYTES = 1 << 20
WARMUP_BATCH = 2
WARMUP_SECONDS = 1.0

# Models whose encoder daemon/windows.py can run at a shorter window.
WHISPER_WINDOWED = ("WhisperForAudioClassification", "WhisperForConditionalGeneration")

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


def extract_features(extractor: Any, clips: Sequence[np.ndarray], return_tensors: str | None = "pt",
                     window: int | None = None) -> dict[str, Any]:
    """16 kHz clips -> the model's inputs: fixed-window extractors pad (or cut) every clip to the window themselves,
    their own or `window` samples (daemon/windows.py); others get the clips as they are, so with tensors every clip
    must have one length (see `batch_groups`)."""
    if fixed_window(extractor) is not None:
        # Whisper's classifier takes no attention mask: the whole window, padding included, is its input.
        extra = {"max_length": window} if window else {}
        return dict(extractor(list(clips), sampling_rate=SAMPLE_RATE, return_attention_mask=False,
                              return_tensors=return_tensors, **extra))
    if return_tensors is not None and len({len(clip) for clip in clips}) > 1:
        raise AudioError("clips of a variable-length model must be batched by equal length (batch_groups)")
    return dict(extractor(list(clips), sampling_rate=SAMPLE_RATE, return_tensors=return_tensors))


def batch_groups(keys: Sequence[int], max_batch: int | None = None) -> list[list[int]]:
    """Clip indices grouped into forwards whose result for a clip does not depend on its neighbours: clips with
    one key (`Classifier.input_length`) share a forward, in order of first appearance.

    A fixed-window model pads every clip to its window, so all clips of one window may share a forward. A
    variable-length model would pad to the longest clip, and padding (with or without a mask: wav2vec2-base has
    no usable one) changes every shorter clip's score; so only clips of equal length share a forward.
    """
    by_key: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_key.setdefault(key, []).append(i)
    groups = list(by_key.values())
    if max_batch is None:
        return groups
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
    windows: tuple[int, ...] = ()  # shorter windows the model was trained at, then max_samples (daemon/windows.py)
    onnx: Any = None  # an OnnxForward when the forward runs on ONNX Runtime (daemon/onnx_forward.py)
    slot_heads: SlotHeads | None = None  # the folder's slot heads (daemon/slot_heads.py), None: intents only
    decoder: GrammarDecoder | None = None  # a whisper-grammar folder's decoder (daemon/grammar_decoder.py)

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        device: str = "auto",
        dtype: str = "auto",
        top_k: int = 3,
        threshold: float | None = None,
        runtime: str = "auto",
    ) -> Classifier:
        """Load a folder made by `intentd-train fit` (safetensors only); every failure is a ModelError.

        threshold None: the model's own calibrated threshold (CALIBRATION_FILE), none if it has no such file;
        a number overrides it (0 rejects nothing by score). runtime: torch, onnx (ONNX Runtime), or auto (ONNX
        Runtime where it applies: a Whisper classifier in float32 on the CPU with onnxruntime installed; a model
        with slot heads or a grammar decoder runs on PyTorch, whose encoder states they read).

        A folder whose intentd.json says `"recogniser": "whisper-grammar"` holds a WhisperForConditionalGeneration
        decoded under a grammar (daemon/grammar_decoder.py): its labels are the grammar's intents, each answer's
        score the decoded sentence's, its slots and text the sentence's.
        """
        folder = check_model_folder(model_dir)
        meta = serving_meta(folder)
        if threshold is None:
            threshold = calibrated_threshold(folder, meta)
        if top_k < 1:
            raise ModelError(f"{folder}: top_k must be at least 1, got {top_k}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ModelError(f"{folder}: threshold must be in [0, 1], got {threshold}")
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)

        # Imported here so importing this module (e.g. for type checks) stays cheap.
        from transformers import (
            AutoFeatureExtractor,
            AutoModelForAudioClassification,
            WhisperForConditionalGeneration,
        )

        grammar = meta.get(RECOGNISER_KEY) == WHISPER_GRAMMAR
        model_class = WhisperForConditionalGeneration if grammar else AutoModelForAudioClassification

        try:
            extractor = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
        except Exception as err:  # transformers raises OSError, ValueError, JSONDecodeError...
            raise ModelError(f"{folder}: cannot load the feature extractor: {err}") from err
        try:
            model, info = model_class.from_pretrained(
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
        heads = _slot_heads(folder, meta, model, extractor)
        decoder = GrammarDecoder.load(folder, meta, model) if grammar else None
        if heads is not None or decoder is not None:
            if runtime == "onnx":
                raise ModelError(f"{folder}: a model with slot heads or a grammar decoder runs on PyTorch; set "
                                 "model.runtime = \"torch\"")
            runtime = "torch"
        if heads is not None:
            heads.to(device=torch_device, dtype=torch_dtype)
        chosen = onnx_forward.choose(runtime, model, torch_device, torch_dtype)
        full = fixed_window(extractor)
        onnx = onnx_forward.OnnxForward(model, full // int(extractor.hop_length), torch.get_num_threads()) \
            if chosen == "onnx" and full else None
        labels = tuple(str(model.config.id2label[i]) for i in range(model.config.num_labels))
        if decoder is not None and decoder.intents != labels:
            raise ModelError(f"{folder}: {CONFIG_FILE} labels {list(labels)} are not the grammar's intents "
                             f"{list(decoder.intents)}")
        try:
            digest = weights_digest(folder)
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"{folder}: cannot hash the weights for the model id: {err}") from err
        model_id = f"{folder.resolve().name}@{digest[:MODEL_ID_HASH_CHARS]}"
        log.info("loaded %s on %s as %s (%d labels, %s slots, %s runtime)", model_id, torch_device, torch_dtype,
                 len(labels), len(heads.schema.values) if heads is not None else 0,
                 "ONNX" if onnx is not None else "PyTorch")
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
            windows=_windows(folder, meta, model, extractor),
            onnx=onnx,
            slot_heads=heads,
            decoder=decoder,
        )

    @property
    def label2id(self) -> dict[str, int]:
        """Label name -> the model's class index."""
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def slot_schema(self) -> SlotSchema | None:
        """The slots this model predicts, or None for an intent-only model."""
        return self.slot_heads.schema if self.slot_heads is not None else None

    @property
    def predicts_slots(self) -> bool:
        """Whether answers carry slots (slot heads or a grammar decoder)."""
        return self.slot_heads is not None or self.decoder is not None

    def probabilities(self, clips: Sequence[np.ndarray], max_batch: int | None = None) -> np.ndarray:
        """(clips, labels) float32 softmax scores of 16 kHz mono float32 clips, in order.

        Clips run in as few forwards as `batch_groups` allows (at most `max_batch` clips each when given).
        """
        return self.scores(clips, max_batch)[0]

    def scores(self, clips: Sequence[np.ndarray], max_batch: int | None = None
               ) -> tuple[np.ndarray, list[dict[str, tuple[str, float]]]]:
        """The intent scores (as `probabilities`) and, per clip, each slot the heads hear as {slot: (value,
        score)} ({} for every clip of an intent-only model), from the same forwards."""
        probabilities, slots, _texts = self.commands(clips, max_batch)
        return probabilities, slots

    def commands(self, clips: Sequence[np.ndarray], max_batch: int | None = None
                 ) -> tuple[np.ndarray, list[dict[str, tuple[str, float]]], list[str | None]]:
        """`scores` and, per clip, the command sentence a grammar decoder heard (None for other models)."""
        batch = [check_clip(clip, f"clip {i}", allow_silence=True) for i, clip in enumerate(clips)]
        out = np.zeros((len(batch), len(self.labels)), dtype=np.float32)
        texts: list[str | None] = [None] * len(batch)
        schema = self.slot_schema
        slot_out = [np.zeros((len(batch), 1 + len(v)), dtype=np.float32) for v in schema.values.values()] \
            if schema is not None else []
        keys = [self.input_length(len(c)) for c in batch]
        decoded: list[dict[str, tuple[str, float]]] = [{} for _ in batch]
        with torch.inference_mode():
            for idx in batch_groups(keys, max_batch):
                features = self._features([batch[i] for i in idx], keys[idx[0]] if self.windows else None)
                if self.decoder is not None:
                    # The grammar decoder answers each clip with one sentence: its intent scores the sentence's
                    # score, every other intent 0 (a clip no sentence fits scores 0 everywhere).
                    hidden = encoder_states(self.model.model.encoder, features["input_features"])
                    for i, heard in zip(idx, self.decoder.decode(hidden), strict=True):
                        if heard.intent is not None:
                            out[i, self.labels.index(heard.intent)] = heard.score
                            decoded[i] = dict(heard.slots)
                            texts[i] = heard.text
                    continue
                if self.slot_heads is not None:
                    # One encoder pass feeds both heads: the intent head through transformers' own projector and
                    # mean, the slot heads over the same per-frame states (at the full window equal to
                    # transformers' encoder output: tests/test_windows.py).
                    hidden = encoder_states(self.model.encoder, features["input_features"])
                    logits = self.model(encoder_outputs=(hidden,)).logits
                    for rows, slot_logits in zip(slot_out, self.slot_heads(hidden), strict=True):
                        rows[idx] = torch.softmax(slot_logits.float(), dim=-1).cpu().numpy()
                elif self.onnx is not None:
                    logits = self.onnx(features["input_features"])
                elif self.windows:
                    logits = whisper_logits(self.model, features["input_features"], self._full_frames)
                else:
                    logits = self.model(**features).logits
                out[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        slots = decode_slots(slot_out, schema) if schema is not None else decoded
        return out, slots, texts

    def input_length(self, samples: int) -> int:
        """Samples the model's input has for a clip of `samples`: its window (the shortest stated window that
        holds it, or the one fixed window), or the clip's own length for a variable-length model."""
        if self.windows:
            return window_for(samples, self.windows)
        return self.max_samples if self.max_samples is not None else samples

    @property
    def _full_frames(self) -> int:
        assert self.max_samples is not None
        return self.max_samples // int(self.extractor.hop_length)

    def classify(self, clips: Sequence[np.ndarray]) -> list[Prediction]:
        """One Prediction per clip, in order: top-k labels, and `unknown` below the threshold."""
        if not clips:
            return []
        probabilities, slots, texts = self.commands(clips)
        ranked = top_k_of(probabilities, self.labels, self.top_k)
        return [self.answer(top_k, heard, text) for top_k, heard, text in zip(ranked, slots, texts, strict=True)]

    def answer(self, top_k: tuple[tuple[str, float], ...], slots: dict[str, tuple[str, float]],
               text: str | None = None) -> Prediction:
        """The daemon's answer for one clip's ranked intents and heard slots (and a grammar decoder's sentence):
        `decide`, then the slots the answered intent can take (none for `unknown`, which carries no text)."""
        prediction = self._prediction(top_k)
        if self.decoder is not None:
            if prediction.label == UNKNOWN_LABEL or top_k[0][1] <= 0.0:
                return replace(prediction, label=UNKNOWN_LABEL)
            return replace(prediction, slots=dict(slots), text=text)
        schema = self.slot_schema
        if schema is None:
            return prediction
        return replace(prediction, slots=for_intent(slots, prediction.label, schema, UNKNOWN_LABEL))

    def warmup(self) -> None:
        """Run a dummy batch so the first real request does not pay for lazy initialisation."""
        lengths = self.windows or (self.max_samples or int(WARMUP_SECONDS * SAMPLE_RATE),)
        self.classify([np.zeros(n, dtype=np.float32) for n in lengths for _ in range(WARMUP_BATCH)])

    def _features(self, batch: list[np.ndarray], window: int | None) -> dict[str, torch.Tensor]:
        """The extractor's tensors for one forward, on the model's device and dtype."""
        out: dict[str, torch.Tensor] = {}
        for key, value in extract_features(self.extractor, batch, window=window).items():
            value = value.to(self.device)
            out[key] = value.to(self.dtype) if value.is_floating_point() else value
        return out

    def _prediction(self, top_k: tuple[tuple[str, float], ...]) -> Prediction:
        return decide(top_k, self.threshold)


def serving_meta(folder: Path) -> dict[str, Any]:
    """What fit stored for serving in the model folder (CALIBRATION_FILE): threshold, windows; {} without it."""
    path = folder / CALIBRATION_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}: unreadable calibration ({err}); delete it or refit") from err
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: unreadable calibration (not a JSON object); delete it or refit")
    return meta


def calibrated_threshold(folder: Path, meta: dict[str, Any] | None = None) -> float | None:
    """The threshold fit stored in the model folder, or None when it stored none."""
    value = (serving_meta(folder) if meta is None else meta).get("threshold")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ModelError(f"{folder / CALIBRATION_FILE}: threshold must be a number in [0, 1], got {value!r}")
    return float(value)


def _windows(folder: Path, meta: dict[str, Any], model: Any, extractor: Any) -> tuple[int, ...]:
    """The windows the folder states (samples, with the full one last), checked against the model; () if none."""
    stated = meta.get("windows_s")
    if not stated:
        return ()
    where = str(folder / CALIBRATION_FILE)
    full = fixed_window(extractor)
    if full is None or type(model).__name__ not in WHISPER_WINDOWED:
        raise ModelError(f"{where}: windows_s needs a Whisper classifier (a fixed-window model)")
    if model.config.use_weighted_layer_sum:
        raise ModelError(f"{where}: windows_s cannot serve a weighted layer sum")
    if not isinstance(stated, list):
        raise ModelError(f"{where}: windows_s must be a list of seconds, got {stated!r}")
    return parse_windows(stated, full, window_step(extractor), where)


def _slot_heads(folder: Path, meta: dict[str, Any], model: Any, extractor: Any) -> SlotHeads | None:
    """The slot heads the folder states (SLOTS_KEY in intentd.json), checked against the model; None if none."""
    raw = meta.get(SLOTS_KEY)
    if not raw:
        return None
    where = str(folder / CALIBRATION_FILE)
    if fixed_window(extractor) is None or type(model).__name__ != "WhisperForAudioClassification":
        raise ModelError(f"{where}: slot heads need a Whisper classifier")
    if model.config.use_weighted_layer_sum:
        raise ModelError(f"{where}: slot heads cannot serve a weighted layer sum")
    return SlotHeads.load(folder, SlotSchema.from_json(raw, where), int(model.config.d_model))


def _check_architecture(folder: Path) -> None:
    """A ModelError when config.json names a model that is no audio classifier (a backbone), before transformers
    loads it with a fresh random head and prints its load report. A whisper-grammar folder is a generation model
    that answers as a classifier (daemon/grammar_decoder.py)."""
    if serving_meta(folder).get(RECOGNISER_KEY) == WHISPER_GRAMMAR:
        return
    try:
        architectures = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return  # unreadable: the load itself says so, naming the file
    if architectures and not any(str(a).endswith(CLASSIFIER_ARCHITECTURES) for a in architectures):
        raise ModelError(
            f"{folder}: not an audio classifier ({CONFIG_FILE} says {', '.join(map(str, architectures))}); a "
            "backbone like this is a --base-model for `intentd-train fit`, which writes a classifier folder")


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
    _check_architecture(folder)
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
