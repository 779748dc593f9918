"""A telephone channel for clean TTS audio: 8 kHz, a 300-3400 Hz band (edges can vary per clip), level, padding,
noise and a narrowband codec.

Pure numpy (FFT-domain filtering of whole clips), deterministic given a numpy Generator. Clips are seconds long
and offline, so whole-clip FFTs are simpler and exact where streaming filters would only approximate.
"""

from __future__ import annotations

import functools
import math
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from intentd.daemon.audio import SAMPLE_RATE
from intentd.train.errors import TrainError

TELEPHONE_RATE = 8000
BAND_LOW_HZ = 300.0
BAND_HIGH_HZ = 3400.0
# The pass band's edges are raised-cosine ramps this wide, inside the band, so nothing outside 300-3400 Hz
# survives and the filter's impulse response stays short (no ringing across the clip).
BAND_RAMP_HZ = 50.0
MU = 255  # G.711 mu-law
MU_LEVELS = 256
CODECS = ("none", "mulaw", "gsm")
SOX_TIMEOUT_S = 30.0
TRIM_FRAME_S = 0.01
TRIMMED_SILENCE_SCALE = 0.1
TRIM_DB_RANGE = (10.0, 30.0)


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """Ranges the channel draws from for each clip (uniform unless said otherwise)."""

    snr_db: tuple[float, float] = (15.0, 45.0)
    peak_dbfs: tuple[float, float] = (-20.0, -1.0)
    lead_silence_s: tuple[float, float] = (0.05, 0.5)
    trail_silence_s: tuple[float, float] = (0.05, 0.5)
    # Codecs drawn with equal probability; "gsm" needs sox with GSM support (see gsm_available()).
    codecs: tuple[str, ...] = ("none", "mulaw")
    noise_colours: tuple[str, ...] = field(default=("white", "pink"))
    # The band's lower edge: 300 Hz on a classic line; VoIP and wideband mobile calls keep far lower frequencies.
    low_cut_hz: tuple[float, float] = (BAND_LOW_HZ, BAND_LOW_HZ)
    # The upper edge: 3400 Hz on a classic line; up to just under Nyquist (4 kHz) where the codec passes more.
    high_cut_hz: tuple[float, float] = (BAND_HIGH_HZ, BAND_HIGH_HZ)
    # Share of clips cut tight around their speech, as an energy endpointer cuts a recording (FSDD's clips, a
    # VAD's segments): frames more than trim_db below the loudest one go from both ends, and with them weak
    # fricatives such as the s of "six" or the th of "three". The silence padding drawn for such a clip shrinks
    # to TRIMMED_SILENCE_SCALE of itself, since a trimmed recording keeps almost none.
    trim_probability: float = 0.0
    trim_db: tuple[float, float] = TRIM_DB_RANGE

    def __post_init__(self) -> None:
        for codec in self.codecs:
            if codec not in CODECS:
                raise TrainError(f"unknown codec {codec!r} (known: {', '.join(CODECS)})")
        if not self.codecs:
            raise TrainError("channel needs at least one codec ('none' for no codec)")
        if not 0 <= self.trim_probability <= 1:
            raise TrainError(f"trim probability must be in [0, 1], not {self.trim_probability:g}")
        if not 0 < self.trim_db[0] <= self.trim_db[1]:
            raise TrainError(f"trim range {self.trim_db[0]:g}-{self.trim_db[1]:g} dB must be ordered and positive")
        low, high = self.low_cut_hz
        top_low, top_high = self.high_cut_hz
        nyquist = TELEPHONE_RATE / 2
        if not 0 <= low <= high:
            raise TrainError(f"low cut range {low:g}-{high:g} Hz must be ordered and not negative")
        if not high + 2 * BAND_RAMP_HZ <= top_low <= top_high <= nyquist - BAND_RAMP_HZ:
            raise TrainError(
                f"high cut range {top_low:g}-{top_high:g} Hz must be ordered, at least {2 * BAND_RAMP_HZ:g} Hz above "
                f"the low cut ({high:g} Hz) and at most {nyquist - BAND_RAMP_HZ:g} Hz"
            )


