"""Several daemons as one service (issue 18, docs/deploy.md), on loopback: three intentd subprocesses behind HAProxy
(an L4 TCP balancer whose health checks ask each daemon's /healthz, as a Kubernetes readiness probe does), their events through `intentd-proxy` to one
subscriber. 60 FSDD recordings are streamed through the balancer and one daemon is killed (-9) mid-way: every
utterance of the surviving daemons arrives exactly once, seq gaps and restarts are counted per instance (none),
and the balancer marks the dead daemon down and sends it nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from intentd.clients.send import send_file
from intentd.clients.subscriber import Subscriber
from intentd.daemon import events
from intentd.daemon.errors import IntentdError
from tests.daemon_proc import FSDD, READY_TIMEOUT_S, DaemonProc, free_port, launch, tool
from tests.tiny_models import build_tiny_whisper

pytestmark = pytest.mark.slow

HAPROXY = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if Path(p).exists()), None)
FILES = 60
SEED = 18
KILL_AFTER_ENDS = 2  # the victim has answered this many streams when it is killed; others are in flight
CHECK_INTERVAL_MS = 100
STATE_TIMEOUT_S = 20.0
ANSWER_TIMEOUT_S = 60.0
NAMES = ("", "daemon-b", "daemon-c")  # the first keeps the default instance id, HOSTNAME:PID
VICTIM = 1
AGAIN = "~again"  # the stream id suffix of a file sent again after its daemon died


def _haproxy_config(stats: Path, port: int, daemons: Sequence[DaemonProc]) -> str:
    """docs/deploy.md's example: streams to the audio port, health from /healthz on the metrics port."""
    servers = "\n".join(f"    server d{i} {d.audio_address[0]}:{d.audio_address[1]} check port {d.metrics_port}"
                        for i, d in enumerate(daemons))
    return f"""global
    stats socket {stats} mode 600 level admin
defaults
    mode tcp
    timeout connect 2s
    # A slow answer from a busy host is no failure; a dead daemon refuses the check at once.
    timeout check 2s
    timeout client 60s
    timeout server 60s
    # A connection refused by a daemon that just died is retried on another one.
    retries 3
    option redispatch 1
frontend audio
    bind 127.0.0.1:{port}
    default_backend intentd
backend intentd
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter {CHECK_INTERVAL_MS}ms fall 1 rise 1
{servers}
"""


