"""The layering holds: the runtime never imports training code, clients never import torch, and the daemon
modules clients and train may use are the ones docs/DEVELOPING.md names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("daemon", "train", "clients")  # folders here, installed as intentd.daemon, intentd.train, intentd.clients
CLIENT_MAY_USE = {f"intentd.daemon.{m}" for m in ("protocol", "events", "audio", "errors", "version")}
TRAIN_MAY_USE = CLIENT_MAY_USE | {f"intentd.daemon.{m}" for m in ("resample", "classifier", "windows", "frames",
                                                                   "slot_heads", "grammar", "grammar_decoder")}


def imports(package: str) -> dict[str, set[str]]:
    """Every module a package's files import (at any depth, functions included), by file."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names |= {f"{node.module}.{a.name}" for a in node.names}
        found[str(path.relative_to(REPO))] = names
    return found


def test_the_daemon_never_imports_training_code() -> None:
    for path, names in imports("daemon").items():
        assert not {n for n in names if n == "intentd.train" or n.startswith("intentd.train.")}, path


def test_clients_and_train_use_only_the_daemon_modules_they_may() -> None:
    for package, allowed in (("clients", CLIENT_MAY_USE), ("train", TRAIN_MAY_USE)):
        for path, names in imports(package).items():
            used = {n for n in names if n.startswith("intentd.daemon.") and n.count(".") == 2}
            used -= {n for n in used if any(n.startswith(f"{a}.") for a in allowed)}  # intentd.daemon.events.X
            modules = {n for n in used if (REPO / (n.removeprefix("intentd.").replace(".", "/") + ".py")).exists()}
            assert modules <= allowed, f"{path} imports {sorted(modules - allowed)}"


def test_importing_every_client_loads_no_torch() -> None:
    # intentd-proxy lives in daemon/ (it reuses the daemon's CURVE allow-list) but runs beside clients: torch-free.
    code = ("import sys, intentd.clients.sub, intentd.clients.send, intentd.clients.live, intentd.clients.subscriber,"
            " intentd.daemon.proxy\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')"
            " or m.startswith('intentd.train')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_nothing_imports_the_folders_by_their_top_level_names() -> None:
    # The folders install as intentd.daemon/intentd.train/intentd.clients (pyproject's package-dir); a bare
    # `import daemon` would load python-daemon where it is installed, or a second copy of our module beside the first.
    for where in (*PACKAGES, "tests", "bench", "scripts"):
        for path, names in imports(where).items():
            bare = sorted(n for n in names if n.split(".")[0] in PACKAGES)
            assert not bare, f"{path} imports {bare}: write intentd.{bare[0]}"
