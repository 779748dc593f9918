"""Fine-tuning: frozen-prefix cache equivalence, train modes, and fits that learn a toy tone task."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tone_folder

from intentd.daemon.classifier import Classifier
from intentd.train import frozen
from intentd.train.data import iter_clips, load_labelled, prepare_features
from intentd.train.errors import TrainError
from intentd.train.fit import (
    CHECKPOINTS_DIR,
    FitResult,
    FitSettings,
    _training_arguments,
    add_arguments,
    fit,
    from_arguments,
    loop_optimiser,
)

SEED = 0


@pytest.fixture(scope="module")
def fit_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 clips per tone label: 28 train, 8 held out."""
    return write_tone_folder(tmp_path_factory.mktemp("fit") / "tones", per_label=12, seed=1)


def _settings(data: Path, base: Path, out: Path, **overrides: object) -> FitSettings:
    values: dict[str, object] = {
        "dataset": str(data), "base_model": str(base), "out": str(out), "epochs": 8, "batch_size": 8,
        "seed": SEED, "learning_rate": 1e-2, "out_of_scope": False,  # tests/test_train_e2e.py fits with it
    }
    values.update(overrides)
    return FitSettings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def head_fit(fit_data: Path, tiny_whisper_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FitResult:
    out = tmp_path_factory.mktemp("head") / "model"
    return fit(_settings(fit_data, tiny_whisper_dir, out, train_mode="head"))


def _model(path: Path, labels: int = 3, weighted: bool = False) -> torch.nn.Module:
    from transformers import AutoModelForAudioClassification

    names = [f"l{i}" for i in range(labels)]
    return AutoModelForAudioClassification.from_pretrained(
        str(path), num_labels=labels, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        ignore_mismatched_sizes=True, use_weighted_layer_sum=weighted,
    ).eval()


@pytest.mark.parametrize(
    ("kind", "mode", "weighted", "unfreeze"),
    [("whisper", "head", False, 1), ("whisper", "head", True, 1), ("whisper", "top", False, 1),
     ("whisper", "top", True, 1), ("whisper", "top", True, 2), ("wav2vec2", "head", False, 1),
     ("wav2vec2", "head", True, 1)],
)
def test_cached_prefix_reproduces_full_model_logits(
    kind: str, mode: str, weighted: bool, unfreeze: int, tone_folder: Path, tiny_whisper_dir: Path,
    tiny_wav2vec2_dir: Path,
) -> None:
    from transformers import AutoFeatureExtractor

    base = tiny_whisper_dir if kind == "whisper" else tiny_wav2vec2_dir
    model = _model(base, weighted=weighted)
    if weighted:  # uneven weights, so a layer taken from the wrong place would show
        with torch.no_grad():
            model.layer_weights.copy_(torch.randn(model.layer_weights.shape, generator=torch.Generator().manual_seed(1)))
    extractor = AutoFeatureExtractor.from_pretrained(str(base))
    data = load_labelled(str(tone_folder))
    features = prepare_features(data.splits["test"], data.label_column, extractor, 1.0)
    assert frozen.can_cache(model, mode)
    cache, speed = frozen.build_cache(model, features, mode, unfreeze_top=unfreeze)
    assert speed["clips_per_second"] > 0
    small = frozen.small_module(model, mode, unfreeze_top=unfreeze).eval()
    column = "input_features" if kind == "whisper" else "input_values"
    with torch.no_grad():
        cached = small(**cache.model_inputs())["logits"]
        full = torch.cat([model(**{column: torch.tensor([row[column]])}).logits for row in features])
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)


def test_mean_then_project_equals_project_then_mean() -> None:
    torch.manual_seed(0)
    projector = torch.nn.Linear(32, 16)
    hidden = torch.randn(4, 50, 32)
    torch.testing.assert_close(projector(hidden.mean(dim=1)), projector(hidden).mean(dim=1), atol=1e-6, rtol=1e-5)


