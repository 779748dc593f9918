"""The unit file passes systemd's own checks: `systemd-analyze verify` and an exposure score of 2.0 or less."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "intentd.service"
MAX_EXPOSURE = 2.0

analyze = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(analyze is None, reason="systemd-analyze not installed (Debian package systemd)")


def _installed_copy(tmp_path: Path) -> Path:
    """The unit as install-service writes it, pointing at this checkout's intentd so verify can find it."""
    intentd = Path(sys.executable).parent / "intentd"
    assert intentd.exists(), "intentd console script missing: run scripts/setup.sh"
    text = UNIT.read_text().replace("/opt/intentd/.venv/bin/intentd", str(intentd))
    copy = tmp_path / "intentd.service"
    copy.write_text(text)
    return copy


def test_unit_verifies(tmp_path: Path) -> None:
    result = subprocess.run([analyze, "verify", str(_installed_copy(tmp_path))], check=False,
                            capture_output=True, text=True,
                            timeout=60)
    # verify prints nothing for a clean unit; some hosts add notes about other units, never about ours.
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "intentd.service" in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


def test_unit_exposure_is_low(tmp_path: Path) -> None:
    result = subprocess.run([analyze, "security", "--offline=true", str(_installed_copy(tmp_path))],
                            check=False, capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for intentd\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE


def test_unit_promises_the_lifecycle() -> None:
    from intentd.daemon.main import EXIT_CONFIG, EXIT_NO_MODEL

    text = UNIT.read_text()
    # A restart cannot fix a bad config or a missing model: the unit must not loop on the daemon's codes for them.
    assert f"RestartPreventExitStatus={EXIT_CONFIG} {EXIT_NO_MODEL}" in text
    # Other failures (a busy port: 69) are retried, but not forever: a start limit in [Unit] ends the loop.
    unit_section = text.split("[Service]", 1)[0]
    assert "StartLimitIntervalSec=" in unit_section and "StartLimitBurst=" in unit_section
    def value(key: str) -> int:
        match = re.search(rf"^{key}=(\d+)s?$", text, re.MULTILINE)
        assert match, key
        return int(match.group(1))

    interval, burst, restart_s = value("StartLimitIntervalSec"), value("StartLimitBurst"), value("RestartSec")
    # The limit must be reachable: `burst` restarts, `restart_s` apart, fit inside the interval.
    assert 1 < burst and burst * restart_s < interval
    for line in ("Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
                 "TimeoutStopSec=", "DynamicUser=yes", "SupplementaryGroups=audio",
                 "StateDirectory=intentd", "ConfigurationDirectory=intentd", "LimitNOFILE=65536"):
        assert line in text, line
