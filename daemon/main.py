"""`intentd` entry point: parse flags, load settings, configure logging, run the service, map errors to codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from intentd.daemon import logs
from intentd.daemon import settings as settings_mod
from intentd.daemon.errors import ConfigError, IntentdError, ModelError, SourceError, UnavailableError
from intentd.daemon.version import version_text

log = logging.getLogger("intentd")

# sysexits(3) codes, so systemd's RestartPreventExitStatus= can tell "fix the config" from "try again".
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # bad input to a subcommand (argparse's own code)
EXIT_NO_MODEL = 66  # EX_NOINPUT
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: a socket could not be bound, a device could not be opened
EXIT_CONFIG = 78  # EX_CONFIG
# What the `daemon` extra installs (pyproject.toml): a plain `pip install intentd` is the torch-free clients.
DAEMON_EXTRA_MODULES = ("torch", "transformers", "webrtcvad", "prometheus_client", "onnxruntime")
# The soft open-files limit we raise to when the hard one is unlimited (the kernel's nr_open default is 2^20).
FILE_LIMIT_CAP = 1 << 20


def build_parser() -> argparse.ArgumentParser:
    """Flags for the few things people change per run; everything else lives in config.toml."""
    p = argparse.ArgumentParser(
        prog="intentd",
        description="Listen for audio (sockets, microphones, files), cut it into utterances, recognise each "
        "one's intent and publish the results as ZeroMQ events (watch them with intentd-sub).",
        epilog="other commands: `intentd devices` lists the microphones mic:// can open; `intentd keys NAME` "
        "makes a CURVE key pair. Exit status: 0 ok, 66 no usable model, 69 a port or device is unavailable, "
        "78 bad configuration.")
    p.add_argument("--version", action="version", version=version_text("intentd"))
    p.add_argument("--config", help="TOML configuration (see config.toml); default: built-in defaults")
    p.add_argument("--model", help="model folder (overrides model.path)")
    p.add_argument("--listen", action="append", metavar="URI",
                   help="audio source URI, repeatable (overrides sources.listen)")
    p.add_argument("--publish", metavar="URI", help="ZeroMQ PUB endpoint (overrides publisher.uri)")
    p.add_argument("--metrics", metavar="HOST:PORT", help="Prometheus endpoint (overrides metrics.listen)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (overrides service.log_level)")
    p.add_argument("--check", action="store_true", help="validate the configuration and model, then exit")
    return p


def _from_here(uri: str) -> str:
    """A --listen URI with a relative file:// or unix:// path made absolute against the working folder: flags are
    the user's, typed where they stand (relative paths in the config file resolve against its folder)."""
    from pathlib import Path

    from intentd.daemon.sources.uri import FileSpec, UnixSpec, parse_source_uri, resolve_paths

    try:
        spec = parse_source_uri(uri)
    except SourceError:
        return uri  # the settings' checks report it, as a configuration error
    return resolve_paths(spec, Path.cwd()).uri() if isinstance(spec, FileSpec | UnixSpec) else uri


def _apply_flags(s: settings_mod.Settings, args: argparse.Namespace) -> settings_mod.Settings:
    overrides: dict[str, object] = {}
    if args.model:
        overrides["model.path"] = args.model
    if args.listen:
        overrides["sources.listen"] = tuple(_from_here(uri) for uri in args.listen)
    if args.publish:
        overrides["publisher.uri"] = args.publish
    if args.metrics is not None:
        overrides["metrics.listen"] = args.metrics
    if args.log_level:
        level = args.log_level.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"--log-level {args.log_level!r} is not DEBUG, INFO, WARNING or ERROR")
        overrides["service.log_level"] = level
    updated = settings_mod.replace(s, **overrides) if overrides else s
    # Relative --model paths are the user's, relative to where they typed the command.
    if args.model:
        from pathlib import Path

        updated = settings_mod.replace(updated, **{"model.path": str(Path(args.model).resolve())})
    return updated


