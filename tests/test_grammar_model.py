"""A whisper-grammar folder end to end: the daemon's intent events carry the sentence and slots that `intentd-train
predict` gives each utterance it cut, and `eval` scores those same answers (command acceptance 1 against labels
made from them). A tiny random model: what is checked is that the three paths are one, not what it hears."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from intentd.clients.subscriber import Subscriber
from intentd.daemon import events
from intentd.train import cli
from tests.daemon_proc import collect, run_cli, running_daemon, send_files, speech_clips, write_speech_wav
from tests.test_grammar import INTENTS
from tests.tiny_models import build_tiny_grammar_model

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


COFFEE = """
[slots]
drink = ["latte", "mocha", "americano", "cappuccino"]
milk = ["soy milk", "oat milk", "milk"]
[slots.size]
large = ["large", "big"]
small = ["small", "twelve ounce"]
[intents]
order = ["(can I get|I'd like) a [{size:size}] {drink:drink} [with {milk:milk}]"]
cancel = ["cancel (it|my order)"]
"""


def test_grammar_model_of_whisper_tiny_en_transcribes_as_ctranslate2_and_hears_the_command(tmp_path: Path) -> None:
    """The converted decoder is CTranslate2's: greedy transcripts of one utterance are the same tokens; decoded under
    a grammar, the utterance comes back as its sentence, intent and slots."""
    from intentd.daemon.classifier import Classifier
    from intentd.daemon.windows import encoder_states
    from intentd.train.backbones import locate_backbone
    from intentd.train.errors import TrainError
    from intentd.train.grammar_model import write_grammar_model
    from tests.test_import_backbone import _speech

    ctranslate2 = pytest.importorskip("ctranslate2")
    try:
        ct2_dir, _ = locate_backbone("whisper-tiny.en")
    except TrainError as err:
        pytest.skip(str(err))
    import torch

    intents = tmp_path / "coffee.toml"
    intents.write_text(COFFEE, encoding="utf-8")
    model = write_grammar_model(intents, tmp_path / "model", max_seconds=4, windows_s=(3.0,))
    audio = _speech(tmp_path, "can I get a large latte with soy milk")
    classifier = Classifier.load(model, device="cpu")
    (answer,) = classifier.classify([audio])
    assert (answer.label, answer.text) == ("order", "can i get a large latte with soy milk")
    assert {k: v for k, (v, _s) in answer.slots.items()} == {"size": "large", "drink": "latte", "milk": "soy milk"}
    assert all(0.0 < s <= 1.0 for _v, s in answer.slots.values()) and 0.0 < answer.score <= 1.0, answer

    features = classifier.extractor(audio, sampling_rate=16000, return_tensors="np").input_features
    prompt = list(classifier.decoder.settings.prompt)  # type: ignore[union-attr]
    whisper = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32", intra_threads=2)
    expected = whisper.generate(ctranslate2.StorageView.from_array(features), [prompt], beam_size=1,
                                suppress_blank=False, suppress_tokens=[])[0].sequences_ids[0]
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        hidden = encoder_states(classifier.model.model.encoder, torch.from_numpy(features))
        for _ in range(len(expected) + 1):
            nxt = int(classifier.model(encoder_outputs=(hidden,), decoder_input_ids=ids).logits[0, -1].argmax())
            if nxt == classifier.decoder.settings.eot:  # type: ignore[union-attr]
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    assert ids[0, len(prompt):].tolist() == list(expected)


def test_decoder_settings_keep_the_ranking_and_refuse_a_bad_one() -> None:
    from intentd.daemon.errors import ModelError
    from intentd.daemon.grammar_decoder import DecoderSettings

    settings = DecoderSettings((1, 2), 3, beam=4, max_tokens=9, length_norm=False)
    assert DecoderSettings.from_json(settings.to_json(), "x") == settings
    # Folders written before the setting existed rank by the mean, today's default.
    assert DecoderSettings.from_json({"prompt": [1], "eot": 3}, "x").length_norm is True
    with pytest.raises(ModelError, match="length_norm"):
        DecoderSettings.from_json({"prompt": [1], "eot": 3, "length_norm": "yes"}, "intentd.json")
