"""The bind policy (settings and the real `intentd`), and one daemon subprocess exposed on 0.0.0.0 with every
guard on: tokens and TLS on audio, CURVE on events; its clients are served, everyone else refused and counted."""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

import pytest

from intentd.clients.subscriber import Subscriber, load_curve_keys
from intentd.daemon import events
from intentd.daemon import settings as settings_mod
from intentd.daemon.errors import ConfigError
from tests.daemon_proc import (
    SUB_CONNECT_TIMEOUT_S,
    collect,
    free_port,
    run_cli,
    running_daemon,
    speech_clips,
    write_config,
    write_speech_wav,
)
from tests.tiny_models import build_tiny_whisper
from tests.tls_certs import make_certs

EXIT_CONFIG = 78
KITCHEN = "k1tchen-0123456789abcdef"
CRM = "crm-fedcba9876543210fedcba"
WRONG = "wrong-0123456789abcdef012"
EVENT_TIMEOUT_S = 60.0
POLICY = "security.allow_unauthenticated"


# --------------------------------------------------------------------------------------------- bind policy


@pytest.mark.parametrize("data", [
    {"sources": {"listen": ["tcp://0.0.0.0:5555"]}},
    {"sources": {"listen": ["tcp://127.0.0.1:5555", "tcp://192.168.1.10:5555"]}},
    {"sources": {"listen": ["tcp://[::]:5555"]}},
    {"sources": {"listen": ["tcp://intentd.example:5555"]}},
    {"publisher": {"uri": "tcp://*:5556"}},
    {"publisher": {"uri": "tcp://eth0:5556"}},
    # Each guard covers its own side only: tokens do not open the event bus, CURVE does not open ingest.
    {"sources": {"listen": ["tcp://0.0.0.0:5555"]}, "publisher": {"uri": "tcp://*:1"},
     "security": {"tokens_file": "t"}},
    {"sources": {"listen": ["tcp://0.0.0.0:5555"]},
     "security": {"curve_secret_key": "s", "curve_clients": "c", "tls_cert": "c", "tls_key": "k"}},
])
def test_listening_beyond_loopback_without_authentication_is_refused_naming_the_setting(data: dict) -> None:
    with pytest.raises(ConfigError) as info:
        settings_mod.from_dict(data)
    message = str(info.value)
    assert POLICY in message and "\n" not in message


@pytest.mark.parametrize("data", [
    {},
    {"sources": {"listen": ["tcp://127.0.0.2:5555", "tcp://[::1]:5555", "tcp://localhost:5555",
                            "unix:///run/intentd/audio.sock", "mic://", "file:///tmp/a.wav"]},
     "publisher": {"uri": "ipc:///run/intentd/events"}},
    {"sources": {"listen": ["tcp://0.0.0.0:5555"]}, "publisher": {"uri": "tcp://*:5556"},
     "security": {"allow_unauthenticated": True}},
    {"sources": {"listen": ["tcp://0.0.0.0:5555"]}, "security": {"tokens_file": "tokens"}},
    {"sources": {"listen": ["tcp://0.0.0.0:5555"]},
     "security": {"tls_cert": "c.pem", "tls_key": "k.pem", "tls_client_ca": "ca.pem"}},
    {"publisher": {"uri": "tcp://0.0.0.0:5556"}, "security": {"curve_secret_key": "s", "curve_clients": "c"}},
])
def test_loopback_local_sources_an_explicit_choice_or_authentication_pass(data: dict) -> None:
    settings_mod.from_dict(data)


