"""`intentd-train fit`: fine-tune an audio classifier on DATA with Trainer and write a complete model folder.

Starts from the HF audio-classification tutorial (MInDS-14, Wav2Vec2, Trainer, accuracy) and adds train modes
(head/top/full, see train.frozen), a frozen-prefix cache for speed, metrics.json and plots. The output folder
loads with AutoModelForAudioClassification and pipeline("audio-classification"); checkpoints live in
OUT/checkpoints so they never shadow the final model.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from train.data import (
    DEFAULT_MAX_SECONDS,
    DEFAULT_TEST_FRACTION,
    LabelledSplits,
    load_combined,
    prepare_features,
)
from train.errors import TrainError
from train.frozen import DEFAULT_LEARNING_RATES, DEFAULT_UNFREEZE_TOP, TRAIN_MODES

log = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "facebook/wav2vec2-base"
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
ACCURACY_METRIC_DIR = Path(__file__).parent / "metrics" / "accuracy"
# The tutorial's settings; frozen modes take many cheap steps, so they accumulate fewer gradients by default.
DEFAULT_BATCH_SIZE = 32
# Measured (bench/README.md): with top-2 digits peaked by epoch 3-5 and the 14-intent synth set at epoch 7; with
# top-1 (the default) the 14-intent set still gains until epoch 9 of 10, and synth-only digits scored 96.45% with
# 10 epochs against 96.15% with 5. The best epoch is kept, so 10 costs time, not accuracy.
DEFAULT_EPOCHS = 10
DEFAULT_WARMUP_RATIO = 0.1
DEFAULT_GRAD_ACCUMULATION = {"head": 1, "top": 1, "full": 4}
# Speed perturbation beyond this range stops sounding like the same word said by another person.
MIN_SPEED, MAX_SPEED = 0.5, 2.0
# Below 3 dB a trim keeps little more than the loudest frame; beyond 60 dB it keeps everything but digital silence.
MIN_TRIM_DB, MAX_TRIM_DB = 3.0, 60.0
# A mask longer than a short word hides all of it; beyond this it only adds label noise.
MAX_TIME_MASK_S = 1.0


@dataclass(slots=True)
class FitSettings:
    """Everything one fit run uses; written to metrics.json as `settings`."""

    dataset: str
    out: str
    add_datasets: tuple[str, ...] = ()  # more DATA joined to `dataset` by label name (load_combined)
    speed_perturb: tuple[float, ...] = ()  # extra copies of every training clip at these speeds
    trim_perturb: tuple[float, ...] = ()  # extra copies cut tight at these dB below each clip's peak
    time_mask: float = 0.0  # seconds: mask up to this much of each training clip in the lowest trained layer's input
    weighted_layer_sum: bool = False  # pool a learned mix of all encoder layers (config.use_weighted_layer_sum)
    base_model: str = DEFAULT_BASE_MODEL
    dataset_config: str | None = None
    label_column: str | None = None
    train_mode: str = "top"
    unfreeze_top: int = DEFAULT_UNFREEZE_TOP
    learning_rate: float | None = None  # None: the mode's default
    batch_size: int = DEFAULT_BATCH_SIZE
    eval_batch_size: int | None = None
    grad_accumulation: int | None = None  # None: the mode's default
    epochs: float = DEFAULT_EPOCHS
    warmup_ratio: float = DEFAULT_WARMUP_RATIO
    weight_decay: float = 0.0
    max_seconds: float = DEFAULT_MAX_SECONDS
    test_fraction: float = DEFAULT_TEST_FRACTION
    seed: int = 42
    cache: bool = True
    resume: bool = False
    push_to_hub: bool = False
    hub_model_id: str | None = None

    def resolved(self) -> FitSettings:
        """A copy with every mode-dependent default filled in and values checked."""
        if self.train_mode not in TRAIN_MODES:
            raise TrainError(f"--train-mode must be one of {', '.join(TRAIN_MODES)}, not {self.train_mode!r}")
        for name in ("batch_size", "epochs", "max_seconds"):
            if getattr(self, name) <= 0:
                raise TrainError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for factor in self.speed_perturb:
            if not MIN_SPEED <= factor <= MAX_SPEED:
                raise TrainError(f"--speed-perturb factors must be in [{MIN_SPEED}, {MAX_SPEED}], got {factor}")
        for db in self.trim_perturb:
            if not MIN_TRIM_DB <= db <= MAX_TRIM_DB:
                raise TrainError(f"--trim-perturb levels must be in [{MIN_TRIM_DB:g}, {MAX_TRIM_DB:g}] dB, got {db:g}")
        if not 0 <= self.time_mask <= MAX_TIME_MASK_S:
            raise TrainError(f"--time-mask must be between 0 and {MAX_TIME_MASK_S:g} seconds, got {self.time_mask:g}")
        if self.time_mask and self.train_mode == "head":
            raise TrainError("--time-mask masks the input of the lowest trained encoder layer; --train-mode head "
                             "trains none (use top or full)")
        if not 0 < self.test_fraction < 1:
            raise TrainError(f"--test-fraction must be between 0 and 1, got {self.test_fraction}")
        out = FitSettings(**asdict(self))
        out.learning_rate = self.learning_rate or DEFAULT_LEARNING_RATES[self.train_mode]
        out.grad_accumulation = self.grad_accumulation or DEFAULT_GRAD_ACCUMULATION[self.train_mode]
        out.eval_batch_size = self.eval_batch_size or self.batch_size
        return out


@dataclass(slots=True)
class FitResult:
    """What a fit produced: the final accuracy and the test-set logits of the trained (possibly cached) path."""

    accuracy: float
    test_logits: np.ndarray
    test_labels: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)


def load_base_model(name: str, label_names: list[str], weighted_layer_sum: bool = False) -> tuple[Any, Any]:
    """Base model with a fresh num_labels head (sizes may mismatch a previous head) and its feature extractor.

    weighted_layer_sum: pool a learned softmax-weighted sum of every encoder layer's output instead of the last
    one (the transformers config option; the pipeline loads such a model like any other).
    """
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    local = Path(name).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise TrainError(f"base model folder {local} has no config.json; is it a Hugging Face model folder?")
    if not local.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise TrainError(f"base model folder {name} does not exist")
    label2id = {n: i for i, n in enumerate(label_names)}
    try:
        model = AutoModelForAudioClassification.from_pretrained(
            str(local) if local.exists() else name,
            num_labels=len(label_names),
            label2id=label2id,
            id2label={i: n for n, i in label2id.items()},
            ignore_mismatched_sizes=True,
            **({"use_weighted_layer_sum": True} if weighted_layer_sum else {}),
        )
        extractor = AutoFeatureExtractor.from_pretrained(str(local) if local.exists() else name)
    except (OSError, ValueError) as err:
        if local.exists():
            raise TrainError(f"cannot load base model folder {local}: {err}") from err
        raise TrainError(
            f"cannot load base model {name!r} from the hub or the local cache ({str(err).splitlines()[0]}); "
            "without hub access, make a local one with `intentd-train import-backbone whisper-tiny.en --out DIR` "
            "and pass --base-model DIR"
        ) from err
    return model, extractor


def _accuracy_fn() -> Any:
    """compute_metrics for Trainer, backed by our offline `evaluate` accuracy module."""
    import evaluate

    metric = evaluate.load(str(ACCURACY_METRIC_DIR))

    def compute(pred: Any) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        return metric.compute(predictions=np.argmax(logits, axis=1), references=pred.label_ids)

    return compute


def _training_arguments(s: FitSettings, checkpoints: Path) -> Any:
    import torch
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    assert s.learning_rate and s.eval_batch_size and s.grad_accumulation, "settings not resolved"
    return TrainingArguments(
        output_dir=str(checkpoints),
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="epoch",
        learning_rate=s.learning_rate,
        per_device_train_batch_size=s.batch_size,
        per_device_eval_batch_size=s.eval_batch_size,
        gradient_accumulation_steps=s.grad_accumulation,
        num_train_epochs=s.epochs,
        warmup_steps=s.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the total steps
        weight_decay=s.weight_decay,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        save_total_limit=2,
        seed=s.seed,
        data_seed=s.seed,
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        fp16=cuda and not torch.cuda.is_bf16_supported(),
        report_to="none",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=not log.isEnabledFor(logging.INFO),
    )


def _install_time_mask(model: Any, s: FitSettings) -> Any:
    """Hook --time-mask onto the lowest trained encoder layer (cached or not, the same module runs)."""
    from train import augment, frozen

    if not frozen.has_time_frames(model):
        raise TrainError(f"--time-mask needs an encoder with 20 ms frames (Whisper, wav2vec2 family), "
                         f"not {type(model).__name__}")
    layers = frozen.encoder_layers(model)
    lowest = layers[0] if s.train_mode == "full" else layers[len(layers) - s.unfreeze_top]
    return augment.install_time_mask(lowest, s.time_mask, s.seed)


def _history(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Trainer's log rows merged per epoch: epoch, train_loss, eval_loss, accuracy, eval_runtime."""
    rows: dict[float, dict[str, float]] = {}
    for entry in log_history:
        if "epoch" not in entry:
            continue
        row = rows.setdefault(round(float(entry["epoch"]), 4), {"epoch": round(float(entry["epoch"]), 4)})
        if "loss" in entry:
            row["train_loss"] = float(entry["loss"])
        if "eval_loss" in entry:
            row["eval_loss"] = float(entry["eval_loss"])
        if "eval_accuracy" in entry:
            row["accuracy"] = float(entry["eval_accuracy"])
    return [rows[k] for k in sorted(rows) if len(rows[k]) > 1]


