"""The telephone channel: 8 kHz, 300-3400 Hz, noise at the drawn SNR, codecs, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from train import channel
from train.errors import TrainError

RATE_IN = 22050
CLIP_S = 1.5
# Tones inside and outside the telephone band; the speech stand-in is their sum plus broadband noise.
IN_BAND_HZ = (500.0, 1000.0, 3000.0)
OUT_BAND_HZ = (100.0, 200.0, 3800.0, 6000.0, 9000.0)


def _signal(rate: int = RATE_IN, seconds: float = CLIP_S) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    tones = sum(np.sin(2 * np.pi * f * t) for f in IN_BAND_HZ + OUT_BAND_HZ)
    return (0.1 * tones + 0.05 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)


def _out_of_band_share(samples: np.ndarray, rate: int) -> float:
    """Fraction of the energy below 300 Hz or above 3400 Hz."""
    power = np.abs(np.fft.rfft(samples.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(samples.size, d=1.0 / rate)
    outside = (freqs < channel.BAND_LOW_HZ) | (freqs > channel.BAND_HIGH_HZ)
    return float(power[outside].sum() / power.sum())


def test_output_is_8khz_float32_with_the_drawn_padding() -> None:
    out, params = channel.telephone(_signal(), RATE_IN, np.random.default_rng(1))
    assert out.dtype == np.float32
    expected = round(CLIP_S * channel.TELEPHONE_RATE) + params.lead_samples + params.trail_samples
    assert out.size == expected
    assert np.max(np.abs(out)) <= 1.0


@pytest.mark.parametrize(("codec", "max_share"), [("none", 1e-6), ("mulaw", 1e-3)])
def test_energy_outside_the_telephone_band_is_strongly_attenuated(codec: str, max_share: float) -> None:
    source = _signal()
    assert _out_of_band_share(source, RATE_IN) > 0.5  # the input really has most energy out of band
    config = channel.ChannelConfig(codecs=(codec,))
    out, _ = channel.telephone(source, RATE_IN, np.random.default_rng(2), config)
    assert _out_of_band_share(out, channel.TELEPHONE_RATE) < max_share


def test_in_band_tones_pass_at_their_level() -> None:
    rate = channel.TELEPHONE_RATE
    t = np.arange(rate) / rate
    tone = np.sin(2 * np.pi * 1000.0 * t)
    assert np.allclose(channel.bandpass(tone, rate), tone, atol=1e-9)
    low = np.sin(2 * np.pi * 150.0 * t)
    assert np.max(np.abs(channel.bandpass(low, rate))) < 1e-9


def test_resample_keeps_a_tone_and_its_length() -> None:
    t = np.arange(RATE_IN) / RATE_IN
    tone = np.sin(2 * np.pi * 440.0 * t)
    out = channel.resample(tone, RATE_IN, channel.TELEPHONE_RATE)
    assert out.size == channel.TELEPHONE_RATE
    expected = np.sin(2 * np.pi * 440.0 * np.arange(out.size) / channel.TELEPHONE_RATE)
    assert np.max(np.abs(out - expected)) < 1e-6


@pytest.mark.parametrize("colour", ["white", "pink"])
@pytest.mark.parametrize("snr_db", [15.0, 30.0, 45.0])
def test_add_noise_hits_the_requested_snr(colour: str, snr_db: float) -> None:
    clean = _signal(rate=channel.TELEPHONE_RATE).astype(np.float64)
    noisy = channel.add_noise(clean, snr_db, np.random.default_rng(3), colour)
    measured = 10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))
    assert measured == pytest.approx(snr_db, abs=1e-6)


def test_drawn_parameters_stay_in_the_configured_ranges() -> None:
    config = channel.ChannelConfig()
    rng = np.random.default_rng(4)
    source = _signal(seconds=0.2)
    for _ in range(50):
        _, p = channel.telephone(source, RATE_IN, rng, config)
        assert config.snr_db[0] <= p.snr_db <= config.snr_db[1]
        assert config.peak_dbfs[0] <= p.peak_dbfs <= config.peak_dbfs[1]
        assert p.codec in config.codecs
        lead_s, trail_s = p.lead_samples / channel.TELEPHONE_RATE, p.trail_samples / channel.TELEPHONE_RATE
        assert config.lead_silence_s[0] - 1e-3 <= lead_s <= config.lead_silence_s[1] + 1e-3
        assert config.trail_silence_s[0] - 1e-3 <= trail_s <= config.trail_silence_s[1] + 1e-3


def test_output_peak_is_the_drawn_level() -> None:
    config = channel.ChannelConfig(codecs=("none",))
    out, params = channel.telephone(_signal(), RATE_IN, np.random.default_rng(5), config)
    assert 20 * np.log10(np.max(np.abs(out))) == pytest.approx(params.peak_dbfs, abs=1e-3)


def test_same_generator_state_gives_identical_audio() -> None:
    source = _signal()
    a, pa = channel.telephone(source, RATE_IN, np.random.default_rng(6))
    b, pb = channel.telephone(source, RATE_IN, np.random.default_rng(6))
    c, _ = channel.telephone(source, RATE_IN, np.random.default_rng(7))
    assert pa == pb
    assert a.tobytes() == b.tobytes()
    assert a.size != c.size or a.tobytes() != c.tobytes()


def test_mulaw_round_trip_is_close_but_quantised() -> None:
    x = np.linspace(-1.0, 1.0, 10_001)
    y = channel.mulaw_round_trip(x)
    # Companding: the error grows with the level (about 2% near full scale) but stays tiny near zero.
    assert np.all(np.abs(y - x) <= 0.025 * np.abs(x) + 1e-4)
    assert np.unique(np.round(y, 9)).size <= channel.MU_LEVELS


@pytest.mark.skipif(not channel.gsm_available(), reason="sox with GSM support is not installed")
def test_gsm_round_trip_keeps_length_and_band() -> None:
    config = channel.ChannelConfig(codecs=("gsm",))
    out, params = channel.telephone(_signal(), RATE_IN, np.random.default_rng(8), config)
    assert params.codec == "gsm"
    expected = round(CLIP_S * channel.TELEPHONE_RATE) + params.lead_samples + params.trail_samples
    assert out.size == expected
    assert _out_of_band_share(out, channel.TELEPHONE_RATE) < 1e-6
    assert np.max(np.abs(out)) > 0.01  # GSM really carried the signal


def test_unknown_codec_is_refused() -> None:
    with pytest.raises(TrainError, match="unknown codec 'amr'"):
        channel.ChannelConfig(codecs=("amr",))


def test_a_lower_band_edge_keeps_low_tones_and_is_drawn_in_range() -> None:
    rate = channel.TELEPHONE_RATE
    t = np.arange(rate) / rate
    low = np.sin(2 * np.pi * 150.0 * t)
    assert np.allclose(channel.bandpass(low, rate, low_hz=50.0), low, atol=1e-9)  # 150 Hz is inside 100-3350
    config = channel.ChannelConfig(codecs=("none",), low_cut_hz=(50.0, 100.0))
    rng = np.random.default_rng(9)
    for _ in range(20):
        out, params = channel.telephone(low.astype(np.float32), rate, rng, config)
        assert 50.0 <= params.low_cut_hz <= 100.0
        power = np.abs(np.fft.rfft(out.astype(np.float64))) ** 2
        freqs = np.fft.rfftfreq(out.size, d=1.0 / rate)
        near = (freqs > 140.0) & (freqs < 160.0)
        assert power[near].sum() > 0.5 * power.sum()  # the tone came through, above the added noise
    with pytest.raises(TrainError, match="low cut"):
        channel.ChannelConfig(low_cut_hz=(300.0, 100.0))


def test_a_higher_band_edge_keeps_tones_above_3400_hz() -> None:
    rate = channel.TELEPHONE_RATE
    t = np.arange(rate) / rate
    high = np.sin(2 * np.pi * 3700.0 * t)
    assert np.max(np.abs(channel.bandpass(high, rate))) < 1e-9  # a classic line cuts it
    assert np.allclose(channel.bandpass(high, rate, high_hz=3950.0), high, atol=1e-9)
    config = channel.ChannelConfig(codecs=("none",), high_cut_hz=(3800.0, 3950.0))
    _, params = channel.telephone(high.astype(np.float32), rate, np.random.default_rng(10), config)
    assert 3800.0 <= params.high_cut_hz <= 3950.0
    with pytest.raises(TrainError, match="high cut"):
        channel.ChannelConfig(high_cut_hz=(3400.0, 4000.0))  # the ramp would cross Nyquist
    with pytest.raises(TrainError, match="high cut"):
        channel.ChannelConfig(low_cut_hz=(300.0, 300.0), high_cut_hz=(350.0, 3400.0))


def _word(rate: int) -> np.ndarray:
    """0.2 s silence, a weak 0.1 s hiss (a fricative, 23 dB down), a 0.3 s loud vowel, 0.2 s silence."""
    rng = np.random.default_rng(11)
    t = np.arange(int(0.3 * rate)) / rate
    parts = [
        np.zeros(int(0.2 * rate)),
        0.05 * rng.standard_normal(int(0.1 * rate)),
        np.sin(2 * np.pi * 500.0 * t),
        np.zeros(int(0.2 * rate)),
    ]
    return np.concatenate(parts)


def test_trim_edges_cuts_silence_and_whatever_is_further_below_the_peak_than_asked() -> None:
    rate = 16_000
    word = _word(rate)
    # 35 dB keeps the hiss and drops only the silence.
    assert channel.trim_edges(word, rate, 35.0).size == pytest.approx(0.4 * rate, abs=0.01 * rate)
    # 15 dB drops the hiss too: only the vowel is left, as an endpointer that clips a weak onset leaves it.
    assert channel.trim_edges(word, rate, 15.0).size == pytest.approx(0.3 * rate, abs=0.01 * rate)
    assert channel.trim_edges(np.zeros(rate), rate, 20.0).size == rate  # nothing to find: left as it was
    assert channel.trim_edges(np.zeros(5), rate, 20.0).size == 5  # under one frame


def test_frame_levels_are_db_below_the_loudest_10_ms_and_none_without_sound() -> None:
    rate = 8000
    clip = np.concatenate([np.full(80, 0.01), np.full(80, 0.1), np.full(40, 0.5)]).astype(np.float32)
    levels = channel.frame_levels(clip, rate)
    assert levels is not None
    np.testing.assert_allclose(levels, [-20.0, 0.0])  # the trailing 5 ms is no whole frame
    assert channel.frame_levels(np.zeros(800, np.float32), rate) is None
    assert channel.frame_levels(np.ones(40, np.float32), rate) is None


def test_trimmed_clips_are_drawn_at_the_configured_rate_and_keep_little_silence() -> None:
    rate = 16_000
    word = _word(rate)
    config = channel.ChannelConfig(codecs=("none",), trim_probability=0.5, trim_db=(12.0, 20.0))
    rng = np.random.default_rng(12)
    drawn = [channel.telephone(word, rate, rng, config) for _ in range(200)]
    trimmed = [(out, p) for out, p in drawn if p.trim_db is not None]
    assert 70 <= len(trimmed) <= 130
    for out, params in trimmed:
        assert 12.0 <= params.trim_db <= 20.0
        assert params.lead_samples <= 0.5 * channel.TRIMMED_SILENCE_SCALE * channel.TELEPHONE_RATE + 1
        speech = out.size - params.lead_samples - params.trail_samples
        assert speech == pytest.approx(0.3 * channel.TELEPHONE_RATE, abs=0.01 * channel.TELEPHONE_RATE)
    # Untrimmed clips keep their whole 0.8 s and the usual padding.
    for out, params in drawn:
        if params.trim_db is None:
            assert out.size == round(0.8 * channel.TELEPHONE_RATE) + params.lead_samples + params.trail_samples


def test_bad_trim_settings_are_refused() -> None:
    with pytest.raises(TrainError, match="trim probability"):
        channel.ChannelConfig(trim_probability=1.5)
    with pytest.raises(TrainError, match="trim range"):
        channel.ChannelConfig(trim_db=(30.0, 10.0))
