"""Accent processes on espeak-ng phoneme text, and espeak-ng speaking them."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from intentd.train import accent, tts
from intentd.train.errors import TrainError

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@pytest.mark.parametrize(
    ("phonemes", "processes", "expected"),
    [
        ("Tr'i:", ("th-stopping",), "tr'i:"),
        ("Tr'i:", ("th-fronting",), "sr'i:"),
        ("D@ b'al@ns", ("th-stopping",), "d@ b'al@ns"),
        ("s'Iks", ("tense-vowels",), "s'i:ks"),
        ("p'Ut", ("tense-vowels",), "p'u:t"),
        ("w'Vn", ("w-to-v",), "v'Vn"),
        ("f'aIv", ("final-devoicing",), "f'aIf"),
        ("k'A@d n'aIn", ("final-devoicing",), "k'A@t n'aIn"),
        ("h'Elp", ("h-dropping",), "'Elp"),
        # Diphthongs and r-coloured vowels that contain I or U stay as they are.
        ("f'aIv 'eIt bOI h'aUs n'oU", ("tense-vowels",), "f'aIv 'eIt bOI h'aUs n'oU"),
        ("t'U@", ("tense-vowels",), "t'U@"),
        # Processes compose in the order given.
        ("Tr'i: s'Iks", ("th-fronting", "tense-vowels"), "sr'i: s'i:ks"),
        ("", ("th-stopping",), ""),
    ],
)
def test_apply_rewrites_only_the_sounds_each_process_names(
    phonemes: str, processes: tuple[str, ...], expected: str
) -> None:
    assert accent.apply(phonemes, processes) == expected


def test_draw_is_seeded_never_empty_and_keeps_one_th_process() -> None:
    drawn = [accent.draw(np.random.default_rng(seed)) for seed in range(300)]
    assert drawn == [accent.draw(np.random.default_rng(seed)) for seed in range(300)]
    assert all(d for d in drawn)
    assert not any({"th-stopping", "th-fronting"} <= set(d) for d in drawn)
    # Every process turns up, so an accented dataset carries all of them.
    assert {p for d in drawn for p in d} == set(accent.PROCESSES)
    assert len(set(drawn)) > 20


@needs_espeak
def test_espeak_speaks_the_accent_it_was_given() -> None:
    engine = tts.EspeakNg()
    voice = tts.Voice("espeak-ng", "en-us", "")
    assert engine._accented("three, six", "en-us", ("th-stopping", "tense-vowels"), "t") == "[[tr'i:]], [[s'i:ks]]"
    plain, rate = tts.render("three", voice, 1.0, 1.0)
    accented, accented_rate = tts.render("three", voice, 1.0, 1.0, ("th-stopping",))
    assert rate == accented_rate
    assert accented.size > 0.2 * rate and np.max(np.abs(accented)) > 0.05  # speech
    assert plain.shape != accented.shape or not np.array_equal(plain, accented)


@needs_espeak
def test_only_espeak_speaks_accents() -> None:
    with pytest.raises(TrainError, match="flite cannot speak an accent"):
        tts.render("three", tts.Voice("flite", "kal"), 1.0, 1.0, ("th-stopping",))
