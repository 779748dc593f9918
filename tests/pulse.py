"""A private PulseAudio daemon with a virtual sine source, so PortAudio sees a real `pulse` input device.

Needs the apt packages pulseaudio, pulseaudio-utils (pactl), libasound2-plugins (ALSA's pulse plugin) and
libportaudio2. `skip_reason()` says what is missing so tests skip cleanly.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

START_TIMEOUT_S = 10.0
PULSE_DEVICE = "pulse"  # the ALSA pcm that libasound2-plugins routes to PULSE_SERVER


def skip_reason() -> str | None:
    """Why a PulseAudio-backed test cannot run here, or None."""
    for tool in ("pulseaudio", "pactl"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt install pulseaudio pulseaudio-utils)"
    if not glob.glob("/usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so") and not glob.glob(
        "/usr/lib/alsa-lib/libasound_module_pcm_pulse.so"
    ):
        return "ALSA pulse plugin not installed (apt install libasound2-plugins)"
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError) as err:
        return f"sounddevice/PortAudio unavailable (apt install libportaudio2): {err}"
    return None


class PrivatePulse:
    """One pulseaudio process serving a sine source on a private socket; restartable to simulate loss."""

    def __init__(self, root: Path, frequency_hz: float, rate: int) -> None:
        self.root = root
        self.socket = root / "native"
        self.frequency_hz = frequency_hz
        self.rate = rate
        self._proc: subprocess.Popen[bytes] | None = None
        (root / "runtime").mkdir(parents=True, exist_ok=True)
        (root / "pa.cfg").write_text(
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.socket}\n"
            "load-module module-null-sink sink_name=nullsink\n"
            f"load-module module-sine-source source_name=sine frequency={frequency_hz:g} rate={rate}\n"
            "set-default-source sine\n"
        )

    @property
    def env(self) -> dict[str, str]:
        """Environment for clients (libpulse via ALSA's pulse plugin) to reach this daemon."""
        return {
            "PULSE_SERVER": f"unix:{self.socket}",
            "PULSE_RUNTIME_PATH": str(self.root / "runtime"),
        }

    def start(self) -> None:
        """Start the daemon and wait until it answers."""
        env = {**os.environ, **self.env, "HOME": str(self.root)}
        self._proc = subprocess.Popen(
            [
                "pulseaudio",
                "-n",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--system=false",
                "--disallow-exit",
                "-F",
                str(self.root / "pa.cfg"),
                "--log-target=stderr",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "pulse.log").open("ab"),
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"pulseaudio exited: {(self.root / 'pulse.log').read_text()[-2000:]}")
            ok = (
                subprocess.run(
                    ["pactl", "info"], check=False, env=env, capture_output=True, timeout=5
                ).returncode
                == 0
            )
            if ok:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("pulseaudio did not answer within the start timeout")

    def stop(self) -> None:
        """Kill the daemon (abruptly, as a vanished device would) and wait for it."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(timeout=10)
        self._proc = None


@contextmanager
def private_pulse(root: Path, frequency_hz: float = 440.0, rate: int = 48000) -> Iterator[PrivatePulse]:
    """Run a PrivatePulse for the block and point this process's libpulse at it."""
    pulse = PrivatePulse(root, frequency_hz, rate)
    saved = {k: os.environ.get(k) for k in pulse.env}
    os.environ.update(pulse.env)
    try:
        pulse.start()
        yield pulse
    finally:
        pulse.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
