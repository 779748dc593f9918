"""Event bus authentication on real ZeroMQ sockets (127.0.0.1, random ports): `intentd keys`, a CURVE publisher
whose ZAP handler admits only allowed public keys, and the subscriber library and intentd-sub with their keys."""

from __future__ import annotations

import logging
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from intentd.clients import sub as sub_cli
from intentd.clients.subscriber import Subscriber, SubscriberError, load_curve_keys
from intentd.daemon import main as daemon_main
from intentd.daemon.counters import Counters
from intentd.daemon.errors import ConfigError
from intentd.daemon.publisher import Publisher
from intentd.daemon.security import REFUSED_CURVE, load_curve_server
from tests.test_publisher import _intent, probe

SYNC_TIMEOUT_S = 10.0
RECV_TIMEOUT_S = 5.0
# How long a refused subscriber is watched for anything arriving, while the allowed one proves delivery.
REFUSED_WATCH_S = 1.5


@dataclass(frozen=True)
class Keys:
    folder: Path
    allowed: Path  # the daemon's security.curve_clients folder

    def secret(self, name: str) -> Path:
        return self.folder / f"{name}.key_secret"

    def public(self, name: str) -> Path:
        return self.folder / f"{name}.key"


def _keys(name: str, folder: Path) -> None:
    assert daemon_main.main(["keys", name, "--out", str(folder)]) == 0


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("curve") / "keys"
    for name in ("server", "kitchen", "intruder"):
        _keys(name, folder)
    allowed = folder.parent / "clients"
    allowed.mkdir()
    (allowed / "kitchen.key").write_bytes((folder / "kitchen.key").read_bytes())
    return Keys(folder, allowed)


@pytest.fixture
def counters() -> Counters:
    return Counters()


@pytest.fixture
def curve_publisher(keys: Keys, counters: Counters) -> Iterator[Publisher]:
    pub = Publisher("tcp://127.0.0.1:*", curve=load_curve_server(keys.secret("server"), keys.allowed),
                    counters=counters)
    yield pub
    pub.close(linger_ms=0)


def test_intentd_keys_writes_a_pair_with_a_0600_secret_and_never_overwrites(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "new" / "keys"
    assert daemon_main.main(["keys", "kitchen", "--out", str(folder)]) == 0
    public, secret = folder / "kitchen.key", folder / "kitchen.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert "secret-key" in secret.read_text() and "secret-key" not in public.read_text()
    assert str(public) in capsys.readouterr().out
    before = secret.read_bytes()
    for argv, words in ((["keys", "kitchen", "--out", str(folder)], "already exists"),
                        (["keys", "../escape", "--out", str(folder)], "key name")):
        assert daemon_main.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and words in err[0], err
    assert secret.read_bytes() == before


def test_an_allowed_subscriber_receives_and_an_unknown_key_receives_nothing(
        keys: Keys, curve_publisher: Publisher, counters: Counters, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    allowed = load_curve_keys(keys.secret("kitchen"), keys.public("server"))
    intruder = load_curve_keys(keys.secret("intruder"), keys.public("server"))
    with (Subscriber(curve_publisher.endpoint, recv_timeout_s=RECV_TIMEOUT_S, curve=allowed) as good,
          Subscriber(curve_publisher.endpoint, recv_timeout_s=0.1, curve=intruder) as bad,
          Subscriber(curve_publisher.endpoint, recv_timeout_s=0.1) as plain):
        assert good.wait_connected(SYNC_TIMEOUT_S, poke=lambda: probe(curve_publisher))
        seq = curve_publisher.publish(_intent("s", 0))
        event = good.recv()
        assert event is not None and event.seq == seq and event.raw["stream_id"] == "s"
        # Keep publishing while the refused ones are watched: nothing may reach them.
        for sub in (bad, plain):
            assert not sub.wait_connected(REFUSED_WATCH_S, poke=lambda: probe(curve_publisher))
            assert sub.received == 0 and sub.refused >= 1
    assert counters.snapshot().refused.get(REFUSED_CURVE, 0) >= 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("event subscriber 'kitchen' connected" in m for m in messages), messages
    assert sum("not in security.curve_clients" in m for m in messages) == 1  # once per key, however often
    assert any("refused this subscriber" in m and "allow-list" in m for m in messages)
    secret_text = keys.secret("intruder").read_text()
    secret_z85 = secret_text.split("secret-key", 1)[1].split('"')[1]
    assert not any(secret_z85 in m for m in messages)


def test_intentd_sub_takes_its_keys_from_files(keys: Keys, curve_publisher: Publisher,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    stop = threading.Event()

    def publish_until_stopped() -> None:
        while not stop.wait(0.05):
            curve_publisher.publish(_intent("from-sub", 1))

    publisher_thread = threading.Thread(target=publish_until_stopped, daemon=True)
    publisher_thread.start()
    try:
        status = sub_cli.main(["--connect", curve_publisher.endpoint, "--topic", "intent.", "--count", "1",
                               "--idle-timeout", "10", "--curve-key", str(keys.secret("kitchen")),
                               "--curve-server-key", str(keys.public("server"))])
    finally:
        stop.set()
        publisher_thread.join()
    assert status == 0 and "stream=from-sub" in capsys.readouterr().out
    assert sub_cli.main(["--connect", curve_publisher.endpoint, "--curve-key", str(keys.secret("kitchen"))]) == 2
    assert "go together" in capsys.readouterr().err
    # A public key file where the key pair belongs is refused with the file's name.
    assert sub_cli.main(["--connect", curve_publisher.endpoint, "--curve-key", str(keys.public("kitchen")),
                         "--curve-server-key", str(keys.public("server"))]) == 2
    assert "kitchen.key" in capsys.readouterr().err


def test_bad_key_files_are_errors_naming_them(keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(SubscriberError, match="holds no secret key"):
        load_curve_keys(keys.public("kitchen"), keys.public("server"))
    with pytest.raises(ConfigError, match="security.curve_secret_key"):
        load_curve_server(keys.public("server"), keys.allowed)
    with pytest.raises(ConfigError, match="security.curve_clients"):
        load_curve_server(keys.secret("server"), tmp_path / "no-such-folder")
