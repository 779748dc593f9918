"""The telephone channel: 8 kHz, 300-3400 Hz, noise at the drawn SNR, codecs, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from intentd.train import channel
from intentd.train.errors import TrainError

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


# ------------------------------------------------------------------------------------------- microphone channel

def _tone_burst(rate: int = RATE_IN, seconds: float = 2.0, hz: float = 700.0) -> np.ndarray:
    """A steady stand-in for speech: every frame of it is active, so its level is unambiguous."""
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_microphone_output_is_16khz_float32_wideband_at_the_drawn_level() -> None:
    source = _signal()
    out, params = channel.microphone(source, RATE_IN, np.random.default_rng(20))
    assert out.dtype == np.float32
    assert out.size == round(CLIP_S * channel.MICROPHONE_RATE) + params.lead_samples + params.trail_samples
    assert 20 * np.log10(np.max(np.abs(out))) == pytest.approx(params.peak_dbfs, abs=1e-3)
    # Unlike the telephone, the band above 4 kHz survives (the source's 6 kHz tone among it).
    power = np.abs(np.fft.rfft(out.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(out.size, d=1.0 / channel.MICROPHONE_RATE)
    assert power[freqs > 4000.0].sum() / power.sum() > 0.05
    again, same = channel.microphone(source, RATE_IN, np.random.default_rng(20))
    assert same == params and again.tobytes() == out.tobytes()


@pytest.mark.parametrize("kind", ["white", "pink"])
def test_microphone_snr_measured_in_the_output_is_the_drawn_one_down_to_0_db(kind: str) -> None:
    """Noise power from the lead-in (noise alone) against the steady speech's: within the range, as drawn."""
    config = channel.MicrophoneConfig(snr_db=(0.0, 5.0), noise_kinds=(kind,), lead_silence_s=(0.5, 0.6),
                                      rt60_s=(0.15, 0.25), distance_m=(0.3, 0.6))
    rng = np.random.default_rng(21)
    frame = round(0.1 * channel.MICROPHONE_RATE)
    measured = []
    for _ in range(12):
        out, params = channel.microphone(_tone_burst(), RATE_IN, rng, config)
        x = out.astype(np.float64)
        noise_power = np.mean(x[: params.lead_samples] ** 2)
        speech_region = x[params.lead_samples + 3 * frame : params.lead_samples + 2 * channel.MICROPHONE_RATE - frame]
        snr = 10 * np.log10((np.mean(speech_region**2) - noise_power) / noise_power)
        assert 0.0 <= params.snr_db <= 5.0
        assert snr == pytest.approx(params.snr_db, abs=1.0)
        measured.append(snr)
    assert min(measured) < 1.5 and max(measured) > 3.5  # the draw really spans the range


def test_microphone_parts_mix_to_the_output_at_exactly_the_drawn_snr() -> None:
    config = channel.MicrophoneConfig(snr_db=(0.0, 30.0))
    for seed in range(5):
        speech, heard, params = channel.microphone_parts(_signal(), RATE_IN, np.random.default_rng(seed), config)
        out, same = channel.microphone(_signal(), RATE_IN, np.random.default_rng(seed), config)
        assert same == params
        gain = 10 ** (params.peak_dbfs / 20) / np.max(np.abs(speech + heard))
        np.testing.assert_allclose(out, (speech + heard) * gain, atol=1e-6)
        ratio = channel.active_power(speech, channel.MICROPHONE_RATE) / np.mean(heard**2)
        assert 10 * np.log10(ratio) == pytest.approx(params.snr_db, abs=1e-6)


def test_a_far_talker_sounds_more_reverberant_than_a_near_one() -> None:
    rate = channel.MICROPHONE_RATE
    click = np.zeros(rate)
    click[rate // 10] = 1.0
    late_share = {}
    for distance in (0.3, 3.0):
        config = channel.MicrophoneConfig(snr_db=(90.0, 90.0), distance_m=(distance, distance), rt60_s=(0.5, 0.5),
                                          room_volume_m3=(60.0, 60.0), eq_db=0.0, lead_silence_s=(0.1, 0.1))
        speech, _, params = channel.microphone_parts(click, rate, np.random.default_rng(22), config)
        direct = params.lead_samples + rate // 10 + round(distance / channel.SPEED_OF_SOUND_M_S * rate)
        energy = speech**2
        late_share[distance] = energy[direct + round(0.005 * rate) :].sum() / energy.sum()
        # Energy still rings 0.3 s on (-36 dB at RT60 0.5 s), a tail no dry click has.
        assert energy[direct + round(0.3 * rate) : direct + round(0.35 * rate)].sum() > 0
    assert late_share[3.0] > 0.8
    assert late_share[0.3] < 0.3


def test_a_users_noise_file_is_the_background_when_drawn(tmp_path: Path) -> None:
    import soundfile as sf

    hum = 0.5 * np.sin(2 * np.pi * 300.0 * np.arange(44_100) / 44_100)
    sf.write(tmp_path / "hum.wav", hum, 44_100)
    config = channel.MicrophoneConfig(noise_files=(str(tmp_path / "hum.wav"),), noise_file_probability=1.0,
                                      lead_silence_s=(0.5, 0.5), eq_db=0.0)
    out, params = channel.microphone(_tone_burst(hz=1500.0), RATE_IN, np.random.default_rng(23), config)
    assert params.noise == f"file:{tmp_path / 'hum.wav'}"
    lead = out[: params.lead_samples].astype(np.float64)
    power = np.abs(np.fft.rfft(lead)) ** 2
    freqs = np.fft.rfftfreq(lead.size, d=1.0 / channel.MICROPHONE_RATE)
    assert power[(freqs > 280) & (freqs < 320)].sum() > 0.95 * power.sum()
    with pytest.raises(TrainError, match="noise kinds"):
        channel.MicrophoneConfig(noise_kinds=("jackhammer",))
