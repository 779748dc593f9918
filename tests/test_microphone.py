"""The microphone source through a real PortAudio device: ALSA's `pulse` pcm on a private PulseAudio sine source."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from intentd.daemon.errors import SourceError
from intentd.daemon.sources.microphone import (
    InputDevice,
    MicrophoneSource,
    find_device,
    list_devices,
    refresh_devices,
)
from tests.pulse import PULSE_DEVICE, private_pulse, skip_reason
from tests.recording_sink import RecordingSink

SINE_HZ = 440.0
TIMEOUT_S = 20.0
LIVE_START_TIMEOUT_S = 60.0  # intentd-live's imports and its first accept, on a busy 2-core host


def _dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * rate / samples.size)


def test_find_device_by_index_name_and_default() -> None:
    devices = [
        InputDevice(0, "HDA Intel PCH: ALC3246 Analog (hw:0,0)", 2, 48000.0, "ALSA", False),
        InputDevice(3, "USB Audio Device", 1, 44100.0, "ALSA", True),
        InputDevice(4, "pulse", 32, 44100.0, "ALSA", False),
    ]
    assert find_device(devices, 3).index == 3
    assert find_device(devices, "usb audio").index == 3
    assert find_device(devices, "pulse").index == 4
    assert find_device(devices, None).index == 3
    with pytest.raises(SourceError, match="no input device matches"):
        find_device(devices, "webcam")
    with pytest.raises(SourceError, match="no input device with that index"):
        find_device(devices, 9)


@pytest.fixture
def pulse_root(tmp_path: Path) -> Path:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    # A short path: unix socket paths are limited to 108 bytes and pytest's tmp paths can be long.
    return tmp_path


def test_microphone_delivers_the_sine_at_the_device_rate(pulse_root: Path) -> None:
    with private_pulse(pulse_root, frequency_hz=SINE_HZ):
        refresh_devices()  # PortAudio may have enumerated ALSA before this PulseAudio existed
        device = find_device(list_devices(), PULSE_DEVICE)
        rate = int(device.default_sample_rate)
        sink = RecordingSink()

        async def run() -> None:
            mic = MicrophoneSource(PULSE_DEVICE, sink, stream_id="mic", chunk_ms=20)
            await mic.start()
            await asyncio.wait_for(
                sink.wait_until(lambda: any(r.samples.size >= rate for r in sink.streams)), TIMEOUT_S
            )
            await mic.close()

        asyncio.run(run())
    rec = sink.by_id("mic")
    assert rec.closed and rec.reason == "server shutting down"
    assert rec.sample_rate == rate
    audio = rec.samples[-rate // 2 :]  # skip any start-up transient
    assert float(np.sqrt(np.mean(audio**2))) > 0.1
    assert abs(_dominant_hz(audio, rate) - SINE_HZ) < 5.0
    starts = [c.start_sample for c in rec.chunks]
    assert starts == list(np.cumsum([0] + [c.samples.size for c in rec.chunks])[:-1])


def vanish_scenario(root: Path) -> dict[str, object]:
    """Capture, kill PulseAudio mid-stream, restart it; report what the sink saw (run in a child process)."""
    with private_pulse(root, frequency_hz=SINE_HZ) as pulse:
        refresh_devices()
        sink = RecordingSink()

        async def run() -> MicrophoneSource:
            mic = MicrophoneSource(
                PULSE_DEVICE, sink, stream_id="mic", retry_initial_s=0.1, retry_max_s=0.4, stall_timeout_s=0.5
            )
            await mic.start()
            await asyncio.wait_for(sink.wait_until(lambda: any(r.chunks for r in sink.streams)), TIMEOUT_S)
            await asyncio.to_thread(pulse.stop)  # the device vanishes mid-stream
            await asyncio.wait_for(sink.wait_until(lambda: sink.streams[0].closed), TIMEOUT_S)
            await asyncio.to_thread(pulse.start)
            # sessions counts once PortAudio's start() has returned, which on a loaded host can come after the
            # first blocks have already reached the sink: wait for both.
            await asyncio.wait_for(
                sink.wait_until(lambda: len(sink.streams) >= 2 and len(sink.streams[-1].chunks) > 5),
                TIMEOUT_S,
            )
            deadline = time.monotonic() + TIMEOUT_S
            while mic.sessions < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await mic.close()
            return mic

        mic = asyncio.run(run())
    return {
        "first_reason": sink.streams[0].reason,
        "last_reason": sink.streams[-1].reason,
        "last_closed": sink.streams[-1].closed,
        "sessions": mic.sessions,
    }


_CHILD = (
    "import json, os, sys; from pathlib import Path; from tests.test_microphone import vanish_scenario; "
    "print(json.dumps(vanish_scenario(Path(sys.argv[1]))), flush=True); "
    # PortAudio's atexit Pa_Terminate can block forever once its ALSA-pulse backend lost the server mid-stream;
    # that is PortAudio's, not the source's, so the child skips it.
    "os._exit(0)"
)


def test_vanished_device_is_retried_and_recovers(pulse_root: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(pulse_root)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=3 * TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["first_reason"] is not None and "failed" in seen["first_reason"]
    assert seen["last_closed"] and seen["last_reason"] == "server shutting down"
    assert seen["sessions"] >= 2


class _Screen:
    """What a program writes to its terminal (the master side of a pty), read on a thread, searchable in order."""

    def __init__(self, master_fd: int) -> None:
        self._fd = master_fd
        self._text = ""
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 4096)
            except OSError:  # EIO: the program closed its side
                data = b""
            with self._changed:
                if not data:
                    self._changed.notify_all()
                    return
                self._text += data.decode("utf-8", "replace")
                self._changed.notify_all()

    def wait_for(self, what: str, after: int, timeout_s: float) -> int:
        """The end of the first `what` written after offset `after`; AssertionError with the screen if none comes."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while (found := self._text.find(what, after)) < 0:
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise AssertionError(f"{what!r} not shown after offset {after}; the screen:\n"
                                         f"{self._text[-3000:]!r}")
                self._changed.wait(left)
            return found + len(what)


