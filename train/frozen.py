"""Train modes and the frozen-prefix cache that makes frozen modes fast on a CPU.

Modes: `head` trains only the projector + classifier, `top` also the top N encoder layers, `full` everything but
the convolutional front end (as the tutorial does). Whatever is frozen is a fixed function of the clip, so for
supported models we run it once per clip, keep its output, and train a small module on those outputs:

  * head (Whisper and the wav2vec2 family): the encoder's mean-pooled hidden states. The projector is linear and
    pooling is a (masked) mean, so mean-then-project equals project-then-mean; a weighted layer sum is linear too,
    so we keep one pooled vector per layer and let the small module learn the weights.
  * top N (Whisper): the hidden states entering the first unfrozen layer, a (frames, d_model) array per clip;
    with a weighted layer sum also the mean-pooled states of the embeddings and every frozen layer, since the
    sum, the projector and the mean are all linear.

The small modules hold *the full model's own* submodules, not copies, so whatever Trainer does to their weights
(steps, load-best-at-end) lands in the full model, which is then saved as a normal, complete classifier.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from intentd.train.data import SLOT_TARGETS, WINDOW
from intentd.train.errors import TrainError

log = logging.getLogger(__name__)

TRAIN_MODES = ("head", "top", "full")
# Learning rates that converge per mode; the tutorial's 3e-5 is only sane when everything trains.
DEFAULT_LEARNING_RATES = {"head": 1e-3, "top": 2e-4, "full": 3e-5}
# Chosen by measurement (bench/README.md, FSDD digits, whisper-tiny.en, 2 s crop, 5 epochs): training only the top
# 1 of 4 encoder layers generalises best. Trained on synthetic speech only and tested on 2,000 real clips: top-1
# 95.75%, top-2 89.75%, head 89.0%, frozen features + logistic regression 88.1%. Unseen real speaker (mean of
# four folds): top-1 95.7% (worst 91.6%), top-2 94.9% (88.4%), head 92.75%, floor 95.0%; top-4 lost 13 points on
# george. More trainable layers fit the training voices better and new voices worse; top-1 also fits ~3x faster.
DEFAULT_UNFREEZE_TOP = 1
CACHE_BATCH_SIZE = 16
# Base-model attribute names of the wav2vec2 family's classifiers (same projector/classifier/pooling).
_W2V_BASES = ("wav2vec2", "hubert", "wavlm", "data2vec_audio", "unispeech", "unispeech_sat", "sew", "sew_d")


def _is_whisper(model: Any) -> bool:
    return type(model).__name__ == "WhisperForAudioClassification"


def _w2v_base(model: Any) -> nn.Module | None:
    """The wav2vec2-family base model inside a *ForSequenceClassification, or None for other architectures."""
    if not (hasattr(model, "projector") and hasattr(model, "classifier")):
        return None
    for name in _W2V_BASES:
        base = getattr(model, name, None)
        if isinstance(base, nn.Module):
            return base
    return None


def has_time_frames(model: Any) -> bool:
    """Whether the encoder's hidden states are one per 20 ms of audio (Whisper, the wav2vec2 family), not patches."""
    return _is_whisper(model) or _w2v_base(model) is not None


def encoder_layers(model: Any) -> nn.ModuleList:
    """The stack of transformer layers whose top N `top` mode trains."""
    if _is_whisper(model):
        return model.encoder.layers
    base: Any = _w2v_base(model)
    if base is not None:
        return base.encoder.layers
    for module in model.modules():  # AST and other ViT-style encoders: the first ModuleList named layer(s)
        for name, child in module.named_children():
            if name in ("layer", "layers") and isinstance(child, nn.ModuleList):
                return child
    raise TrainError(f"cannot find the encoder layers of {type(model).__name__}; use --train-mode head or full")


def _head_parameter_names(model: Any) -> list[str]:
    """Parameters outside the base encoder: projector, classifier, layer weights (and AST's classifier)."""
    base_prefixes = ("encoder.",) if _is_whisper(model) else tuple(f"{n}." for n in _W2V_BASES) + (
        "audio_spectrogram_transformer.",
    )
    return [name for name, _ in model.named_parameters() if not name.startswith(base_prefixes)]