def test_train_modes_freeze_what_they_say(tiny_whisper_dir: Path) -> None:
    model = _model(tiny_whisper_dir)
    head = frozen.apply_train_mode(model, "head", 1)
    top = frozen.apply_train_mode(model, "top", 1)
    full = frozen.apply_train_mode(model, "full", 1)
    assert head["trainable"] < top["trainable"] < full["trainable"] <= full["total"]
    assert all(p.requires_grad for p in model.classifier.parameters())
    with pytest.raises(TrainError, match="out of range"):
        frozen.apply_train_mode(model, "top", 5)


def test_mode_defaults_resolve() -> None:
    s = FitSettings(dataset="d", out="o", train_mode="head").resolved()
    assert s.learning_rate == frozen.DEFAULT_LEARNING_RATES["head"] and s.grad_accumulation == 1
    s = FitSettings(dataset="d", out="o", train_mode="full").resolved()
    assert s.learning_rate == 3e-5 and s.grad_accumulation == 4  # the tutorial's settings
    assert FitSettings(dataset="d", out="o", learning_rate=0.5).resolved().learning_rate == 0.5


def _fit_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fit")
    add_arguments(parser)
    return parser


def test_fit_flags_are_the_settings_fields_with_their_defaults_and_help() -> None:
    parser = _fit_parser()
    assert from_arguments(parser.parse_args(["--dataset", "d", "--out", "o"])) == FitSettings(dataset="d", out="o")
    helps = {a.option_strings[0]: a.help for a in parser._actions if a.dest != "help"}
    assert len(helps) == len(FitSettings.__dataclass_fields__) and all(helps.values()), helps
    assert "(default: 10)" in helps["--epochs"] and "(default: 32)" in helps["--batch-size"]
    for mode, rate in frozen.DEFAULT_LEARNING_RATES.items():  # mode-dependent defaults are shown per mode
        assert f"{mode} {rate:g}" in helps["--learning-rate"]
    assert "full 4" in helps["--grad-accumulation"] and "--batch-size" in helps["--eval-batch-size"]
    parser.format_help()  # a % in a help text would break this


def test_fit_flags_set_every_kind_of_field() -> None:
    argv = ["--dataset", "d", "--out", "o", "--add-dataset", "a", "--add-dataset", "b", "--speed-perturb", "0.9,1.1",
            "--trim-perturb", "15", "--time-mask", "0.4", "--weighted-layer-sum", "--train-mode", "full",
            "--learning-rate", "0.01", "--eval-batch-size", "4", "--grad-accumulation", "2", "--epochs", "2.5",
            "--seed", "7", "--no-cache", "--resume", "--hub-model-id", "me/m"]
    assert from_arguments(_fit_parser().parse_args(argv)) == FitSettings(
        dataset="d", out="o", add_datasets=("a", "b"), speed_perturb=(0.9, 1.1), trim_perturb=(15.0,),
        time_mask=0.4, weighted_layer_sum=True, train_mode="full", learning_rate=0.01, eval_batch_size=4,
        grad_accumulation=2, epochs=2.5, seed=7, cache=False, resume=True, hub_model_id="me/m")
    with pytest.raises(SystemExit):
        _fit_parser().parse_args(["--dataset", "d", "--out", "o", "--train-mode", "most"])


def test_loop_optimiser_is_the_one_trainer_builds(tmp_path: Path) -> None:
    from transformers import Trainer

    s = FitSettings(dataset="d", out="o", epochs=3, weight_decay=0.01).resolved()
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    module[0].requires_grad_(False)
    trainer = Trainer(model=module, args=_training_arguments(s, tmp_path), eval_dataset=[0])
    trainer.create_optimizer_and_scheduler(30)
    optimiser, schedule = loop_optimiser(module, s, steps_per_epoch=10)
    assert type(optimiser) is type(trainer.optimizer)
    for ours, theirs in zip(optimiser.param_groups, trainer.optimizer.param_groups, strict=True):
        assert [id(p) for p in ours["params"]] == [id(p) for p in theirs["params"]]
        assert all(ours[key] == theirs[key] for key in ("lr", "betas", "eps", "weight_decay"))
    assert [g["weight_decay"] for g in optimiser.param_groups] == [0.01, 0.0]  # biases and norms undecayed
    ours_lr, theirs_lr = schedule.lr_lambdas[0], trainer.lr_scheduler.lr_lambdas[0]
    assert [ours_lr(t) for t in range(31)] == [theirs_lr(t) for t in range(31)]
    assert ours_lr(0) == 0.0 and ours_lr(3) == 1.0 and ours_lr(30) == 0.0  # 10% warm-up, linear decay


