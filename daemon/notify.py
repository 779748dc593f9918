"""systemd's sd_notify protocol: one datagram per state change to $NOTIFY_SOCKET, nothing without it."""

from __future__ import annotations

import logging
import os
import socket
import threading

log = logging.getLogger(__name__)


class Notifier:
    """Sends READY/RELOADING/STOPPING/WATCHDOG/STATUS lines; a no-op when not started by systemd."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        if not address:
            self._address = ""
            return
        # A leading '@' names a socket in the abstract namespace.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # Never block: sends run on the event loop, and a notify reader that falls max_dgram_qlen (often 10)
        # datagrams behind would otherwise freeze the whole daemon, signal handling included.
        self._sock.setblocking(False)
        self._backlogged = False
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        """True when a notify socket was given."""
        return self._sock is not None

    def send(self, *fields: str) -> None:
        """Send KEY=VALUE lines in one datagram; failures are logged, never raised (systemd may be gone)."""
        if self._sock is None:
            return
        message = "\n".join(fields).encode("utf-8")
        with self._lock:
            try:
                self._sock.sendto(message, self._address)
            except BlockingIOError:
                # The receiver is not reading; a lost STATUS or WATCHDOG matters less than a frozen loop.
                self.dropped += 1
                if not self._backlogged:
                    log.warning("systemd is not reading notifications at %s; dropping them until it does",
                                self._address.lstrip("\0"))
                self._backlogged = True
            except OSError as err:
                log.warning("cannot notify systemd at %s: %s", self._address.lstrip("\0"), err)
            else:
                self._backlogged = False

    def ready(self, status: str | None = None) -> None:
        """The service is up: model warm, sockets bound."""
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        """A reload started; systemd wants the monotonic time with it (systemd 253+ requires it)."""
        usec = int(_monotonic_usec())
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """Shutdown started."""
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        """The pipeline's health check passed."""
        self.send("WATCHDOG=1")

    def status(self, text: str) -> None:
        """A one-line status shown by `systemctl status`."""
        self.send(f"STATUS={text}")

    def close(self) -> None:
        """Release the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _monotonic_usec() -> float:
    import time

    return time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6


def watchdog_interval_s() -> float | None:
    """Half of systemd's WatchdogSec for this process, or None when no watchdog is armed."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
