"""A whisper-grammar folder end to end: the daemon's intent events carry the sentence and slots that `intentd-train
predict` gives each utterance it cut, and `eval` scores those same answers (command acceptance 1 against labels
made from them). A tiny random model: what is checked is that the three paths are one, not what it hears."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from clients.subscriber import Subscriber
from daemon import events
from tests.daemon_proc import collect, run_cli, running_daemon, send_files, speech_clips, write_speech_wav
from tests.test_grammar import INTENTS
from tests.tiny_models import build_tiny_grammar_model
from train import cli

pytestmark = pytest.mark.slow

EVENT_TIMEOUT_S = 120.0
SCORE_TOLERANCE = 1e-5  # events carry 6 decimals


def test_a_grammar_model_answers_alike_in_the_daemon_predict_and_eval(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    intents = tmp_path / "intents.toml"
    intents.write_text(INTENTS, encoding="utf-8")
    model = build_tiny_grammar_model(tmp_path / "model", intents)
    wav = write_speech_wav(tmp_path / "three.wav", speech_clips(3, tmp_path / "speech"))

    with running_daemon(tmp_path / "daemon", model, {"model": {"threshold": 0.0}}) as daemon, \
            Subscriber(daemon.events_uri, recv_timeout_s=EVENT_TIMEOUT_S) as sub:
        assert sub.wait_connected(30.0), "no status heartbeat from the daemon"
        send_files(daemon.audio_uri, [wav], stream_id="orders")
        got = collect(sub, lambda kept: any(isinstance(e, events.StreamEndEvent) for e in kept), EVENT_TIMEOUT_S,
                      keep=lambda e: getattr(e, "stream_id", None) == "orders")
    heard = [e for e in got if isinstance(e, events.IntentEvent)]
    assert heard and all(e.text and e.label in ("order", "cancel") for e in heard), [e.raw for e in got]

    audio, rate = sf.read(str(wav), dtype="int16")
    cuts = []
    for e in heard:
        cut = tmp_path / "cuts" / f"u{e.utterance}.wav"
        cut.parent.mkdir(exist_ok=True)
        sf.write(str(cut), audio[round(e.start_s * rate):round(e.end_s * rate)], rate, subtype="PCM_16")
        cuts.append(cut)
    done = run_cli("intentd-train", "predict", "--model", str(model), "--json", "--threshold", "0",
                   *map(str, cuts))
    assert done.returncode == 0, done.stderr
    predicted = {p["file"]: p for p in json.loads(done.stdout)["predictions"]}
    rows = []
    for e, cut in zip(heard, cuts, strict=True):
        p = predicted[str(cut)]
        assert (p["label"], p["text"]) == (e.label, e.text), (p, e.raw)
        assert {k: s["value"] for k, s in p.get("slots", {}).items()} == {k: s.value for k, s in e.slots.items()}
        assert p["score"] == pytest.approx(e.score, abs=SCORE_TOLERANCE)
        rows.append({"file_name": cut.name, "intent": e.label, "slots": {k: s.value for k, s in e.slots.items()}})
    (cuts[0].parent / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    capsys.readouterr()
    assert cli.main(["--log-level", "ERROR", "eval", "--model", str(model), "--dataset", str(cuts[0].parent),
                     "--threshold", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["predicts_slots"] is True and report["command_n"] == len(rows)
    assert report["command_acceptance"] == 1.0
