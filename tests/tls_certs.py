"""Throw-away TLS certificates for tests, made with the `openssl` command line (the tests skip without it).

A CA, a server certificate it signs for localhost and 127.0.0.1, and a client certificate it signs with a
commonName, so tests can check server verification, client certificates and the client name taken from one.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

DAYS = "2"
_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True, slots=True)
class Certs:
    """PEM files: the CA (which clients and the server trust), the server's pair and a client's pair."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_name: str


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command line to make test certificates")
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True)


def _signed(folder: Path, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
    (folder / f"{name}.ext").write_text(extensions + "\n")
    _openssl("req", "-new", *_EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
             cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", DAYS, "-extfile", f"{name}.ext", cwd=folder)
    return folder / f"{name}.pem", folder / f"{name}.key"


def make_certs(folder: Path, client_name: str = "kitchen") -> Certs:
    """A CA and the certificates it signs, written under `folder` (skips the test without openssl)."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", *_EC_KEY, "-keyout", "ca.key", "-out", "ca.pem", "-days", DAYS,
             "-subj", "/CN=intentd test CA", cwd=folder)
    server_cert, server_key = _signed(folder, "server", "/CN=localhost",
                                      "subjectAltName=DNS:localhost,IP:127.0.0.1")
    client_cert, client_key = _signed(folder, "client", f"/CN={client_name}", "extendedKeyUsage=clientAuth")
    return Certs(folder / "ca.pem", server_cert, server_key, client_cert, client_key, client_name)
