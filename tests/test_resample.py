"""Resampling to 16 kHz: equal to torchaudio's functional form, tones keep their pitch, kernels are cached."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torchaudio

from intentd.daemon.audio import SAMPLE_RATE
from intentd.daemon.errors import AudioError
from intentd.daemon.resample import Resampler, resample, resampler_to


def tone(rate: int, hz: float, seconds: float = 1.0) -> np.ndarray:
    """A sine at `hz`, float32."""
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    """The frequency of the strongest FFT bin."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000])
def test_matches_torchaudio_functional(rate: int) -> None:
    audio = np.random.default_rng(rate).uniform(-1, 1, rate).astype(np.float32)
    got = Resampler()(audio, rate)
    want = torchaudio.functional.resample(torch.from_numpy(audio), rate, SAMPLE_RATE).numpy()
    assert got.dtype == np.float32
    assert got.shape == want.shape
    # Exactly: the HF pipeline resamples with the functional form, so predict --via pipeline, predict and the
    # daemon must hand the model the same samples (a float32 kernel, as the functional form builds).
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("rate", "hz"), [(8000, 440.0), (44100, 1000.0), (22050, 3000.0), (48000, 250.0)])
def test_a_tone_keeps_its_frequency(rate: int, hz: float) -> None:
    out = Resampler()(tone(rate, hz), rate)
    assert abs(out.size - SAMPLE_RATE) <= 1
    assert abs(peak_hz(out, SAMPLE_RATE) - hz) <= 2.0


def test_16k_passes_through_untouched() -> None:
    audio = tone(SAMPLE_RATE, 440.0)
    r = Resampler()
    assert r(audio, SAMPLE_RATE) is audio
    assert r.cached_rates == ()


def test_kernels_are_cached_per_rate_and_shared_across_threads() -> None:
    r = Resampler()
    audio = tone(44100, 1000.0, 0.2)
    want = r(audio, 44100)
    kernel = r.kernel(44100)
    results: list[np.ndarray] = []
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait()
        for _ in range(5):
            results.append(r(audio, 44100))
            r(audio, 8000)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.kernel(44100) is kernel
    assert r.cached_rates == (8000, 44100)
    assert len(results) == 20
    for got in results:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("audio", "rate"),
    [(np.zeros(10, np.float64), 8000), (np.zeros((2, 10), np.float32), 8000), (np.zeros(10, np.float32), 0)],
)
def test_bad_input_raises(audio: np.ndarray, rate: int) -> None:
    with pytest.raises(AudioError):
        Resampler()(audio, rate)


def test_the_shared_resampler_is_one_per_target_rate() -> None:
    audio = tone(8000, 440.0)
    assert resampler_to() is resampler_to(SAMPLE_RATE)
    np.testing.assert_array_equal(resample(audio, 8000), Resampler()(audio, 8000))
    assert 8000 in resampler_to().cached_rates
    down = resample(tone(SAMPLE_RATE, 440.0), SAMPLE_RATE, 8000)
    assert down.size == 8000 and resampler_to(8000) is not resampler_to()