def _servers(stats: Path) -> dict[str, dict[str, str]]:
    """HAProxy's `show stat` for the backend's servers: {name: row} (status UP/DOWN, stot = sessions total)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        s.connect(str(stats))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
    return {r["svname"]: r for r in rows if r["pxname"] == "intentd" and r["svname"] not in ("BACKEND", "FRONTEND")}


def _wait_servers(stats: Path, want: dict[str, str], balancer: subprocess.Popen[bytes]) -> dict[str, dict[str, str]]:
    """Ask HAProxy until each named server has the wanted status (the health checks run every 100 ms)."""
    deadline = time.monotonic() + STATE_TIMEOUT_S
    while True:
        assert balancer.poll() is None, "haproxy exited"
        with contextlib.suppress(OSError):
            servers = _servers(stats)
            if all(servers.get(name, {}).get("status") == status for name, status in want.items()):
                return servers
        assert time.monotonic() < deadline, f"haproxy never reported {want}"
        time.sleep(CHECK_INTERVAL_MS / 1000 / 2)  # polling HAProxy's own state, which changes on its schedule


class Heard:
    """Every event from the proxy, kept on a thread; waits on conditions over them."""

    def __init__(self, uri: str) -> None:
        self.sub = Subscriber(uri, recv_timeout_s=0.1)
        self.events: list[events.Event] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heard", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            event = self.sub.recv()
            if event is not None:
                with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()

    def ends(self) -> list[events.StreamEndEvent]:
        with self._cond:
            return [e for e in self.events if isinstance(e, events.StreamEndEvent)]

    def wait(self, predicate: object, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout_s)  # type: ignore[arg-type]

    def wake(self, change: Callable[[], object]) -> None:
        """Make a change a waiting predicate reads, and wake the waiter."""
        with self._cond:
            change()
            self._cond.notify_all()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sub.close()


async def _send_all(uri: str, files: Sequence[Path], suffix: str = "") -> list[bool]:
    """Each file as one recorded stream (id: its name + suffix), all at once; which ones were answered."""
    async def one(path: Path) -> bool:
        try:
            await send_file(uri, path, stream_id=path.name + suffix)
        except IntentdError:
            return False  # its daemon died under it: the client will send it again
        return True

    return list(await asyncio.gather(*(one(p) for p in files)))


@contextlib.contextmanager
def _daemons(tmp: Path, model: Path) -> Iterator[list[DaemonProc]]:
    procs = [launch(tmp, model, {"publisher": {"instance_id": name}} if name else {}, name=f"d{i}", metrics=True)
             for i, name in enumerate(NAMES)]
    try:
        for d in procs:  # started together: they load at once
            d.notify.wait_for("READY", "1", READY_TIMEOUT_S, alive=d.alive)
        yield procs
    finally:
        for d in procs:
            if d.alive():
                d.stop()
            else:
                d._cleanup()


def test_three_daemons_behind_haproxy_lose_nothing_when_one_dies(tmp_path: Path) -> None:
    if HAPROXY is None:
        pytest.skip("haproxy is not installed (Debian package haproxy; scripts/setup.sh installs it)")
    recordings = sorted(FSDD.glob("*.wav")) if FSDD.is_dir() else []
    if len(recordings) < FILES:
        pytest.skip(f"needs {FILES} FSDD recordings in {FSDD}")
    files = [Path(p) for p in np.random.default_rng(SEED).choice(recordings, FILES, replace=False)]
    model = build_tiny_whisper(tmp_path / "model", seed=0)
    short = Path(tempfile.mkdtemp(prefix="intentd-ha-"))  # AF_UNIX paths are limited to 108 bytes
    stats, front = short / "stats.sock", free_port()
    with _daemons(tmp_path, model) as daemons:
        victim = daemons[VICTIM]
        instances = [name or f"{socket.gethostname()}:{d.proc.pid}" for name, d in zip(NAMES, daemons, strict=True)]
        (tmp_path / "haproxy.cfg").write_text(_haproxy_config(stats, front, daemons))
        balancer = subprocess.Popen([HAPROXY, "-db", "-f", str(tmp_path / "haproxy.cfg")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        proxy_port = free_port()
        proxy = subprocess.Popen([*tool("intentd-proxy"), "--bind", f"tcp://127.0.0.1:{proxy_port}",
                                  *[a for d in daemons for a in ("--upstream", d.events_uri)]],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        heard = None
        try:
            _wait_servers(stats, {"d0": "UP", "d1": "UP", "d2": "UP"}, balancer)
            heard = Heard(f"tcp://127.0.0.1:{proxy_port}")
            # Slow joiner: each daemon's heartbeat (every 0.2 s) through the proxy proves its path.
            assert heard.sub.wait_connected(STATE_TIMEOUT_S, instances=3), "not every daemon heard via the proxy"
            uri = f"tcp://127.0.0.1:{front}"

            # Half the files at once; the victim dies -9 once it has answered a few, with its others in flight
            # (or, on a host too busy for that, once the first half is done: still mid-way through the files).
            def victim_ends() -> int:
                return sum(1 for e in heard.ends() if e.instance == instances[VICTIM])

            first_done = threading.Event()

            def killer() -> None:
                heard.wait(lambda: victim_ends() >= KILL_AFTER_ENDS or first_done.is_set(), ANSWER_TIMEOUT_S)
                victim.proc.kill()

            assassin = threading.Thread(target=killer)
            assassin.start()
            try:
                first = asyncio.run(_send_all(uri, files[: FILES // 2]))
            finally:
                heard.wake(first_done.set)
                assassin.join()
            assert victim.proc.wait(STATE_TIMEOUT_S) == -signal.SIGKILL
            down = _wait_servers(stats, {"d0": "UP", "d1": "DOWN", "d2": "UP"}, balancer)

            # Files with no stream.end yet (cut mid-stream by the kill, or answered but their stream.end lost with
            # the victim) are sent again under a new stream id, with the second half: only survivors may take them.
            answered = {e.stream_id for e in heard.ends()}
            again = [p for p in files[: FILES // 2] if p.name not in answered]
            second = asyncio.run(_send_all(uri, files[FILES // 2:])) + asyncio.run(_send_all(uri, again, AGAIN))
            assert all(second), "a stream failed with only healthy daemons behind the balancer"

            def every_file_ended() -> bool:
                ended = {e.stream_id for e in heard.ends()}
                return all(p.name in ended or p.name + AGAIN in ended for p in files)

            assert heard.wait(every_file_ended, ANSWER_TIMEOUT_S), "not every file got its stream.end"
            after = _servers(stats)
        finally:
            if heard is not None:
                heard.close()
            proxy.send_signal(signal.SIGTERM)
            proxy_status = proxy.wait(STATE_TIMEOUT_S)
            balancer.terminate()
            balancer.wait(STATE_TIMEOUT_S)
            shutil.rmtree(short, ignore_errors=True)
        assert proxy_status == 0, proxy.stderr.read().decode() if proxy.stderr else ""

    got = heard.events
    ends = [e for e in got if isinstance(e, events.StreamEndEvent)]
    intents = [e for e in got if isinstance(e, events.IntentEvent)]
    survivors = {instances[0], instances[2]}
    # Every event came from one of our daemons; the default instance id is HOSTNAME:PID.
    assert {e.instance for e in got} == set(instances)
    # No stream ended twice; every stream sent after the victim died ended on a survivor.
    by_stream = Counter(e.stream_id for e in ends)
    assert set(by_stream.values()) == {1}, [s for s, n in by_stream.items() if n > 1]
    later = {p.name for p in files[FILES // 2:]} | {p.name + AGAIN for p in again}
    assert later <= set(by_stream) and all(e.instance in survivors for e in ends if e.stream_id in later)
    # Every utterance a survivor heard arrived exactly once, and each stream's end accounts for all of them.
    keys = Counter((e.instance, e.stream_id, e.utterance) for e in intents)
    assert max(keys.values()) == 1, [k for k, n in keys.items() if n > 1]
    for end in ends:
        if end.instance in survivors:
            mine = sorted(u for (i, s, u) in keys if (i, s) == (end.instance, end.stream_id))
            assert end.utterances == end.classified == len(mine) and mine == list(range(len(mine))), end
    assert sum(e.classified for e in ends if e.instance in survivors) >= FILES // 2
    # Gap detection per instance: three interleaved seq counters, no gap and no "restart" in any of them.
    assert set(heard.sub.instances) == set(instances)
    assert (heard.sub.missed, heard.sub.restarts, heard.sub.missed_by_instance) == (0, 0, {})
    # The balancer marked the victim down and sent it no connection after that.
    assert after["d1"]["status"] == "DOWN" and after["d1"]["stot"] == down["d1"]["stot"]
    assert int(after["d0"]["stot"]) > int(down["d0"]["stot"]) and int(after["d2"]["stot"]) > int(down["d2"]["stot"])
    print(f"{first.count(False)} of {FILES // 2} first-half streams were cut by the kill; {len(again)} sent again")