def _last_checkpoint(checkpoints: Path) -> str | None:
    """The newest checkpoint-N folder, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None


def fit(settings: FitSettings) -> FitResult:
    """Train, keep the best epoch by accuracy, and write the model folder, metrics.json and plots."""
    import torch
    from transformers import Trainer, default_data_collator, set_seed

    from train import frozen, plots

    s = settings.resolved()
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / CHECKPOINTS_DIR
    set_seed(s.seed)

    specs = [s.dataset, *s.add_datasets]
    data: LabelledSplits = load_combined(specs, s.dataset_config, s.label_column, s.seed, s.test_fraction)
    if "train" not in data.splits:
        raise TrainError(f"dataset {' + '.join(specs)} has no train split; splits found: {sorted(data.splits)}")
    model, extractor = load_base_model(s.base_model, data.label_names, s.weighted_layer_sum)
    counts = frozen.apply_train_mode(model, s.train_mode, s.unfreeze_top)
    log.info("train mode %s: %d of %d parameters trainable", s.train_mode, counts["trainable"], counts["total"])
    # Before the slow feature pass, so an unsupported model fails at once; the cache runs in eval mode, unmasked.
    mask_hook = _install_time_mask(model, s) if s.time_mask else None

    speeds = {"train": (1.0, *s.speed_perturb), "test": (1.0,)}
    trims = {"train": s.trim_perturb, "test": ()}
    features = {
        name: prepare_features(data.split(name), data.label_column, extractor, s.max_seconds, s.batch_size,
                               speeds=speeds[name], trims=trims[name])
        for name in ("train", "test")
    }
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)

    cached = s.cache and frozen.can_cache(model, s.train_mode)
    cache_speed: dict[str, float] = {}
    if cached:
        train_set, cache_speed = frozen.build_cache(model, features["train"], s.train_mode, s.unfreeze_top)
        test_set, _ = frozen.build_cache(model, features["test"], s.train_mode, s.unfreeze_top)
        trained: Any = frozen.small_module(model, s.train_mode, s.unfreeze_top)
        collator: Any = default_data_collator
    else:
        train_set, test_set, trained, collator = features["train"], features["test"], model, None

    trainer = Trainer(
        model=trained,
        args=_training_arguments(s, checkpoints),
        data_collator=collator,
        train_dataset=train_set,
        eval_dataset=test_set,
        processing_class=extractor,
        compute_metrics=_accuracy_fn(),
    )
    resume_from = _last_checkpoint(checkpoints) if s.resume else None
    if s.resume and resume_from is None:
        log.warning("--resume: no checkpoint in %s, starting from scratch", checkpoints)
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    finally:
        if mask_hook is not None:
            mask_hook.remove()
    train_seconds = time.perf_counter() - started

    # The best epoch is loaded into `trained`, whose modules are the full model's own: `model` now holds it.
    prediction = trainer.predict(test_set)
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    labels = np.asarray(prediction.label_ids)
    predicted = np.argmax(logits, axis=1)
    accuracy = float(np.mean(predicted == labels)) if len(labels) else 0.0

    model.to("cpu")
    model.save_pretrained(str(out))
    extractor.save_pretrained(str(out))
    history = _history(trainer.state.log_history)
    epochs_run = max((row["epoch"] for row in history), default=0.0)
    metrics = {
        "accuracy": accuracy,
        "history": history,
        "train_time_seconds": round(train_seconds, 3),
        "seconds_per_epoch": round(train_seconds / epochs_run, 3) if epochs_run else None,
        "cached_prefix": cached,
        "cache_speed": cache_speed,
        "settings": asdict(s),
        "dataset": {
            "source": data.source,
            "label_column": data.label_column,
            "labels": data.label_names,
            "sizes": {name: len(split) for name, split in data.splits.items()},
        },
        "parameters": counts,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "resumed_from": resume_from,
    }
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    plots.training_curves(history, out / CURVES_FILE)
    plots.confusion_matrix(labels.tolist(), predicted.tolist(), data.label_names, out / CONFUSION_FILE)
    log.info("accuracy %.3f on %d test clips; model written to %s", accuracy, len(labels), out)

    if s.push_to_hub:
        _push(model, extractor, s.hub_model_id or out.name)
    return FitResult(accuracy=accuracy, test_logits=np.asarray(logits), test_labels=labels, metrics=metrics)


def _push(model: Any, extractor: Any, repo_id: str) -> None:
    """Upload the final model folder's contents; an unreachable hub is a TrainError, the local folder stays."""
    try:
        model.push_to_hub(repo_id)
        extractor.push_to_hub(repo_id)
    except Exception as err:  # huggingface_hub raises HTTP, auth and connection errors of many types
        raise TrainError(
            f"cannot push to the hub as {repo_id!r} ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
            "the trained model is saved locally; log in with `hf auth login` or drop --push-to-hub"
        ) from err


