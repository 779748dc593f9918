"""intentd-proxy on real ZeroMQ sockets (127.0.0.1, random ports): two daemons' publishers behind one XSUB/XPUB
proxy look like one bus with per-instance seq, CURVE holds on both hops, and re-resolved upstreams are followed."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from intentd.clients.subscriber import CurveKeys, Subscriber, load_curve_keys
from intentd.daemon import main as daemon_main
from intentd.daemon import proxy as proxy_mod
from intentd.daemon.proxy import EventProxy
from intentd.daemon.publisher import Publisher
from intentd.daemon.security import CurveServer, load_curve_server
from tests.test_publisher import _intent, probe
from tests.test_subscriber import _drain_sentinels

SYNC_TIMEOUT_S = 10.0
RECV_TIMEOUT_S = 5.0
REFUSED_WATCH_S = 1.0


class Running:
    """An EventProxy forwarding on its own thread until the block ends."""

    def __init__(self, proxy: EventProxy) -> None:
        self.proxy = proxy
        self._thread = threading.Thread(target=proxy.run, name="test-proxy")

    def __enter__(self) -> EventProxy:
        self._thread.start()
        return self.proxy

    def __exit__(self, *exc: object) -> None:
        self.proxy.stop()
        self._thread.join(SYNC_TIMEOUT_S)
        assert not self._thread.is_alive(), "the proxy did not stop"
        self.proxy.close()


def _pokes(*publishers: Publisher) -> Callable[[], int]:
    """A wait_connected poke heartbeating every publisher in step (equal seqs: one number names every probe)."""
    return lambda: max(probe(p) for p in publishers)


@pytest.fixture
def daemons() -> Iterator[tuple[Publisher, Publisher]]:
    a, b = Publisher("tcp://127.0.0.1:*", instance="d-a"), Publisher("tcp://127.0.0.1:*", instance="d-b")
    yield a, b
    a.close(linger_ms=0)
    b.close(linger_ms=0)


def test_two_daemons_behind_the_proxy_are_one_bus_with_seq_per_instance(
        daemons: tuple[Publisher, Publisher]) -> None:
    a, b = daemons
    with Running(EventProxy([a.endpoint, b.endpoint], "tcp://127.0.0.1:*")) as proxy, \
            Subscriber(proxy.endpoint, recv_timeout_s=RECV_TIMEOUT_S) as sub:
        assert sub.wait_connected(SYNC_TIMEOUT_S, poke=_pokes(a, b), instances=2)
        for i in range(30):
            a.publish(_intent("from-a", i))
            b.publish(_intent("from-b", i))
        got = _drain_sentinels(sub, a, b)
    assert (sub.missed, sub.restarts, sorted(sub.instances)) == (0, 0, ["d-a", "d-b"])
    for stream, instance in (("from-a", "d-a"), ("from-b", "d-b")):
        mine = [e for e in got if e.raw.get("stream_id") == stream]
        assert [e.raw["utterance"] for e in mine] == list(range(30)) and {e.instance for e in mine} == {instance}


def test_topic_subscriptions_travel_through_the_proxy(daemons: tuple[Publisher, Publisher]) -> None:
    a, b = daemons
    with Running(EventProxy([a.endpoint, b.endpoint], "tcp://127.0.0.1:*")) as proxy, \
            Subscriber(proxy.endpoint, topics=("intent.left",), recv_timeout_s=RECV_TIMEOUT_S) as sub:
        assert sub.wait_connected(SYNC_TIMEOUT_S, poke=_pokes(a, b), instances=2)
        a.publish(_intent("x", 0, label="right"))
        b.publish(_intent("x", 1, label="left"))
        a.publish(_intent("x", 2, label="left"))
        got = [sub.recv(), sub.recv()]
    assert sorted((e.instance, e.raw["utterance"]) for e in got if e is not None) == [("d-a", 2), ("d-b", 1)]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("curve")
    for name in ("daemon", "proxy", "app", "stranger"):
        assert daemon_main.main(["keys", name, "--out", str(folder / "keys")]) == 0
    for allow, names in (("daemon-clients", ["proxy"]), ("proxy-clients", ["app"])):
        (folder / allow).mkdir()
        for name in names:
            (folder / allow / f"{name}.key").write_bytes((folder / "keys" / f"{name}.key").read_bytes())
    return folder


def test_curve_holds_on_both_hops(keys: Path) -> None:
    """Daemons admit the proxy's key only; the proxy admits the app's key only, under its own server key."""
    k = keys / "keys"
    daemon_curve: CurveServer = load_curve_server(k / "daemon.key_secret", keys / "daemon-clients")
    a = Publisher("tcp://127.0.0.1:*", curve=daemon_curve, instance="d-a")
    b = Publisher("tcp://127.0.0.1:*", curve=daemon_curve, instance="d-b")
    to_daemons = load_curve_keys(k / "proxy.key_secret", k / "daemon.key")
    proxy = EventProxy([a.endpoint, b.endpoint], "tcp://127.0.0.1:*",
                       upstream_curve=(to_daemons.public_key, to_daemons.secret_key, to_daemons.server_key),
                       frontend_curve=load_curve_server(k / "proxy.key_secret", keys / "proxy-clients"))
    try:
        with Running(proxy):
            app: CurveKeys = load_curve_keys(k / "app.key_secret", k / "proxy.key")
            with Subscriber(proxy.endpoint, curve=app, recv_timeout_s=RECV_TIMEOUT_S) as sub, \
                    Subscriber(proxy.endpoint, recv_timeout_s=0.1,
                               curve=load_curve_keys(k / "stranger.key_secret", k / "proxy.key")) as stranger, \
                    Subscriber(a.endpoint, recv_timeout_s=0.1,
                               curve=load_curve_keys(k / "app.key_secret", k / "daemon.key")) as direct:
                assert sub.wait_connected(SYNC_TIMEOUT_S, poke=_pokes(a, b), instances=2)
                got = _drain_sentinels(sub, a, b)
                assert {e.instance for e in got} == {"d-a", "d-b"}
                # Neither a key the proxy does not allow, nor the app's key straight at a daemon, gets through.
                assert stranger.wait_connected(REFUSED_WATCH_S, poke=_pokes(a, b)) is False
                assert direct.wait_connected(REFUSED_WATCH_S, poke=_pokes(a, b)) is False
                assert stranger.received == direct.received == 0
                assert stranger.refused >= 1 and direct.refused >= 1
    finally:
        a.close(linger_ms=0)
        b.close(linger_ms=0)


def test_resolved_upstreams_are_followed_as_they_change(daemons: tuple[Publisher, Publisher]) -> None:
    """What a headless Service does as pods come and go: the name's addresses change, the proxy follows."""
    a, b = daemons
    answer = {a.endpoint}
    lock = threading.Lock()
    resolved = threading.Condition(lock)
    asked = [0]

    def fake_dns(uri: str) -> set[str]:
        assert uri == "tcp://intentd-events:5556"
        with resolved:
            asked[0] += 1
            resolved.notify_all()
            return set(answer)

    proxy = EventProxy(["tcp://intentd-events:5556"], "tcp://127.0.0.1:*", resolve_every_s=0.05,
                       resolver=fake_dns)
    assert proxy.connected == {a.endpoint}
    with Running(proxy), Subscriber(proxy.endpoint, recv_timeout_s=RECV_TIMEOUT_S) as sub:
        assert sub.wait_connected(SYNC_TIMEOUT_S, poke=_pokes(a, b), instances=1)
        assert sub.instances == ("d-a",)
        with resolved:
            answer.add(b.endpoint)  # a second pod became ready
        assert sub.wait_connected(SYNC_TIMEOUT_S, poke=_pokes(a, b), instances=2)
        with resolved:
            answer.discard(a.endpoint)  # the first one went away
            start = asked[0]
            resolved.wait_for(lambda: asked[0] >= start + 2, SYNC_TIMEOUT_S)  # asked again, and acted on
        _drain_sentinels(sub, b)
        assert proxy.connected == {b.endpoint}


def test_resolve_names_every_address_and_keeps_other_uris() -> None:
    assert proxy_mod.resolve("tcp://127.0.0.1:5556") == {"tcp://127.0.0.1:5556"}
    assert "tcp://127.0.0.1:5556" in proxy_mod.resolve("tcp://localhost:5556")
    assert proxy_mod.resolve("ipc:///run/intentd/events") == {"ipc:///run/intentd/events"}


def test_the_cli_refuses_an_open_bind_without_curve(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--upstream", "tcp://127.0.0.1:1", "--bind", "tcp://0.0.0.0:0"]
    assert proxy_mod.main(argv) == proxy_mod.EXIT_CONFIG
    assert "--curve-secret-key" in capsys.readouterr().err
    assert proxy_mod.main([*argv[:2], "--curve-secret-key", "x.key_secret"]) == proxy_mod.EXIT_CONFIG