def _raise_file_limit() -> None:
    """Raise the soft limit on open files to the hard one: every stream, subscriber and scrape holds a descriptor,
    and the soft default (1024, also under systemd) runs out at a few hundred clients while the hard limit is
    often far higher. Python does not do this for us; systemd/intentd.service sets both with LimitNOFILE."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FILE_LIMIT_CAP if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as err:
            log.warning("open files limit stays %d: cannot raise it to %d: %s", soft, target, err)
            return
        log.info("open files limit raised from %d to %d", soft, target)


def fatal(message: str) -> None:
    """A fatal error as one `error: ...` line on stderr, like every other intentd command (with journald's
    priority prefix under systemd, so `journalctl -p err` finds it)."""
    print(f"{'<3>' if logs.under_systemd() else ''}error: {message}", file=sys.stderr, flush=True)


def _devices(argv: Sequence[str]) -> int:
    """`intentd devices`: list the input devices mic:// can open."""
    p = argparse.ArgumentParser(
        prog="intentd devices",
        description="List the audio input devices (microphones) this machine has: index, name, channels and "
        "default rate. Use one as a source with mic://INDEX or mic://NAME (part of the name is enough).")
    p.parse_args(argv)
    from intentd.daemon.sources.microphone import list_devices

    try:
        devices = list_devices()
    except SourceError as err:
        fatal(str(err))
        return EXIT_UNAVAILABLE
    if not devices:
        print("no input devices found")
    for d in devices:
        print(f"{d.index:3d}  {d.name}  ({d.channels} ch, {d.default_sample_rate:g} Hz)")
    return EXIT_OK


def _keys(argv: Sequence[str]) -> int:
    """`intentd keys`: write a CURVE key pair for the event bus (docs/security.md)."""
    from pathlib import Path

    from intentd.daemon.security import create_key_pair

    p = argparse.ArgumentParser(
        prog="intentd keys",
        description="Make a CURVE key pair for the event bus: NAME.key (public, 0644) and NAME.key_secret "
        "(secret, 0600). The daemon's goes to security.curve_secret_key; a subscriber's public NAME.key goes "
        "into the daemon's security.curve_clients folder.")
    p.add_argument("name", help="key name, e.g. server or the subscriber's name (kitchen, crm...)")
    p.add_argument("--out", default=".", metavar="DIR", help="folder to write to, made 0700 if missing "
                   "(default: the current folder)")
    args = p.parse_args(argv)
    try:
        public, secret = create_key_pair(Path(args.out), args.name)
    except ConfigError as err:
        fatal(str(err))
        return EXIT_USAGE
    print(f"public key: {public}\nsecret key: {secret}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["devices"]:
        return _devices(argv[1:])
    if argv[:1] == ["keys"]:
        return _keys(argv[1:])
    args = build_parser().parse_args(argv)
    import importlib.util

    missing = [name for name in DAEMON_EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        fatal(f"the daemon needs {', '.join(missing)}, which this install lacks (it has the clients only): "
              "pip install 'intentd[daemon]'")
        return EXIT_FAILURE
    try:
        settings = _apply_flags(settings_mod.load(args.config), args)
    except ConfigError as err:
        fatal(f"configuration error: {err}")
        return EXIT_CONFIG
    logs.configure(settings.service.log_level)
    _raise_file_limit()
    # transformers draws "Loading weights" progress bars on stderr: noise in a daemon's log, and lines without
    # a priority prefix under journald. Set before transformers is imported (it reads this once).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # transformers' warnings and load reports are multi-line tables meant for notebooks; the daemon says what
    # matters about a model itself, in one line.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    from intentd.daemon.service import (
        Service,  # heavy imports (torch) only once the config is known to be good
    )

    try:
        # A reload (SIGHUP) re-reads the file and re-applies the same flags.
        service = Service(settings, reload_settings=lambda: _apply_flags(settings_mod.load(args.config), args))
        if args.check:
            service.check()
            log.info("configuration and model OK")
            return EXIT_OK
        return service.run()
    except ConfigError as err:
        fatal(f"configuration error: {err}")
        return EXIT_CONFIG
    except ModelError as err:
        fatal(f"model error: {err}")
        return EXIT_NO_MODEL
    except SourceError as err:
        fatal(f"audio source error: {err}")
        return EXIT_UNAVAILABLE
    except UnavailableError as err:  # a busy event or metrics port: a restart may succeed later
        fatal(str(err))
        return EXIT_UNAVAILABLE
    except IntentdError as err:
        fatal(str(err))
        return EXIT_FAILURE

if __name__ == "__main__":
    sys.exit(main())