def test_head_fit_learns_and_writes_a_complete_model_folder(head_fit: FitResult, fit_data: Path) -> None:
    from transformers import AutoModelForAudioClassification

    out = Path(head_fit.metrics["settings"]["out"])
    assert head_fit.accuracy >= 0.75, head_fit.metrics["history"]  # chance is 1/3
    assert head_fit.metrics["cached_prefix"] is True
    model = AutoModelForAudioClassification.from_pretrained(str(out))
    assert sorted(model.config.label2id) == ["high", "low", "mid"]
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "training_curves.png",
                 "confusion_matrix.png"):
        assert (out / name).is_file(), name
    assert any((out / CHECKPOINTS_DIR).glob("checkpoint-*"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == head_fit.accuracy
    assert len(metrics["history"]) == 8 and metrics["train_time_seconds"] > 0
    assert metrics["dataset"]["sizes"] == {"train": 28, "test": 8}
    assert metrics["settings"]["train_mode"] == "head"


def test_saved_model_reproduces_cached_path_logits(head_fit: FitResult, fit_data: Path) -> None:
    out = head_fit.metrics["settings"]["out"]
    classifier = Classifier.load(out)
    data = load_labelled(str(fit_data), seed=SEED)
    clips = [c for batch, _ in iter_clips(data.splits["test"]) for c in batch]
    logits = head_fit.test_logits
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(classifier.probabilities(clips), softmax, atol=1e-5)


def test_top_mode_learns(fit_data: Path, tiny_whisper_dir: Path, tmp_path: Path) -> None:
    result = fit(_settings(fit_data, tiny_whisper_dir, tmp_path / "top", train_mode="top", unfreeze_top=1,
                           learning_rate=3e-3))
    assert result.metrics["cached_prefix"] is True
    assert result.accuracy >= 0.75, result.metrics["history"]


def test_full_mode_and_resume(fit_data: Path, tiny_wav2vec2_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "full"
    first = fit(_settings(fit_data, tiny_wav2vec2_dir, out, train_mode="full", epochs=1, max_seconds=1.0,
                          learning_rate=1e-3, grad_accumulation=1))
    assert first.metrics["cached_prefix"] is False
    resumed = fit(_settings(fit_data, tiny_wav2vec2_dir, out, train_mode="full", epochs=2, max_seconds=1.0,
                            learning_rate=1e-3, grad_accumulation=1, resume=True))
    assert resumed.metrics["resumed_from"].endswith("checkpoint-4")
    epochs = [row["epoch"] for row in resumed.metrics["history"]]
    assert epochs[-1] == 2.0
    assert (out / CHECKPOINTS_DIR / "checkpoint-8").is_dir()  # 4 steps per epoch, continued to 8


def test_add_dataset_trains_on_the_union_of_labels(fit_data: Path, tiny_whisper_dir: Path, tmp_path: Path) -> None:
    from intentd.train.cli import main

    extra = write_tone_folder(tmp_path / "extra", per_label=12, labels={"mid": 880.0, "top": 5000.0}, seed=2)
    out = tmp_path / "union"
    status = main(["fit", "--dataset", str(fit_data), "--add-dataset", str(extra), "--base-model",
                   str(tiny_whisper_dir), "--out", str(out), "--train-mode", "head", "--epochs", "8",
                   "--batch-size", "8", "--learning-rate", "1e-2", "--seed", str(SEED), "--no-out-of-scope"])
    assert status == 0
    config = json.loads((out / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["high", "low", "mid", "top"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["add_datasets"] == [str(extra)]
    assert metrics["dataset"]["sizes"] == {"train": 28 + 19, "test": 8 + 5}
    assert metrics["accuracy"] >= 0.75, metrics["history"]
