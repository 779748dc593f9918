"""What clients prove to the daemon (docs/security.md): the ingest token, TLS for tcp:// ingest, CURVE keys for
the event bus, and the command-line options that name their files.

A token is read from a file (`--token-file`) or the INTENTD_TOKEN environment variable, never from a command-line
value: every local user can read a process's arguments (`ps`). No torch here; pyzmq only for CURVE keys.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from intentd.daemon.errors import IntentdError

if TYPE_CHECKING:
    from intentd.clients.subscriber import CurveKeys

log = logging.getLogger(__name__)

TOKEN_ENV: Final = "INTENTD_TOKEN"
# Options that would put a secret on the command line; refused before parsing, without echoing the value.
_SECRET_OPTIONS: Final = ("--token",)


class CredentialsError(IntentdError):
    """A credential file is missing, unreadable or malformed; the message names the file, never the secret."""


@dataclass(frozen=True, slots=True)
class IngestCredentials:
    """How a client opens an audio stream: the token for the header, and TLS for a tcp:// connection."""

    token: str | None = None
    tls: ssl.SSLContext | None = None
    server_hostname: str | None = None  # the name the server's certificate must carry (default: the URI's host)

    def __repr__(self) -> str:  # never the token
        return f"IngestCredentials(token={'set' if self.token else None}, tls={self.tls is not None})"


def refuse_secret_arguments(argv: Sequence[str]) -> str | None:
    """An error message if argv tries to pass a token as a value (`--token X`, `--token=X`), else None.

    argparse would read `--token` as an abbreviation of `--token-file` and quote the secret back as a file name.
    """
    for arg in argv:
        if arg == "--":
            break
        if arg.split("=", 1)[0] in _SECRET_OPTIONS:
            return (f"{arg.split('=', 1)[0]}: a token is never taken on the command line, where every local user "
                    f"can read it; put it in a file for --token-file, or in the {TOKEN_ENV} environment variable")
    return None


def read_token(token_file: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The token from `token_file` (its first line that is not blank or a # comment: `TOKEN`, or `NAME TOKEN`
    as in the daemon's tokens file), else from INTENTD_TOKEN, else None."""
    if token_file is None:
        return environ.get(TOKEN_ENV, "").strip() or None
    path = Path(token_file).expanduser()
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise CredentialsError(f"--token-file {path}: cannot be read: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise CredentialsError(f"--token-file {path}: not UTF-8 text") from err
    if mode & 0o004:
        log.warning("--token-file %s can be read by every local user: chmod 600 it", path)
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) > 2:
            raise CredentialsError(f"--token-file {path}: expected `TOKEN` or `NAME TOKEN` on its first line")
        return fields[-1]
    raise CredentialsError(f"--token-file {path}: holds no token")


def client_tls_context(ca_file: str | None, cert_file: str | None = None,
                       key_file: str | None = None) -> ssl.SSLContext:
    """A TLS client context that verifies the server (against `ca_file`, else the system's CAs), with an
    optional client certificate."""
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as err:
        raise CredentialsError(f"--tls-ca {ca_file}: cannot be loaded: {getattr(err, 'strerror', None) or err}") \
            from err
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as err:
            raise CredentialsError(f"--tls-cert {cert_file}: cannot be loaded with its key: "
                                   f"{getattr(err, 'strerror', None) or err}") from err
    return ctx


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every credential option of a client that sends audio and may subscribe to events."""
    add_ingest_arguments(parser)
    add_curve_arguments(parser)


def from_arguments(args: argparse.Namespace, *, events: bool = True,
                   environ: Mapping[str, str] = os.environ) -> tuple[IngestCredentials, CurveKeys | None]:
    """The credentials add_arguments' options name; CURVE keys only when the client subscribes (`events`)."""
    return ingest_credentials(args, environ), curve_keys(args) if events else None


def add_ingest_arguments(parser: argparse.ArgumentParser) -> None:
    """--token-file and the TLS options of a client that sends audio."""
    g = parser.add_argument_group("authentication (docs/security.md)")
    g.add_argument("--token-file", metavar="FILE",
                   help=f"file holding the ingest token (default: the {TOKEN_ENV} environment variable; never "
                   "a command-line value)")
    g.add_argument("--tls", action="store_true", help="connect to tcp:// with TLS, verifying the server against "
                   "the system's CAs (implied by --tls-ca)")
    g.add_argument("--tls-ca", metavar="FILE", help="CA certificate (PEM) that the server's certificate must "
                   "chain to; a self-signed server certificate is its own CA")
    g.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM) when the server asks for one")
    g.add_argument("--tls-key", metavar="FILE", help="its private key (default: in --tls-cert)")
    g.add_argument("--tls-server-name", metavar="NAME",
                   help="the name the server's certificate must carry (default: the host in the URI)")


def ingest_credentials(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> IngestCredentials:
    """The credentials add_ingest_arguments' options name (CredentialsError on a bad file)."""
    tls = None
    if args.tls or args.tls_ca or args.tls_cert:
        tls = client_tls_context(args.tls_ca, args.tls_cert, args.tls_key)
    elif args.tls_key or args.tls_server_name:
        raise CredentialsError("--tls-key and --tls-server-name need --tls, --tls-ca or --tls-cert")
    return IngestCredentials(read_token(args.token_file, environ), tls, args.tls_server_name)


def add_curve_arguments(parser: argparse.ArgumentParser) -> None:
    """The CURVE options of a client that subscribes to events."""
    g = parser.add_argument_group("event bus authentication (CURVE, docs/security.md)")
    g.add_argument("--curve-key", metavar="FILE",
                   help="this client's key pair: the NAME.key_secret file `intentd keys NAME` wrote")
    g.add_argument("--curve-server-key", metavar="FILE", help="the daemon's public key: its .key file")


def curve_keys(args: argparse.Namespace) -> CurveKeys | None:
    """The keys add_curve_arguments' options name, or None without them (CredentialsError on a bad file)."""
    if args.curve_key is None and args.curve_server_key is None:
        return None
    if args.curve_key is None or args.curve_server_key is None:
        raise CredentialsError("--curve-key and --curve-server-key go together")
    from intentd.clients.subscriber import load_curve_keys  # pyzmq

    return load_curve_keys(args.curve_key, args.curve_server_key)
