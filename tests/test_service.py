"""A running intentd against bad input and bad configuration: it answers, logs, keeps serving good streams."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from intentd.clients.subscriber import Subscriber
from intentd.daemon import events
from intentd.daemon.audio import SAMPLE_RATE
from intentd.daemon.protocol import (
    KIND_AUDIO,
    MAGIC,
    MAX_CHUNK_BYTES,
    VERSION,
    ReplyDecoder,
    StreamHeader,
    encode_audio,
    encode_end,
    encode_header,
    encode_pcm,
)
from tests.daemon_proc import (
    DaemonProc,
    collect,
    running_daemon,
    speech_clips,
    tool,
    write_config,
    write_speech_wav,
)
from tests.tiny_models import build_tiny_whisper

pytestmark = pytest.mark.slow

IDLE_TIMEOUT_S = 1.0
MAX_UTTERANCE_MS = 2500
EVENT_TIMEOUT_S = 60.0
REPLY_TIMEOUT_S = 30.0
EXIT_CONFIG, EXIT_NO_MODEL, EXIT_UNAVAILABLE = 78, 66, 69
# Python, zmq and the settings, no torch: a busy port is known long before a model could load.
BUSY_PORT_FAIL_S = 1.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("svc") / "tiny-svc", seed=1)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    return speech_clips(4, tmp_path_factory.mktemp("svc-clips"), seed=3)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[DaemonProc]:
    sections = {"sources": {"idle_timeout_s": IDLE_TIMEOUT_S}, "vad": {"max_utterance_ms": MAX_UTTERANCE_MS}}
    with running_daemon(tmp_path_factory.mktemp("svc-daemon"), model_dir, sections) as d:
        yield d


# --------------------------------------------------------------------------------------------- raw clients


def _port(uri: str) -> int:
    return int(uri.rsplit(":", 1)[1])


class RawClient:
    """A plain blocking socket speaking (or mis-speaking) the ingest protocol."""

    def __init__(self, uri: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", _port(uri)), timeout=REPLY_TIMEOUT_S)
        self._dec = ReplyDecoder()
        self.replies: list = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> object:
        """The next reply (None once the server closed)."""
        while not self.replies:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.replies += self._dec.feed(data)
        return self.replies.pop(0)

    def vanish(self) -> None:
        """Close with a TCP reset, as a crashed client would."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def raw_header(**fields: object) -> bytes:
    body = json.dumps(fields).encode()
    return MAGIC + bytes([VERSION]) + struct.pack(">H", len(body)) + body


def expect_error(client: RawClient, *words: str) -> str:
    reply = client.reply()
    assert reply is not None and reply.type == "error", reply
    for word in words:
        assert word in reply.reason, reply.reason
    client.close()
    return reply.reason


def opened(daemon: DaemonProc, stream_id: str, fmt: str = "s16le") -> RawClient:
    client = RawClient(daemon.audio_uri)
    client.send(encode_header(StreamHeader(stream_id, SAMPLE_RATE, fmt, 1)))  # type: ignore[arg-type]
    reply = client.reply()
    assert reply is not None and reply.type == "accept", reply
    return client


def pcm(samples: np.ndarray, fmt: str = "s16le") -> bytes:
    return encode_audio(encode_pcm(samples, fmt))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- tests


