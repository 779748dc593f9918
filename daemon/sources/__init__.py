"""Audio sources: socket ingest, Wyoming, file replay and microphone, each feeding a StreamSink.

Every source has the same lifecycle: `await start()` (returns the URI it serves), `stop_accepting()` (no new
audio; on SIGTERM), `await close(reason)` (end open streams; the sink still closes each one).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from intentd.daemon.command_texts import CommandTexts
from intentd.daemon.counters import Counters
from intentd.daemon.errors import SourceError
from intentd.daemon.security import IngestSecurity
from intentd.daemon.settings import DEFAULTS, SourceSettings
from intentd.daemon.sources.sink import StreamSink
from intentd.daemon.sources.uri import (
    FileSpec,
    MicSpec,
    TcpSpec,
    UnixSpec,
    WyomingSpec,
    parse_source_uri,
    resolve_paths,
)
from intentd.daemon.stream_watch import StreamWatchers


class Source(Protocol):
    """What the service needs from every audio source."""

    async def start(self) -> str:
        """Begin; return the URI actually served (a tcp port 0 becomes the real port)."""
        ...

    def stop_accepting(self) -> None:
        """Take no new audio; streams already open may finish (sockets) or end now (files, microphones)."""
        ...

    async def close(self, reason: str = ...) -> None:
        """End every open stream with `reason` and wait until the sink has closed them."""
        ...


def check_source(uri: str, base_dir: Path | None = None, *, ports: bool = False) -> None:
    """What can be known of a source without serving it (SourceError otherwise): its URI parses, a file://
    source's file holds audio and, with `ports`, a fixed TCP port is free now. The service calls it before the
    model loads, so such errors cost no load (--check leaves ports alone: the running daemon holds them)."""
    spec = parse_source_uri(uri)
    if base_dir is not None:
        spec = resolve_paths(spec, base_dir)
    if isinstance(spec, FileSpec):
        from intentd.daemon.sources.file_replay import probe_file

        probe_file(Path(spec.path))
    elif ports and isinstance(spec, TcpSpec | WyomingSpec) and spec.port:
        _check_port_free(spec.host, spec.port, spec.uri())


def _check_port_free(host: str, port: int, uri: str) -> None:
    """Bind and release the address as the server will (SO_REUSEADDR), so a port another program holds fails
    before the model loads. A check, not a reservation: the server's own bind still reports a later loss."""
    import socket

    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as err:
        raise SourceError(f"cannot listen on {uri}: {err}") from err
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as err:
                raise SourceError(f"cannot listen on {uri}: {err.strerror or err}") from err


def create_source(uri: str, sink: StreamSink, settings: SourceSettings = DEFAULTS.sources, *,
                  security: IngestSecurity | None = None, counters: Counters | None = None,
                  watchers: StreamWatchers | None = None,
                  texts: Callable[[], CommandTexts] | None = None, base_dir: Path | None = None) -> Source:
    """Build the source a URI names (SourceError for a bad URI); heavy optional imports happen only here.

    `security` (tokens, TLS) and `counters` (refused clients) concern socket sources only: microphones and
    files are local. A Wyoming endpoint answers its clients, so it needs `watchers` (where its streams'
    outcomes come back) and `texts` (the loaded model's labels and sentences). Relative file:// and unix://
    paths resolve against `base_dir` (Settings.base_dir: the config file's folder), else the working folder.
    """
    spec = parse_source_uri(uri)
    if base_dir is not None:
        spec = resolve_paths(spec, base_dir)
    if isinstance(spec, WyomingSpec):
        if watchers is None or texts is None:
            raise SourceError(f"{uri}: a Wyoming endpoint needs the daemon's stream watchers and model texts")
        from intentd.daemon.sources.wyoming_server import WyomingServer

        return WyomingServer(spec, sink, watchers, texts, idle_timeout_s=settings.idle_timeout_s,
                             max_streams=settings.max_streams, counters=counters)
    if isinstance(spec, TcpSpec | UnixSpec):
        from intentd.daemon.sources.socket_server import SocketServer

        return SocketServer(spec, sink, idle_timeout_s=settings.idle_timeout_s, max_streams=settings.max_streams,
                            security=security, counters=counters)
    if isinstance(spec, FileSpec):
        from intentd.daemon.sources.file_replay import FileReplaySource

        return FileReplaySource(spec.path, sink, chunk_ms=settings.chunk_ms, realtime=spec.realtime)
    assert isinstance(spec, MicSpec)
    from intentd.daemon.sources.microphone import MicrophoneSource

    return MicrophoneSource(spec.device, sink, chunk_ms=settings.chunk_ms)
