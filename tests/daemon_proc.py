"""The one harness that runs `intentd` as a subprocess, for the tests and for bench/daemon_load.py.

Free ports, a config written from {section: {key: value}}, readiness from a fake NOTIFY_SOCKET (never
guessed: the daemon's READY=1 datagram arrives only after the model is warm and every socket is bound), events
collected from the publisher, and our console scripts run as subprocesses. Also here: speech clips (espeak-ng,
or FSDD digits) at the model's rate and WAVs of them joined with silence. A daemon that misbehaves raises
DaemonFailed, an AssertionError (a test failure under pytest) carrying its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from intentd.clients.subscriber import Subscriber
from intentd.daemon import events
from intentd.daemon.audio import SAMPLE_RATE, to_mono

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 90.0  # torch import + model load on a busy 2-core machine
STOP_TIMEOUT_S = 30.0
NOTIFY_POLL_S = 0.1
SUB_CONNECT_TIMEOUT_S = 20.0
COLLECT_POLL_S = 0.1
FSDD = REPO.parent / "shared" / "data" / "fsdd" / "recordings"
# Environment a test daemon must not inherit from whoever runs pytest (e.g. pytest itself under systemd).
_SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM")
# Test daemons share two cores with pytest and each other; benchmarks measure the configured model.threads.
_ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1"}


class DaemonFailed(AssertionError):
    """The daemon under test did not start, stop or publish as it should; the message carries its log."""


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without systemd's variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_ENV}
    env.update(extra or {})
    return env


def tool(name: str) -> list[str]:
    """The argv prefix for one of our console scripts, from the venv running the tests."""
    exe = BIN / name
    if exe.exists():
        return [str(exe)]
    modules = {"intentd": "intentd.daemon.main", "intentd-send": "intentd.clients.send",
               "intentd-train": "intentd.train.cli"}
    return [sys.executable, "-m", modules[name]]


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------- notify


class NotifySocket:
    """A fake systemd notify socket: a bound AF_UNIX datagram socket read by a thread, as systemd reads it.

    `reading=False` leaves it unread (a stuck manager): the sender's datagram queue fills up.
    """

    def __init__(self, reading: bool = True) -> None:
        # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
        self._dir = tempfile.mkdtemp(prefix="intentd-notify-")
        self.path = os.path.join(self._dir, "notify")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(NOTIFY_POLL_S)
        self.messages: list[dict[str, str]] = []
        self.received_at: list[float] = []
        self._read = 0  # messages already returned by wait_for
        self._cond = threading.Condition()
        self._closed = False
        self._reading = threading.Event()
        if reading:
            self._reading.set()
        self._thread = threading.Thread(target=self._run, name="fake-notify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            if not self._reading.wait(NOTIFY_POLL_S):
                continue
            try:
                data = self._sock.recv(65536)
            except (TimeoutError, OSError):
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._cond:
                self.messages.append(fields)
                self.received_at.append(time.monotonic())
                self._cond.notify_all()

    def pause(self) -> None:
        """Stop reading (datagrams queue up in the kernel, then the sender's sends fail or block)."""
        self._reading.clear()

    def resume(self) -> None:
        """Read again."""
        self._reading.set()

    def wait_for(
        self, key: str, value: str | None = None, timeout_s: float = 30.0, alive: Callable[[], bool] | None = None
    ) -> dict[str, str]:
        """The next unread message carrying KEY (=VALUE); AssertionError after timeout or if `alive()` fails."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                while self._read < len(self.messages):
                    msg = self.messages[self._read]
                    self._read += 1
                    if key in msg and (value is None or msg[key] == value):
                        return msg
                if alive is not None and not alive():
                    raise AssertionError(f"process ended before {key}={value}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {key}={value} within {timeout_s} s; got {self.messages}")
                self._cond.wait(min(left, NOTIFY_POLL_S))

    def snapshot(self) -> list[dict[str, str]]:
        """Every message so far."""
        with self._cond:
            return list(self.messages)

    def count(self, key: str, value: str | None = None) -> int:
        """How many messages so far carried KEY (=VALUE)."""
        return sum(1 for m in self.snapshot() if key in m and (value is None or m[key] == value))

    def close(self) -> None:
        """Stop reading, close and remove the socket."""
        self._closed = True
        self._reading.set()
        self._thread.join()
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------- config


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write {section: {key: value}} as a TOML file."""
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def merge(base: Mapping[str, Mapping[str, Any]], extra: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """Section-wise merge of two config dicts (extra wins)."""
    out = {name: dict(table) for name, table in base.items()}
    for name, table in extra.items():
        out.setdefault(name, {}).update(table)
    return out


# --------------------------------------------------------------------------------------------- daemon


@dataclass
class DaemonProc:
    """A running intentd subprocess and where to reach it."""

    proc: subprocess.Popen[bytes]
    config_path: Path
    sections: dict[str, dict[str, Any]]
    audio_uri: str
    events_uri: str
    notify: NotifySocket
    log_path: Path
    metrics_port: int | None = None
    _log_file: Any = field(default=None, repr=False)

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    @property
    def audio_address(self) -> tuple[str, int]:
        """(host, port) of the TCP audio socket."""
        host, port = self.audio_uri.removeprefix("tcp://").rsplit(":", 1)
        return host, int(port)

    def log_text(self) -> str:
        """Everything the daemon wrote to stdout/stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def rewrite_config(self, extra: Mapping[str, Mapping[str, Any]]) -> None:
        """Change the config file (for a SIGHUP reload)."""
        self.sections = merge(self.sections, extra)
        write_config(self.config_path, self.sections)

    def signal(self, sig: int) -> None:
        """Send a signal to the daemon."""
        self.proc.send_signal(sig)

    def wait_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Wait for the process to end; its exit status."""
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise DaemonFailed(f"intentd did not exit within {timeout_s} s:\n{self.log_text()}") from None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait; the exit status (killed after the timeout, then DaemonFailed)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise DaemonFailed(f"intentd ignored SIGTERM for {timeout_s} s:\n{self.log_text()}") from None
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if self._log_file is not None and not self._log_file.closed:
            self._log_file.close()
        self.notify.close()


def base_sections(model_dir: Path, audio_port: int, events_port: int) -> dict[str, dict[str, Any]]:
    """A config for tests: given ports, fast heartbeats (they end the subscriber's slow-joiner wait)."""
    return {
        "model": {"path": str(model_dir)},
        "sources": {"listen": [f"tcp://127.0.0.1:{audio_port}"]},
        "publisher": {"uri": f"tcp://127.0.0.1:{events_port}", "status_interval_s": 0.2},
        "service": {"log_level": "INFO", "drain_timeout_s": 20.0},
    }


def launch(
    tmp: Path,
    model_dir: Path,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    metrics: bool = False,
    *,
    name: str = "intentd",
    one_thread: bool = True,
    cwd: Path | None = None,
    nofile: tuple[int, int] | None = None,
) -> DaemonProc:
    """Start intentd on free ports (config TMP/NAME.toml, output TMP/NAME.log); returns before READY.

    `sections` go over base_sections; `env` over the caller's environment (systemd's variables removed);
    `one_thread` sets OMP_NUM_THREADS=1 (benchmarks pass False); `cwd` is its working folder (default TMP);
    `nofile` its (soft, hard) RLIMIT_NOFILE, e.g. systemd's default soft 1024.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    audio_port, events_port = free_port(), free_port()
    config = merge(base_sections(model_dir, audio_port, events_port), sections or {})
    metrics_port = None
    if metrics:
        metrics_port = free_port()
        config = merge(config, {"metrics": {"listen": f"127.0.0.1:{metrics_port}"}})
    config_path = write_config(tmp / f"{name}.toml", config)
    notify = NotifySocket()
    full_env = clean_env({"NOTIFY_SOCKET": notify.path, "PYTHONUNBUFFERED": "1",
                          **(_ONE_THREAD_ENV if one_thread else {}), **(env or {})})
    log_path = tmp / f"{name}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 -- closed by DaemonProc.stop
    command = [*tool("intentd"), "--config", str(config_path), *args]
    if nofile is not None:
        # The shell sets the limits and execs intentd in its place (same pid); soft first, so it stays <= hard.
        command = ["/bin/sh", "-c", 'ulimit -Sn "$0" && ulimit -Hn "$1" && shift && exec "$@"', *map(str, nofile), *command]
    proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=full_env, cwd=cwd or tmp)
    return DaemonProc(proc, config_path, dict(config), f"tcp://127.0.0.1:{audio_port}",
                      f"tcp://127.0.0.1:{events_port}", notify, log_path, metrics_port, log_file)


def start_daemon(tmp: Path, model_dir: Path, sections: Mapping[str, Mapping[str, Any]] | None = None,
                 env: Mapping[str, str] | None = None, metrics: bool = False, *, name: str = "intentd",
                 one_thread: bool = True, ready_timeout_s: float = READY_TIMEOUT_S, cwd: Path | None = None,
                 nofile: tuple[int, int] | None = None) -> DaemonProc:
    """launch(), then return once intentd has sent READY=1 (DaemonFailed with its log if it never does)."""
    d = launch(tmp, model_dir, sections, env, metrics=metrics, name=name, one_thread=one_thread, cwd=cwd,
               nofile=nofile)
    try:
        d.notify.wait_for("READY", "1", ready_timeout_s, alive=d.alive)
    except AssertionError as err:
        if d.alive():
            d.proc.kill()
        d.proc.wait()
        d._cleanup()
        raise DaemonFailed(f"{err}\nintentd log:\n{d.log_text()}") from None
    return d


@contextlib.contextmanager
def running_daemon(tmp: Path, model_dir: Path, sections: Mapping[str, Mapping[str, Any]] | None = None,
                   env: Mapping[str, str] | None = None, metrics: bool = False) -> Iterator[DaemonProc]:
    """A ready daemon, stopped (SIGTERM, then killed) when the block ends."""
    d = start_daemon(tmp, model_dir, sections, env, metrics)
    try:
        yield d
    finally:
        if d.alive():
            d.stop()
        else:
            d._cleanup()


def run_cli(name: str, *args: str, env: Mapping[str, str] | None = None,
            timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run one of our console scripts to completion, capturing its output."""
    return subprocess.run([*tool(name), *args], capture_output=True, text=True, env=clean_env(env),
                          timeout=timeout_s, check=False)


def send_files(uri: str, files: Sequence[Path], chunk_ms: int = 20, stream_id: str | None = None,
               timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    """intentd-send the files (concurrently, one stream each); asserts it exited 0."""
    extra = ["--stream-id", stream_id] if stream_id else []
    done = run_cli("intentd-send", "--to", uri, "--chunk-ms", str(chunk_ms), *extra,
                   *[str(f) for f in files], timeout_s=timeout_s)
    assert done.returncode == 0, f"intentd-send failed ({done.returncode}): {done.stderr}"
    return done


# --------------------------------------------------------------------------------------------- audio


def speech_clips(count: int, tmp: Path, seed: int = 0) -> list[np.ndarray]:
    """`count` different spoken clips at the model's rate: espeak-ng phrases, else FSDD digits, else skip."""
    import soundfile as sf

    from intentd.daemon.resample import resample  # torch: only for the tests that need speech

    phrases = ["check my account balance", "transfer money to savings", "please stop the card",
               "what is my balance today", "send fifty dollars to john", "cancel the payment now",
               "open a new account", "I lost my card"]
    clips: list[np.ndarray] = []
    espeak = shutil.which("espeak-ng")
    if espeak is not None:
        tmp.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            out = tmp / f"phrase-{seed}-{i}.wav"
            text = phrases[(seed + i) % len(phrases)]
            subprocess.run([espeak, "-s", str(150 + 10 * ((seed + i) % 4)), "-w", str(out), text], check=True,
                           capture_output=True)
            data, rate = sf.read(str(out), dtype="float32")
            clips.append(resample(to_mono(data, channels_axis=1), rate, SAMPLE_RATE))
        return clips
    files = sorted(FSDD.glob("*.wav")) if FSDD.is_dir() else []
    if len(files) < count:
        import pytest  # only here: benchmarks import this module without pytest

        pytest.skip("no speech audio: install espeak-ng or put FSDD in ../shared/data/fsdd")
    rng = np.random.default_rng(seed)
    for path in rng.choice(files, count, replace=False):
        data, rate = sf.read(str(path), dtype="float32")
        clips.append(resample(to_mono(data, channels_axis=1), rate, SAMPLE_RATE))
    return clips


def silence(seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Digital silence (webrtcvad calls it non-speech at every aggressiveness)."""
    return np.zeros(round(seconds * rate), dtype=np.float32)


def write_speech_wav(path: Path, clips: Sequence[np.ndarray], gap_s: float = 1.0, lead_s: float = 0.5,
                     tail_s: float = 1.0) -> Path:
    """Clips joined with silence, written as 16-bit PCM at SAMPLE_RATE."""
    import soundfile as sf

    parts = [silence(lead_s)]
    for i, clip in enumerate(clips):
        parts.append(clip)
        parts.append(silence(gap_s if i < len(clips) - 1 else tail_s))
    sf.write(str(path), np.clip(np.concatenate(parts), -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
    return path


# --------------------------------------------------------------------------------------------- events


def collect(sub: Any, done: Callable[[list[Any]], bool], timeout_s: float = 60.0,
            keep: Callable[[Any], bool] = lambda e: True) -> list[Any]:
    """Receive events (kept by `keep`) until `done(kept)` or the timeout; returns what was kept."""
    deadline = time.monotonic() + timeout_s
    kept: list[Any] = []
    while not done(kept):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        event = sub.recv(timeout_s=left)
        if event is not None and keep(event):
            kept.append(event)
    return kept


class EventCollector:
    """A subscriber thread keeping (receive wall time, event) for every message until close()."""

    def __init__(self, uri: str, connect_timeout_s: float = SUB_CONNECT_TIMEOUT_S) -> None:
        self._sub = Subscriber(uri, topics=("",), recv_timeout_s=COLLECT_POLL_S)
        if not self._sub.wait_connected(connect_timeout_s):
            self._sub.close()
            raise DaemonFailed(f"no status heartbeat from {uri} within {connect_timeout_s} s")
        self.records: list[tuple[float, events.Event]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-collector", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            event = self._sub.recv()
            if event is not None:
                with self._lock:
                    self.records.append((time.time(), event))

    def about(self, prefix: str) -> list[tuple[float, events.Event]]:
        """Records of events whose stream id starts with `prefix`."""
        with self._lock:
            return [(t, e) for t, e in self.records if str(e.raw.get("stream_id", "")).startswith(prefix)]

    @property
    def missed(self) -> int:
        """Seq gaps seen so far (lost events)."""
        return self._sub.missed

    def close(self) -> None:
        """Stop the thread and close the socket."""
        self._stop.set()
        self._thread.join()
        self._sub.close()


def serve_while(service: Any, drive: Callable[[], None], join_s: float = 60.0) -> int:
    """Run an in-process Service on this (main) thread while `drive` runs on another; then stop it.

    Signal handlers need the main thread, so the test's steps go to a driver thread. Whatever `drive` raises is
    re-raised here after the service has stopped; the service's exit status is returned.
    """
    problems: list[BaseException] = []

    def driver() -> None:
        try:
            drive()
        except BaseException as err:  # noqa: BLE001 -- handed to the main thread
            problems.append(err)
        finally:
            while service._loop is None and not problems:
                threading.Event().wait(0.05)
            service.request_stop()

    thread = threading.Thread(target=driver, name="test-driver")
    thread.start()
    try:
        status = int(service.run())
    finally:
        thread.join(join_s)
    if problems:
        raise problems[0]
    return status
