"""Bad input to fit/eval/predict ends with exit status 2 and one `error:` line naming the fault, no traceback."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import write_tone_folder

from intentd.train import cli


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    code = cli.main(["--log-level", "ERROR", *argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(errors) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _fit(data: Path, base: Path, out: Path, *extra: str) -> list[str]:
    return ["fit", "--dataset", str(data), "--base-model", str(base), "--out", str(out), "--epochs", "1",
            "--no-out-of-scope", *extra]


def _folder_with(tmp_path: Path, bad_name: str, write_bad: object) -> Path:
    root = write_tone_folder(tmp_path / "data", per_label=3, labels={"a": 300.0, "b": 2500.0})
    path = root / "a" / bad_name
    write_bad(path)  # type: ignore[operator]
    return root


def test_missing_dataset_folder(tmp_path: Path, tiny_whisper_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(_fit(tmp_path / "nope", tiny_whisper_dir, tmp_path / "out"), capsys, "nope", "does not exist")
    _fails(["eval", "--model", str(tiny_whisper_dir), "--dataset", "./nope/x"], capsys, "does not exist")


def test_missing_label_column_lists_columns(tmp_path: Path, tiny_whisper_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    root = write_tone_folder(tmp_path / "meta", per_label=2, layout="metadata")
    rows = list(csv.reader((root / "metadata.csv").read_text().splitlines()))
    with open(root / "metadata.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["file_name", "category"], *rows[1:]])
    _fails(_fit(root, tiny_whisper_dir, tmp_path / "out"), capsys, "no label column", "category")
    _fails(_fit(root, tiny_whisper_dir, tmp_path / "out", "--label-column", "intent"), capsys, "'intent'", "category")


def test_eval_with_label_the_model_does_not_know(tmp_path: Path, tiny_whisper_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    root = write_tone_folder(tmp_path / "abc", per_label=3, labels={"a": 300.0, "zzz": 2500.0})
    _fails(["eval", "--model", str(tiny_whisper_dir), "--dataset", str(root)], capsys, "zzz", "does not know")


@pytest.mark.parametrize(
    ("bad_name", "needle"),
    [("silent.wav", "silent"), ("empty.wav", "empty.wav"), ("garbage.wav", "garbage.wav")],
)
def test_bad_clip_in_dataset(bad_name: str, needle: str, tmp_path: Path, tiny_whisper_dir: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    def write(path: Path) -> None:
        if bad_name == "silent.wav":
            sf.write(str(path), np.zeros(8000, np.float32), 8000)
        elif bad_name == "empty.wav":
            sf.write(str(path), np.zeros(0, np.float32), 8000)
        else:
            path.write_bytes(b"RIFF\x00\x00not really a wave file at all" * 4)

    root = _folder_with(tmp_path, bad_name, write)
    _fails(_fit(root, tiny_whisper_dir, tmp_path / "out"), capsys, needle)


def test_predict_bad_files(tmp_path: Path, tiny_whisper_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.xyz").write_text("this is text, not audio\n")
    _fails(["predict", "--model", str(tiny_whisper_dir), str(tmp_path / "notes.xyz")], capsys, "notes.xyz")
    _fails(["predict", "--model", str(tiny_whisper_dir), str(tmp_path / "absent.wav")], capsys, "absent.wav")
    sf.write(str(tmp_path / "zero.wav"), np.zeros(0, np.float32), 16_000)
    _fails(["predict", "--model", str(tiny_whisper_dir), str(tmp_path / "zero.wav")], capsys, "zero.wav", "empty")


def test_missing_model_folder(tmp_path: Path, tone_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = next(tone_folder.rglob("*.wav"))  # a real clip, so the model folder is the only fault
    _fails(["predict", "--model", str(tmp_path / "m"), str(clip)], capsys, "model folder")
    _fails(["eval", "--model", str(tmp_path / "m"), "--dataset", str(tone_folder)], capsys, "model folder")
    (tmp_path / "empty").mkdir()
    _fails(_fit(tone_folder, tmp_path / "empty", tmp_path / "out"), capsys, "config.json")


def test_unreachable_hub_model_suggests_import_backbone(tone_folder: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import huggingface_hub.constants

    # The hub client reads HF_HUB_OFFLINE at import; set both so no test ever waits on a network timeout.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    _fails(_fit(tone_folder, Path("intentd-test/no-such-model"), tmp_path / "out"), capsys, "import-backbone")


def test_bad_speed_perturb_and_missing_added_dataset(tmp_path: Path, tiny_whisper_dir: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    root = write_tone_folder(tmp_path / "data", per_label=3, labels={"a": 300.0, "b": 2500.0})
    _fails(_fit(root, tiny_whisper_dir, tmp_path / "out", "--speed-perturb", "0.9,3"), capsys,
           "--speed-perturb", "3.0")
    _fails(_fit(root, tiny_whisper_dir, tmp_path / "out", "--trim-perturb", "15,80"), capsys,
           "--trim-perturb", "80")
    _fails(_fit(root, tiny_whisper_dir, tmp_path / "out", "--time-mask", "2"), capsys, "--time-mask", "got 2")
    _fails(_fit(root, tiny_whisper_dir, tmp_path / "out", "--time-mask", "0.3", "--train-mode", "head"), capsys,
           "--time-mask", "--train-mode head")
    _fails(_fit(root, tiny_whisper_dir, tmp_path / "out", "--add-dataset", str(tmp_path / "gone")), capsys,
           "gone", "does not exist")
