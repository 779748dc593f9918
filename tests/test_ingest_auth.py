"""Ingest authentication on the real socket server (127.0.0.1:0, a tmp Unix socket): tokens in the stream header,
TLS with and without client certificates, and the clients' credentials (a file or INTENTD_TOKEN, never argv)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import intentd.daemon.security
from intentd.clients import credentials as creds
from intentd.clients.credentials import IngestCredentials, client_tls_context
from intentd.clients.send import SendError, send_stream
from intentd.daemon.audio import SAMPLE_RATE
from intentd.daemon.counters import Counters
from intentd.daemon.errors import ConfigError, ProtocolError
from intentd.daemon.protocol import (
    PcmDecoder,
    ReplyDecoder,
    StreamDecoder,
    StreamHeader,
    encode_audio,
    encode_header,
    encode_pcm,
)
from intentd.daemon.security import (
    REFUSED_TLS,
    REFUSED_TOKEN,
    IngestSecurity,
    IngestTokens,
    load_tokens,
    parse_tokens,
    server_tls_context,
)
from intentd.daemon.sources.socket_server import SocketServer
from intentd.daemon.sources.uri import TcpSpec, UnixSpec
from tests.recording_sink import RecordingSink
from tests.test_socket_server import _read_reply, async_test
from tests.tls_certs import Certs, make_certs

REPO = Path(__file__).resolve().parents[1]
KITCHEN = "k1tchen-0123456789abcdef"
CRM = "crm-fedcba9876543210fedcba"
SHARED = "shared-secret-0123456789"
TOKENS = f"# name token\nkitchen {KITCHEN}\n\ncrm {CRM}\n"
IDLE_S = 0.5
LOG = "intentd.daemon.sources.socket_server"


def _pcm(seconds: float = 0.2) -> bytes:
    rng = np.random.default_rng(0)
    return encode_pcm(rng.uniform(-0.5, 0.5, int(SAMPLE_RATE * seconds)).astype(np.float32), "s16le")


async def _blocks(pcm: bytes) -> AsyncIterator[bytes]:
    yield pcm


def _header(stream_id: str) -> StreamHeader:
    return StreamHeader(stream_id, SAMPLE_RATE, "s16le", 1)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@contextlib.asynccontextmanager
async def serving(security: IngestSecurity, spec: TcpSpec | UnixSpec | None = None
                  ) -> AsyncIterator[tuple[SocketServer, RecordingSink, Counters]]:
    sink, counters = RecordingSink(), Counters()
    server = SocketServer(spec or TcpSpec("127.0.0.1", 0), sink, idle_timeout_s=IDLE_S, security=security,
                          counters=counters)
    await server.start()
    try:
        yield server, sink, counters
    finally:
        await server.close()


# --------------------------------------------------------------------------------------------- protocol


def test_the_token_travels_in_the_header_and_old_headers_are_unchanged() -> None:
    # A client without a token sends what clients sent before the key existed (docs/protocol.md's example).
    assert encode_header(_header("kitchen")) == (
        b"INTD\x01\x00\x49" b'{"stream_id":"kitchen","sample_rate":16000,"format":"s16le","channels":1}')
    with_token = StreamHeader("a", SAMPLE_RATE, "s16le", 1, token=KITCHEN)
    decoded = StreamDecoder().feed(encode_header(with_token))[0]
    assert decoded == with_token and decoded.token == KITCHEN
    assert KITCHEN not in repr(with_token)
    for bad in ("", "has space-0123456789", "x" * 513, "tab\there-0123456789", 42):
        with pytest.raises(ProtocolError) as info:
            encode_header(StreamHeader("a", SAMPLE_RATE, "s16le", 1, token=bad))  # type: ignore[arg-type]
        assert "token" in str(info.value)
        assert not isinstance(bad, str) or not bad or bad not in str(info.value)


# --------------------------------------------------------------------------------------------- tokens file


def test_tokens_file_names_clients_and_a_lone_token_is_a_shared_secret(tmp_path: Path) -> None:
    tokens = parse_tokens(TOKENS, "t")
    assert tokens.names == ["kitchen", "crm"]
    assert (tokens.check(KITCHEN), tokens.check(CRM), tokens.check(KITCHEN + "x"), tokens.check(None)) == (
        "kitchen", "crm", None, None)
    shared = tmp_path / "secret"
    shared.write_text(SHARED + "\n")
    assert load_tokens(shared).check(SHARED) == "shared"


@pytest.mark.parametrize(("text", "words"), [
    ("", "no tokens"),
    ("kitchen short\n", "line 1"),
    (f"a b {KITCHEN}\n", "line 1"),
    (f"kitchen {KITCHEN}\nkitchen {CRM}\n", "named twice"),
    (f"kitchen {KITCHEN}\ncrm {KITCHEN}\n", "line 2"),
    (f"bad/name {KITCHEN}\n", "client name"),
])
def test_a_bad_tokens_file_names_the_line_never_the_token(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_tokens(text, "tokens.txt")
    assert words in str(info.value) and "security.tokens_file" in str(info.value)
    assert KITCHEN not in str(info.value) and "short" not in str(info.value).split(":", 1)[-1]


def test_a_missing_tokens_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="security.tokens_file .*nope"):
        load_tokens(tmp_path / "nope")


def test_the_check_compares_equal_length_digests_with_every_entry_whatever_matches(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(intentd.daemon.security.hmac, "compare_digest", counting)
    tokens = IngestTokens({f"c{i}": f"token-{i:02d}-0123456789" for i in range(5)})
    for token in ("token-00-0123456789", "token-04-0123456789", "wrong", "x" * 500, None):
        calls.clear()
        tokens.check(token)
        assert calls == [(32, 32)] * 5  # SHA-256 digests: no early exit, no length leak


# --------------------------------------------------------------------------------------------- the server


@pytest.mark.parametrize("kind", ["tcp", "unix"])
@async_test
async def test_the_right_token_opens_a_stream_and_the_log_names_the_client(
        kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOG)  # an operator's INFO log names who was let in
    spec = TcpSpec("127.0.0.1", 0) if kind == "tcp" else UnixSpec(tmp_path / "in.sock")
    async with serving(IngestSecurity(parse_tokens(TOKENS, "t")), spec) as (server, sink, counters):
        pcm = _pcm()
        result = await send_stream(server.bound_uri, _header("k"), _blocks(pcm), IngestCredentials(KITCHEN))
        assert result.samples == len(pcm) // 2
        assert sink.by_id("k").closed and sink.by_id("k").samples.size == len(pcm) // 2
        await send_stream(server.bound_uri, _header("c"), _blocks(pcm), IngestCredentials(CRM))
    assert counters.snapshot().refused == {}
    let_in = [r.getMessage() for r in caplog.records if "authenticated" in r.getMessage()]
    assert any("client 'kitchen'" in m and "'k'" in m for m in let_in), let_in
    assert any("client 'crm'" in m and "'c'" in m for m in let_in), let_in
    assert not any(t in r.getMessage() for r in caplog.records for t in (KITCHEN, CRM))


@async_test
async def test_a_wrong_or_missing_token_is_refused_with_the_reason_logged_once_and_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    wrong = "not-the-token-0123456789"
    async with serving(IngestSecurity(parse_tokens(TOKENS, "t"))) as (server, sink, counters):
        for sid, cred, reason in (("w", IngestCredentials(wrong), "unauthorized: invalid token"),
                                  ("m", None, "unauthorized: this server requires a token")):
            with pytest.raises(SendError, match=f"{sid}: server refused: {reason}$"):
                await send_stream(server.bound_uri, _header(sid), _blocks(_pcm()), cred)
        # Audio in the same packet as a refused header never reaches the sink.
        host, port = server.bound_uri[len("tcp://"):].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        bad = StreamHeader("eager", SAMPLE_RATE, "s16le", 1, token=wrong)
        writer.write(encode_header(bad) + encode_audio(_pcm()))
        reply = await _read_reply(reader, ReplyDecoder())
        assert reply.type == "error" and reply.reason == "unauthorized: invalid token"
        assert reply.fields["stream_id"] is None
        assert await reader.read() == b""  # closed after the one reply
        writer.close()
    assert sink.streams == []
    assert counters.snapshot().refused == {REFUSED_TOKEN: 3}
    assert counters.status()["refused"] == 3
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 3 and all(r.levelno == logging.WARNING for r in refusals)
    assert [m for m in (r.getMessage() for r in refusals) if "stream 'w'" in m and "invalid token" in m]
    assert not any(wrong in r.getMessage() for r in caplog.records)


@async_test
async def test_a_client_without_credentials_holds_a_slot_for_the_idle_timeout_at_most() -> None:
    async with serving(IngestSecurity(parse_tokens(TOKENS, "t"))) as (server, _sink, _counters):
        host, port = server.bound_uri[len("tcp://"):].rsplit(":", 1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        reader, writer = await asyncio.open_connection(host, int(port))
        header = encode_header(StreamHeader("slow", SAMPLE_RATE, "s16le", 1, token=KITCHEN))

        async def trickle() -> None:
            # One byte every fifth of the idle timeout: never idle, but the header cannot complete in time.
            for byte in header:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(IDLE_S / 5)

        sender = asyncio.create_task(trickle())
        reply = await _read_reply(reader, ReplyDecoder())
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        assert reply.type == "error" and "header timeout" in reply.reason
        assert loop.time() - started < IDLE_S * 3
        writer.close()


# --------------------------------------------------------------------------------------------- TLS


@async_test
async def test_tls_round_trip_with_a_token_and_refusals_of_plain_and_unverified_clients(
        certs: Certs, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOG)
    security = IngestSecurity(parse_tokens(TOKENS, "t"), server_tls_context(certs.server_cert, certs.server_key,
                                                                             None))
    async with serving(security) as (server, sink, counters):
        pcm = _pcm(0.5)
        tls = client_tls_context(str(certs.ca))
        result = await send_stream(server.bound_uri, _header("tls"), _blocks(pcm), IngestCredentials(KITCHEN, tls))
        assert result.samples == len(pcm) // 2
        np.testing.assert_array_equal(sink.by_id("tls").samples, PcmDecoder("s16le", 1).decode(pcm))
        # A plain client is refused by the handshake; one that cannot verify the server refuses it itself.
        with pytest.raises(SendError, match="does it require TLS"):
            await send_stream(server.bound_uri, _header("plain"), _blocks(pcm), IngestCredentials(KITCHEN))
        with pytest.raises(SendError, match="CERTIFICATE_VERIFY_FAILED"):
            await send_stream(server.bound_uri, _header("unverified"), _blocks(pcm),
                              IngestCredentials(KITCHEN, client_tls_context(None)))
        # TLS is not a credential by itself: the token is still checked inside it.
        with pytest.raises(SendError, match="requires a token"):
            await send_stream(server.bound_uri, _header("no-token"), _blocks(pcm), IngestCredentials(None, tls))
    assert [s.stream_id for s in sink.streams] == ["tls"]
    refused = counters.snapshot().refused
    assert refused[REFUSED_TOKEN] == 1 and refused[REFUSED_TLS] >= 1
    assert any("TLS handshake failed" in r.getMessage() for r in caplog.records)


@async_test
async def test_client_certificates_are_required_and_name_the_client(
        certs: Certs, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOG)  # an operator's INFO log names who was let in
    security = IngestSecurity(None, server_tls_context(certs.server_cert, certs.server_key, certs.ca))
    assert security.authenticates
    async with serving(security) as (server, sink, counters):
        with_cert = client_tls_context(str(certs.ca), str(certs.client_cert), str(certs.client_key))
        await send_stream(server.bound_uri, _header("cert"), _blocks(_pcm()), IngestCredentials(None, with_cert))
        with pytest.raises(SendError):
            await send_stream(server.bound_uri, _header("nocert"), _blocks(_pcm()),
                              IngestCredentials(None, client_tls_context(str(certs.ca))))
    assert [s.stream_id for s in sink.streams] == ["cert"]
    assert counters.snapshot().refused == {REFUSED_TLS: 1}
    assert any(f"authenticated as client {certs.client_name!r}" in r.getMessage() for r in caplog.records)


def test_a_bad_certificate_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="security.tls_cert"):
        server_tls_context(junk, junk, None)


# --------------------------------------------------------------------------------------------- clients


def test_clients_read_the_token_from_a_file_or_the_environment(tmp_path: Path) -> None:
    env = {creds.TOKEN_ENV: f" {CRM}\n"}
    assert creds.read_token(None, env) == CRM
    assert creds.read_token(None, {}) is None
    token_file = tmp_path / "token"
    token_file.write_text(f"# mine\n{KITCHEN}\n")
    token_file.chmod(0o600)
    assert creds.read_token(str(token_file), env) == KITCHEN  # the file wins over the environment
    token_file.write_text(f"kitchen {KITCHEN}\n")  # the daemon's line for this client works as it is
    assert creds.read_token(str(token_file), {}) == KITCHEN
    for text, words in (("\n# nothing\n", "holds no token"), (f"a b {KITCHEN}\n", "expected")):
        token_file.write_text(text)
        with pytest.raises(creds.CredentialsError, match=words) as info:
            creds.read_token(str(token_file), {})
        assert KITCHEN not in str(info.value)
    with pytest.raises(creds.CredentialsError, match="cannot be read"):
        creds.read_token(str(tmp_path / "missing"), {})


def _run_send(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    code = "import sys; from intentd.clients.send import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})}, check=False)


@pytest.mark.parametrize("args", [["--token", KITCHEN], [f"--token={KITCHEN}"]])
def test_a_token_on_the_command_line_is_refused_without_echoing_it(args: list[str], tmp_path: Path) -> None:
    wav = tmp_path / "a.wav"
    done = _run_send("--to", "tcp://127.0.0.1:9", *args, str(wav))
    assert done.returncode == 2
    assert "never taken on the command line" in done.stderr and KITCHEN not in done.stderr
    assert "--token" not in _run_send("--help").stdout.replace("--token-file", "")
    from intentd.clients import live

    assert live.main(["--to", "tcp://127.0.0.1:9", *args]) == 2


def test_intentd_send_takes_the_token_from_a_file_or_the_environment(tmp_path: Path) -> None:
    import soundfile as sf

    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(SAMPLE_RATE // 2, np.float32), SAMPLE_RATE, subtype="PCM_16")
    token_file = tmp_path / "token"
    token_file.write_text(KITCHEN + "\n")
    token_file.chmod(0o600)
    results: dict[str, Any] = {}

    async def run() -> None:
        async with serving(IngestSecurity(parse_tokens(TOKENS, "t"))) as (server, sink, counters):
            loop = asyncio.get_running_loop()
            uri = server.bound_uri
            results["file"] = await loop.run_in_executor(
                None, lambda: _run_send("--to", uri, "--token-file", str(token_file), "--stream-id", "f", str(wav)))
            results["env"] = await loop.run_in_executor(
                None, lambda: _run_send("--to", uri, "--stream-id", "e", str(wav), env={creds.TOKEN_ENV: CRM}))
            results["none"] = await loop.run_in_executor(
                None, lambda: _run_send("--to", uri, "--stream-id", "n", str(wav),
                                        env={creds.TOKEN_ENV: ""}))
            results["streams"] = [s.stream_id for s in sink.streams]
            results["refused"] = counters.snapshot().refused

    asyncio.run(run())
    assert results["file"].returncode == 0, results["file"].stderr
    assert results["env"].returncode == 0, results["env"].stderr
    assert results["none"].returncode == 1 and "requires a token" in results["none"].stderr
    assert results["streams"] == ["f", "e"] and results["refused"] == {REFUSED_TOKEN: 1}


@async_test
async def test_tls_over_a_unix_socket_is_refused_by_the_client(tmp_path: Path) -> None:
    with pytest.raises(SendError, match="TLS is for tcp://"):
        await send_stream(f"unix://{tmp_path}/x.sock", _header("u"), _blocks(b""),
                          IngestCredentials(None, client_tls_context(None)))
