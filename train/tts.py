"""Text-to-speech engines found here (espeak-ng, flite, festival on PATH; piper, hibari as pip packages),
their voices, and ENGINES, the registry synth picks from. What an engine is lives in train/tts_base.py."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path

import numpy as np

from intentd.train import accent, tts_neural
from intentd.train.errors import TrainError
from intentd.train.tts_base import TtsEngine, Voice, read_wav, run_program

log = logging.getLogger(__name__)

DISCOVERY_TIMEOUT_S = 30.0

ESPEAK_DEFAULT_WPM = 175
ESPEAK_DEFAULT_PITCH = 50  # espeak-ng's -p runs 0..99; 50 is each voice's own pitch
ESPEAK_MAX_PITCH = 99
ESPEAK_PROBE_LANGUAGE = "en-us"
ESPEAK_PROBE_TEXT = "Check my balance."
# Mean F0 (Hz) these voices are built around, so a pitch factor can be turned into an absolute target.
FLITE_BASE_F0_HZ = {"kal": 100.0, "kal16": 100.0, "awb": 110.0, "rms": 100.0, "slt": 170.0}
FLITE_FALLBACK_F0_HZ = 120.0
FESTIVAL_BASE_F0_HZ = 105.0
FESTIVAL_HTS_SUFFIX = "_hts"


class EspeakNg:
    """espeak-ng: a few English accents times ~100 voice variants (formant sets)."""

    name = "espeak-ng"

    def __init__(self, binary: str = "espeak-ng") -> None:
        self.binary = binary

    def voices(self) -> list[Voice]:
        """English accents (MBROLA ones only when mbrola is installed) crossed with every variant."""
        languages = _espeak_languages(self.binary)
        variants = _espeak_variants(self.binary)
        return [Voice(self.name, lang, var) for lang in languages for var in ("", *variants)]

    def render(
        self, text: str, voice: Voice, rate: float, pitch: float, accent: Sequence[str] = ()
    ) -> tuple[np.ndarray, int]:
        """espeak-ng -s words-per-minute, -p 0..99 (roughly linear in F0 around the default 50).

        With an accent (train/accent.py process names) the text is first turned into the voice's own phonemes,
        rewritten, and spoken as phoneme input.
        """
        name = f"{voice.name}+{voice.variant}" if voice.variant else voice.name
        wpm = max(80, round(ESPEAK_DEFAULT_WPM * rate))
        p = int(np.clip(round(ESPEAK_DEFAULT_PITCH * pitch), 0, ESPEAK_MAX_PITCH))
        what = f"espeak-ng voice {voice.id} saying {text!r}" + (f" with accent {','.join(accent)}" if accent else "")
        if accent:
            text = self._accented(text, voice.name, accent, what)
        with tempfile.TemporaryDirectory(prefix="intentd-tts-") as tmp:
            out = Path(tmp) / "out.wav"
            # Text on stdin: a sentence starting with "-" must not be read as an option.
            cmd = [self.binary, "-v", name, "-s", str(wpm), "-p", str(p), "-w", str(out), "--stdin"]
            run_program(cmd, what, stdin=text)
            return read_wav(out, what)

    def _accented(self, text: str, language: str, processes: Sequence[str], what: str) -> str:
        """The text as rewritten phoneme input: one [[...]] per clause espeak-ng printed, commas between."""
        printed = run_program([self.binary, "-v", language, "-q", "-x", "--stdin"], what, stdin=text)
        clauses = [accent.apply(line.strip(), processes) for line in printed.splitlines() if line.strip()]
        if not clauses:
            raise TrainError(f"{what}: espeak-ng printed no phonemes")
        return ", ".join(f"[[{c}]]" for c in clauses)


@cache
def _espeak_languages(binary: str) -> tuple[str, ...]:
    """Language names of the installed English voices, MBROLA ones left out.

    MBROLA voices are never used: their data is licensed for non-commercial use with the mbrola program only,
    and espeak-ng lists them whether or not each voice's data is installed (a listed one can fail every call).
    """
    listing = run_program([binary, "--voices=en"], "espeak-ng --voices=en", timeout=DISCOVERY_TIMEOUT_S)
    names: list[str] = []
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 5:
            continue
        language, voice_file = fields[1], fields[4]
        if voice_file.startswith("mb/"):
            continue
        # Generic "en" entries are the MBROLA foreign-accent voices; language names select the gmw/ voices.
        if language.startswith("en") and language not in names:
            names.append(language)
    return tuple(names)


@cache
def _espeak_variants(binary: str) -> tuple[str, ...]:
    """Variant file names (m1, f3, klatt, ...) usable after '+'."""
    listing = run_program([binary, "--voices=variant"], "espeak-ng --voices=variant", timeout=DISCOVERY_TIMEOUT_S)
    variants: list[str] = []
    for line in listing.splitlines()[1:]:
        if "!v/" not in line:
            continue
        file_name = re.sub(r"\s+\(.*\)\s*$", "", line.split("!v/", 1)[1]).strip()
        # "Mr serious" has a space, which the '+variant' syntax cannot carry.
        if file_name and " " not in file_name and file_name not in variants:
            variants.append(file_name)
    return _distinct_variants(binary, variants)


def _distinct_variants(binary: str, variants: Sequence[str]) -> tuple[str, ...]:
    """Drop variants that sound exactly like an earlier one (caleb = klatt6; fast = default once -s is given).

    Identical voices under two names would let one "speaker" sit on both sides of a voice-disjoint split.
    """
    kept: list[str] = []
    seen: set[bytes] = set()
    with tempfile.TemporaryDirectory(prefix="intentd-tts-") as tmp:
        for variant in ("", *variants):
            out = Path(tmp) / "probe.wav"
            name = f"{ESPEAK_PROBE_LANGUAGE}+{variant}" if variant else ESPEAK_PROBE_LANGUAGE
            cmd = [binary, "-v", name, "-s", str(ESPEAK_DEFAULT_WPM), "-w", str(out), ESPEAK_PROBE_TEXT]
            try:
                run_program(cmd, f"espeak-ng variant {variant!r}", timeout=DISCOVERY_TIMEOUT_S)
            except TrainError as err:
                log.info("espeak-ng variant %r skipped: %s", variant, err)
                continue
            digest = hashlib.sha256(out.read_bytes()).digest()
            if digest in seen:
                log.debug("espeak-ng variant %r skipped: sounds like an earlier one", variant)
            elif variant:
                kept.append(variant)
            seen.add(digest)
    return tuple(kept)


class Flite:
    """flite: CMU's small synthesizer with a handful of built-in voices."""

    name = "flite"
    # Limited-domain voices speak only their domain (awb_time says clock times) and mangle anything else.
    LIMITED_DOMAIN_SUFFIX = "_time"

    def __init__(self, binary: str = "flite") -> None:
        self.binary = binary

    def voices(self) -> list[Voice]:
        """Voices from `flite -lv`, less limited-domain ones."""
        return [Voice(self.name, v) for v in _flite_voices(self.binary)]

    def render(self, text: str, voice: Voice, rate: float, pitch: float) -> tuple[np.ndarray, int]:
        """flite --setf duration_stretch / int_f0_target_mean (the rms voice ignores the F0 target)."""
        f0 = FLITE_BASE_F0_HZ.get(voice.name, FLITE_FALLBACK_F0_HZ) * pitch
        with tempfile.TemporaryDirectory(prefix="intentd-tts-") as tmp:
            src, out = Path(tmp) / "in.txt", Path(tmp) / "out.wav"
            src.write_text(text, encoding="utf-8")
            cmd = [
                self.binary, "-voice", voice.name,
                "--setf", f"duration_stretch={1.0 / rate:.4f}",
                "--setf", f"int_f0_target_mean={f0:.1f}",
                "-f", str(src), "-o", str(out),
            ]  # fmt: skip
            what = f"flite voice {voice.id} saying {text!r}"
            run_program(cmd, what)
            return read_wav(out, what)


