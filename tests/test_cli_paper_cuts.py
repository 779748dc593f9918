"""Issue 19's paper cuts, each through the real console scripts as subprocesses: --version everywhere, help written
for users, `eval` scoring a whole folder of recordings, clear one-line errors for data a new user gets wrong,
and no carriage-return progress bars when output is not a terminal."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import write_tone_folder

from intentd.daemon.version import version
from tests.daemon_proc import run_cli

CONSOLE_SCRIPTS = ("intentd", "intentd-train", "intentd-sub", "intentd-send", "intentd-live", "intentd-proxy")
# The tiny models' labels (tests/tiny_models.py).
TINY_LABELS = {"a": 300.0, "b": 2500.0}
PER_LABEL = 5
LIVE_TIMEOUT_S = 60.0


def error_lines(text: str) -> list[str]:
    """The `error: ...` lines of a command's stderr."""
    return [line for line in text.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("name", CONSOLE_SCRIPTS)
def test_every_command_has_version(name: str) -> None:
    done = run_cli(name, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{name} (intentd) {version()}", done.stdout
    assert version() != "unknown"  # the tests run from an installed checkout


def test_intentd_devices_help_helps_instead_of_listing() -> None:
    done = run_cli("intentd", "devices", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: intentd devices"), done.stdout
    assert "mic://" in done.stdout


def test_help_is_written_for_users() -> None:
    top = run_cli("intentd-train", "--help")
    fit = run_cli("intentd-train", "fit", "--help")
    assert top.returncode == fit.returncode == 0
    # The developer docstrings ("one parser, one subcommand per module", "Starts from the HF ... tutorial") are gone.
    assert "one subcommand per module" not in top.stdout
    assert "tutorial" not in fit.stdout.split("options:")[0]
    flags = re.findall(r"^  (--[a-z-]+)(.*)$", fit.stdout, re.MULTILINE)
    assert len(flags) > 20
    # Every flag says what it does, and the numeric ones their default.
    options = fit.stdout.split("options:")[1]
    for flag in ("--batch-size", "--epochs", "--warmup-ratio", "--weight-decay", "--seed"):
        block = options.split(f"  {flag} ", 1)[1].split("\n  --", 1)[0]
        assert "default" in block and len(block.split()) > 4, (flag, block)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of labelled recordings as a user has them: one subfolder per intent, no test split."""
    return write_tone_folder(tmp_path_factory.mktemp("recordings"), per_label=PER_LABEL, labels=TINY_LABELS)


def test_eval_scores_every_clip_of_a_folder_without_a_test_split(recordings: Path, tiny_whisper_dir: Path) -> None:
    whole = run_cli("intentd-train", "eval", "--model", str(tiny_whisper_dir), "--dataset", str(recordings), "--json")
    assert whole.returncode == 0, whole.stderr
    report = json.loads(whole.stdout)
    assert report["n"] == PER_LABEL * len(TINY_LABELS) and report["split"] == "all", report
    # stderr is a pipe here: datasets' "Generating train split" bars must not draw carriage returns into it.
    assert "\r" not in whole.stderr, whole.stderr
    held_out = run_cli("intentd-train", "eval", "--model", str(tiny_whisper_dir), "--dataset", str(recordings),
                       "--split", "test", "--json")
    assert held_out.returncode == 0, held_out.stderr
    assert 0 < json.loads(held_out.stdout)["n"] < report["n"]


def test_eval_with_a_test_fraction_of_one_is_an_error_line(recordings: Path, tiny_whisper_dir: Path) -> None:
    done = run_cli("intentd-train", "eval", "--model", str(tiny_whisper_dir), "--dataset", str(recordings),
                   "--split", "test", "--test-fraction", "1.0")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and "--test-fraction" in lines[0], done.stderr


def test_eval_of_one_intents_recordings_works(tmp_path: Path, tiny_whisper_dir: Path) -> None:
    one = write_tone_folder(tmp_path / "only-a", per_label=3, labels={"a": 300.0})
    done = run_cli("intentd-train", "eval", "--model", str(tiny_whisper_dir), "--dataset", str(one), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["n"] == 3 and set(report["per_class"]) <= set(TINY_LABELS), report


def test_fit_on_bad_folders_says_why_and_leaves_no_empty_out(tmp_path: Path, tiny_whisper_dir: Path) -> None:
    one = write_tone_folder(tmp_path / "one-class", per_label=3, labels={"a": 300.0})
    text = tmp_path / "notes"
    for label in TINY_LABELS:
        (text / label).mkdir(parents=True)
        (text / label / "said.txt").write_text("turn on the lights\n")
    for data, needles in ((one, ("one class", "a")), (text, ("no audio files", ".txt"))):
        out = tmp_path / f"model-{data.name}"
        done = run_cli("intentd-train", "fit", "--dataset", str(data), "--base-model", str(tiny_whisper_dir),
                       "--out", str(out), "--epochs", "1", "--no-out-of-scope")
        assert done.returncode == 2, done.stderr
        lines = error_lines(done.stderr)
        assert len(lines) == 1 and all(n in lines[0] for n in needles), done.stderr
        assert "Traceback" not in done.stderr
        assert not out.exists(), f"a failed fit left {out}"


def test_synth_renders_a_one_intent_file_and_keeps_an_earlier_output_without_force(tmp_path: Path) -> None:
    # One intent is a model once fit adds `unknown` (Rhino's coffee maker is one intent with slots): synth
    # renders it and says fit must keep the out-of-scope class.
    one = tmp_path / "one.toml"
    one.write_text('[intents]\nlights_on = ["turn on the lights"]\n')
    done = run_cli("intentd-train", "synth", "--intents", str(one), "--out", str(tmp_path / "one-out"),
                   "--per-intent", "2", "--engines", "espeak-ng", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "one intent" in done.stderr and "--no-out-of-scope" in done.stderr, done.stderr
    assert (tmp_path / "one-out" / "dataset_dict.json").is_file()

    two = tmp_path / "two.toml"
    two.write_text('[intents]\nlights_on = ["turn on the lights"]\nlights_off = ["turn off the lights"]\n')
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    marker = earlier / "dataset_dict.json"  # what marks a synth output (train/synth.py DATASET_MARKER)
    marker.write_text('{"splits": ["train", "test"]}')
    done = run_cli("intentd-train", "synth", "--intents", str(two), "--out", str(earlier), "--per-intent", "1")
    assert done.returncode == 2, done.stderr
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and "--force" in lines[0] and str(earlier) in lines[0], done.stderr
    assert marker.read_text() == '{"splits": ["train", "test"]}'


def test_every_readme_section_the_repository_points_to_exists() -> None:
    """`see README "Section"` in scripts and docs names a heading that is there (setup.sh named a missing one)."""
    repo = Path(__file__).resolve().parents[1]
    headings = {line.lstrip("#").strip() for line in (repo / "README.md").read_text().splitlines()
                if line.startswith("#")}
    pointers = []
    # The top-level README only: bench/README.md and docs are other files with other headings.
    top_readme = re.compile(r'(?<![/\w])README(?:\.md)?[,:]? "([^"]+)"')
    sources = [*repo.glob("scripts/*"), *repo.glob("docs/*.md"), *repo.glob("systemd/*"), repo / "Makefile",
               repo / "pyproject.toml", *(p for d in ("daemon", "train", "clients", "bench") for p in repo.glob(f"{d}/*.py"))]
    for path in sources:
        if path.is_file():
            pointers += [(path.name, name) for name in top_readme.findall(path.read_text())]
    assert ("setup.sh", "Why these versions") not in pointers
    missing = [(where, name) for where, name in pointers if not any(h.startswith(name) for h in headings)]
    assert not missing, missing


def test_the_daemon_logs_a_streams_open_and_end_once(tmp_path: Path, tiny_whisper_dir: Path) -> None:
    import numpy as np
    import soundfile as sf

    from intentd.daemon.audio import SAMPLE_RATE
    from tests.daemon_proc import running_daemon, send_files

    wav = tmp_path / "one.wav"
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    sf.write(str(wav), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SAMPLE_RATE)
    with running_daemon(tmp_path / "d", tiny_whisper_dir) as d:
        send_files(d.audio_uri, [wav], stream_id="paper-cut")
    lines = [line for line in d.log_text().splitlines() if "paper-cut" in line]
    assert len([line for line in lines if "opened" in line]) == 1, lines
    assert len([line for line in lines if " ended" in line or " closed" in line]) == 1, lines


def test_the_daemons_metrics_show_build_process_and_every_models_label_at_zero(tmp_path: Path,
                                                                                tiny_whisper_dir: Path) -> None:
    import urllib.request

    from tests.daemon_proc import running_daemon

    with (running_daemon(tmp_path / "d", tiny_whisper_dir, metrics=True) as d,
          urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=30) as reply):
        lines = reply.read().decode().splitlines()
    for line in ('intentd_events_total{label="a"} 0.0', 'intentd_events_total{label="b"} 0.0',
                 'intentd_drops_total{reason="queue_full"} 0.0', 'intentd_reloads_total{result="failed"} 0.0'):
        assert line in lines, line
    assert any(line.startswith("intentd_build_info{") and f'version="{version()}"' in line for line in lines)
    assert any(line.startswith("process_open_fds ") for line in lines)


def test_check_on_a_backbone_that_is_no_classifier_is_one_error_line(tmp_path: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    backbone = tmp_path / "wav2vec2-base-like"
    config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                            conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                            num_conv_pos_embedding_groups=2)
    Wav2Vec2Model(config).save_pretrained(backbone)
    Wav2Vec2FeatureExtractor().save_pretrained(backbone)
    done = run_cli("intentd", "--check", "--model", str(backbone))
    assert done.returncode == 66, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    # One line, no transformers load report table before it.
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not an audio classifier" in lines[0], lines
    assert "Wav2Vec2Model" in lines[0]


def test_an_empty_wav_source_fails_before_the_model_loads(tmp_path: Path, tiny_whisper_dir: Path) -> None:
    import numpy as np
    import soundfile as sf

    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.float32), 16000)
    for extra in ((), ("--check",)):
        done = run_cli("intentd", "--model", str(tiny_whisper_dir), "--listen", f"file://{empty}",
                       "--publish", "tcp://127.0.0.1:*", *extra)
        assert done.returncode == 69, done.stderr
        lines = error_lines(done.stderr)
        assert len(lines) == 1 and str(empty) in lines[0] and "no audio" in lines[0], done.stderr
        assert "loaded" not in done.stderr, done.stderr  # the model never loaded


def test_fit_writes_a_model_card_and_loadable_checkpoints(tmp_path: Path, recordings: Path,
                                                          tiny_whisper_dir: Path) -> None:
    from transformers import AutoModelForAudioClassification

    out = tmp_path / "model"
    done = run_cli("intentd-train", "fit", "--dataset", str(recordings), "--base-model", str(tiny_whisper_dir),
                   "--out", str(out), "--epochs", "2", "--batch-size", "4", "--train-mode", "head",
                   "--no-out-of-scope", timeout_s=600)
    assert done.returncode == 0, done.stderr
    card = (out / "README.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert card.startswith("---\n") and "pipeline_tag: \"audio-classification\"" in card
    assert f"base_model: {json.dumps(str(tiny_whisper_dir))}" in card
    assert "`a`, `b`" in card and f"{metrics['accuracy']:.4f}" in card and str(recordings) in card
    assert "--no-out-of-scope" in card and "--epochs 2" in card and "--train-mode head" in card
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*/model"))
    assert checkpoints, list((out / "checkpoints").rglob("*"))
    model = AutoModelForAudioClassification.from_pretrained(str(checkpoints[-1]))
    assert sorted(model.config.label2id) == ["a", "b"]
    served = run_cli("intentd", "--check", "--model", str(checkpoints[-1]))
    assert served.returncode == 0, served.stderr


def test_intentd_live_names_the_microphone_it_opened(tmp_path: Path, tiny_whisper_dir: Path) -> None:
    import signal
    import subprocess
    import threading

    from tests import pulse
    from tests.daemon_proc import clean_env, running_daemon, tool

    if (reason := pulse.skip_reason()) is not None:
        pytest.skip(reason)
    with running_daemon(tmp_path / "d", tiny_whisper_dir) as d, pulse.private_pulse(tmp_path / "p"):
        proc = subprocess.Popen([*tool("intentd-live"), "--to", d.audio_uri, "--connect", d.events_uri,
                                 "--mic", pulse.PULSE_DEVICE, "--stream-id", "live-test"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env())
        assert proc.stdout is not None
        seen = []
        # Ctrl-C after LIVE_TIMEOUT_S at the latest, so a live that never names its microphone ends (EOF below).
        deadline = threading.Timer(LIVE_TIMEOUT_S, proc.send_signal, [signal.SIGINT])
        deadline.start()
        try:
            for line in proc.stdout:
                seen.append(line.rstrip())
                if line.startswith("microphone "):
                    break
        finally:
            deadline.cancel()
            proc.send_signal(signal.SIGINT)
            rest, _ = proc.communicate(timeout=60)
        seen += rest.splitlines()
    opened = [line for line in seen if line.startswith("microphone ")]
    assert opened and pulse.PULSE_DEVICE in opened[0] and "Hz" in opened[0], seen
