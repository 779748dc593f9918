"""`pip install intentd` without extras is the clients alone: no torch, and everything the clients import.

The check runs offline: the default dependencies (pyproject.toml) and what they require in turn, as installed
here, are the only third-party modules a subprocess may import while it loads every client and runs their parsers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "torchaudio", "torchcodec", "transformers", "onnxruntime", "onnx", "datasets", "accelerate"}
CLIENT_MODULES = ("intentd.clients.subscriber", "intentd.clients.sub", "intentd.clients.send", "intentd.clients.live",
                  "intentd.daemon.proxy")
OURS = {"intentd", "tests"}

# Imports every client with a meta-path finder that refuses third-party modules outside the allowed set.
GUARD = r"""
import importlib, json, sys
allowed = set(json.loads(sys.argv[1]))
installed = set(json.loads(sys.argv[3]))  # third-party top-level modules this environment has
refused = []

class Guard:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in installed or top in allowed:
            return None  # stdlib, ours, allowed, or absent anyway (the stdlib probes for some, e.g. `org`)
        refused.append(name)
        raise ImportError(f"{name}: not installed by a plain `pip install intentd`")

sys.meta_path.insert(0, Guard())
for module in json.loads(sys.argv[2]):
    mod = importlib.import_module(module)
    if hasattr(mod, "build_parser"):
        mod.build_parser()
print(json.dumps({"refused": refused, "torch": "torch" in sys.modules}))
"""


def _base_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def _closure(requirements: list[Requirement]) -> set[str]:
    """Distribution names the requirements pull in, recursively, as installed here (extras-only ones left out)."""
    seen: set[str] = set()
    todo = [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(req.name) or []:
            sub = Requirement(line)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                todo.append(sub)
    return seen


def test_the_default_dependencies_hold_no_torch() -> None:
    names = {r.name.lower() for r in _base_requirements()}
    assert not names & HEAVY, names & HEAVY
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    assert any(Requirement(r).name == "torch" for r in extras["daemon"])
    # PEP 639's license = "MIT" needs setuptools 77.
    assert project["build-system"]["requires"] == ["setuptools>=77"]


def test_every_client_imports_with_the_default_dependencies_alone() -> None:
    dists = _closure(_base_requirements())
    modules = {top for top, owners in metadata.packages_distributions().items()
               if any(o.lower().replace("_", "-") in dists for o in owners)}
    installed = set(metadata.packages_distributions()) - OURS
    done = subprocess.run([sys.executable, "-c", GUARD, json.dumps(sorted(modules | OURS)),
                           json.dumps(CLIENT_MODULES), json.dumps(sorted(installed))], capture_output=True, text=True, cwd=REPO, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"refused": [], "torch": False}, result


def test_intentd_without_the_daemon_extra_says_what_to_install() -> None:
    # sys.modules[name] = None is how Python marks a module as absent: find_spec() then answers None.
    code = ("import sys; sys.modules['torch'] = None; from intentd.daemon.main import main; "
            "sys.exit(main(['--check', '--model', 'anything']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          check=False)
    assert done.returncode == 1, done
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "intentd[daemon]" in lines[0], lines
    assert "torch" in lines[0]