@cache
def _flite_voices(binary: str) -> tuple[str, ...]:
    listing = run_program([binary, "-lv"], "flite -lv", timeout=DISCOVERY_TIMEOUT_S)
    _, _, names = listing.partition(":")
    return tuple(n for n in names.split() if not n.endswith(Flite.LIMITED_DOMAIN_SUFFIX))


class Festival:
    """festival via text2wave; Debian ships kal_diphone (festvox-kallpc16k), more voices are other packages."""

    name = "festival"

    def __init__(self, binary: str = "text2wave", festival: str = "festival") -> None:
        self.binary = binary
        self.festival = festival

    def voices(self) -> list[Voice]:
        """Installed voices as festival itself lists them."""
        return [Voice(self.name, v) for v in _festival_voices(self.festival)]

    def render(self, text: str, voice: Voice, rate: float, pitch: float) -> tuple[np.ndarray, int]:
        """text2wave with Duration_Stretch and, for voices using linear-regression intonation, a new F0 mean."""
        f0 = FESTIVAL_BASE_F0_HZ * pitch
        # The voice is selected first: selecting a voice resets int_lr_params to the voice's own.
        setup = (
            f"(begin (voice_{voice.name}) (Parameter.set 'Duration_Stretch {1.0 / rate:.4f}) "
            f"(set! int_lr_params '((target_f0_mean {f0:.1f}) (target_f0_std 14) "
            f"(model_f0_mean 170) (model_f0_std 34))))"
        )
        if voice.name.endswith(FESTIVAL_HTS_SUFFIX):
            # HTS voices ignore Duration_Stretch and int_lr_params; hts_engine's -r is their speaking rate
            # (there is no pitch control through festival's HTS module, so pitch stays the voice's own).
            setup = (
                f"(begin (voice_{voice.name}) (set! hts_engine_params "
                f"(append hts_engine_params (list (list \"-r\" {rate:.4f})))))"
            )
        with tempfile.TemporaryDirectory(prefix="intentd-tts-") as tmp:
            out = Path(tmp) / "out.wav"
            what = f"festival voice {voice.id} saying {text!r}"
            run_program([self.binary, "-eval", setup, "-o", str(out)], what, stdin=text)
            return read_wav(out, what)