def test_intentd_live_shows_speech_and_silence_with_the_default_config(
        pulse_root: Path, tiny_whisper_dir: Path) -> None:
    """The daemon's publisher.vad_events is off (the default); intentd-live's stream asks for its own vad events
    in its header, so its status line goes silence -> SPEECH -> silence as words reach the microphone."""
    from tests.daemon_proc import clean_env, running_daemon, speech_clips, tool, write_speech_wav

    wav = write_speech_wav(pulse_root / "speech.wav", speech_clips(1, pulse_root / "tts"), lead_s=0.3, tail_s=1.5)
    with running_daemon(pulse_root / "d", tiny_whisper_dir) as d, private_pulse(pulse_root / "p"):
        assert "vad_events" not in d.sections["publisher"]
        # The microphone hears the null sink's monitor: silence until paplay plays the words into that sink.
        subprocess.run(["pactl", "set-default-source", "nullsink.monitor"], check=True, timeout=TIMEOUT_S)
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [*tool("intentd-live"), "--to", d.audio_uri, "--connect", d.events_uri, "--mic", PULSE_DEVICE,
             "--stream-id", "live-vad", "--no-color"],
            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=clean_env())
        os.close(slave)
        screen = _Screen(master)
        try:
            # Accepted with its vad events: silence shows before anyone speaks (not 'vad ?').
            accepted = screen.wait_for("silence", 0, LIVE_START_TIMEOUT_S)
            subprocess.run(["paplay", "--device=nullsink", str(wav)], check=True, timeout=TIMEOUT_S)
            spoke = screen.wait_for("SPEECH", accepted, TIMEOUT_S)
            screen.wait_for("silence", spoke, TIMEOUT_S)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=TIMEOUT_S)
            finally:
                if proc.poll() is None:
                    proc.kill()
                os.close(master)
        assert proc.returncode == 0
        assert "stream live-vad opened" in d.log_text()