@pytest.mark.parametrize(("security", "key"), [
    ({"tls_cert": "c.pem"}, "security.tls_key"),
    ({"tls_key": "k.pem"}, "security.tls_cert"),
    ({"tls_client_ca": "ca.pem"}, "security.tls_cert"),
    ({"curve_secret_key": "s"}, "security.curve_clients"),
    ({"curve_clients": "c"}, "security.curve_secret_key"),
])
def test_security_keys_that_go_in_pairs(security: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        settings_mod.from_dict({"security": security})


def test_intentd_refuses_to_start_on_0_0_0_0_without_authentication(tmp_path: Path) -> None:
    for args in (["--listen", "tcp://0.0.0.0:0"], ["--publish", "tcp://0.0.0.0:0"]):
        done = run_cli("intentd", *args, timeout_s=60.0)
        assert done.returncode == EXIT_CONFIG, done
        lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        assert len(lines) == 1 and POLICY in lines[0], lines


# --------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("sec") / "tiny-sec", seed=2)


@pytest.fixture(scope="module")
def hello_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One spoken phrase between silences."""
    folder = tmp_path_factory.mktemp("sec-speech")
    return write_speech_wav(folder / "hello.wav", speech_clips(1, folder, seed=5))


@pytest.mark.slow
def test_intentd_check_accepts_0_0_0_0_when_the_config_allows_it(tmp_path: Path, model_dir: Path) -> None:
    config = write_config(tmp_path / "open.toml", {"security": {"allow_unauthenticated": True}})
    done = run_cli("intentd", "--config", str(config), "--model", str(model_dir), "--listen", "tcp://0.0.0.0:0",
                   "--check")
    assert done.returncode == 0, done.stderr


def _secret(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.slow
def test_an_exposed_daemon_serves_its_clients_and_refuses_counts_and_logs_the_rest(
        tmp_path: Path, model_dir: Path, hello_wav: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    keys, allowed = tmp_path / "keys", tmp_path / "subscribers"
    for name in ("server", "app", "intruder"):
        done = run_cli("intentd", "keys", name, "--out", str(keys))
        assert done.returncode == 0, done.stderr
    allowed.mkdir()
    shutil.copy(keys / "app.key", allowed / "app.key")
    tokens = _secret(tmp_path / "tokens", f"kitchen {KITCHEN}\ncrm {CRM}\n")
    kitchen, wrong = _secret(tmp_path / "kitchen.token", KITCHEN), _secret(tmp_path / "wrong.token", WRONG)
    audio_port, events_port = free_port(), free_port()
    sections = {
        "sources": {"listen": [f"tcp://0.0.0.0:{audio_port}"]},
        "publisher": {"uri": f"tcp://0.0.0.0:{events_port}"},
        "security": {"tokens_file": str(tokens), "tls_cert": str(certs.server_cert),
                     "tls_key": str(certs.server_key), "curve_secret_key": str(keys / "server.key_secret"),
                     "curve_clients": str(allowed)},
    }
    audio, events_uri = f"tcp://127.0.0.1:{audio_port}", f"tcp://127.0.0.1:{events_port}"
    wav = hello_wav
    with running_daemon(tmp_path, model_dir, sections, metrics=True) as d:
        app = load_curve_keys(keys / "app.key_secret", keys / "server.key")
        intruder = load_curve_keys(keys / "intruder.key_secret", keys / "server.key")
        with (Subscriber(events_uri, recv_timeout_s=EVENT_TIMEOUT_S, curve=app) as sub,
              Subscriber(events_uri, recv_timeout_s=0.1, curve=intruder) as bad):
            assert sub.wait_connected(SUB_CONNECT_TIMEOUT_S), d.log_text()
            sent = run_cli("intentd-send", "--to", audio, "--token-file", str(kitchen), "--tls-ca", str(certs.ca),
                           "--stream-id", "hello", str(wav))
            assert sent.returncode == 0, sent.stderr
            heard = collect(sub, lambda k: any(isinstance(e, events.StreamEndEvent) for e in k), EVENT_TIMEOUT_S,
                            keep=lambda e: e.raw.get("stream_id") == "hello")
            end = heard[-1]
            assert isinstance(end, events.StreamEndEvent) and end.utterances >= 1, heard
            assert sum(isinstance(e, events.IntentEvent) for e in heard) == end.classified
            refused = {
                "wrong token": run_cli("intentd-send", "--to", audio, "--token-file", str(wrong), "--tls-ca",
                                       str(certs.ca), str(wav), env={"INTENTD_TOKEN": ""}),
                "no token": run_cli("intentd-send", "--to", audio, "--tls-ca", str(certs.ca), str(wav),
                                    env={"INTENTD_TOKEN": ""}),
                "no TLS": run_cli("intentd-send", "--to", audio, "--token-file", str(kitchen), str(wav)),
            }
            for what, done in refused.items():
                assert done.returncode == 1, (what, done.stderr)
            assert "unauthorized: invalid token" in refused["wrong token"].stderr
            assert "requires a token" in refused["no token"].stderr
            assert not bad.wait_connected(1.0) and bad.received == 0 and bad.refused >= 1
            status = collect(sub, lambda k: bool(k), EVENT_TIMEOUT_S,
                             keep=lambda e: isinstance(e, events.StatusEvent) and e.counters["refused"] >= 4)
            assert status, "no status heartbeat counted the refusals"
        with urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=10) as page:
            metrics = page.read().decode()
        log = d.log_text()
    assert 'intentd_refused_total{reason="token"} 2.0' in metrics
    assert 'intentd_refused_total{reason="tls"} 1.0' in metrics
    assert 'intentd_refused_total{reason="curve"}' in metrics
    assert "authenticated as client 'kitchen'" in log and "tokens of 2 client(s)" in log and "CURVE" in log
    assert log.count("unauthorized: invalid token") == 1 and log.count("TLS handshake failed") == 1
    for secret in (KITCHEN, CRM, WRONG):
        assert secret not in log
