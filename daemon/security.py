"""Who may send audio and who may read events: ingest tokens, TLS for tcp:// ingest, CURVE keys for the event bus.

Everything is read once at start from the files that config.toml's `[security]` section names (docs/security.md);
a missing or malformed file is a ConfigError naming the key and the file, never quoting a secret. Tokens are
compared in constant time, as SHA-256 digests, so neither a token's content nor its length leaks through timing.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import ssl
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from intentd.daemon.errors import ConfigError

if TYPE_CHECKING:
    from intentd.daemon.settings import Settings

log = logging.getLogger(__name__)

# A token shorter than this is guessable; `openssl rand -hex 32` makes 64 characters.
MIN_TOKEN_CHARS: Final = 16
# The client name a tokens file line without a name (a shared secret) gets in logs.
SHARED_CLIENT: Final = "shared"
_CLIENT_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}")
_TOKEN: Final = re.compile(r"[!-~]+")  # printable ASCII without spaces, as the protocol accepts
# What `intentd keys` writes: zmq.auth's file names for a key pair.
PUBLIC_KEY_SUFFIX: Final = ".key"
SECRET_KEY_SUFFIX: Final = ".key_secret"
SECRET_FILE_MODE: Final = 0o600
PUBLIC_FILE_MODE: Final = 0o644
KEY_FOLDER_MODE: Final = 0o700
# Refusal reasons, as counted (Counters.refused) and exported (intentd_refused_total{reason}).
REFUSED_TOKEN: Final = "token"
REFUSED_TLS: Final = "tls"
REFUSED_CURVE: Final = "curve"
REFUSED_MAX_STREAMS: Final = "max_streams"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class IngestTokens:
    """The clients allowed to stream audio, by name; `check` says which one a token belongs to."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        if not tokens:
            raise ConfigError("security.tokens_file: no tokens")
        self._digests = [(name, _digest(token)) for name, token in tokens.items()]

    @property
    def names(self) -> list[str]:
        """The client names, in file order."""
        return [name for name, _ in self._digests]

    def check(self, token: str | None) -> str | None:
        """The name of the client `token` belongs to, or None; compares against every entry, in constant time."""
        given = _digest(token if token is not None else "")
        found = None
        for name, digest in self._digests:
            # No early exit: the time taken says nothing about which entry matched, or how far it matched.
            if hmac.compare_digest(given, digest) and token is not None:
                found = name
        return found


def parse_tokens(text: str, source: str) -> IngestTokens:
    """Tokens from a tokens file's text: `NAME TOKEN` lines, or one `TOKEN` line (a shared secret).

    Blank lines and lines starting with # are skipped. Errors name `source` and the line, never the token.
    """
    tokens: dict[str, str] = {}
    seen: set[bytes] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        where = f"security.tokens_file {source} line {number}"
        if len(fields) == 1:
            name, token = SHARED_CLIENT, fields[0]
        elif len(fields) == 2:
            name, token = fields
            if not _CLIENT_NAME.fullmatch(name):
                raise ConfigError(f"{where}: client name {name!r} must be 1-64 letters, digits or . _ @ : -")
        else:
            raise ConfigError(f"{where}: expected `NAME TOKEN` or a lone `TOKEN`, got {len(fields)} fields")
        if len(token) < MIN_TOKEN_CHARS or not _TOKEN.fullmatch(token):
            raise ConfigError(f"{where}: the token must be at least {MIN_TOKEN_CHARS} printable characters "
                              "without spaces (e.g. from `openssl rand -hex 32`)")
        if name in tokens:
            raise ConfigError(f"{where}: client {name!r} is named twice")
        if _digest(token) in seen:
            raise ConfigError(f"{where}: the same token is given to two clients, which logs could not tell apart")
        seen.add(_digest(token))
        tokens[name] = token
    if not tokens:
        raise ConfigError(f"security.tokens_file {source}: no tokens in it")
    return IngestTokens(tokens)


def _warn_if_world_readable(key: str, path: Path) -> None:
    with contextlib.suppress(OSError):
        if stat.S_IMODE(path.stat().st_mode) & 0o004:
            log.warning("%s %s can be read by every local user: chmod 600 it", key, path)


def _read_secret_file(key: str, path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{key} {path}: cannot be read: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{key} {path}: not UTF-8 text") from err
    _warn_if_world_readable(key, path)
    return text


def load_tokens(path: Path) -> IngestTokens:
    """Read and parse a tokens file (ConfigError naming security.tokens_file and the file)."""
    return parse_tokens(_read_secret_file("security.tokens_file", path), str(path))


def server_tls_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 or newer) from PEM files; with `client_ca`, clients must show a certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _warn_if_world_readable("security.tls_key", key)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"security.tls_cert {cert} / security.tls_key {key}: cannot be loaded: "
                          f"{getattr(err, 'strerror', None) or err}") from err
    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"security.tls_client_ca {client_ca}: cannot be loaded: "
                              f"{getattr(err, 'strerror', None) or err}") from err
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_name_from_certificate(peercert: object) -> str | None:
    """The commonName of a verified client certificate (as ssl's getpeercert() gives it), if any."""
    if not isinstance(peercert, dict):
        return None
    for rdn in peercert.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName":
                return str(value)
    return None


@dataclass(frozen=True, slots=True)
class IngestSecurity:
    """What socket sources check: tokens in the stream header, TLS on tcp:// (client certificates optional)."""

    tokens: IngestTokens | None = None
    tls: ssl.SSLContext | None = None

    @property
    def requires_client_certificate(self) -> bool:
        """Whether TLS clients must present a certificate signed by security.tls_client_ca."""
        return self.tls is not None and self.tls.verify_mode == ssl.CERT_REQUIRED

    @property
    def authenticates(self) -> bool:
        """Whether a client must prove who it is (a token, or a client certificate on tcp://)."""
        return self.tokens is not None or self.requires_client_certificate


