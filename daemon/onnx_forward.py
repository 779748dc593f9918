"""A Whisper classifier's forward through ONNX Runtime on the CPU: the same weights, about 1.3-3x faster per batch
than PyTorch eager on 2 cores (bench/DAEMON.md), scores equal to within 1e-6.

The model is exported in memory when it loads (nothing is written to the model folder, which a service may not
write), with the batch and the number of frames left free, so one session serves every length-aware window
(daemon/windows.py). PyTorch stays the runtime on a GPU, in half precision, and for other architectures.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from intentd.daemon.errors import ModelError
from intentd.daemon.windows import encoder_states

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnx")
OPSET = 17
_EXPORT_BATCH = 2


def available() -> bool:
    """Whether onnxruntime (the runtime) and onnx (which torch's exporter writes with) can be imported here."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _Logits(nn.Module):
    """features (batch, mels, frames) -> logits, at any window: the serving core's encoder + transformers' head."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.model(encoder_outputs=(encoder_states(self.model.encoder, input_features),)).logits


class OnnxForward:
    """Logits of Whisper classifier features through an in-memory ONNX Runtime session."""

    def __init__(self, model: Any, frames: int, threads: int) -> None:
        import onnxruntime as ort

        mels = int(model.config.num_mel_bins)
        example = torch.zeros(_EXPORT_BATCH, mels, frames)
        buffer = io.BytesIO()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # The tracer warns that Python-side choices (e.g. attention's is_causal) are fixed at export:
                # for an encoder they are the same for every input.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                torch.onnx.export(_Logits(model).eval(), (example,), buffer, input_names=["input_features"],
                                  output_names=["logits"], opset_version=OPSET, dynamo=False,
                                  dynamic_axes={"input_features": {0: "batch", 2: "frames"}, "logits": {0: "batch"}})
        except Exception as err:  # the exporter raises many types for one cause: an unexportable model
            raise ModelError(f"cannot export the model to ONNX ({type(err).__name__}: {err}); "
                             "set model.runtime = \"torch\"") from err
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        log.info("ONNX Runtime forward ready (%d threads)", threads)

    def __call__(self, input_features: torch.Tensor) -> torch.Tensor:
        """Logits for a (batch, mels, frames) float32 batch, as a tensor like the PyTorch path returns."""
        features = np.ascontiguousarray(input_features.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self._session.run(None, {"input_features": features})[0])


def choose(runtime: str, model: Any, device: torch.device, dtype: torch.dtype) -> str:
    """The runtime to serve with: 'auto' takes ONNX Runtime where it applies (CPU, float32, Whisper, installed)."""
    if runtime not in RUNTIMES:
        raise ModelError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    fits = (device.type == "cpu" and dtype == torch.float32 and not model.config.use_weighted_layer_sum
            and type(model).__name__ == "WhisperForAudioClassification")
    if runtime == "onnx":
        if not fits:
            raise ModelError("runtime onnx serves Whisper classifiers (no weighted layer sum) in float32 on the "
                             "CPU only")
        if not available():
            raise ModelError("runtime onnx needs onnxruntime and onnx: pip install onnxruntime onnx")
        return "onnx"
    if runtime == "auto" and fits and available():
        return "onnx"
    return "torch"
