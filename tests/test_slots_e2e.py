"""Slots end to end: synth an intents file with captured slots (espeak-ng) -> fit a tiny Whisper with slot heads
-> the folder still loads as a plain HF classifier -> predict, eval (command acceptance with slots) and the daemon's
intent events all give the same slots for the same audio."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from intentd.clients.subscriber import Subscriber
from intentd.daemon import events
from intentd.daemon.slot_heads import SLOT_HEADS_FILE, SLOTS_KEY
from intentd.train import cli
from tests.daemon_proc import collect, run_cli, running_daemon, send_files, write_speech_wav
from tests.grammar_fits import QUIET, synth_and_fit

pytestmark = pytest.mark.slow

INTENTS = """
[slots]
amount = ["ten", "fifty"]

[slots.account]
savings = ["savings", "saving"]
checking = ["checking"]

[intents]
transfer = ["transfer {amount:amount} dollars to {account:account}", "send {amount:amount} dollars to my {account:account} account"]
balance = ["what is in my {account:account} account", "check my balance"]
"""
SCORE_TOLERANCE = 1e-5  # events carry 6 decimals
EVENT_TIMEOUT_S = 120.0


def _predict(model: Path, files: list[Path]) -> dict[str, dict]:
    done = run_cli("intentd-train", "predict", "--model", str(model), "--json", "--top-k", "1",
                   *[str(f) for f in files])
    assert done.returncode == 0, done.stderr
    return {p["file"]: p for p in json.loads(done.stdout)["predictions"]}


def test_slots_through_fit_predict_eval_and_the_daemon(tmp_path: Path, tiny_whisper_dir: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENTD_CACHE", str(tmp_path / "cache"))
    data, model = synth_and_fit(tmp_path, INTENTS, tiny_whisper_dir,
                                synth=["--per-intent", "16", "--channel", "microphone"],
                                fit=["--train-mode", "top", "--epochs", "8"])
    quiet = QUIET
    capsys.readouterr()

    # The slot heads sit beside the HF classifier, whose files are untouched by them.
    stored = json.loads((model / "intentd.json").read_text())
    assert stored[SLOTS_KEY]["values"] == {"account": ["checking", "savings"], "amount": ["fifty", "ten"]}
    assert stored[SLOTS_KEY]["intents"] == {"balance": ["account"], "transfer": ["account", "amount"]}
    assert (model / SLOT_HEADS_FILE).is_file()
    from transformers import pipeline

    assert {r["label"] for r in pipeline("audio-classification", model=str(model), device="cpu")(
        np.zeros(8000, np.float32), top_k=3)} == {"balance", "transfer", "unknown"}

    # predict: the training clips' slots (a tiny model fits its training set), each value one of its slot's.
    meta = [json.loads(line) for line in (data / "wav" / "metadata.jsonl").read_text().splitlines()]
    train_rows = [m for m in meta if m["split"] == "train"][:12]
    files = [data / "wav" / m["file_name"] for m in train_rows]
    predicted = _predict(model, files)
    with_slots = [p for p in predicted.values() if p.get("slots")]
    assert with_slots, predicted
    for p in with_slots:
        assert p["label"] in stored[SLOTS_KEY]["intents"]
        for name, slot in p["slots"].items():
            assert name in stored[SLOTS_KEY]["intents"][p["label"]]
            assert slot["value"] in stored[SLOTS_KEY]["values"][name] and 0.0 < slot["score"] <= 1.0
    right = sum(p["label"] == m["intent"] and {k: s["value"] for k, s in p.get("slots", {}).items()} == m["slots"]
                for p, m in zip((predicted[str(f)] for f in files), train_rows, strict=True))

    # eval: command acceptance counts the slots (a model with heads predicts them).
    assert cli.main([*quiet, "eval", "--model", str(model), "--dataset", str(data / "wav"), "--split", "all",
                     "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["predicts_slots"] is True and report["command_n"] == len(meta)
    assert set(report["slots"]) == {"account", "amount"}
    assert 0.0 <= report["command_acceptance"] <= report["command_intent_accuracy"] <= 1.0
    assert right == 0 or report["command_acceptance"] > 0.0

    # The daemon: its intent events carry the slots predict gives each utterance it cut.
    wav = write_speech_wav(tmp_path / "two.wav", [sf.read(str(f), dtype="float32")[0] for f in files[:3]])
    with running_daemon(tmp_path / "daemon", model) as daemon, \
            Subscriber(daemon.events_uri, recv_timeout_s=EVENT_TIMEOUT_S) as sub:
        assert sub.wait_connected(30.0), "no status heartbeat from the daemon"
        send_files(daemon.audio_uri, [wav], stream_id="slots")
        got = collect(sub, lambda kept: any(isinstance(e, events.StreamEndEvent) for e in kept), EVENT_TIMEOUT_S,
                      keep=lambda e: getattr(e, "stream_id", None) == "slots")
    intents = [e for e in got if isinstance(e, events.IntentEvent)]
    assert intents and isinstance(got[-1], events.StreamEndEvent), [e.summary() for e in got]
    assert any(e.slots for e in intents), [e.summary() for e in intents]  # else the comparison below is empty
    audio, rate = sf.read(str(wav), dtype="int16")
    cuts = []
    for e in intents:
        cut = tmp_path / "cuts" / f"u{e.utterance}.wav"
        cut.parent.mkdir(exist_ok=True)
        sf.write(str(cut), audio[round(e.start_s * rate):round(e.end_s * rate)], rate, subtype="PCM_16")
        cuts.append(cut)
    by_cut = _predict(model, cuts)
    for e, cut in zip(intents, cuts, strict=True):
        p = by_cut[str(cut)]
        assert p["label"] == e.label, (p, e.raw)
        assert {k: s["value"] for k, s in p.get("slots", {}).items()} == {k: s.value for k, s in e.slots.items()}
        for name, slot in e.slots.items():
            assert slot.score == pytest.approx(p["slots"][name]["score"], abs=SCORE_TOLERANCE)
        assert ("slots" in e.raw) == bool(e.slots)  # an intent without slots has no `slots` key on the wire
