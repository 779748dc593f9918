"""Length-aware windows for fixed-window (Whisper) models: a clip costs what it is long, not what the window is.

Whisper pads every clip to its window (4 s for the default model), so a 0.4 s digit costs as much as a 4 s
request. A model folder may state shorter windows (`windows_s` in intentd.json, written by `fit --windows`): each
clip is then served at the shortest window that holds it, running the encoder on that many frames with the
first rows of the positional table. fit trains every clip at that same window, so serving hears what training
heard. A model that states no windows keeps its one full window (and so does the HF pipeline in any case).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from intentd.daemon.audio import SAMPLE_RATE
from intentd.daemon.errors import ModelError

# Whisper's front end: conv2 has stride 2 over 10 ms mel frames, so a window is a whole number of 20 ms steps.
CONV_STRIDE = 2


def window_step(extractor: Any) -> int:
    """Samples per encoder position (320 at 16 kHz: 20 ms): every window is a multiple of it."""
    return int(extractor.hop_length) * CONV_STRIDE


def parse_windows(seconds: Sequence[float], full: int, step: int, where: str) -> tuple[int, ...]:
    """Windows in samples, shortest first, always ending with the full window; a ModelError names `where`."""
    windows = set()
    for value in seconds:
        samples = round(float(value) * SAMPLE_RATE)
        if samples <= 0 or samples > full or samples % step:
            raise ModelError(f"{where}: window {value!r} s must be positive, at most the model's "
                             f"{full / SAMPLE_RATE:g} s and a multiple of {step / SAMPLE_RATE:g} s")
        windows.add(samples)
    return tuple(sorted(windows | {full}))


def window_for(length: int, windows: Sequence[int]) -> int:
    """The shortest window that holds `length` samples; the longest (which cuts the clip) if none does."""
    for window in windows:
        if length <= window:
            return window
    return windows[-1]


def encoder_states(encoder: Any, input_features: torch.Tensor) -> torch.Tensor:
    """WhisperEncoder's forward at any window: transformers' own refuses all but the full one. The same
    modules in the same order (convolutions, the first rows of the positional table, the layers, the final norm),
    so at the full window it equals transformers' output (tests/test_windows.py)."""
    hidden = nn.functional.gelu(encoder.conv1(input_features))
    hidden = nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    for layer in encoder.layers:
        out = layer(hidden, None)
        hidden = out[0] if isinstance(out, tuple) else out
    return encoder.layer_norm(hidden)


def whisper_logits(model: Any, input_features: torch.Tensor, full_frames: int) -> torch.Tensor:
    """A WhisperForAudioClassification's logits for features of any window (the head is transformers' own)."""
    if input_features.shape[-1] == full_frames:
        return model(input_features=input_features).logits
    return model(encoder_outputs=(encoder_states(model.encoder, input_features),)).logits