def register(subparsers: Any) -> None:
    """Add the `fit` subcommand."""
    p = subparsers.add_parser("fit", help="fine-tune an audio classifier", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, metavar="DATA",
                   help="hub id (with --dataset-config), audio folder, or save_to_disk folder")
    p.add_argument("--add-dataset", dest="add_datasets", action="append", default=[], metavar="DATA",
                   help="also train on DATA (repeatable): labels are matched by name, its held-out split joins "
                        "the test set; e.g. your recordings plus `intentd-train synth` speech")
    p.add_argument("--speed-perturb", type=_numbers, default=(), metavar="F,F",
                   help="also train on every training clip played F times faster, e.g. 0.9,1.1 (tempo and "
                        "pitch together; the held-out split is left as is)")
    p.add_argument("--trim-perturb", type=_numbers, default=(), metavar="DB,DB",
                   help="also train on every training clip cut tight at DB below its loudest 10 ms, e.g. 15 "
                        "(as an endpointer cuts weak onsets; the held-out split is left as is)")
    p.add_argument("--time-mask", type=float, default=0.0, metavar="SECONDS",
                   help="hide a random span of up to SECONDS of every training clip from the trained layers, "
                        "e.g. 0.4 (SpecAugment-style time masking, applied where the trained layers begin)")
    p.add_argument("--weighted-layer-sum", action="store_true",
                   help="classify a learned weighted sum of every encoder layer, not only the last")
    p.add_argument("--dataset-config", help="hub dataset config, e.g. en-US for PolyAI/minds14")
    p.add_argument("--label-column", help="label column (default: intent_class or label)")
    p.add_argument("--base-model", default=DEFAULT_BASE_MODEL, metavar="MODEL",
                   help=f"hub id or local HF model folder (default {DEFAULT_BASE_MODEL})")
    p.add_argument("--out", required=True, metavar="DIR", help="output model folder")
    p.add_argument("--train-mode", choices=TRAIN_MODES, default="top",
                   help="head: classifier only; top: + top N encoder layers; full: everything (default top)")
    p.add_argument("--unfreeze-top", type=int, default=DEFAULT_UNFREEZE_TOP, metavar="N",
                   help=f"encoder layers trained in top mode (default {DEFAULT_UNFREEZE_TOP})")
    p.add_argument("--learning-rate", type=float,
                   help="default per mode: " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LEARNING_RATES.items()))
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--eval-batch-size", type=int, help="default: --batch-size")
    p.add_argument("--grad-accumulation", type=int, metavar="STEPS",
                   help="gradient accumulation steps (default 4 in full mode, 1 otherwise)")
    p.add_argument("--epochs", type=float, default=DEFAULT_EPOCHS)
    p.add_argument("--warmup-ratio", type=float, default=DEFAULT_WARMUP_RATIO)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                   help="truncate longer clips (Whisper uses its own chunk length instead; default 4)")
    p.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                   help="held-out fraction when DATA has no test split (default 0.2)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-cache", dest="cache", action="store_false",
                   help="run the whole model every step even in frozen modes (slow; for checking)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in DIR/checkpoints")
    p.add_argument("--push-to-hub", action="store_true", help="upload the final model (needs hub access)")
    p.add_argument("--hub-model-id", help="repo id for --push-to-hub (default: DIR's name)")
    p.set_defaults(func=run)


def _numbers(text: str) -> tuple[float, ...]:
    """`0.9,1.1` -> (0.9, 1.1) for --speed-perturb and --trim-perturb."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.9,1.1 or 15, got {text!r}") from err


def run(args: argparse.Namespace) -> int:
    """CLI entry: build FitSettings from flags and fit."""
    names = FitSettings.__dataclass_fields__
    settings = FitSettings(**{k: v for k, v in vars(args).items() if k in names})
    settings.add_datasets = tuple(settings.add_datasets)
    result = fit(settings)
    print(f"accuracy {result.accuracy:.4f} ({len(result.test_labels)} test clips); model in {settings.out}")
    return 0