class CurveAllowList:
    """The subscribers allowed on the event bus: CURVE public keys by name, checked by the ZAP handler.

    pyzmq's authenticator calls `callback(domain, key)` (key in Z85) on its own thread for every handshake; a
    refused key is counted every time and logged the first time it is seen (ZeroMQ retries every few seconds).
    """

    MAX_REMEMBERED: Final = 1024

    def __init__(self, allowed: Mapping[bytes, str], on_refused: Callable[[], None] | None = None) -> None:
        self.allowed = dict(allowed)
        self._on_refused = on_refused
        self._refused_once: set[bytes] = set()
        self._allowed_once: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: is this Z85 public key on the allow-list?"""
        name = self.allowed.get(key)
        if name is None:
            if self._on_refused is not None:
                self._on_refused()
            if key not in self._refused_once and len(self._refused_once) < self.MAX_REMEMBERED:
                self._refused_once.add(key)
                log.warning("event subscriber refused: its CURVE public key %s is not in security.curve_clients",
                            key.decode("ascii", "replace"))
            return False
        if key not in self._allowed_once:
            self._allowed_once.add(key)
            log.info("event subscriber %r connected (CURVE)", name)
        return True


@dataclass(frozen=True, slots=True)
class CurveServer:
    """The publisher's CURVE key pair (Z85) and its allow-list of subscriber public keys (Z85 -> name)."""

    public_key: bytes
    secret_key: bytes
    allowed: Mapping[bytes, str]


def load_curve_server(secret_file: Path, clients_dir: Path) -> CurveServer:
    """The publisher's keys from `intentd keys` output and the allowed clients' *.key files (ConfigError)."""
    import zmq
    import zmq.auth

    if not zmq.has("curve"):
        raise ConfigError("security.curve_secret_key: this libzmq was built without CURVE support")
    _read_secret_file("security.curve_secret_key", secret_file)  # readable, and warn when world-readable
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError) as err:
        raise ConfigError(f"security.curve_secret_key {secret_file}: not a key file: {err}") from err
    if not secret:
        raise ConfigError(f"security.curve_secret_key {secret_file}: holds no secret key (give the "
                          f"{SECRET_KEY_SUFFIX} file `intentd keys` wrote)")
    if not clients_dir.is_dir():
        raise ConfigError(f"security.curve_clients {clients_dir}: not a folder")
    allowed: dict[bytes, str] = {}
    for path in sorted(clients_dir.glob(f"*{PUBLIC_KEY_SUFFIX}")):
        try:
            key, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as err:
            raise ConfigError(f"security.curve_clients {path}: not a key file: {err}") from err
        allowed[key] = path.name[: -len(PUBLIC_KEY_SUFFIX)]
    if not allowed:
        log.warning("security.curve_clients %s holds no *%s file: no subscriber can connect", clients_dir,
                    PUBLIC_KEY_SUFFIX)
    return CurveServer(public, secret, allowed)


@dataclass(frozen=True, slots=True)
class Security:
    """Everything the `[security]` section's files hold, loaded."""

    ingest: IngestSecurity
    curve: CurveServer | None


def load(settings: Settings) -> Security:
    """Read every file `[security]` names (ConfigError naming the key and file at fault)."""
    sec = settings.security
    tokens = load_tokens(settings.config_path(sec.tokens_file)) if sec.tokens_file else None
    tls = None
    if sec.tls_cert:
        tls = server_tls_context(settings.config_path(sec.tls_cert), settings.config_path(sec.tls_key),
                                 settings.config_path(sec.tls_client_ca) if sec.tls_client_ca else None)
    curve = None
    if sec.curve_secret_key:
        curve = load_curve_server(settings.config_path(sec.curve_secret_key), settings.config_path(sec.curve_clients))
    return Security(IngestSecurity(tokens, tls), curve)


def create_key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """Write FOLDER/NAME.key (public, 0644) and FOLDER/NAME.key_secret (0600) with zmq.auth; never overwrites.

    The folder is made 0700 when missing. Files are created under umask 077, so the secret is never readable by
    others, not even for an instant.
    """
    import zmq
    import zmq.auth

    if not zmq.has("curve"):
        raise ConfigError("this libzmq was built without CURVE support")
    if not _CLIENT_NAME.fullmatch(name):
        raise ConfigError(f"key name {name!r} must be 1-64 letters, digits or . _ @ : -")
    public, secret = folder / f"{name}{PUBLIC_KEY_SUFFIX}", folder / f"{name}{SECRET_KEY_SUFFIX}"
    for path in (public, secret):
        if path.exists():
            raise ConfigError(f"{path} already exists; remove it first or pick another name")
    old_umask = os.umask(0o077)
    try:
        folder.mkdir(mode=KEY_FOLDER_MODE, parents=True, exist_ok=True)
        made_public, made_secret = zmq.auth.create_certificates(folder, name)
        os.chmod(made_secret, SECRET_FILE_MODE)
        os.chmod(made_public, PUBLIC_FILE_MODE)
    except OSError as err:
        for path in (public, secret):
            with contextlib.suppress(OSError):
                path.unlink()
        raise ConfigError(f"cannot write keys in {folder}: {err.strerror or err}") from err
    finally:
        os.umask(old_umask)
    return public, secret
