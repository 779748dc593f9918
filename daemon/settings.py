"""Typed settings loaded from TOML: nested frozen dataclasses, validated in one place, unknown keys rejected.

Every field carries its documentation, unit and allowed range in its metadata, so the reference
`config.toml`, the validation messages and the tests all read from one source. Each section is the only place
its defaults are written: the stages take theirs from `DEFAULTS` (or from the section they are given), and a
section checks its ranges whenever it is made, from a file or in code.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, get_type_hints

from intentd.daemon.errors import ConfigError, SourceError
from intentd.daemon.events import DEFAULT_EVENTS_URI, default_instance
from intentd.daemon.protocol import DEFAULT_AUDIO_URI

# model.threshold's value for "the model's own calibrated threshold".
MODEL_THRESHOLD: Final = -1.0
from intentd.daemon.segmenter import SegmenterSettings

# Which utterance a full batcher queue drops: the oldest waiting, or the one arriving.
DROP_POLICIES: Final = ("drop_oldest", "drop_newest")


def setting(default: Any, doc: str, *, lo: float | None = None, hi: float | None = None,
            choices: tuple[str, ...] | None = None, default_factory: Any = None) -> Any:
    """A dataclass field with its documentation and validation rules attached."""
    meta = {"doc": doc, "lo": lo, "hi": hi, "choices": choices}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


class _Section:
    """A table of config.toml: its values are checked against their fields' ranges and choices when made."""

    __slots__ = ()

    def __post_init__(self) -> None:
        name = _section_names()[type(self)]
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  # every subclass is a dataclass
            _check(f"{name}.{f.name}", getattr(self, f.name), dict(f.metadata))