def apply_train_mode(model: Any, mode: str, unfreeze_top: int) -> dict[str, int]:
    """Set requires_grad for a mode; returns trainable/total parameter counts."""
    if mode not in TRAIN_MODES:
        raise TrainError(f"unknown train mode {mode!r}; choose one of {', '.join(TRAIN_MODES)}")
    if mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        if hasattr(model, "freeze_feature_encoder"):
            model.freeze_feature_encoder()  # the tutorial's setting: the CNN front end stays as pretrained
        if _is_whisper(model):
            model.encoder.embed_positions.requires_grad_(False)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        head = set(_head_parameter_names(model))
        for name, p in model.named_parameters():
            if name in head:
                p.requires_grad_(True)
        if mode == "top":
            layers = encoder_layers(model)
            if not 1 <= unfreeze_top <= len(layers):
                raise TrainError(f"--unfreeze-top {unfreeze_top} is out of range: the encoder has {len(layers)} layers")
            for layer in layers[len(layers) - unfreeze_top :]:
                layer.requires_grad_(True)
            if _is_whisper(model):
                model.encoder.layer_norm.requires_grad_(True)  # sits after the last layer
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total}


def can_cache(model: Any, mode: str) -> bool:
    """Whether this model/mode has a cached fast path (else Trainer runs the full model with frozen weights)."""
    if mode == "head":
        return _is_whisper(model) or _w2v_base(model) is not None
    if mode == "top":
        return _is_whisper(model)
    return False


# ------------------------------------------------------------------------------------------- small modules


def _output(loss: torch.Tensor | None, logits: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"loss": loss, "logits": logits} if loss is not None else {"logits": logits}


