"""Any rate -> another (16 kHz by default) with torchaudio's sinc filter; one kernel built per rate pair.

The one resampler in intentd: the daemon, `intentd-train` (data, predict, eval) and the test harness all call
`resample` here, so training hears exactly what serving hears (a model trained on FFmpeg's resampling and served
torchaudio's lost up to 0.6 points on a real speaker: bench/README.md).
"""

from __future__ import annotations

import threading

import numpy as np
import torch
import torchaudio

from intentd.daemon.audio import SAMPLE_RATE
from intentd.daemon.errors import AudioError


class Resampler:
    """Resample mono float32 clips to `target_rate`; kernels cached per source rate; safe to share between threads."""

    def __init__(self, target_rate: int = SAMPLE_RATE) -> None:
        if target_rate <= 0:
            raise AudioError(f"target sample rate must be positive, got {target_rate}")
        self.target_rate = target_rate
        self._kernels: dict[int, torchaudio.transforms.Resample] = {}
        # Building a kernel is the only mutation; applying one only reads its buffer, so calls run unlocked.
        self._lock = threading.Lock()

    def kernel(self, sample_rate: int) -> torchaudio.transforms.Resample:
        """The cached Resample transform from `sample_rate` (built on first use)."""
        kernel = self._kernels.get(sample_rate)
        if kernel is None:
            with self._lock:
                kernel = self._kernels.get(sample_rate)
                if kernel is None:
                    # A float32 kernel, as torchaudio.functional.resample builds for float32 audio (and the HF
                    # pipeline calls that): the transform's default float64-then-cast kernel differs by ~1e-4.
                    kernel = torchaudio.transforms.Resample(sample_rate, self.target_rate, dtype=torch.float32)
                    self._kernels[sample_rate] = kernel
        return kernel

    @property
    def cached_rates(self) -> tuple[int, ...]:
        """Source rates with a built kernel."""
        return tuple(sorted(self._kernels))

    def __call__(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """Return `samples` at the target rate; float32 audio already there is returned as it is (same object)."""
        if not isinstance(samples, np.ndarray) or samples.ndim != 1 or samples.dtype != np.float32:
            raise AudioError(
                f"resample takes 1-D float32 audio, got {getattr(samples, 'dtype', type(samples).__name__)} "
                f"with shape {getattr(samples, 'shape', None)}"
            )
        if sample_rate <= 0:
            raise AudioError(f"sample rate must be positive, got {sample_rate}")
        if sample_rate == self.target_rate:
            return samples
        kernel = self.kernel(sample_rate)
        with torch.inference_mode():
            out = kernel(torch.from_numpy(np.ascontiguousarray(samples)))
        return out.numpy().astype(np.float32, copy=False)


_shared: dict[int, Resampler] = {}
_shared_lock = threading.Lock()


def resampler_to(target_rate: int = SAMPLE_RATE) -> Resampler:
    """The process-wide Resampler for `target_rate`, so every caller shares its kernels."""
    with _shared_lock:
        found = _shared.get(target_rate)
        if found is None:
            found = _shared[target_rate] = Resampler(target_rate)
        return found


def resample(samples: np.ndarray, from_rate: int, to_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono audio at `from_rate` -> float32 at `to_rate` (16 kHz unless said), through the shared kernels."""
    return resampler_to(to_rate)(np.asarray(samples, dtype=np.float32), from_rate)
