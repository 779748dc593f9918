"""Foreign-accented English for espeak-ng: common second-language sound substitutions applied to its phonemes.

Every synthetic voice speaks textbook English, while callers do not. espeak-ng can
print the phonemes it would speak (`-x`) and speak phonemes back (`[[...]]`), so an accent is a rewrite between
the two. The processes below are the ones textbooks of English phonology list across many first languages
(Romance, Germanic, Slavic, Indic, Chinese), not one speaker's: each accented clip draws a few of them.
On FSDD digits they gained nothing (bench/README.md: the misses there are clipped onsets, not accents), so
`synth --accent-fraction` is off by default.

Phoneme names are espeak-ng's English mnemonics: T and D are the "th" sounds, I and U the short vowels of "six"
and "put", w the glide; digits and # after a vowel mark variants of it, and ' , mark stress.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

# name -> (pattern, replacement) pairs applied in order; patterns leave diphthongs (aI, eI, OI, aU, oU) alone.
PROCESSES: dict[str, tuple[tuple[str, str], ...]] = {
    # "three" -> "tree", "the" -> "de" (French, German, Spanish, Hindi, Russian, ...)
    "th-stopping": ((r"T", "t"), (r"D", "d")),
    # "three" -> "sree", "the" -> "ze" (French, Chinese, Japanese, ...)
    "th-fronting": ((r"T", "s"), (r"D", "z")),
    # "six" -> "seeks", "put" -> "poot": no lax/tense contrast (Romance, Slavic, Greek, ...)
    "tense-vowels": ((r"(?<![aeOoA])I(?![2#@])", "i:"), (r"(?<![aeoA])U(?![@])", "u:")),
    # "one" -> "vun" (German, Hindi, Russian, Turkish, ...)
    "w-to-v": ((r"w", "v"),),
    # "five" -> "fife", "card" -> "cart": voiced final obstruents devoiced (German, Dutch, Russian, Polish, ...)
    "final-devoicing": ((r"z(?=\s|$)", "s"), (r"v(?=\s|$)", "f"), (r"d(?=\s|$)", "t"), (r"g(?=\s|$)", "k")),
    # "help" -> "elp" (French, Italian, Spanish, Portuguese, ...)
    "h-dropping": ((r"h", ""),),
}
# Processes that rewrite the same sound; an accent takes at most one of each group.
EXCLUSIVE = (("th-stopping", "th-fronting"),)
# Each process joins a drawn accent with this probability (at least one is always kept).
PROCESS_PROBABILITY = 0.5

_COMPILED = {name: tuple((re.compile(p), r) for p, r in rules) for name, rules in PROCESSES.items()}


def draw(rng: np.random.Generator) -> tuple[str, ...]:
    """A random accent: each process with PROCESS_PROBABILITY, one of each exclusive group, never empty."""
    names = list(PROCESSES)
    chosen = [n for n in names if rng.random() < PROCESS_PROBABILITY]
    for group in EXCLUSIVE:
        present = [n for n in chosen if n in group]
        for extra in present[1:]:
            chosen.remove(extra)
    if not chosen:
        chosen = [names[int(rng.integers(len(names)))]]
    return tuple(chosen)


def apply(phonemes: str, processes: Sequence[str]) -> str:
    """Rewrite espeak-ng phoneme text (as `espeak-ng -x` prints it) with the given processes, in order."""
    for name in processes:
        for pattern, replacement in _COMPILED[name]:
            phonemes = pattern.sub(replacement, phonemes)
    return phonemes