@cache
def _festival_voices(festival: str) -> tuple[str, ...]:
    listing = run_program(
        [festival, "--batch", "(print (voice.list))"], "festival (voice.list)", timeout=DISCOVERY_TIMEOUT_S
    )
    match = re.search(r"\(([^()]*)\)", listing)
    return tuple(match.group(1).split()) if match else ()


# Engine name -> (factory, programs it needs on PATH, Python packages it needs importable).
ENGINES: dict[str, tuple[Callable[[], TtsEngine], tuple[str, ...], tuple[str, ...]]] = {
    "espeak-ng": (EspeakNg, ("espeak-ng",), ()),
    "flite": (Flite, ("flite",), ()),
    "festival": (Festival, ("festival", "text2wave"), ()),
    "piper": (tts_neural.Piper, (), ()),
    "hibari": (tts_neural.Hibari, (), ("hibari",)),
}


def engine_by_name(name: str) -> TtsEngine:
    """A fresh engine object (cheap; workers build their own instead of receiving one)."""
    try:
        factory, _, _ = ENGINES[name]
    except KeyError as err:
        raise TrainError(f"unknown TTS engine {name!r} (known: {', '.join(ENGINES)})") from err
    return factory()


def available_engines(names: Iterable[str] | None = None) -> list[TtsEngine]:
    """The requested engines (default all) that are installed; absent ones are logged, none at all is an error."""
    wanted = list(names) if names is not None else list(ENGINES)
    found: list[TtsEngine] = []
    for name in wanted:
        engine = engine_by_name(name)
        _, programs, packages = ENGINES[name]
        missing = [p for p in programs if shutil.which(p) is None]
        if name == "piper" and not tts_neural.piper_program():
            missing.append(tts_neural.PIPER_PROGRAM)  # looked for beside the interpreter too
        if missing:
            log.info("TTS engine %s skipped: %s not on PATH", name, ", ".join(missing))
            continue
        absent = [p for p in packages if not tts_neural.installed(p)]
        if absent:
            log.info("TTS engine %s skipped: Python package %s not installed", name, ", ".join(absent))
            continue
        if not engine.voices():
            log.info("TTS engine %s skipped: it lists no usable voices", name)
            continue
        found.append(engine)
    if not found:
        raise TrainError(
            f"no TTS engine available (tried {', '.join(wanted)}); "
            "install e.g. `apt-get install espeak-ng flite festival festvox-kallpc16k`"
        )
    return found


def render(
    text: str, voice: Voice, rate: float = 1.0, pitch: float = 1.0, accent: Sequence[str] = ()
) -> tuple[np.ndarray, int]:
    """Speak text with a voice: float32 mono samples and their sample rate. Only espeak-ng speaks accents."""
    engine = engine_by_name(voice.engine)
    if not accent:
        return engine.render(text, voice, rate, pitch)
    if not isinstance(engine, EspeakNg):
        raise TrainError(f"{voice.engine} cannot speak an accent (only espeak-ng speaks phoneme input)")
    return engine.render(text, voice, rate, pitch, accent)
