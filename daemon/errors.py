"""The daemon's exception hierarchy; messages name the key, file or stream at fault."""

from __future__ import annotations


class IntentdError(Exception):
    """Base class for every error the daemon reports as one clear line."""


class ConfigError(IntentdError):
    """A configuration file, key or value is invalid; the message names the key."""


class ModelError(IntentdError):
    """A model folder is missing, incomplete or cannot be loaded."""


class ProtocolError(IntentdError):
    """A client sent bytes that break the audio ingest protocol; the connection is closed with this reason."""


class AudioError(IntentdError):
    """Audio that cannot be used: wrong rate, format or frame size, NaN/inf samples, unreadable file."""


class UnavailableError(IntentdError):
    """A resource the daemon needs is busy or absent right now (a port in use, a device gone): a restart may help."""


class SourceError(UnavailableError):
    """An audio source (microphone, socket, file) failed or has a bad URI."""


class AuthError(IntentdError):
    """A client was refused for its credentials (no token, a wrong one, a failed TLS handshake).

    `kind` is the refusal's counter label (daemon.security.REFUSED_*); the message never holds a secret.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind
