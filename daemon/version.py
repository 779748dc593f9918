"""The installed intentd version, for every command's --version (stdlib only: the clients import it too)."""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "intentd"


def version() -> str:
    """The installed distribution's version, or 'unknown' when run from a tree that was never installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def version_text(prog: str) -> str:
    """What `PROG --version` prints: the program and the intentd version it belongs to."""
    return f"{prog} (intentd) {version()}"