@dataclass(frozen=True, slots=True)
class ChannelParams:
    """What the channel drew for one clip (logged, and checked by tests)."""

    snr_db: float
    peak_dbfs: float
    lead_samples: int
    trail_samples: int
    codec: str
    noise_colour: str
    low_cut_hz: float = BAND_LOW_HZ
    high_cut_hz: float = BAND_HIGH_HZ
    trim_db: float | None = None  # None: not trimmed


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling by truncating (or zero-extending) the spectrum; exact for whole clips."""
    samples = np.asarray(samples, dtype=np.float64)
    if rate_in == rate_out or samples.size == 0:
        return samples.copy()
    n_out = max(1, round(samples.size * rate_out / rate_in))
    spectrum = np.fft.rfft(samples)
    bins = n_out // 2 + 1
    out_spec = np.zeros(bins, dtype=np.complex128)
    keep = min(bins, spectrum.size)
    out_spec[:keep] = spectrum[:keep]
    if n_out % 2 == 0 and keep == bins:
        # The new Nyquist bin stands for both signs of that frequency, so it must be real.
        out_spec[-1] = out_spec[-1].real
    return np.fft.irfft(out_spec, n=n_out) * (n_out / samples.size)


def band_mask(n: int, rate: int, low_hz: float = BAND_LOW_HZ, high_hz: float = BAND_HIGH_HZ) -> np.ndarray:
    """rfft-bin gains: 1 inside [low+ramp, high-ramp], raised-cosine ramps, 0 outside [low, high]."""
    freqs = np.fft.rfftfreq(n, d=1.0 / rate)
    mask = np.zeros_like(freqs)
    inside = (freqs >= low_hz) & (freqs <= high_hz)
    mask[inside] = 1.0
    rise = (freqs >= low_hz) & (freqs < low_hz + BAND_RAMP_HZ)
    mask[rise] = 0.5 - 0.5 * np.cos(np.pi * (freqs[rise] - low_hz) / BAND_RAMP_HZ)
    fall = (freqs > high_hz - BAND_RAMP_HZ) & (freqs <= high_hz)
    mask[fall] = 0.5 - 0.5 * np.cos(np.pi * (high_hz - freqs[fall]) / BAND_RAMP_HZ)
    return mask


def bandpass(samples: np.ndarray, rate: int, low_hz: float = BAND_LOW_HZ, high_hz: float = BAND_HIGH_HZ) -> np.ndarray:
    """Telephone band: low_hz to high_hz (300-3400 Hz on a classic line)."""
    if samples.size == 0:
        return samples.astype(np.float64)
    spectrum = np.fft.rfft(samples) * band_mask(samples.size, rate, low_hz, high_hz)
    return np.fft.irfft(spectrum, n=samples.size)


def noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise: white, or pink (1/f power, like room and line hum more than hiss)."""
    white = rng.standard_normal(n)
    if colour == "white":
        shaped = white
    elif colour == "pink":
        spectrum = np.fft.rfft(white)
        freqs = np.arange(spectrum.size, dtype=np.float64)
        freqs[0] = 1.0  # no infinite DC gain
        shaped = np.fft.irfft(spectrum / np.sqrt(freqs), n=n)
    else:
        raise TrainError(f"unknown noise colour {colour!r} (white, pink)")
    power = float(np.mean(shaped**2))
    return shaped / math.sqrt(power) if power > 0 else shaped


def add_noise(
    samples: np.ndarray, snr_db: float, rng: np.random.Generator, colour: str = "white",
    reference_power: float | None = None,
) -> np.ndarray:  # fmt: skip
    """samples + noise whose power is reference_power (default: the samples' own) divided by 10^(snr/10)."""
    power = float(np.mean(np.square(samples))) if reference_power is None else reference_power
    if samples.size == 0 or power <= 0:
        return samples.astype(np.float64)
    scale = math.sqrt(power / 10 ** (snr_db / 10))
    return samples + scale * noise(samples.size, colour, rng)


def mulaw_round_trip(samples: np.ndarray) -> np.ndarray:
    """Encode to 8-bit mu-law and back: G.711's companding and quantisation noise."""
    x = np.clip(samples, -1.0, 1.0)
    compressed = np.sign(x) * np.log1p(MU * np.abs(x)) / math.log1p(MU)
    codes = np.round((compressed + 1.0) / 2.0 * (MU_LEVELS - 1))
    decoded = codes / (MU_LEVELS - 1) * 2.0 - 1.0
    return np.sign(decoded) * np.expm1(np.abs(decoded) * math.log1p(MU)) / MU


def gsm_available() -> bool:
    """Whether sox is installed and built with the GSM 06.10 codec."""
    sox = shutil.which("sox")
    if sox is None:
        return False
    try:
        proc = subprocess.run([sox, "-h"], capture_output=True, text=True, timeout=SOX_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    formats = proc.stdout.partition("AUDIO FILE FORMATS:")[2].partition("\n")[0].split()
    return "gsm" in formats


def gsm_round_trip(samples: np.ndarray) -> np.ndarray:
    """Encode to GSM 06.10 (the classic mobile full-rate codec) and back, at 8 kHz, through sox."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    raw = ["-t", "raw", "-r", str(TELEPHONE_RATE), "-e", "signed-integer", "-b", "16", "-c", "1"]
    try:
        encoded = subprocess.run(
            ["sox", *raw, "-", "-t", "gsm", "-"],
            input=pcm,
            capture_output=True,
            timeout=SOX_TIMEOUT_S,
            check=True,
        ).stdout
        decoded = subprocess.run(
            ["sox", "-t", "gsm", "-r", str(TELEPHONE_RATE), "-c", "1", "-", *raw, "-"],
            input=encoded, capture_output=True, timeout=SOX_TIMEOUT_S, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError) as err:
        raise TrainError(f"sox GSM round trip failed: {err}") from err
    out = np.frombuffer(decoded, dtype="<i2").astype(np.float64) / 32767
    # GSM works in 160-sample frames; sox pads the last one, so trim or pad back to the input length.
    return np.pad(out[: samples.size], (0, max(0, samples.size - out.size)))


def frame_levels(samples: np.ndarray, rate: int) -> np.ndarray | None:
    """Each whole 10 ms frame's energy in dB relative to the loudest frame; None when there is no frame or no sound."""
    frame = max(1, round(rate * TRIM_FRAME_S))
    n = samples.size // frame
    if n == 0:
        return None
    energy = np.mean(np.square(samples[: n * frame].reshape(n, frame), dtype=np.float64), axis=1)
    if not energy.max() > 0:
        return None
    return 10 * np.log10(np.maximum(energy, 1e-20) / energy.max())


def trim_edges(samples: np.ndarray, rate: int, below_peak_db: float) -> np.ndarray:
    """Cut both ends down to the first and last 10 ms frame within below_peak_db of the loudest frame."""
    level = frame_levels(samples, rate)
    if level is None:
        return samples
    frame = max(1, round(rate * TRIM_FRAME_S))
    kept = np.flatnonzero(level >= -below_peak_db)
    return samples[kept[0] * frame : (kept[-1] + 1) * frame]


def _draw(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _draw_if_range(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """A fixed value draws nothing, so datasets rendered before the band edges could vary stay bit-identical."""
    return bounds[0] if bounds[0] == bounds[1] else _draw(rng, bounds)


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def telephone(
    samples: np.ndarray, rate: int, rng: np.random.Generator, config: ChannelConfig = ChannelConfig()
) -> tuple[np.ndarray, ChannelParams]:
    """Clean speech at any rate -> float32 at 8 kHz as heard down a phone line, and what was drawn.

    Order follows the physical path: the caller's room (noise, pauses around the words), then the line's
    band-pass, then the level the far end receives, then the codec's quantisation.
    """
    # Every random draw happens up front and in a fixed order, so codec or colour choices never shift the rest.
    params = ChannelParams(
        snr_db=_draw(rng, config.snr_db),
        peak_dbfs=_draw(rng, config.peak_dbfs),
        lead_samples=round(_draw(rng, config.lead_silence_s) * TELEPHONE_RATE),
        trail_samples=round(_draw(rng, config.trail_silence_s) * TELEPHONE_RATE),
        codec=_choice(rng, config.codecs),
        noise_colour=_choice(rng, config.noise_colours),
        low_cut_hz=_draw_if_range(rng, config.low_cut_hz),
        high_cut_hz=_draw_if_range(rng, config.high_cut_hz),
    )
    if config.trim_probability > 0:  # no draws at 0, so untrimmed datasets render as before
        trim, below_peak_db = rng.random() < config.trim_probability, _draw(rng, config.trim_db)
        if trim:
            params = replace(
                params, trim_db=below_peak_db,
                lead_samples=round(params.lead_samples * TRIMMED_SILENCE_SCALE),
                trail_samples=round(params.trail_samples * TRIMMED_SILENCE_SCALE),
            )  # fmt: skip
            samples = trim_edges(np.asarray(samples, dtype=np.float64), rate, below_peak_db)
    speech = resample(samples, rate, TELEPHONE_RATE)
    speech_power = float(np.mean(speech**2)) if speech.size else 0.0
    padded = np.pad(speech, (params.lead_samples, params.trail_samples))
    noisy = add_noise(padded, params.snr_db, rng, params.noise_colour, reference_power=speech_power)
    banded = bandpass(noisy, TELEPHONE_RATE, params.low_cut_hz, params.high_cut_hz)
    peak = float(np.max(np.abs(banded))) if banded.size else 0.0
    if peak > 0:
        banded *= 10 ** (params.peak_dbfs / 20) / peak
    if params.codec == "mulaw":
        banded = mulaw_round_trip(banded)
    elif params.codec == "gsm":
        # A mobile call's decoded GSM enters the fixed network, which band-limits it again.
        banded = bandpass(gsm_round_trip(banded), TELEPHONE_RATE, params.low_cut_hz, params.high_cut_hz)
    return banded.astype(np.float32), params


# ---------------------------------------------------------------------------------------------- microphone

MICROPHONE_RATE = SAMPLE_RATE  # wideband, the models' own rate
SPEED_OF_SOUND_M_S = 343.0
# Sabine's critical distance, where direct and reverberant sound are equally loud: 0.057 * sqrt(V / RT60).
CRITICAL_DISTANCE_FACTOR = 0.057
RT60_DECAY = math.log(1e3)  # amplitude falls by 60 dB (a factor 1000) over RT60
REVERB_TAIL_RT60 = 1.2  # impulse responses are cut this many RT60s after the direct sound
# High frequencies die away faster in a room (air and soft furnishings): the tail's level falls by this many dB per
# octave above AIR_ROLLOFF_HZ, over the whole tail.
AIR_ROLLOFF_HZ = 2000.0
AIR_ROLLOFF_DB_PER_OCTAVE = 3.0
# The microphone's colour: a smooth response drawn within +-eq_db at these log-spaced frequencies.
EQ_KNOTS_HZ = (100.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0, 7000.0)
# A speech frame counts towards the speech level where it is within this many dB of the loudest 10 ms frame, so
# pauses and padding do not lower the SNR's reference (and a clip's SNR does not depend on its padding).
ACTIVE_SPEECH_DB = 30.0
# Generated background noise: stationary hiss and hum, and train/nonspeech.py's room, music, breathing and clicks.
MIC_NOISE_KINDS = ("white", "pink", "room", "music", "breathing", "clicks")
NOISE_FILE_CACHE = 16
# SNRs drawn by default: clean-ish rooms down to noise as loud as the speech (the benchmark's noisiest is 6 dB).
MIC_SNR_DB = (0.0, 30.0)


@dataclass(frozen=True, slots=True)
class MicrophoneConfig:
    """Ranges the microphone channel draws from for each clip (uniform): a talker at a distance in a room,
    heard by a coloured microphone over background noise."""

    snr_db: tuple[float, float] = MIC_SNR_DB
    peak_dbfs: tuple[float, float] = (-25.0, -1.0)
    lead_silence_s: tuple[float, float] = (0.1, 0.6)
    trail_silence_s: tuple[float, float] = (0.1, 0.6)
    distance_m: tuple[float, float] = (0.3, 3.0)
    rt60_s: tuple[float, float] = (0.15, 0.8)
    room_volume_m3: tuple[float, float] = (20.0, 200.0)
    eq_db: float = 6.0
    # The capsule and its amplifier: a high-pass (handling noise, small capsules) and a top roll-off.
    low_cut_hz: tuple[float, float] = (40.0, 200.0)
    high_cut_hz: tuple[float, float] = (5000.0, MICROPHONE_RATE / 2 - BAND_RAMP_HZ)
    noise_kinds: tuple[str, ...] = MIC_NOISE_KINDS
    # The user's own noise recordings (any readable audio); drawn for noise_file_probability of the clips.
    noise_files: tuple[str, ...] = ()
    noise_file_probability: float = 0.5
    trim_probability: float = 0.0
    trim_db: tuple[float, float] = TRIM_DB_RANGE

    def __post_init__(self) -> None:
        for name in ("snr_db", "peak_dbfs", "lead_silence_s", "trail_silence_s", "distance_m", "rt60_s",
                     "room_volume_m3", "low_cut_hz", "high_cut_hz", "trim_db"):
            low, high = getattr(self, name)
            if not low <= high:
                raise TrainError(f"microphone {name} range {low:g}-{high:g} must be ordered")
        if self.distance_m[0] <= 0 or self.rt60_s[0] <= 0 or self.room_volume_m3[0] <= 0:
            raise TrainError("microphone distance, RT60 and room volume must be positive")
        if not (0 <= self.low_cut_hz[1] and self.low_cut_hz[1] + 2 * BAND_RAMP_HZ <= self.high_cut_hz[0]
                and self.high_cut_hz[1] <= MICROPHONE_RATE / 2 - BAND_RAMP_HZ):
            raise TrainError(f"microphone band {self.low_cut_hz}-{self.high_cut_hz} Hz must be ordered and below "
                             f"{MICROPHONE_RATE / 2 - BAND_RAMP_HZ:g} Hz")
        unknown = set(self.noise_kinds) - set(MIC_NOISE_KINDS)
        if unknown or not self.noise_kinds:
            raise TrainError(f"microphone noise kinds {sorted(unknown) or '(none)'}: known are "
                             f"{', '.join(MIC_NOISE_KINDS)}")
        if not 0 <= self.noise_file_probability <= 1 or not 0 <= self.trim_probability <= 1:
            raise TrainError("microphone probabilities must be in [0, 1]")


@dataclass(frozen=True, slots=True)
class MicrophoneParams:
    """What the microphone channel drew for one clip (recorded in synth's metadata, checked by tests)."""

    snr_db: float
    peak_dbfs: float
    lead_samples: int
    trail_samples: int
    distance_m: float
    rt60_s: float
    room_volume_m3: float
    drr_db: float  # direct-to-reverberant energy ratio the distance gives in that room
    low_cut_hz: float
    high_cut_hz: float
    eq_db: tuple[float, ...]  # the response at EQ_KNOTS_HZ
    noise: str  # a MIC_NOISE_KINDS entry, or "file:<path>"
    noise_offset_s: float = 0.0
    trim_db: float | None = None


def room_impulse_response(rt60_s: float, drr_db: float, distance_m: float, rate: int,
                          rng: np.random.Generator) -> np.ndarray:
    """A synthetic room: the direct sound after distance/c, then an exponentially decaying diffuse tail (Gaussian
    noise, -60 dB at RT60, darker than the direct sound) whose energy is the direct sound's / 10^(drr/10)."""
    delay = round(distance_m / SPEED_OF_SOUND_M_S * rate)
    n_tail = max(1, round(REVERB_TAIL_RT60 * rt60_s * rate))
    t = np.arange(n_tail) / rate
    tail = rng.standard_normal(n_tail) * np.exp(-RT60_DECAY * t / rt60_s)
    spectrum = np.fft.rfft(tail)
    freqs = np.fft.rfftfreq(n_tail, d=1.0 / rate)
    octaves = np.log2(np.maximum(freqs, AIR_ROLLOFF_HZ) / AIR_ROLLOFF_HZ)
    tail = np.fft.irfft(spectrum * 10 ** (-AIR_ROLLOFF_DB_PER_OCTAVE * octaves / 20), n=n_tail)
    tail *= math.sqrt(10 ** (-drr_db / 10) / float(np.sum(tail**2)))
    response = np.zeros(delay + 1 + n_tail)
    response[delay] = 1.0
    response[delay + 1 :] = tail
    return response


def convolve(samples: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Full linear convolution through the FFT (clips and responses are seconds long)."""
    n = samples.size + response.size - 1
    size = 1 << max(0, (n - 1).bit_length())
    return np.fft.irfft(np.fft.rfft(samples, size) * np.fft.rfft(response, size), size)[:n]


def colour(samples: np.ndarray, rate: int, eq_db: Sequence[float], low_hz: float, high_hz: float) -> np.ndarray:
    """A microphone's response: the smooth EQ through EQ_KNOTS_HZ (interpolated in log frequency) within a band."""
    if samples.size == 0:
        return samples.astype(np.float64)
    freqs = np.fft.rfftfreq(samples.size, d=1.0 / rate)
    log_f = np.log(np.maximum(freqs, 1.0))
    gain_db = np.interp(log_f, np.log(EQ_KNOTS_HZ), eq_db)
    gain = 10 ** (gain_db / 20) * band_mask(samples.size, rate, low_hz, high_hz)
    return np.fft.irfft(np.fft.rfft(samples) * gain, n=samples.size)


def active_power(samples: np.ndarray, rate: int, within_db: float = ACTIVE_SPEECH_DB) -> float:
    """Mean power of the 10 ms frames within `within_db` of the loudest: speech's level without its pauses."""
    level = frame_levels(samples, rate)
    if level is None:
        return float(np.mean(np.square(samples))) if samples.size else 0.0
    frame = max(1, round(rate * TRIM_FRAME_S))
    n = level.size
    energy = np.mean(np.square(samples[: n * frame].reshape(n, frame)), axis=1)
    return float(np.mean(energy[level >= -within_db]))


@functools.lru_cache(maxsize=NOISE_FILE_CACHE)
def _noise_file(path: str) -> np.ndarray:
    """A noise recording as mono float64 at MICROPHONE_RATE (cached: many clips draw from few files)."""
    from intentd.train.audio_io import read_audio

    return read_audio(path, MICROPHONE_RATE).astype(np.float64)


def background(n: int, source: str, offset_s: float, rng: np.random.Generator) -> np.ndarray:
    """n samples of unit-power background noise at MICROPHONE_RATE: a generated kind, or a user's file
    ("file:<path>") read from offset_s and looped."""
    if source.startswith("file:"):
        recording = _noise_file(source[len("file:"):])
        start = round(offset_s * MICROPHONE_RATE) % recording.size
        out = np.resize(np.roll(recording, -start), n)
    elif source in ("white", "pink"):
        out = noise(n, source, rng)
    else:
        from intentd.train import nonspeech

        out = nonspeech.KINDS[source](n / MICROPHONE_RATE, MICROPHONE_RATE, rng)[:n]
        out = np.pad(out, (0, n - out.size))
    power = float(np.mean(out**2)) if n else 0.0
    return out / math.sqrt(power) if power > 0 else out


def microphone_parts(
    samples: np.ndarray, rate: int, rng: np.random.Generator, config: MicrophoneConfig = MicrophoneConfig()
) -> tuple[np.ndarray, np.ndarray, MicrophoneParams]:
    """Clean speech at any rate -> (speech, noise, params) at MICROPHONE_RATE, before the level is set: the speech
    as the microphone hears it from the drawn distance in the drawn room, and background noise whose power puts it
    params.snr_db below the speech's active level (both through the same microphone colour, so the ratio holds in
    the mix). microphone() adds and levels them.
    """
    # Every draw up front in a fixed order, so one choice (a noise file, trimming) never shifts the rest.
    distance = _draw(rng, config.distance_m)
    rt60 = _draw(rng, config.rt60_s)
    volume = _draw(rng, config.room_volume_m3)
    critical = CRITICAL_DISTANCE_FACTOR * math.sqrt(volume / rt60)
    use_file = bool(config.noise_files) and rng.random() < config.noise_file_probability
    kind = _choice(rng, config.noise_kinds)
    chosen_file = _choice(rng, config.noise_files) if config.noise_files else ""
    params = MicrophoneParams(
        snr_db=_draw(rng, config.snr_db),
        peak_dbfs=_draw(rng, config.peak_dbfs),
        lead_samples=round(_draw(rng, config.lead_silence_s) * MICROPHONE_RATE),
        trail_samples=round(_draw(rng, config.trail_silence_s) * MICROPHONE_RATE),
        distance_m=distance,
        rt60_s=rt60,
        room_volume_m3=volume,
        drr_db=20 * math.log10(critical / distance),
        low_cut_hz=_draw(rng, config.low_cut_hz),
        high_cut_hz=_draw(rng, config.high_cut_hz),
        eq_db=tuple(float(g) for g in rng.uniform(-config.eq_db, config.eq_db, len(EQ_KNOTS_HZ))),
        noise=f"file:{chosen_file}" if use_file else kind,
        noise_offset_s=float(rng.uniform(0.0, 60.0)) if use_file else 0.0,
    )
    trim, below_peak_db = rng.random() < config.trim_probability, _draw(rng, config.trim_db)
    samples = np.asarray(samples, dtype=np.float64)
    if trim:
        params = replace(params, trim_db=below_peak_db, lead_samples=round(params.lead_samples * TRIMMED_SILENCE_SCALE),
                         trail_samples=round(params.trail_samples * TRIMMED_SILENCE_SCALE))
        samples = trim_edges(samples, rate, below_peak_db)
    dry = resample(samples, rate, MICROPHONE_RATE)
    wet = convolve(dry, room_impulse_response(rt60, params.drr_db, distance, MICROPHONE_RATE, rng))
    # The reverberant tail rings on into the trailing silence rather than lengthening the clip.
    total = params.lead_samples + dry.size + params.trail_samples
    speech = np.pad(wet, (params.lead_samples, 0))[:total]
    speech = np.pad(speech, (0, total - speech.size))
    speech = colour(speech, MICROPHONE_RATE, params.eq_db, params.low_cut_hz, params.high_cut_hz)
    heard = colour(background(total, params.noise, params.noise_offset_s, rng), MICROPHONE_RATE, params.eq_db,
                   params.low_cut_hz, params.high_cut_hz)
    speech_power = active_power(speech, MICROPHONE_RATE)
    noise_power = float(np.mean(heard**2)) if heard.size else 0.0
    if speech_power > 0 and noise_power > 0:
        heard *= math.sqrt(speech_power / noise_power / 10 ** (params.snr_db / 10))
    else:
        heard[:] = 0.0
    return speech, heard, params


def microphone(
    samples: np.ndarray, rate: int, rng: np.random.Generator, config: MicrophoneConfig = MicrophoneConfig()
) -> tuple[np.ndarray, MicrophoneParams]:
    """Clean speech at any rate -> float32 at 16 kHz as a room microphone records it, and what was drawn.

    Order follows the physical path: the talker's distance in a reverberant room, the room's background noise at
    the drawn SNR, the microphone's colour (applied to both), then the recording level.
    """
    speech, heard, params = microphone_parts(samples, rate, rng, config)
    mixed = speech + heard
    peak = float(np.max(np.abs(mixed))) if mixed.size else 0.0
    if peak > 0:
        mixed *= 10 ** (params.peak_dbfs / 20) / peak
    return mixed.astype(np.float32), params
