"""Training-only augmentation inside the network: time masks on the hidden states entering the lowest trained layer.

SpecAugment masks spans of the input spectrogram. With the frozen-prefix cache (train.frozen) the input is gone by
the time the trained layers run, so we mask one level up: each training clip gets one span of 0..N frames set to
zero in the hidden states that enter the lowest trained layer. That is the same place in the cached and in the
uncached path (a forward pre-hook on that layer), and it never touches inference: the hook does nothing when the
layer is in eval mode, and hooks are not saved with the model.

Why it exists: speakers whose recordings are cut through the word lose part of it, and hiding a random part of
every training clip should teach the top layer not to lean on any one stretch of the word. Measured on FSDD's
unseen speakers it did not help (mean 97.35% against 97.75% without, bench/README.md), so `fit` leaves it off.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Whisper's encoder (10 ms hop, stride-2 convolution) and the wav2vec2 family (320 samples at 16 kHz) both emit
# one hidden state per 20 ms.
FRAMES_PER_SECOND = 50


def mask_frames(seconds: float) -> int:
    """The longest mask in encoder frames for a length in seconds."""
    return round(seconds * FRAMES_PER_SECOND)


def time_mask(hidden: torch.Tensor, max_frames: int, generator: torch.Generator) -> torch.Tensor:
    """A copy of (batch, frames, d) with, per clip, one span of a uniform 0..max_frames frames zeroed, placed
    uniformly within the frames."""
    batch, frames = hidden.shape[0], hidden.shape[1]
    widths = torch.randint(0, min(max_frames, frames) + 1, (batch,), generator=generator)
    starts = (torch.rand(batch, generator=generator) * (frames - widths + 1)).long()
    positions = torch.arange(frames)
    keep = ~((positions >= starts[:, None]) & (positions < (starts + widths)[:, None]))  # (batch, frames)
    return hidden * keep.to(device=hidden.device, dtype=hidden.dtype)[:, :, None]


class TimeMasker:
    """Forward pre-hook: time-masks the layer's hidden_states argument while the layer is training."""

    def __init__(self, max_frames: int, seed: int) -> None:
        self.max_frames = max_frames
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not module.training or self.max_frames <= 0:
            return None
        if args:
            return (time_mask(args[0], self.max_frames, self.generator), *args[1:]), kwargs
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": time_mask(kwargs["hidden_states"], self.max_frames, self.generator)}
        return None


def install_time_mask(layer: nn.Module, seconds: float, seed: int) -> Any:
    """Mask up to `seconds` of every training clip entering `layer`; returns the hook handle (.remove() it)."""
    return layer.register_forward_pre_hook(TimeMasker(mask_frames(seconds), seed), with_kwargs=True)
