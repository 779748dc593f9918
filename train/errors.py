"""The one exception intentd-train turns into a single `error: ...` line."""

from __future__ import annotations


class TrainError(Exception):
    """A user-facing failure: bad input, missing file, unreachable hub. The message names what is at fault."""
