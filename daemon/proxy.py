"""`intentd-proxy`: one event bus for apps in front of several daemons, on libzmq's own XSUB/XPUB proxy.

The XSUB socket connects to every daemon's publisher (their `publisher.uri`), the XPUB socket binds where apps
subscribe; libzmq forwards events down and subscriptions up, so an app's topic prefixes still filter at each
daemon. Events pass unchanged: each keeps its daemon's `instance` and per-instance `seq`, so the subscriber library
still counts gaps per daemon (a gap can now also be the proxy's queue overflowing, `--hwm`).

A `tcp://NAME:PORT` upstream is connected at every address NAME resolves to (a Kubernetes headless Service names
one address per ready pod), and with `--resolve-every S` resolved again: new addresses are connected, gone ones
disconnected (docs/deploy.md).

CURVE (docs/security.md) is per hop: toward the daemons the proxy is one more subscriber (its key pair in each
daemon's `security.curve_clients`, the daemons' public key as server key); toward apps it is the CURVE server,
with its own key pair and allow-list folder, checked exactly as the daemon checks its own. The proxy decrypts and
re-encrypts: whoever runs it can read every event.

No torch: only pyzmq and the daemon's light modules (security, events, the URI parser).
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import zmq

from intentd.daemon.errors import ConfigError, IntentdError, UnavailableError
from intentd.daemon.security import CurveAllowList, CurveServer, load_curve_server
from intentd.daemon.sources.uri import is_loopback_host
from intentd.daemon.version import version_text

log = logging.getLogger(__name__)

# Where apps subscribe by default: the daemon's default port + 1, so a proxy fits beside a daemon on one host.
DEFAULT_BIND: Final = "tcp://127.0.0.1:5557"
# Messages queued per direction and peer before the proxy drops (as a daemon's publisher.sndhwm does).
DEFAULT_HWM: Final = 100_000
RECONNECT_IVL_MS: Final = 100
RECONNECT_IVL_MAX_MS: Final = 5000
EXIT_OK: Final = 0
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 69  # EX_UNAVAILABLE, as the daemon: the bind failed
EXIT_CONFIG: Final = 78  # EX_CONFIG, as the daemon: a key file or the bind policy


class ProxyError(UnavailableError):
    """The proxy cannot bind or connect where it was told; the message names the URI."""


def resolve(uri: str) -> set[str]:
    """Every endpoint a `tcp://NAME:PORT` upstream stands for (one per address NAME resolves to); other URIs, and
    names that do not resolve now, as they are (ZeroMQ keeps retrying them)."""
    if not uri.startswith("tcp://"):
        return {uri}
    host, sep, port = uri[len("tcp://"):].rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--upstream {uri!r}: expected tcp://HOST:PORT or ipc:///PATH")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except OSError as err:
        log.warning("cannot resolve %s now (%s): connecting to the name, ZeroMQ retries", uri, err)
        return {uri}
    found = set()
    for family, _type, _proto, _name, address in infos:
        ip = address[0]
        found.add(f"tcp://[{ip}]:{port}" if family == socket.AF_INET6 else f"tcp://{ip}:{port}")
    return found


class EventProxy:
    """An XSUB socket connected to the daemons' publishers, an XPUB socket bound for apps, and libzmq's proxy
    between them (`run`, on one thread; `stop` and the resolver from any other)."""

    def __init__(self, upstreams: Sequence[str], bind: str = DEFAULT_BIND, *, hwm: int = DEFAULT_HWM,
                 resolve_every_s: float = 0.0, upstream_curve: tuple[bytes, bytes, bytes] | None = None,
                 frontend_curve: CurveServer | None = None, context: zmq.Context[Any] | None = None,
                 resolver: Callable[[str], set[str]] = resolve) -> None:
        if not upstreams:
            raise ConfigError("give at least one --upstream (a daemon's publisher.uri)")
        self.upstreams = tuple(upstreams)
        self.resolve_every_s = resolve_every_s
        self._resolve = resolver
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._xsub = self._context.socket(zmq.XSUB)
        self._xpub = self._context.socket(zmq.XPUB)
        for sock in (self._xsub, self._xpub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.setsockopt(zmq.RCVHWM, hwm)
        self._xsub.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        self._xsub.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        if upstream_curve is not None:
            public, secret, server = upstream_curve
            self._xsub.curve_publickey, self._xsub.curve_secretkey, self._xsub.curve_serverkey = public, secret, server
        # Control: TERMINATE ends one proxy run (to stop, or to change upstreams between runs).
        control_uri = f"inproc://intentd-proxy-control-{id(self)}"
        self._control = self._context.socket(zmq.PAIR)
        self._control.bind(control_uri)
        self._controller = self._context.socket(zmq.PAIR)
        self._controller.connect(control_uri)
        self._control_lock = threading.Lock()
        self._authenticator: Any = None
        self._resolver: threading.Thread | None = None
        if frontend_curve is not None:
            from zmq.auth.thread import ThreadAuthenticator

            self._authenticator = ThreadAuthenticator(self._context, log=logging.getLogger(f"{__name__}.zap"))
            self._authenticator.start()
            self._authenticator.configure_curve_callback("*", CurveAllowList(frontend_curve.allowed))
            self._xpub.curve_secretkey = frontend_curve.secret_key
            self._xpub.curve_publickey = frontend_curve.public_key
            self._xpub.curve_server = True
        try:
            self._xpub.bind(bind)
        except zmq.ZMQError as err:
            self.close()
            raise ProxyError(f"cannot bind the proxy's subscriber side to {bind}: {err.strerror}") from err
        self.endpoint: str = self._xpub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._connected: set[str] = set()
        self._pending: set[str] | None = None  # the resolver's newer address set, applied between runs
        self._stopping = threading.Event()
        try:
            self._change(self._resolved())
        except IntentdError:
            self.close()
            raise

    def _resolved(self) -> set[str]:
        return set().union(*(self._resolve(u) for u in self.upstreams))

    @property
    def connected(self) -> frozenset[str]:
        """The daemon endpoints the XSUB socket is connected to now."""
        return frozenset(self._connected)

    def _change(self, wanted: set[str]) -> None:
        """Connect to new endpoints and disconnect gone ones (on the proxy's thread, between runs)."""
        for uri in sorted(wanted - self._connected):
            try:
                self._xsub.connect(uri)
            except zmq.ZMQError as err:
                raise ProxyError(f"cannot connect the proxy to {uri}: {err.strerror}") from err
            log.info("proxy: connected to daemon %s", uri)
        for uri in sorted(self._connected - wanted):
            self._xsub.disconnect(uri)
            log.info("proxy: daemon %s is gone from DNS: disconnected", uri)
        self._connected = set(wanted)

    def run(self) -> None:
        """Forward until `stop()`: libzmq's proxy, restarted after each change of upstream addresses."""
        if self.resolve_every_s > 0 and self._resolver is None:
            self._resolver = threading.Thread(target=self._resolve_loop, name="intentd-proxy-dns", daemon=True)
            self._resolver.start()
        log.info("proxying events of %s to %s", ", ".join(sorted(self._connected)), self.endpoint)
        while not self._stopping.is_set():
            zmq.proxy_steerable(self._xpub, self._xsub, None, self._control)
            with self._control_lock:
                pending, self._pending = self._pending, None
            if pending is not None and not self._stopping.is_set():
                self._change(pending)

    def _resolve_loop(self) -> None:
        while not self._stopping.wait(self.resolve_every_s):
            wanted = self._resolved()
            if wanted != self._connected:
                with self._control_lock:
                    self._pending = wanted
                    self._controller.send(b"TERMINATE")

    def stop(self) -> None:
        """End `run` (from any thread); close() afterwards."""
        with self._control_lock:
            if not self._stopping.is_set():
                self._stopping.set()
                self._controller.send(b"TERMINATE")

    def close(self) -> None:
        """Close every socket (after `run` has returned)."""
        if self._resolver is not None:
            self._resolver.join()
        for sock in (self._xsub, self._xpub, self._control, self._controller):
            sock.close(linger=0)
        if self._authenticator is not None:
            self._authenticator.stop()
        if self._own_context:
            self._context.term()


def _upstream_keys(key_file: str | None, server_key_file: str | None) -> tuple[bytes, bytes, bytes] | None:
    if key_file is None and server_key_file is None:
        return None
    if key_file is None or server_key_file is None:
        raise ConfigError("--upstream-curve-key and --upstream-curve-server-key go together")
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(key_file)
        server, _ = zmq.auth.load_certificate(server_key_file)
    except (OSError, ValueError) as err:
        raise ConfigError(f"upstream CURVE keys: {err}") from err
    if not secret:
        raise ConfigError(f"--upstream-curve-key {key_file}: holds no secret key (give the .key_secret file)")
    return public, secret, server


def build_parser() -> argparse.ArgumentParser:
    """The intentd-proxy command line."""
    p = argparse.ArgumentParser(prog="intentd-proxy", description="One event bus in front of several intentd "
                                "daemons: a ZeroMQ XSUB/XPUB proxy. Apps connect to --bind as to one daemon.")
    p.add_argument("--version", action="version", version=version_text("intentd-proxy"))
    p.add_argument("--upstream", metavar="URI", action="append", required=True,
                   help="a daemon's publisher.uri, repeatable; a name is connected at each of its addresses")
    p.add_argument("--bind", metavar="URI", default=DEFAULT_BIND, help=f"where apps subscribe (default {DEFAULT_BIND})")
    p.add_argument("--resolve-every", type=float, default=0.0, metavar="S",
                   help="resolve upstream names again every S seconds (a headless Service); 0 = only at start")
    p.add_argument("--hwm", type=int, default=DEFAULT_HWM, metavar="N",
                   help=f"messages queued per peer before the proxy drops (default {DEFAULT_HWM})")
    g = p.add_argument_group("CURVE (docs/security.md)")
    g.add_argument("--upstream-curve-key", metavar="FILE", help="the proxy's .key_secret, allowed by the daemons")
    g.add_argument("--upstream-curve-server-key", metavar="FILE", help="the daemons' public .key")
    g.add_argument("--curve-secret-key", metavar="FILE", help="the proxy's own key pair toward apps (.key_secret)")
    g.add_argument("--curve-clients", metavar="DIR", help="folder of allowed apps' public keys (NAME.key)")
    g.add_argument("--allow-unauthenticated", action="store_true",
                   help="bind a non-loopback address without --curve-secret-key (refused otherwise)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def _frontend_curve(args: argparse.Namespace) -> CurveServer | None:
    if bool(args.curve_secret_key) != bool(args.curve_clients):
        raise ConfigError("--curve-secret-key and --curve-clients go together")
    if args.curve_secret_key:
        return load_curve_server(Path(args.curve_secret_key), Path(args.curve_clients))
    if args.bind.startswith("tcp://") and not args.allow_unauthenticated:
        host = args.bind[len("tcp://"):].rpartition(":")[0]
        if not is_loopback_host(host):
            raise ConfigError(f"--bind {args.bind!r} is not a loopback address and has no authentication: give "
                              "--curve-secret-key and --curve-clients (or --allow-unauthenticated)")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the proxy until SIGTERM or Ctrl-C."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    if args.hwm < 1 or args.resolve_every < 0:
        print("error: --hwm must be at least 1 and --resolve-every at least 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        upstream_curve = _upstream_keys(args.upstream_curve_key, args.upstream_curve_server_key)
        frontend_curve = _frontend_curve(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    # Stop signals are taken by sigwait below, so every thread must block them: libzmq's I/O threads and the
    # ZAP handler start with the proxy and inherit this mask.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        proxy = EventProxy(args.upstream, args.bind, hwm=args.hwm, resolve_every_s=args.resolve_every,
                           upstream_curve=upstream_curve, frontend_curve=frontend_curve)
    except IntentdError as err:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(err, ConfigError) else EXIT_UNAVAILABLE
    # The proxy runs on its own thread; this one only waits for a stop signal.
    worker = threading.Thread(target=proxy.run, name="intentd-proxy")
    worker.start()
    received = signal.sigwait(stop_signals)
    log.info("%s: stopping", signal.Signals(received).name)
    proxy.stop()
    worker.join()
    proxy.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

