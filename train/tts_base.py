"""What every TTS engine shares: the Voice it speaks with, the TtsEngine protocol, and the helpers that run an
engine's program and read the WAV it wrote.

train/tts.py (the engines on PATH and the registry) and train/tts_neural.py (the pip-installed neural voices)
both build on this module, so neither imports the other's internals.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile as sf

from intentd.daemon.audio import to_mono
from intentd.train.errors import TrainError

# Seconds one synthesis call may take; festival starts a Lisp interpreter per call (~0.2 s), so this is generous.
RENDER_TIMEOUT_S = 60.0
# Written in the `voice` column where a voice has no variant, so the column always has three fields.
NO_VARIANT = "default"
# Voices that are the same person through another engine or rate, kept on one side of the train/test split:
# flite's slt and festival's cmu_us_slt_arctic_hts are both built from the CMU ARCTIC slt recordings.
SAME_SPEAKER = {"kal16": "kal", "kal_diphone": "kal", "cmu_us_slt_arctic_hts": "slt"}


@dataclass(frozen=True, slots=True, order=True)
class Voice:
    """One engine voice; `variant` tweaks it (espeak-ng's +m3, +klatt...) and is "" where there is none."""

    engine: str
    name: str
    variant: str = ""

    @property
    def id(self) -> str:
        """engine/name/variant, the form stored in the dataset's `voice` column."""
        return f"{self.engine}/{self.name}/{self.variant or NO_VARIANT}"

    @property
    def speaker(self) -> str:
        """What makes voices sound like one person: splits by voice hold whole speakers out.

        espeak-ng's variants set the formants (who is speaking) while the language picks the accent, so en-us+m3
        and en-gb+m3 are one speaker; flite's kal/kal16 and festival's kal_diphone are one recorded speaker, as are
        flite's slt and festival's cmu_us_slt_arctic_hts.
        """
        if self.engine == "espeak-ng":
            return f"espeak-ng:{self.variant or NO_VARIANT}"
        return SAME_SPEAKER.get(self.name, self.name)

    @classmethod
    def parse(cls, voice_id: str) -> Voice:
        """Inverse of `id`."""
        engine, name, variant = voice_id.split("/", 2)
        return cls(engine, name, "" if variant == NO_VARIANT else variant)


class TtsEngine(Protocol):
    """A text-to-speech engine (a program or a pip package): its voices and how to speak a sentence with one."""

    name: str

    def voices(self) -> list[Voice]:
        """Every usable voice, in a stable order."""
        ...

    def render(self, text: str, voice: Voice, rate: float, pitch: float) -> tuple[np.ndarray, int]:
        """Speak text: rate and pitch are factors (1.0 = the voice's own); returns float32 mono and its rate."""
        ...


def run_program(cmd: Sequence[str], what: str, stdin: str | None = None, timeout: float = RENDER_TIMEOUT_S) -> str:
    """Run a TTS program; failures become TrainErrors naming the command and its stderr."""
    try:
        proc = subprocess.run(
            list(cmd), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise TrainError(f"{what}: {err}") from err
    if proc.returncode != 0:
        raise TrainError(f"{what}: {cmd[0]} exited with {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def read_wav(path: Path, what: str) -> tuple[np.ndarray, int]:
    """Read a rendered file as float32 mono; empty output is an error (a voice that cannot say the text)."""
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError, sf.LibsndfileError) as err:
        raise TrainError(f"{what}: unreadable output: {err}") from err
    if samples.shape[0] == 0:
        raise TrainError(f"{what}: produced no audio")
    return to_mono(samples, channels_axis=1), int(rate)