def test_bad_clients_are_refused_while_a_good_stream_gets_every_event(
    daemon: DaemonProc, clips: list[np.ndarray], tmp_path: Path
) -> None:
    good_wav = write_speech_wav(tmp_path / "good.wav", clips[:2])
    rng = np.random.default_rng(0)
    with Subscriber(daemon.events_uri, recv_timeout_s=EVENT_TIMEOUT_S) as sub:
        assert sub.wait_connected(30.0)
        # The good stream runs at real time for its whole length, concurrently with every bad client below.
        good = subprocess.Popen([*tool("intentd-send"), "--to", daemon.audio_uri, "--realtime", "--stream-id",
                                 "good", str(good_wav)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            c = RawClient(daemon.audio_uri)
            c.send(MAGIC + bytes([VERSION]) + struct.pack(">H", 7) + b"{bad js")
            expect_error(c, "header")

            c = RawClient(daemon.audio_uri)
            c.send(b"NOPE\x01\x00\x10")
            expect_error(c)

            c = RawClient(daemon.audio_uri)
            c.send(raw_header(stream_id="x", sample_rate=48000, format="s16le", channels=1)[:20])
            c.sock.shutdown(socket.SHUT_WR)  # truncated inside the header
            expect_error(c, "truncated")

            c = RawClient(daemon.audio_uri)
            c.send(raw_header(stream_id="rate", sample_rate=4000, format="s16le", channels=1))
            expect_error(c, "sample_rate")

            c = opened(daemon, "oversized")
            c.send(struct.pack(">BI", KIND_AUDIO, MAX_CHUNK_BYTES + 1))
            expect_error(c, "chunk")

            c = opened(daemon, "nan", "f32le")
            c.send(pcm(clips[2][:SAMPLE_RATE], "f32le"))
            c.send(pcm(np.array([0.1, np.nan, 0.2], dtype=np.float32), "f32le"))
            expect_error(c, "NaN")

            # Speech without trailing silence, then nothing: the idle timeout ends the stream, and what was
            # heard is still classified.
            c = opened(daemon, "stalled")
            c.send(pcm(clips[2]))
            expect_error(c, "idle")

            # Speech, then the client crashes (TCP reset) mid-utterance.
            c = opened(daemon, "vanished")
            c.send(pcm(clips[3]) + pcm(clips[3])[:3])  # ...and a frame head cut short
            c.close()

            c = opened(daemon, "silence")
            c.send(pcm(np.zeros(6 * SAMPLE_RATE, dtype=np.float32)))
            c.send(encode_end())
            final = c.reply()
            assert final is not None and final.type == "final" and final.fields["samples"] == 6 * SAMPLE_RATE
            c.close()

            # Endless "speech": loud noise longer than two maximum utterances.
            c = opened(daemon, "endless")
            noise = (0.5 * rng.standard_normal(6 * SAMPLE_RATE)).clip(-1, 1).astype(np.float32)
            c.send(pcm(noise))
            c.send(encode_end())
            assert c.reply().type == "final"  # type: ignore[union-attr]
            c.close()

            expected = {"good": 2, "stalled": 1, "vanished": 1, "endless": 3}
            got: dict[str, list[events.IntentEvent]] = {}

            def keep(e: events.Event) -> bool:
                if isinstance(e, events.IntentEvent):
                    got.setdefault(e.stream_id, []).append(e)
                return isinstance(e, (events.IntentEvent, events.DroppedEvent, events.ErrorEvent))

            def done(_: list[events.Event]) -> bool:
                return all(len(got.get(sid, ())) >= n for sid, n in expected.items())

            seen = collect(sub, done, EVENT_TIMEOUT_S, keep)
            assert good.wait(EVENT_TIMEOUT_S) == 0, good.stderr.read() if good.stderr else ""
            # Every stream above has ended; a last stream's event proves anything they queued came out first
            # (one FIFO batcher), so the counts below are exact, not "at least".
            c = opened(daemon, "sentinel")
            c.send(pcm(clips[0]) + encode_end())
            assert c.reply().type == "final"  # type: ignore[union-attr]
            c.close()
            seen += collect(sub, lambda _: "sentinel" in got, EVENT_TIMEOUT_S, keep)
        finally:
            if good.poll() is None:
                good.kill()
                good.wait()
        assert {sid: len(v) for sid, v in got.items() if sid in expected} == expected, [
            (e.stream_id, e.utterance, e.start_s, e.end_s, e.truncated) for e in seen]
        assert "silence" not in got and "oversized" not in got
        # nan: the second of speech before the NaN chunk is classified like any vanished stream's audio; the
        # NaN samples themselves never reach the model.
        assert len(got.get("nan", ())) == 1
        assert all(np.isfinite(e.score) for evs in got.values() for e in evs)
        assert [e.utterance for e in got["good"]] == [0, 1]
        assert all(not e.truncated for e in got["good"] + got["stalled"] + got["vanished"])
        endless = got["endless"]
        # 6 s of noise: two maximum-length utterances flagged truncated, then the rest.
        assert [e.truncated for e in endless] == [True, True, False]
        for e in endless[:2]:
            assert e.duration_s == pytest.approx(MAX_UTTERANCE_MS / 1000, abs=0.05)
        assert not [e for e in seen if isinstance(e, (events.DroppedEvent, events.ErrorEvent))]
    assert daemon.alive()
    log = daemon.log_text()
    for word in ("idle timeout", "NaN", "oversized", "sample_rate", "truncated"):
        assert word in log, f"no log line about {word!r}"


def test_daemon_still_serves_after_bad_clients(daemon: DaemonProc, clips: list[np.ndarray]) -> None:
    with Subscriber(daemon.events_uri, stream_id="after", recv_timeout_s=EVENT_TIMEOUT_S) as sub:
        assert sub.wait_connected(30.0)
        c = opened(daemon, "after")
        c.send(pcm(clips[0]) + pcm(np.zeros(SAMPLE_RATE, dtype=np.float32)) + encode_end())
        assert c.reply().type == "final"  # type: ignore[union-attr]
        c.close()
        evs = collect(sub, lambda k: len(k) >= 1, EVENT_TIMEOUT_S, lambda e: isinstance(e, events.IntentEvent))
        assert len(evs) == 1 and evs[0].stream_id == "after"
    assert daemon.alive()


# --------------------------------------------------------------------------------------------- config errors


def run_intentd(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*tool("intentd"), *args], capture_output=True, text=True, timeout=timeout_s,
                          check=False)


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"model": {"pathh": "x"}}, "model.pathh"),
        ({"vad": {"aggressiveness": 7}}, "vad.aggressiveness"),
        ({"batcher": {"drop_policy": "random"}}, "batcher.drop_policy"),
        ({"sources": {"idle_timeout_s": "soon"}}, "sources.idle_timeout_s"),
        ({"nonsense": {"a": 1}}, "nonsense"),
    ],
)
def test_config_errors_exit_78_with_one_line_naming_the_key(
    tmp_path: Path, sections: dict, key: str
) -> None:
    config = write_config(tmp_path / "bad.toml", sections)
    done = run_intentd("--config", str(config))
    assert done.returncode == EXIT_CONFIG, done
    lines = error_lines(done)
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], lines