@dataclass(frozen=True, slots=True)
class ModelSettings(_Section):
    """Which model serves, and where it runs."""

    path: str = setting("models/default", "model folder made by `intentd-train fit`; relative paths are "
                        "resolved against the config file's folder")
    device: str = setting("auto", "auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    threads: int = setting(0, "CPU threads for inference; 0 = one per core", lo=0, hi=256)
    # The names are daemon/onnx_forward.py's RUNTIMES (kept light here: --check must not import torch; a test
    # holds the two equal).
    runtime: str = setting("auto", "inference runtime: auto (ONNX Runtime for a Whisper model in float32 on "
                           "the CPU where onnxruntime is installed, else PyTorch), torch or onnx",
                           choices=("auto", "torch", "onnx"))
    top_k: int = setting(3, "how many (label, score) pairs each intent event carries", lo=1, hi=100)
    threshold: float = setting(MODEL_THRESHOLD, "a top score below this publishes `intent.unknown`; -1 takes the "
                               "threshold fit calibrated into the model folder (intentd.json), 0 disables",
                               lo=MODEL_THRESHOLD, hi=1.0)
    # Measured on 2 CPU cores: an utterance after 3 s of silence took 30-50 ms instead of 19 ms (cold caches);
    # one throw-away forward per idle second (about 1% of the CPU) keeps it at 19 ms.
    keep_warm_s: float = setting(1.0, "after this many idle seconds run a throw-away forward so the next "
                                 "utterance finds the model hot; 0 disables", lo=0.0, hi=3600.0)

    @property
    def own_threshold(self) -> float | None:
        """The threshold to load the model with: None takes the model folder's calibrated one."""
        return None if self.threshold < 0 else self.threshold


@dataclass(frozen=True, slots=True)
class SourceSettings(_Section):
    """Where audio comes from."""

    listen: tuple[str, ...] = setting(None, "audio source URIs: tcp://HOST:PORT, unix:///PATH, "
                                      "mic://NAME_OR_INDEX, file:///PATH.wav?realtime=1, "
                                      "tcp+wyoming://HOST:PORT?language=en (Wyoming speech to text, for "
                                      "Home Assistant); relative file:// and unix:// paths (file://audio/x.wav) "
                                      "resolve against the config file's folder",
                                      default_factory=lambda: (DEFAULT_AUDIO_URI,))
    idle_timeout_s: float = setting(10.0, "seconds a socket stream may send no audio before it is ended (empty "
                                    "frames do not count)",
                                    lo=0.1, hi=86400.0)
    max_streams: int = setting(512, "concurrent streams; further connections are refused with a reason",
                               lo=1, hi=100000)
    chunk_ms: int = setting(20, "chunk length read from microphones and replayed files, in ms", lo=5, hi=1000)


# The timing defaults are the segmenter's own, written (with the measurements behind them) in daemon/segmenter.py.
_SEGMENTER: Final = SegmenterSettings()


@dataclass(frozen=True, slots=True)
class VadSettings(_Section):
    """Utterance segmentation with webrtcvad, per stream."""

    aggressiveness: int = setting(2, "webrtcvad aggressiveness: 0 keeps most audio as speech, 3 least",
                                  lo=0, hi=3)
    frame_ms: int = setting(_SEGMENTER.frame_ms, "VAD frame length in ms: 10, 20 or 30",
                            choices=("10", "20", "30"))
    start_ms: int = setting(_SEGMENTER.start_ms, "voiced audio (within a short window) needed to open an "
                            "utterance, in ms", lo=10, hi=2000)
    preroll_ms: int = setting(_SEGMENTER.preroll_ms, "audio kept before the detected start so first sounds are "
                              "not cut, in ms", lo=0, hi=2000)
    hangover_ms: int = setting(_SEGMENTER.hangover_ms, "silence after speech before the utterance is closed, "
                               "in ms", lo=30, hi=5000)
    long_hangover_ms: int = setting(_SEGMENTER.long_hangover_ms, "silence that closes an utterance once it has "
                                    "long_hangover_after_ms of voice, so a long command survives a hesitation "
                                    "(at or below hangover_ms: off), in ms", lo=30, hi=5000)
    long_hangover_after_ms: int = setting(_SEGMENTER.long_hangover_after_ms, "voice (onset to last voiced frame) "
                                          "after which long_hangover_ms applies; shorter commands close after "
                                          "hangover_ms, in ms", lo=0, hi=60000)
    min_utterance_ms: int = setting(_SEGMENTER.min_utterance_ms, "shorter voiced blips are discarded, in ms",
                                    lo=0, hi=10000)
    max_utterance_ms: int = setting(_SEGMENTER.max_utterance_ms, "longer speech is cut here, classified and "
                                    "flagged truncated, in ms", lo=500, hi=60000)

    def segmenter(self) -> SegmenterSettings:
        """The segmenter's view of this section; it checks the rules between keys (ConfigError naming them)."""
        return SegmenterSettings(frame_ms=self.frame_ms, start_ms=self.start_ms, preroll_ms=self.preroll_ms,
                                 hangover_ms=self.hangover_ms, long_hangover_ms=self.long_hangover_ms,
                                 long_hangover_after_ms=self.long_hangover_after_ms,
                                 min_utterance_ms=self.min_utterance_ms,
                                 max_utterance_ms=self.max_utterance_ms)


@dataclass(frozen=True, slots=True)
class BatcherSettings(_Section):
    """Micro-batching of utterances from all streams into one model call."""

    max_batch: int = setting(16, "a batch runs as soon as this many utterances wait", lo=1, hi=1024)
    # 0 by default: a lone utterance should not wait for company, and under load batches still fill with
    # everything that arrived while the previous batch ran (measured: +24% throughput over max_batch = 1).
    max_wait_ms: float = setting(0.0, "...or when the oldest waiting utterance has waited this long, in ms "
                                 "(0: as soon as the model is free)",
                                 lo=0.0, hi=10000.0)
    queue_size: int = setting(256, "live streams' utterances waiting at most; beyond it the drop policy applies",
                              lo=1, hi=100000)
    drop_policy: str = setting("drop_oldest", "which live utterance a full queue drops (an event says so)",
                               choices=DROP_POLICIES)
    # Four batches of the default max_batch keep the model busy between wake-ups of the paused senders; more only
    # holds more audio in memory. Live utterances are taken first, so this backlog never delays them.
    recorded_high_water: int = setting(64, "recorded (not live) streams' utterances waiting at most before "
                                       "those streams stop being read (TCP backpressure); they are never dropped",
                                       lo=1, hi=100000)


@dataclass(frozen=True, slots=True)
class PublisherSettings(_Section):
    """Where events go."""

    uri: str = setting(DEFAULT_EVENTS_URI, "ZeroMQ PUB endpoint (tcp:// or ipc://)")
    # Several daemons feed one bus (docs/deploy.md): `seq` counts per instance, so subscribers need the name.
    instance_id: str = setting("", "this daemon's name on the event bus, stamped on every event as `instance` "
                               "(seq counts per instance); empty = HOSTNAME:PID, new at every start")
    sndhwm: int = setting(10000, "messages queued per subscriber before a slow one starts losing them",
                          lo=1, hi=10_000_000)
    vad_events: bool = setting(False, "also publish vad.start / vad.end for every stream (a stream whose ingest "
                               "header asks, as intentd-live's does, gets its own either way)")
    blip_events: bool = setting(False, "also publish utterance.discarded for each voiced blip shorter than "
                                "vad.min_utterance_ms (they are always counted, and in stream.end)")
    status_interval_s: float = setting(5.0, "seconds between `status` heartbeats", lo=0.1, hi=3600.0)

    def instance(self) -> str:
        """The instance id this daemon publishes under: instance_id, or HOSTNAME:PID when it is empty."""
        return self.instance_id or default_instance()


@dataclass(frozen=True, slots=True)
class MetricsSettings(_Section):
    """The Prometheus endpoint."""

    listen: str = setting("", "HOST:PORT for Prometheus metrics, e.g. 127.0.0.1:9310; empty = off")


@dataclass(frozen=True, slots=True)
class ServiceSettings(_Section):
    """Lifecycle and health."""

    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR",
                             choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    drain_timeout_s: float = setting(20.0, "on SIGTERM, seconds to classify and publish what was heard",
                                     lo=0.1, hi=600.0)
    # The batcher's idle loop wakes every 0.5 s, so anything near that would call an idle daemon stuck.
    stall_s: float = setting(10.0, "a batch running longer than this counts as stuck: watchdog pings stop",
                             lo=2.0, hi=3600.0)


@dataclass(frozen=True, slots=True)
class SecuritySettings(_Section):
    """Who may send audio and read events (docs/security.md). Files are read at start; a change needs a restart."""

    # Off, a tcp:// source or publisher on any address but loopback refuses to start without authentication.
    allow_unauthenticated: bool = setting(False, "listen on non-loopback addresses (tcp:// and tcp+wyoming:// "
                                          "sources, the publisher) without authentication; false refuses to "
                                          "start instead")
    tokens_file: str = setting("", "ingest tokens: lines `NAME TOKEN` (one per client) or one `TOKEN` (a shared "
                               "secret); every socket stream must carry one; empty = none")
    tls_cert: str = setting("", "certificate chain (PEM) for TLS on tcp:// audio sources; empty = plain TCP")
    tls_key: str = setting("", "private key (PEM) of tls_cert")
    tls_client_ca: str = setting("", "CA (PEM) that client certificates must chain to; set, every TLS client "
                                 "must present one; empty = none asked")
    curve_secret_key: str = setting("", "the publisher's CURVE key pair (the .key_secret file `intentd keys` "
                                    "writes); set, every subscriber must be in curve_clients; empty = no CURVE")
    curve_clients: str = setting("", "folder of allowed subscribers' CURVE public keys (NAME.key files)")


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole configuration: one section per table of config.toml."""

    model: ModelSettings = field(default_factory=ModelSettings)
    sources: SourceSettings = field(default_factory=SourceSettings)
    vad: VadSettings = field(default_factory=VadSettings)
    batcher: BatcherSettings = field(default_factory=BatcherSettings)
    publisher: PublisherSettings = field(default_factory=PublisherSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    # Folder the config file lives in: relative paths in it resolve against this.
    base_dir: Path = field(default=Path("."), metadata={"internal": True})

    def model_path(self) -> Path:
        """The model folder as an absolute path."""
        return self.config_path(self.model.path)

    def config_path(self, value: str) -> Path:
        """A path from the config as an absolute path (relative ones resolve against the config file's folder)."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()


def _convert(key: str, value: Any, hint: Any) -> Any:
    """Check one value's type (the error names the key); its range is checked when its section is made."""
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif hint == tuple[str, ...]:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        if not ok:
            raise ConfigError(f"{key} must be a list of strings, got {value!r}")
        return tuple(value)
    else:  # pragma: no cover - a new field type without a converter is a programming error
        raise TypeError(f"no converter for {key}: {hint}")
    if not ok:
        raise ConfigError(f"{key} must be {expected[hint]}, got {value!r}")
    return value


def _check(key: str, value: Any, meta: dict[str, Any]) -> None:
    """Check one value against its field's range and choices; the error names the key."""
    # TOML has nan and inf; nan compares false with every bound and would slip through the range check.
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ConfigError(f"{key} = {value!r} is out of range {lo}..{hi}")
    if choices is not None and str(value) not in choices:
        raise ConfigError(f"{key} = {value!r} is not one of {', '.join(choices)}")


def _section(cls: type, name: str, table: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table, got {table!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = get_type_hints(cls)
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {name}.{unknown[0]} (known in [{name}]: {', '.join(fields)})")
    values = {k: _convert(f"{name}.{k}", v, hints[k]) for k, v in table.items()}
    return cls(**values)


def _sections() -> dict[str, type]:
    hints = get_type_hints(Settings)
    return {f.name: hints[f.name] for f in dataclasses.fields(Settings) if not f.metadata.get("internal")}


@functools.cache
def _section_names() -> dict[type, str]:
    return {cls: name for name, cls in _sections().items()}


def from_dict(data: dict[str, Any], base_dir: Path = Path(".")) -> Settings:
    """Validate a parsed TOML document into Settings; the first problem raises ConfigError naming its key."""
    sections = _sections()
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}] (known: {', '.join(sections)})")
    parsed = {name: _section(cls, name, data.get(name, {})) for name, cls in sections.items()}
    settings = Settings(**parsed, base_dir=base_dir)
    _check_cross_field(settings)
    return settings


def _check_cross_field(s: Settings) -> None:
    # The segmenter owns the rules between VAD keys (minimum below maximum, hangover at least one frame...):
    # checking them here makes a bad combination exit 78 before the model loads.
    s.vad.segmenter()
    if not s.sources.listen:
        raise ConfigError("sources.listen is empty: give at least one audio source URI")
    # A mistyped URI is a configuration error (exit 78, no restart), not an unavailable device (69): parse
    # them here, before the model loads, rather than when the sources start.
    from intentd.daemon.sources.uri import parse_source_uri  # stdlib only

    for uri in s.sources.listen:
        try:
            parse_source_uri(uri)
        except SourceError as err:
            raise ConfigError(f"sources.listen: {err}") from err
    _check_security(s)


def _check_security(s: Settings) -> None:
    """Keys that go in pairs, then the bind policy: no unauthenticated listener beyond loopback unless allowed."""
    sec = s.security
    for a, b in (("tls_cert", "tls_key"), ("tls_key", "tls_cert"), ("tls_client_ca", "tls_cert"),
                 ("curve_secret_key", "curve_clients"), ("curve_clients", "curve_secret_key")):
        if getattr(sec, a) and not getattr(sec, b):
            raise ConfigError(f"security.{a} is set but security.{b} is not")
    if sec.allow_unauthenticated:
        return
    from intentd.daemon.sources.uri import (  # stdlib only
        TcpSpec,
        WyomingSpec,
        is_loopback_host,
        parse_source_uri,
    )

    hint = "(or set security.allow_unauthenticated = true to accept anyone who can reach it)"
    for uri in s.sources.listen:
        spec = parse_source_uri(uri)
        # Wyoming clients (Home Assistant) send neither tokens nor client certificates: no setting guards it.
        if isinstance(spec, WyomingSpec) and not is_loopback_host(spec.host):
            raise ConfigError(f"sources.listen {uri!r} is not a loopback address and the Wyoming protocol has no "
                              f"authentication (tokens and TLS do not apply to it): keep it on loopback {hint}")
    if not (sec.tokens_file or sec.tls_client_ca):
        for uri in s.sources.listen:
            spec = parse_source_uri(uri)
            if isinstance(spec, TcpSpec) and not is_loopback_host(spec.host):
                raise ConfigError(f"sources.listen {uri!r} is not a loopback address and audio ingest has no "
                                  f"authentication: set security.tokens_file or security.tls_client_ca {hint}")
    uri = s.publisher.uri
    if uri.startswith("tcp://") and not sec.curve_secret_key:
        host = uri[len("tcp://"):].rpartition(":")[0]
        if not is_loopback_host(host):
            raise ConfigError(f"publisher.uri {uri!r} is not a loopback address and the event bus has no "
                              f"authentication: set security.curve_secret_key and security.curve_clients {hint}")


def load(path: str | Path | None) -> Settings:
    """Load settings from a TOML file; None gives the built-in defaults."""
    if path is None:
        return from_dict({}, Path.cwd())
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"config file {path} does not exist") from err
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
    try:
        return from_dict(data, path.resolve().parent)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def replace(settings: Settings, **overrides: Any) -> Settings:
    """Apply CLI overrides given as 'section.key' -> value (already typed)."""
    sections: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        sections.setdefault(section, {})[key] = value
    changed = {name: dataclasses.replace(getattr(settings, name), **kv) for name, kv in sections.items()}
    updated = dataclasses.replace(settings, **changed)
    # Overrides (CLI flags) get the same cross-field checks as the file, e.g. --listen URIs are parsed.
    _check_cross_field(updated)
    return updated


def documented_fields() -> list[tuple[str, str, Any, dict[str, Any]]]:
    """(section, key, default, metadata) for every setting, in declaration order (for docs and tests)."""
    out = []
    for name, cls in _sections().items():
        defaults = cls()
        for f in dataclasses.fields(cls):
            out.append((name, f.name, getattr(defaults, f.name), dict(f.metadata)))
    return out


# Every default, for stages made without a section of their own (tests, tools): never restate one elsewhere.
DEFAULTS: Final = Settings()
