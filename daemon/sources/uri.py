"""Source URIs -> typed specs: tcp://HOST:PORT, unix:///PATH, file://PATH?realtime=1, mic://NAME_OR_INDEX,
tcp+wyoming://HOST:PORT?language=en (or wyoming://: a Wyoming speech-to-text endpoint)."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, unquote, urlsplit

from intentd.daemon.errors import SourceError

DEFAULT_TCP_HOST: Final = "127.0.0.1"
ACCEPTED_SCHEMES: Final = ("tcp://HOST:PORT", "unix:///PATH.sock", "file://PATH?realtime=1", "mic://NAME_OR_INDEX",
                            "tcp+wyoming://HOST:PORT?language=en")
WYOMING_SCHEMES: Final = ("tcp+wyoming", "wyoming")
# The languages a Wyoming listener offers unless its URI names others: Home Assistant offers a speech-to-text
# service only to assistants whose language it lists.
DEFAULT_WYOMING_LANGUAGES: Final = ("en",)
_LANGUAGE: Final = re.compile(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*")
_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off")


@dataclass(frozen=True, slots=True)
class TcpSpec:
    """Listen (daemon) or connect (client) on a TCP address."""

    host: str
    port: int

    def uri(self) -> str:
        """The spec as a URI."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UnixSpec:
    """Listen or connect on a Unix stream socket."""

    path: Path

    def uri(self) -> str:
        """The spec as a URI."""
        return f"unix://{self.path}"


@dataclass(frozen=True, slots=True)
class FileSpec:
    """Replay an audio file, at real-time pace if `realtime`."""

    path: Path
    realtime: bool = False

    def uri(self) -> str:
        """The spec as a URI."""
        return f"file://{self.path}" + ("?realtime=1" if self.realtime else "")


@dataclass(frozen=True, slots=True)
class MicSpec:
    """A microphone by index, by name substring, or the system default (device None)."""

    device: int | str | None

    def uri(self) -> str:
        """The spec as a URI."""
        return f"mic://{'' if self.device is None else self.device}"


@dataclass(frozen=True, slots=True)
class WyomingSpec:
    """Serve the Wyoming protocol (speech to text) on a TCP address, offering `languages` (BCP 47 codes)."""

    host: str
    port: int
    languages: tuple[str, ...] = DEFAULT_WYOMING_LANGUAGES

    def uri(self) -> str:
        """The spec as a URI."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = "" if self.languages == DEFAULT_WYOMING_LANGUAGES else f"?language={','.join(self.languages)}"
        return f"tcp+wyoming://{host}:{self.port}{query}"


SourceSpec = TcpSpec | UnixSpec | FileSpec | MicSpec | WyomingSpec


def resolve_paths(spec: SourceSpec, base_dir: Path) -> SourceSpec:
    """The spec with a relative file:// or unix:// path resolved against `base_dir`: the config file's folder for
    the URIs it lists (under systemd the working folder is /), the working folder for --listen flags."""
    if isinstance(spec, FileSpec | UnixSpec) and not spec.path.is_absolute():
        return dataclasses.replace(spec, path=base_dir / spec.path)
    return spec


def is_loopback_host(host: str) -> bool:
    """Whether a listen address is this machine only: localhost, 127.0.0.0/8 or ::1 (names and * are not)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a wildcard, an interface or a name that may resolve anywhere


def _bad(uri: str, why: str) -> SourceError:
    return SourceError(f"bad source URI {uri!r}: {why} (accepted: {', '.join(ACCEPTED_SCHEMES)})")


def parse_source_uri(uri: str) -> SourceSpec:
    """Parse a source URI; SourceError names the URI and lists the accepted schemes."""
    if "://" not in uri:
        raise _bad(uri, "no scheme")
    scheme, _, rest = uri.partition("://")
    scheme = scheme.lower()
    if scheme == "tcp":
        try:
            parts = urlsplit(uri)
            port = parts.port
        except ValueError as err:
            raise _bad(uri, str(err)) from err
        if parts.path not in ("", "/") or parts.query:
            raise _bad(uri, "tcp takes only HOST:PORT")
        if port is None:
            raise _bad(uri, "missing port")
        return TcpSpec(parts.hostname or DEFAULT_TCP_HOST, port)
    if scheme in WYOMING_SCHEMES:
        return _parse_wyoming(uri)
    if scheme == "unix":
        path = unquote(rest)
        if not path or "?" in path:
            raise _bad(uri, "unix needs a socket path and takes no options")
        return UnixSpec(Path(path))
    if scheme == "file":
        path_part, _, query = rest.partition("?")
        if not path_part:
            raise _bad(uri, "missing file path")
        options = parse_qs(query, keep_blank_values=True, strict_parsing=False)
        unknown = set(options) - {"realtime"}
        if unknown:
            raise _bad(uri, f"unknown option(s) {sorted(unknown)}")
        realtime = False
        if "realtime" in options:
            value = options["realtime"][-1].lower()
            if value in _TRUE or value == "":
                realtime = True
            elif value not in _FALSE:
                raise _bad(uri, f"realtime={value!r} is not a boolean")
        return FileSpec(Path(unquote(path_part)), realtime)
    if scheme == "mic":
        name = unquote(rest).strip()
        if "?" in name or "/" in name:
            raise _bad(uri, "mic takes a device name or index only")
        if not name or name == "default":
            return MicSpec(None)
        return MicSpec(int(name) if name.isdigit() else name)
    raise _bad(uri, f"unknown scheme {scheme!r}")


def _parse_wyoming(uri: str) -> WyomingSpec:
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as err:
        raise _bad(uri, str(err)) from err
    if parts.path not in ("", "/"):
        raise _bad(uri, "wyoming takes HOST:PORT and ?language=... only")
    if port is None:
        raise _bad(uri, "missing port (Wyoming speech-to-text services usually listen on 10300)")
    options = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = set(options) - {"language"}
    if unknown:
        raise _bad(uri, f"unknown option(s) {sorted(unknown)}")
    languages: tuple[str, ...] = DEFAULT_WYOMING_LANGUAGES
    if "language" in options:
        languages = tuple(code.strip() for value in options["language"] for code in value.split(",") if code.strip())
        wrong = [code for code in languages if not _LANGUAGE.fullmatch(code)]
        if wrong or not languages:
            raise _bad(uri, f"language={','.join(wrong) or '(empty)'} is not a list of language codes such as en,de")
    return WyomingSpec(parts.hostname or DEFAULT_TCP_HOST, port, languages)