def test_missing_and_broken_model_folders_exit_66_with_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    for folder in (tmp_path / "no-such-model", broken):
        config = write_config(tmp_path / "m.toml", {"model": {"path": str(folder)},
                                                      "sources": {"listen": ["tcp://127.0.0.1:0"]},
                                                      "publisher": {"uri": "tcp://127.0.0.1:*"}})
        done = run_intentd("--config", str(config))
        assert done.returncode == EXIT_NO_MODEL, done
        lines = error_lines(done)
        # Log lines may come first (the event port is bound before the model loads); the failure is one line.
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and folder.name in errors[0] and "Traceback" not in done.stderr, lines


def test_check_validates_model_and_sources(tmp_path: Path, model_dir: Path) -> None:
    good = run_intentd("--model", str(model_dir), "--check")
    assert good.returncode == 0, good
    assert "OK" in good.stderr
    bad = run_intentd("--model", str(tmp_path / "nothing-here"), "--check")
    assert bad.returncode == EXIT_NO_MODEL, bad
    uri = run_intentd("--model", str(model_dir), "--listen", "carrier-pigeon://home", "--check")
    assert uri.returncode == EXIT_CONFIG, uri
    assert "carrier-pigeon" in uri.stderr


def test_busy_ports_exit_69_with_one_line(tmp_path: Path, model_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        uri = f"tcp://127.0.0.1:{busy.getsockname()[1]}"
        for flag, other, word in (("--publish", "--listen", "event publisher"), ("--listen", "--publish", "listen")):
            free = "tcp://127.0.0.1:0" if other == "--listen" else "tcp://127.0.0.1:*"
            done = run_intentd("--model", str(model_dir), flag, uri, other, free)
            assert done.returncode == EXIT_UNAVAILABLE, done
            lines = [line for line in error_lines(done) if line.startswith("error:")]
            assert len(lines) == 1 and uri in lines[0] and word in lines[0], error_lines(done)


def test_a_busy_port_fails_in_under_a_second_before_the_model_loads(
    tmp_path: Path, model_dir: Path
) -> None:
    """systemd restarts a 69; each try must not load the model first (seconds of CPU per restart)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for flags in (("--listen", "tcp://127.0.0.1:0", "--publish", f"tcp://127.0.0.1:{port}"),
                      ("--listen", "tcp://127.0.0.1:0", "--publish", "tcp://127.0.0.1:*", "--metrics",
                       f"127.0.0.1:{port}"),
                      ("--listen", f"tcp://127.0.0.1:{port}", "--publish", "tcp://127.0.0.1:*")):
            started = time.monotonic()
            done = run_intentd("--model", str(model_dir), *flags)
            took_s = time.monotonic() - started
            assert done.returncode == EXIT_UNAVAILABLE, done
            assert [line for line in error_lines(done) if line.startswith("error:")], done.stderr
            assert "model" not in done.stderr.lower() or "loaded" not in done.stderr.lower(), done.stderr
            assert took_s < BUSY_PORT_FAIL_S, f"{flags}: {took_s:.2f} s\n{done.stderr}"
        # --check validates beside a running daemon, whose ports are busy by design: it does not probe them.
        check = run_intentd("--model", str(model_dir), "--listen", f"tcp://127.0.0.1:{port}", "--check")
        assert check.returncode == 0, check.stderr
