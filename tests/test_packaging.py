"""The distribution installs one top-level name, `intentd`: the folders daemon/, train/ and clients/ become
intentd.daemon, intentd.train and intentd.clients (pyproject's package-dir), so nothing shadows python-daemon's
`daemon`, and the console scripts still start. Built as a real wheel and installed into a fresh venv."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"intentd", "intentd-train", "intentd-sub", "intentd-send", "intentd-live", "intentd-proxy"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy, so setuptools' build/ and egg-info land there rather than in the checkout.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, source / name)
    for folder in ("daemon", "train", "clients"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    # --no-build-isolation: offline, with the setuptools the dev extra installs (>= 77, as pyproject requires).
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(source)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("intentd-*.whl")
    return built


def test_the_wheel_holds_one_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"intentd"}, tops
    assert not any(n.startswith("intentd/__init__") for n in names)  # a namespace package: no folder of its own
    for module in ("intentd/daemon/main.py", "intentd/daemon/sources/__init__.py", "intentd/train/cli.py",
                   "intentd/clients/subscriber.py", "intentd/train/intents/minds14.toml",
                   "intentd/train/metrics/accuracy/accuracy.py"):
        assert module in names, module
    (entry,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(zipfile.ZipFile(wheel).read(entry).decode())
    scripts = dict(parser["console_scripts"])
    assert set(scripts) == SCRIPTS
    assert all(target.startswith("intentd.") for target in scripts.values()), scripts


def test_a_fresh_venv_imports_intentd_and_no_bare_daemon(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    # Run from an empty folder, so nothing resolves to this checkout's folders. Only stdlib-only modules are
    # imported: --no-deps installed no pyzmq or torch.
    code = ("import importlib.util as u, intentd.daemon.version as v, intentd.daemon.errors, intentd.train\n"
            "from importlib import resources\n"
            "print(v.version_text('intentd'))\n"
            "print([n for n in ('daemon', 'train', 'clients') if u.find_spec(n) is not None])\n"
            "print(resources.files('intentd.train').joinpath('intents', 'minds14.toml').is_file())\n")
    done = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert done.stdout.splitlines() == [f"intentd (intentd) {version}", "[]", "True"], done.stdout
    assert SCRIPTS <= {p.name for p in (env_dir / "bin").iterdir()}
