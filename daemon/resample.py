"""Any rate -> 16 kHz (the models' rate) with torchaudio; the sinc kernel is built once per source rate."""

from __future__ import annotations

import threading

import numpy as np
import torch
import torchaudio

from daemon.errors import AudioError

TARGET_RATE = 16000


class Resampler:
    """Resample mono float32 clips to `target_rate`; safe to share between threads."""

    def __init__(self, target_rate: int = TARGET_RATE) -> None:
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
                    kernel = torchaudio.transforms.Resample(sample_rate, self.target_rate)
                    self._kernels[sample_rate] = kernel
        return kernel

    @property
    def cached_rates(self) -> tuple[int, ...]:
        """Source rates with a built kernel."""
        return tuple(sorted(self._kernels))

    def __call__(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """Return `samples` at the target rate; audio already there is returned as it is (same object)."""
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
