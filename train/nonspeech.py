"""Sounds that are not commands, generated: room noise, music-like tones, breathing, clicks, silence.

A daemon that listens all day hears far more of these than commands. The segmentation benchmark streams them
for minutes to count phantom utterances, and training draws from them so a model learns that they are no intent.
Every generator is deterministic given its `rng`, returns float64 mono at `rate`, and peaks well below clipping.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from intentd.train.channel import bandpass, noise

# Levels in dBFS of the generated sounds: a quiet to busy room, music from a speaker across the room, breath
# close to a microphone. Chosen to sit around and above webrtcvad's thresholds, where phantom utterances start.
ROOM_DBFS = (-55.0, -35.0)
ROOM_LEVEL_STEP_S = 5.0  # the room's level drifts between random targets this far apart
MUSIC_DBFS = -20.0
MUSIC_NOTE_S = (0.15, 0.6)
MUSIC_HARMONICS = 5
MUSIC_LOWEST_HZ = 110.0
MUSIC_SEMITONES = 36
MUSIC_DECAY_S = 0.3
MUSIC_ATTACK_S = 0.025
FLOOR_DBFS = -65.0  # a faint noise floor under music and breathing, as any real microphone has
BREATH_DBFS = (-40.0, -25.0)
BREATH_S = (0.4, 1.2)
BREATH_GAP_S = (1.5, 4.0)
BREATH_BAND_HZ = (300.0, 3000.0)
CLICK_DBFS = (-30.0, -10.0)
CLICK_S = 0.004
CLICK_GAP_S = (0.3, 3.0)


def _gain(dbfs: float) -> float:
    return float(10 ** (dbfs / 20))


def silence(seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Digital silence."""
    return np.zeros(round(seconds * rate))


def room(seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Pink noise whose level drifts within ROOM_DBFS: ventilation, traffic, a fridge."""
    n = round(seconds * rate)
    knots = int(seconds / ROOM_LEVEL_STEP_S) + 2
    level = np.interp(np.arange(n), np.linspace(0, n, knots), rng.uniform(*ROOM_DBFS, knots))
    return noise(n, "pink", rng) * 10 ** (level / 20)


def music(seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Plucked harmonic notes on random semitones, back to back: voiced and tonal, but no words."""
    n = round(seconds * rate)
    out = np.zeros(n)
    pos = 0
    while pos < n:
        length = min(n - pos, round(rng.uniform(*MUSIC_NOTE_S) * rate))
        t = np.arange(length) / rate
        f0 = MUSIC_LOWEST_HZ * 2 ** (int(rng.integers(0, MUSIC_SEMITONES)) / 12)
        note = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, MUSIC_HARMONICS + 1) if f0 * h < rate / 2)
        envelope = np.minimum(1.0, t / MUSIC_ATTACK_S) * np.exp(-t / MUSIC_DECAY_S)
        out[pos : pos + length] += note * envelope
        pos += length
    peak = float(np.max(np.abs(out))) or 1.0
    return out / peak * _gain(MUSIC_DBFS) + noise(n, "pink", rng) * _gain(FLOOR_DBFS)


def breathing(seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Band-limited noise swells of about a second, a few seconds apart, over a faint floor."""
    n = round(seconds * rate)
    out = noise(n, "pink", rng) * _gain(FLOOR_DBFS)
    pos = round(rng.uniform(0.5, 2.0) * rate)
    while pos < n:
        length = min(n - pos, round(rng.uniform(*BREATH_S) * rate))
        burst = bandpass(noise(length, "white", rng), rate, *BREATH_BAND_HZ)
        burst /= float(np.std(burst)) or 1.0
        envelope = np.sin(np.pi * np.arange(length) / length) ** 2
        out[pos : pos + length] += burst * envelope * _gain(rng.uniform(*BREATH_DBFS))
        pos += length + round(rng.uniform(*BREATH_GAP_S) * rate)
    return out


def clicks(seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Short loud transients (a keyboard, a cup set down) over a faint floor."""
    n = round(seconds * rate)
    out = noise(n, "pink", rng) * _gain(FLOOR_DBFS)
    width = max(1, round(CLICK_S * rate))
    pos = round(rng.uniform(*CLICK_GAP_S) * rate)
    while pos + width < n:
        decay = np.exp(-np.arange(width) / (width / 4))
        out[pos : pos + width] += noise(width, "white", rng) * decay * _gain(rng.uniform(*CLICK_DBFS))
        pos += round(rng.uniform(*CLICK_GAP_S) * rate)
    return out


Generator = Callable[[float, int, np.random.Generator], np.ndarray]
KINDS: dict[str, Generator] = {
    "silence": silence, "room": room, "music": music, "breathing": breathing, "clicks": clicks,
}
# What a model can be trained on: digital silence is no clip to learn from (training refuses it, and a VAD never
# hands it over as an utterance); a quiet room is the silence a microphone hears.
TRAINABLE_KINDS = tuple(kind for kind in KINDS if kind != "silence")
