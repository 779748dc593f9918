"""config.toml and the typed settings: the reference file is the defaults, documented, and every error names its key."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from intentd.daemon import settings as settings_mod
from intentd.daemon.errors import ConfigError

REFERENCE = Path(__file__).resolve().parents[1] / "config.toml"


def test_reference_config_parses_and_equals_the_defaults() -> None:
    loaded = settings_mod.load(REFERENCE)
    defaults = settings_mod.from_dict({}, REFERENCE.parent)
    assert loaded == defaults


def test_reference_config_shows_every_key_with_a_comment_line_above_it() -> None:
    lines = REFERENCE.read_text(encoding="utf-8").splitlines()
    data = tomllib.loads(REFERENCE.read_text(encoding="utf-8"))
    documented = {(section, key) for section, key, _, _ in settings_mod.documented_fields()}
    in_file = {(section, key) for section, table in data.items() for key in table}
    assert in_file == documented
    section = None
    for i, line in enumerate(lines):
        if m := re.match(r"\[(\w+)\]", line):
            section = m.group(1)
        elif m := re.match(r"(\w+)\s*=", line):
            assert lines[i - 1].startswith("#"), f"{section}.{m.group(1)} has no comment line above it"
            assert "Default:" in lines[i - 1], f"{section}.{m.group(1)}: comment does not give the default"


def test_reference_config_defaults_match_the_code() -> None:
    data = tomllib.loads(REFERENCE.read_text(encoding="utf-8"))
    for section, key, default, _ in settings_mod.documented_fields():
        value = data[section][key]
        assert (tuple(value) if isinstance(value, list) else value) == default, f"{section}.{key}"


def _invalid_cases() -> list[tuple[dict[str, Any], str]]:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": {"nope": 1}}, "model.nope"),
        ({"nosection": {}}, "nosection"),
        ({"model": "not a table"}, "[model]"),
        ({"sources": {"listen": "tcp://127.0.0.1:1"}}, "sources.listen"),
        ({"sources": {"listen": []}}, "sources.listen"),
        ({"sources": {"listen": ["gopher://x"]}}, "sources.listen"),
        ({"vad": {"frame_ms": 25}}, "vad.frame_ms"),
        ({"vad": {"min_utterance_ms": 5000, "max_utterance_ms": 4000}}, "vad.min_utterance_ms"),
        # Rules between VAD keys come from the segmenter, checked at load time rather than at stream open.
        ({"vad": {"start_ms": 10}}, "vad.start_ms"),
        ({"vad": {"frame_ms": 30, "hangover_ms": 40, "preroll_ms": 2000, "max_utterance_ms": 1000}},
         "vad.max_utterance_ms"),
        ({"publisher": {"vad_events": 1}}, "publisher.vad_events"),
        ({"service": {"drain_timeout_s": float("nan")}}, "service.drain_timeout_s"),
        ({"service": {"stall_s": float("inf")}}, "service.stall_s"),
        ({"model": {"threads": True}}, "model.threads"),
    ]
    # Every bounded numeric key: one value below its range, one above.
    for section, key, default, meta in settings_mod.documented_fields():
        for bound, step in (("lo", -1), ("hi", 1)):
            if meta.get(bound) is not None:
                value = type(default)(meta[bound] + step)
                cases.append(({section: {key: value}}, f"{section}.{key}"))
        if meta.get("choices"):
            bad = 999 if isinstance(default, int) else "no-such-choice"
            cases.append(({section: {key: bad}}, f"{section}.{key}"))
    return cases


@pytest.mark.parametrize(("data", "key"), _invalid_cases(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_invalid_value_names_its_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_mod.from_dict(data)
    assert key in str(info.value)
    assert "\n" not in str(info.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[model\npath = 1\n")
    for path in (broken, tmp_path / "missing.toml"):
        with pytest.raises(ConfigError, match=re.escape(str(path))):
            settings_mod.load(path)
    bad_value = tmp_path / "value.toml"
    bad_value.write_text("[vad]\naggressiveness = 9\n")
    with pytest.raises(ConfigError, match=r"value\.toml.*vad\.aggressiveness"):
        settings_mod.load(bad_value)


def test_relative_model_path_resolves_against_the_config_folder(tmp_path: Path) -> None:
    cfg = tmp_path / "etc" / "intentd.toml"
    cfg.parent.mkdir()
    cfg.write_text('[model]\npath = "../models/x"\n')
    assert settings_mod.load(cfg).model_path() == (tmp_path / "models" / "x").resolve()


def test_overrides_are_checked_like_the_file() -> None:
    base = settings_mod.from_dict({})
    changed = settings_mod.replace(base, **{"sources.listen": ("unix:///tmp/x.sock",)})
    assert changed.sources.listen == ("unix:///tmp/x.sock",)
    assert dataclasses.replace(changed, sources=base.sources) == base
    with pytest.raises(ConfigError, match="sources.listen"):
        settings_mod.replace(base, **{"sources.listen": ("carrier-pigeon://coop",)})


def test_model_runtime_choices_are_the_serving_core_runtimes() -> None:
    # settings stays free of torch (--check), so it names the runtimes itself; they must be the core's.
    from intentd.daemon.onnx_forward import RUNTIMES

    runtime = next(f for f in dataclasses.fields(settings_mod.ModelSettings) if f.name == "runtime")
    assert runtime.metadata["choices"] == RUNTIMES
    with pytest.raises(ConfigError, match="model.runtime"):
        settings_mod.from_dict({"model": {"runtime": "tensorrt"}}, REFERENCE.parent)