class PooledHead(nn.Module):
    """projector -> classifier over cached pooled states (batch, layers, d); the full model's own modules."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.projector = model.projector
        self.classifier = model.classifier
        self.num_labels = int(model.config.num_labels)
        self.weighted = bool(model.config.use_weighted_layer_sum)
        # Registered on this module so Trainer's optimizer sees it; it is the full model's own Parameter.
        self.layer_weights = model.layer_weights if self.weighted else None

    def forward(self, pooled: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.layer_weights is not None:
            weights = nn.functional.softmax(self.layer_weights, dim=-1)
            hidden = (pooled * weights.view(1, -1, 1)).sum(dim=1)
        else:
            hidden = pooled[:, -1]
        logits = self.classifier(self.projector(hidden))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return _output(loss, logits)


class WhisperTop(nn.Module):
    """The top N Whisper encoder layers + final norm + head, over cached hidden states entering layer L-N.

    With a weighted layer sum it also takes `frozen_pooled` (batch, L-N+1, d): the mean-pooled embeddings and
    frozen layer outputs, i.e. the first entries of WhisperEncoder's hidden_states; the trainable layers add the
    rest (the last one after the final layer norm, as transformers records it).

    With `slot_heads` (daemon/slot_heads.py) it also trains them on the same per-frame states the intent head
    averages, adding their loss over `slot_targets` to the intent's (N may be 0: head mode with slots, where
    the cache holds the states entering the final norm).
    """

    def __init__(self, model: Any, unfreeze_top: int, slot_heads: nn.Module | None = None) -> None:
        super().__init__()
        layers = model.encoder.layers
        self.layers = nn.ModuleList(layers[len(layers) - unfreeze_top :])
        self.layer_norm = model.encoder.layer_norm
        self.projector = model.projector
        self.classifier = model.classifier
        self.layer_weights = model.layer_weights if model.config.use_weighted_layer_sum else None
        self.slot_heads = slot_heads

    def encode(self, hidden: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The trained layers and the final norm: per-frame states (batch, T, d), and the frame mean of each
        trained layer's output but the last (what a weighted layer sum mixes in)."""
        pooled: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            out = layer(hidden, None)
            hidden = out[0] if isinstance(out, tuple) else out
            if i < len(self.layers) - 1:
                pooled.append(hidden.mean(dim=1))
        return self.layer_norm(hidden), pooled

    def encode_windows(self, hidden: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Clips of several windows padded to one length: each clip's frame mean over its own `frames` positions,
        equal to running it alone at its window (the padding is masked out of every attention; padded positions
        are left out of the mean)."""
        hidden, valid = self.window_states(hidden, frames)
        return self.window_mean(hidden, valid, frames)

    def window_states(self, hidden: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame states of clips padded to one length (padding masked out of every attention) and which
        frames are each clip's own (batch, T)."""
        valid = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < frames[:, None]  # (batch, T)
        mask = torch.zeros(valid.shape, dtype=hidden.dtype, device=hidden.device)
        mask = mask.masked_fill(~valid, torch.finfo(hidden.dtype).min)[:, None, None, :]  # keys only
        for layer in self.layers:
            out = layer(hidden, mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return self.layer_norm(hidden), valid

    @staticmethod
    def window_mean(hidden: torch.Tensor, valid: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Each clip's mean over its own frames."""
        return (hidden * valid[..., None]).sum(dim=1) / frames[:, None].to(hidden.dtype)

    def forward(
        self, hidden: torch.Tensor, frozen_pooled: torch.Tensor | None = None, labels: torch.Tensor | None = None,
        frames: torch.Tensor | None = None, slot_targets: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        if frames is not None:  # length-aware windows (no weighted layer sum: fit refuses the two together)
            states, valid = self.window_states(hidden, frames)
            logits = self.classifier(self.projector(self.window_mean(states, valid, frames)))
            loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
            return _output(self._with_slot_loss(loss, states, valid, slot_targets), logits)
        hidden, pooled = self.encode(hidden)
        if self.layer_weights is None:
            mixed = hidden.mean(dim=1)
        else:
            if frozen_pooled is None:
                raise ValueError("a weighted layer sum needs the frozen layers' pooled states (frozen_pooled)")
            states = torch.cat([frozen_pooled, torch.stack([*pooled, hidden.mean(dim=1)], dim=1)], dim=1)
            weights = nn.functional.softmax(self.layer_weights, dim=-1)
            mixed = (states * weights.view(1, -1, 1)).sum(dim=1)
        logits = self.classifier(self.projector(mixed))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return _output(self._with_slot_loss(loss, hidden, None, slot_targets), logits)

    def _with_slot_loss(self, loss: torch.Tensor | None, states: torch.Tensor, valid: torch.Tensor | None,
                        slot_targets: torch.Tensor | None) -> torch.Tensor | None:
        """The intent loss plus the slot heads' (summed over slots: each slot is a task of its own)."""
        if self.slot_heads is None or slot_targets is None:
            return loss
        slot_loss = self.slot_heads.loss(self.slot_heads(states, valid), slot_targets)
        if slot_loss is None:
            return loss
        return slot_loss if loss is None else loss + slot_loss


def small_module(model: Any, mode: str, unfreeze_top: int, slot_heads: nn.Module | None = None) -> nn.Module:
    """The module Trainer trains on the cache for a cacheable mode (slot heads: top mode's, N may be 0)."""
    if mode == "head" and slot_heads is None:
        return PooledHead(model)
    if mode == "top":
        return WhisperTop(model, unfreeze_top, slot_heads)
    raise ValueError(f"no cached module for mode {mode!r}")


# --------------------------------------------------------------------------------------------- the cache


@dataclass
class CachedSplit(torch.utils.data.Dataset):
    """Frozen-prefix outputs and labels of one split, served as {input_name: tensor, 'labels': id}."""

    inputs: torch.Tensor
    labels: torch.Tensor
    input_name: str
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # more per-clip inputs, by argument name

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {self.input_name: self.inputs[i], **{k: v[i] for k, v in self.extra.items()}, "labels": self.labels[i]}

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Every input of every clip at once, as the small module's keyword arguments."""
        return {self.input_name: self.inputs, **self.extra}


def _whisper_prefix(model: Any, features: torch.Tensor, n_frozen_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """WhisperEncoder.forward up to (not including) layer n_frozen_layers, in eval mode: the hidden states there
    and (batch, n_frozen_layers + 1, d) time means of the embeddings and of each frozen layer's output."""
    enc = model.encoder
    h = nn.functional.gelu(enc.conv1(features))
    h = nn.functional.gelu(enc.conv2(h)).permute(0, 2, 1)
    h = h + enc.embed_positions.weight[: h.shape[1]]
    means = [h.mean(dim=1)]
    for layer in enc.layers[:n_frozen_layers]:
        out = layer(h, None)
        h = out[0] if isinstance(out, tuple) else out
        means.append(h.mean(dim=1))
    return h, torch.stack(means, dim=1)


def _pooled_states(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(batch, layers, d) mean-pooled encoder states: all layers if weighted layer sum, else the last one."""
    weighted = bool(model.config.use_weighted_layer_sum)
    if _is_whisper(model) and not weighted:
        from intentd.daemon.windows import encoder_states

        # The serving core's encoder: the clip's own window, as length-aware windows serve it.
        return encoder_states(model.encoder, batch["input_features"]).mean(dim=1, keepdim=True)
    if _is_whisper(model):
        out = model.encoder(batch["input_features"], output_hidden_states=weighted)
        states = torch.stack(out.hidden_states, dim=1) if weighted else out.last_hidden_state.unsqueeze(1)
        return states.mean(dim=2)
    base = _w2v_base(model)
    assert base is not None
    mask = batch.get("attention_mask")
    out = base(batch["input_values"], attention_mask=mask, output_hidden_states=weighted)
    states = torch.stack(out.hidden_states, dim=1) if weighted else out.last_hidden_state.unsqueeze(1)
    if mask is None:
        return states.mean(dim=2)
    frames = model._get_feature_vector_attention_mask(states.shape[2], mask).to(states.dtype)  # (batch, frames)
    return (states * frames[:, None, :, None]).sum(dim=2) / frames.sum(dim=1)[:, None, None]


def _batches(features: Any, batch_size: int) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """(row indices, tensor batch) from a feature dataset; ragged inputs (wav2vec2 without padding) go one clip at
    a time and length-aware windows one window at a time, so the cache sees each clip exactly as inference will."""
    columns = [c for c in ("input_features", "input_values", "attention_mask") if c in features.column_names]
    ragged = "input_values" in columns
    step = 1 if ragged else batch_size
    view = features.with_format("torch", columns=columns)
    if WINDOW in features.column_names:
        groups: dict[int, list[int]] = {}
        for i, window in enumerate(features[WINDOW]):
            groups.setdefault(int(window), []).append(i)
        orders = list(groups.values())
    else:
        orders = [list(range(len(view)))]
    for order in orders:
        for start in range(0, len(order), step):
            idx = order[start : start + step]
            # Contiguous rows are sliced (fast); a window's rows are picked by index.
            rows = view[idx] if WINDOW in features.column_names else view[idx[0] : idx[-1] + 1]
            yield idx, {k: v.float() if k != "attention_mask" else v for k, v in rows.items()}


@torch.no_grad()
def build_cache(
    model: Any, features: Any, mode: str, unfreeze_top: int, batch_size: int = CACHE_BATCH_SIZE
) -> tuple[CachedSplit, dict[str, float]]:
    """Run the frozen prefix once per clip of a feature dataset; returns the cache and its speed."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs: dict[int, torch.Tensor] = {}
    frozen_means: dict[int, torch.Tensor] = {}
    start = time.perf_counter()
    for idx, batch in _batches(features, batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        if mode == "head":
            outputs.update(zip(idx, _pooled_states(model, batch).float().cpu(), strict=True))
        else:
            n_frozen = len(model.encoder.layers) - unfreeze_top
            hidden, means = _whisper_prefix(model, batch["input_features"], n_frozen)
            outputs.update(zip(idx, hidden.float().cpu(), strict=True))
            frozen_means.update(zip(idx, means.float().cpu(), strict=True))
    seconds = time.perf_counter() - start
    model.train(was_training)
    labels = torch.as_tensor(features["labels"], dtype=torch.long)
    rows = [outputs[i] for i in range(len(labels))]
    extra = {}
    if rows and len({r.shape for r in rows}) > 1:
        # Length-aware windows: hidden states of several lengths, padded to the longest; WhisperTop masks by
        # each clip's own number of frames.
        extra["frames"] = torch.tensor([r.shape[0] for r in rows], dtype=torch.long)
        rows = [nn.functional.pad(r, (0, 0, 0, max(extra["frames"]) - r.shape[0])) for r in rows]
    inputs = torch.stack(rows) if rows else torch.empty(0)
    if SLOT_TARGETS in features.column_names:
        extra[SLOT_TARGETS] = torch.as_tensor(features[SLOT_TARGETS], dtype=torch.long)
    if mode == "top" and model.config.use_weighted_layer_sum:
        extra["frozen_pooled"] = torch.stack([frozen_means[i] for i in range(len(labels))]) if rows \
            else torch.empty(0)
    speed = {"clips": float(len(labels)), "seconds": seconds, "clips_per_second": len(labels) / max(seconds, 1e-9)}
    log.info("cached frozen prefix of %d clips in %.2f s (%.1f clips/s)", len(labels), seconds,
             speed["clips_per_second"])
    return CachedSplit(inputs, labels, "pooled" if mode == "head" else "hidden", extra), speed
