"""`intentd-train fit`: fine-tune an audio classifier on DATA with Trainer and write a complete model folder.

Starts from the HF audio-classification tutorial (MInDS-14, Wav2Vec2, Trainer, accuracy) and adds train modes
(head/top/full, see train.frozen), a frozen-prefix cache for speed, metrics.json and plots. The output folder
loads with AutoModelForAudioClassification and pipeline("audio-classification"); checkpoints live in
OUT/checkpoints so they never shadow the final model.

Runs unchanged under `torchrun --nproc_per_node N` or `accelerate launch` (Trainer's DDP, gloo on CPUs): each
process trains on its share of every batch; the per-node main process prepares the data (and the out-of-scope
cache) first, the others then read it; only global rank 0 writes the model folder, calibrates it and writes
metrics.json and the plots, and every process returns once it has.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

import numpy as np

from intentd.daemon.audio import SAMPLE_RATE
from intentd.daemon.classifier import CALIBRATION_FILE
from intentd.daemon.slot_heads import SLOT_HEADS_FILE, SLOTS_KEY
from intentd.train import model_card, out_of_scope, progress, slot_training
from intentd.train.data import (
    DEFAULT_MAX_SECONDS,
    DEFAULT_SPLIT_SEED,
    DEFAULT_TEST_FRACTION,
    LABEL_COLUMN_CANDIDATES,
    LabelledSplits,
    iter_clips,
    join_labelled,
    load_combined,
    load_labelled,
    prepare_features,
)
from intentd.train.errors import TrainError
from intentd.train.frozen import DEFAULT_LEARNING_RATES, DEFAULT_UNFREEZE_TOP, TRAIN_MODES
from intentd.train.out_of_scope import DEFAULT_KEEP_IN_DOMAIN

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.json"
# Inside each OUT/checkpoints/checkpoint-N of a cached fit: that epoch's whole classifier, loadable on its own.
CHECKPOINT_MODEL_DIR = "model"
CURVES_FILE = "training_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
ACCURACY_METRIC_DIR = Path(__file__).parent / "metrics" / "accuracy"
# The tutorial accumulates 4 batches of 32; frozen modes take many cheap steps, so they accumulate none by default.
DEFAULT_GRAD_ACCUMULATION = {"head": 1, "top": 1, "full": 4}
# Speed perturbation beyond this range stops sounding like the same word said by another person.
MIN_SPEED, MAX_SPEED = 0.5, 2.0
# Below 3 dB a trim keeps little more than the loudest frame; beyond 60 dB it keeps everything but digital silence.
MIN_TRIM_DB, MAX_TRIM_DB = 3.0, 60.0
# A mask longer than a short word hides all of it; beyond this it only adds label noise.
MAX_TIME_MASK_S = 1.0
REQUIRED: Any = MISSING


def option(default: Any, doc: str, *, metavar: str | None = None, flag: str | None = None,
           choices: tuple[str, ...] | None = None, per_mode: dict[str, Any] | None = None,
           fallback: str | None = None, default_doc: str | None = None) -> Any:
    """A FitSettings field with its `fit` flag attached: help text and, where the field's name and type are not
    enough, flag name, metavar and choices. A None default is filled by resolved() from `per_mode` (by train
    mode) or from the field named by `fallback`; `default_doc` says in words what the default is."""
    meta = {"doc": doc, "metavar": metavar, "flag": flag, "choices": choices, "per_mode": per_mode,
            "fallback": fallback, "default_doc": default_doc}
    return field(metadata=meta) if default is REQUIRED else field(default=default, metadata=meta)


@dataclass(slots=True)
class FitSettings:
    """Everything one fit run uses; written to metrics.json as `settings`. Each field is also a `fit` flag
    (add_arguments): its default, type and help live here and nowhere else."""

    dataset: str = option(REQUIRED, "hub id (with --dataset-config), audio folder, or save_to_disk folder",
                          metavar="DATA")
    out: str = option(REQUIRED, "output model folder", metavar="DIR")
    add_datasets: tuple[str, ...] = option(
        (), "also train on DATA (repeatable): labels are matched by name, its held-out split joins the test set; "
        "e.g. your recordings plus `intentd-train synth` speech", flag="--add-dataset", metavar="DATA")
    speed_perturb: tuple[float, ...] = option(
        (), "also train on every training clip played F times faster, e.g. 0.9,1.1 (tempo and pitch together; the "
        "held-out split is left as is)", metavar="F,F")
    trim_perturb: tuple[float, ...] = option(
        (), "also train on every training clip cut tight at DB below its loudest 10 ms, e.g. 15 (as an endpointer "
        "cuts weak onsets; the held-out split is left as is)", metavar="DB,DB")
    time_mask: float = option(
        0.0, "hide a random span of up to SECONDS of every training clip from the trained layers, e.g. 0.4: "
        "SpecAugment-style time masking where the trained layers begin; 0 is off", metavar="SECONDS")
    out_of_scope: bool = option(
        True, "add the class `unknown` (published as intent.unknown) trained on synthesized speech that is no "
        "intent and on generated room noise, music, breathing and clicks (train/out_of_scope.py)")
    out_of_scope_clips: int = option(600, "spoken out-of-scope sentences to synthesize (cached between fits)",
                                     metavar="N")
    out_of_scope_noise: int = option(200, "generated non-speech clips for the out-of-scope class", metavar="N")
    out_of_scope_dir: str | None = option(None, "also train `unknown` on every audio file in DIR: your own "
                                          "recordings of things that are no command", metavar="DIR")
    out_of_scope_engines: str | None = option(None, "comma-separated TTS engines for the out-of-scope speech",
                                              metavar="ENGINES", default_doc="every installed synth engine")
    keep_in_domain: float = option(
        DEFAULT_KEEP_IN_DOMAIN, "calibrate the rejection threshold on the held-out split to keep this share of "
        "in-domain commands; stored in the model folder, used by the daemon, predict and eval", metavar="SHARE")
    windows: tuple[float, ...] = option(
        (), "length-aware windows in seconds, e.g. 1,2: each clip is trained and served at the shortest of these "
        "(or the backbone's own window) that holds it, so short commands cost less (Whisper, head or top mode)",
        metavar="S,S")
    weighted_layer_sum: bool = option(
        False, "classify a learned weighted sum of every encoder layer, not only the last "
        "(config.use_weighted_layer_sum)")
    slots: bool = option(
        True, "where DATA labels slots (a `slots` column, as synth writes for captured slots), also train a head "
        "per slot that returns its value (daemon/slot_heads.py; Whisper, head or top mode)")
    base_model: str = option("facebook/wav2vec2-base", "hub id or local HF model folder", metavar="MODEL")
    dataset_config: str | None = option(None, "hub dataset config, e.g. en-US for PolyAI/minds14")
    label_column: str | None = option(None, "label column", default_doc=" or ".join(LABEL_COLUMN_CANDIDATES))
    train_mode: str = option("top", "head: classifier only; top: + top N encoder layers; full: everything",
                             choices=TRAIN_MODES)
    unfreeze_top: int = option(DEFAULT_UNFREEZE_TOP, "encoder layers trained in top mode", metavar="N")
    learning_rate: float | None = option(None, "peak learning rate", per_mode=DEFAULT_LEARNING_RATES)
    batch_size: int = option(32, "training clips per step, the tutorial's")
    eval_batch_size: int | None = option(None, "clips per evaluation step", fallback="batch_size")
    grad_accumulation: int | None = option(None, "gradient accumulation steps", metavar="STEPS",
                                           per_mode=DEFAULT_GRAD_ACCUMULATION)
    # Measured (bench/README.md): with top-2 digits peaked by epoch 3-5 and the 14-intent synth set at epoch 7;
    # with top-1 (the default) the 14-intent set still gains until epoch 9 of 10, and synth-only digits scored
    # 96.45% with 10 epochs against 96.15% with 5. The best epoch is kept, so 10 costs time, not accuracy.
    epochs: float = option(10, "training epochs (fractions allowed); the best one by held-out accuracy is kept")
    warmup_ratio: float = option(0.1, "share of the steps over which the learning rate rises linearly from 0, "
                                 "before it decays linearly to 0")
    weight_decay: float = option(0.0, "AdamW weight decay, not applied to biases and norms")
    max_seconds: float = option(DEFAULT_MAX_SECONDS, "truncate longer clips; Whisper uses its own chunk length "
                                "instead")
    test_fraction: float = option(DEFAULT_TEST_FRACTION, "held-out fraction when DATA has no test split")
    seed: int = option(DEFAULT_SPLIT_SEED, "seed of the held-out split, the head's initialisation and the batch order")
    cache: bool = option(True, "run the whole model every step even in frozen modes (slow; for checking)")
    resume: bool = option(False, "continue from the last checkpoint in DIR/checkpoints")
    push_to_hub: bool = option(False, "upload the final model (needs hub access)")
    hub_model_id: str | None = option(None, "repo id for --push-to-hub", default_doc="DIR's name")

    def resolved(self) -> FitSettings:
        """A copy with every mode-dependent default filled in and values checked."""
        if self.train_mode not in TRAIN_MODES:
            raise TrainError(f"{flag_of('train_mode')} must be one of {', '.join(TRAIN_MODES)}, "
                             f"not {self.train_mode!r}")
        for name in ("batch_size", "epochs", "max_seconds"):
            if getattr(self, name) <= 0:
                raise TrainError(f"{flag_of(name)} must be positive, got {getattr(self, name)}")
        for factor in self.speed_perturb:
            if not MIN_SPEED <= factor <= MAX_SPEED:
                raise TrainError(f"{flag_of('speed_perturb')} factors must be in [{MIN_SPEED}, {MAX_SPEED}], "
                                 f"got {factor}")
        for db in self.trim_perturb:
            if not MIN_TRIM_DB <= db <= MAX_TRIM_DB:
                raise TrainError(f"{flag_of('trim_perturb')} levels must be in "
                                 f"[{MIN_TRIM_DB:g}, {MAX_TRIM_DB:g}] dB, got {db:g}")
        if not 0 <= self.time_mask <= MAX_TIME_MASK_S:
            raise TrainError(f"{flag_of('time_mask')} must be between 0 and {MAX_TIME_MASK_S:g} seconds, "
                             f"got {self.time_mask:g}")
        if self.time_mask and self.train_mode == "head":
            raise TrainError(f"{flag_of('time_mask')} masks the input of the lowest trained encoder layer; "
                             f"{flag_of('train_mode')} head trains none (use top or full)")
        if self.windows and self.train_mode == "full":
            raise TrainError(f"{flag_of('windows')} trains on the frozen-prefix cache: use {flag_of('train_mode')} "
                             "head or top")
        if self.windows and self.weighted_layer_sum:
            raise TrainError(f"{flag_of('windows')} and {flag_of('weighted_layer_sum')} cannot be combined")
        if self.windows and not self.cache:
            raise TrainError(f"{flag_of('windows')} trains on the frozen-prefix cache; drop {flag_of('cache')}")
        if not 0 < self.keep_in_domain <= 1:
            raise TrainError(f"{flag_of('keep_in_domain')} must be in (0, 1], got {self.keep_in_domain}")
        for name in ("out_of_scope_clips", "out_of_scope_noise"):
            if getattr(self, name) < 0:
                raise TrainError(f"{flag_of(name)} must be 0 or more, got {getattr(self, name)}")
        if not 0 < self.test_fraction < 1:
            raise TrainError(f"{flag_of('test_fraction')} must be between 0 and 1, got {self.test_fraction}")
        out = FitSettings(**asdict(self))
        for f in fields(FitSettings):
            per_mode, fallback = f.metadata["per_mode"], f.metadata["fallback"]
            if per_mode is not None:
                setattr(out, f.name, getattr(self, f.name) or per_mode[self.train_mode])
            elif fallback is not None:
                setattr(out, f.name, getattr(self, f.name) or getattr(self, fallback))
        return out


def flag_of(name: str) -> str:
    """The `fit` flag of a FitSettings field: --the-field-name, --no-the-field-name for one on by default, or
    what its metadata names."""
    f = FitSettings.__dataclass_fields__[name]
    negated = f.default is True
    return f.metadata["flag"] or ("--no-" if negated else "--") + name.replace("_", "-")


def _shown(f: Field[Any]) -> str | None:
    """A field's default as its help shows it; None where there is nothing to show (off, empty or required)."""
    meta = f.metadata
    if meta["per_mode"] is not None:
        by_mode = ", ".join(f"{mode} {value:g}" for mode, value in meta["per_mode"].items())
        return f"{by_mode}, by {flag_of('train_mode')}"
    if meta["fallback"] is not None:
        return f"the {flag_of(meta['fallback'])} value"
    if meta["default_doc"] is not None:
        return meta["default_doc"]
    if f.default in (REQUIRED, None, ()) or isinstance(f.default, bool):
        return None
    return f"{f.default:g}" if isinstance(f.default, float) else str(f.default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per FitSettings field, its type, default and help read from the field (settings said once)."""
    hints = get_type_hints(FitSettings)
    for f in fields(FitSettings):
        kind = hints[f.name]
        if type(None) in get_args(kind):  # X | None: a flag of type X, None when not given
            kind = next(t for t in get_args(kind) if t is not type(None))
        default: Any = f.default
        shown = _shown(f)
        doc = f.metadata["doc"] + (f" (default: {shown})" if shown else "")
        kwargs: dict[str, Any] = {"dest": f.name, "help": doc.replace("%", "%%")}
        if default is REQUIRED:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        if kind is bool:
            kwargs["action"] = "store_false" if default else "store_true"
        elif kind == tuple[str, ...]:
            kwargs.update(action="append", default=list(default))  # --add-dataset A --add-dataset B
        elif kind == tuple[float, ...]:
            kwargs["type"] = _numbers  # --speed-perturb 0.9,1.1
        elif kind is not str:
            kwargs["type"] = kind
        for key in ("metavar", "choices"):
            if f.metadata[key] is not None:
                kwargs[key] = f.metadata[key]
        parser.add_argument(flag_of(f.name), **kwargs)


def from_arguments(args: argparse.Namespace) -> FitSettings:
    """FitSettings from add_arguments' flags (lists back to tuples)."""
    values: dict[str, Any] = {}
    for f in fields(FitSettings):
        value = getattr(args, f.name)
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return FitSettings(**values)


@dataclass(slots=True)
class FitResult:
    """What a fit produced: the final accuracy and the test-set logits of the trained (possibly cached) path.
    Under DDP every process gets one; only the writer's (global rank 0) has `metrics` and `wrote` set."""

    accuracy: float
    test_logits: np.ndarray
    test_labels: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)
    wrote: bool = True


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
        # Off a terminal, Trainer prints one plain line of losses per epoch instead of a bar.
        disable_tqdm=not log.isEnabledFor(logging.INFO) or not progress.on_terminal(),
    )


def loop_optimiser(module: Any, s: FitSettings, steps_per_epoch: int) -> tuple[Any, Any]:
    """The optimiser and learning-rate schedule fit's Trainer builds from settings `s` (resolved), for a loop that
    trains a cached module outside Trainer: the same class, hyperparameters, weight-decay groups and linear
    warm-up and decay over s.epochs, all read from _training_arguments.

    bench/fold_variants.py needs such a loop: its variants change the loss (mixup, speech-frame pooling,
    distillation) and what a step records (weight averages every quarter epoch, the unseen speaker every epoch),
    and its recorded rows depend on its own batch order. The loop keeps two differences from Trainer, because
    those rows were trained without them: torch's default AdamW kernel instead of the fused one (the same
    arithmetic, rounded differently in the last bits) and no clipping of the gradient norm
    (TrainingArguments.max_grad_norm).
    """
    import tempfile

    from transformers import Trainer, get_scheduler

    args = _training_arguments(s, Path(tempfile.gettempdir()) / "intentd-loop-optimiser")  # nothing is written
    optimiser_class, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, module)
    kwargs.pop("fused", None)
    decay = set(Trainer.get_decay_parameter_names(None, module))  # type: ignore[arg-type]  # reads no Trainer state
    trained = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    groups = [{"params": [p for name, p in trained if name in decay], "weight_decay": args.weight_decay},
              {"params": [p for name, p in trained if name not in decay], "weight_decay": 0.0}]
    optimiser = optimiser_class(groups, **kwargs)
    total = math.ceil(s.epochs * steps_per_epoch)
    schedule = get_scheduler(args.lr_scheduler_type, optimizer=optimiser,
                             num_warmup_steps=args.get_warmup_steps(total), num_training_steps=total)
    return optimiser, schedule


def install_time_mask(model: Any, s: FitSettings) -> Any:
    """Hook --time-mask onto the lowest trained encoder layer (cached or not, the same module runs)."""
    from intentd.train import augment, frozen

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


def load_data(s: FitSettings) -> LabelledSplits:
    """DATA and every --add-dataset joined by label name, each with its held-out part, plus the out-of-scope
    class unless --no-out-of-scope; a train split required."""
    specs = [s.dataset, *s.add_datasets]
    if not s.out_of_scope:
        data = load_combined(specs, s.dataset_config, s.label_column, s.seed, s.test_fraction)
    else:
        parts = [load_labelled(spec, s.dataset_config, s.label_column, s.seed, s.test_fraction) for spec in specs]
        parts += _out_of_scope_parts(s, parts)
        data = join_labelled(parts, " + ".join([*specs, out_of_scope.OUT_OF_SCOPE_LABEL]))
    if "train" not in data.splits:
        raise TrainError(f"dataset {' + '.join(specs)} has no train split; splits found: {sorted(data.splits)}")
    if len(data.label_names) < 2:
        raise TrainError(
            f"dataset {' + '.join(specs)} has one class only ({', '.join(data.label_names)}): a classifier needs "
            "two or more (one subfolder per intent), or keep the out-of-scope class (drop --no-out-of-scope)")
    return data


def _out_of_scope_parts(s: FitSettings, parts: list[LabelledSplits]) -> list[LabelledSplits]:
    """The out-of-scope speech and noise (synthesized, cached) and --out-of-scope-dir, labelled `unknown`."""
    labels = sorted({n for part in parts for n in part.label_names})
    said = [t for part in parts for split in part.splits.values() if "transcription" in split.column_names
            for t in split["transcription"]]
    engines = [e.strip() for e in s.out_of_scope_engines.split(",") if e.strip()] if s.out_of_scope_engines else None
    found = []
    if s.out_of_scope_clips or s.out_of_scope_noise:
        folder = out_of_scope.synth_dataset(labels, said, s.out_of_scope_clips, s.out_of_scope_noise, s.seed, engines)
        found.append(load_labelled(str(folder), seed=s.seed, test_fraction=s.test_fraction))
    if s.out_of_scope_dir:
        found.append(out_of_scope.folder_dataset(s.out_of_scope_dir, s.seed, s.test_fraction))
    return found


def calibrate_saved(s: FitSettings, data: LabelledSplits) -> out_of_scope.Calibration:
    """Score the held-out split with the saved folder exactly as the daemon will, then store the threshold that
    keeps --keep-in-domain of the in-domain clips."""
    from intentd.daemon.classifier import Classifier

    classifier = Classifier.load(s.out, device="cpu", threshold=0.0)
    rows = data.split("test")
    probabilities, truth = [], []
    for clips, batch in iter_clips(rows, s.eval_batch_size or s.batch_size):
        probabilities.append(classifier.probabilities(clips))
        truth.extend(data.label_names[i] for i in batch[data.label_column])
    probs = np.concatenate(probabilities) if probabilities else np.zeros((0, len(classifier.labels)), np.float32)
    calibration = out_of_scope.calibrate(probs, truth, classifier.labels, s.keep_in_domain)
    out_of_scope.write_calibration(s.out, calibration)
    log.info("calibrated threshold %.4f: keeps %.2f%% of %d in-domain held-out clips; out of scope accepted: %s",
             calibration.threshold, 100 * calibration.in_domain_acceptance, calibration.in_domain,
             "n/a" if calibration.out_of_scope_false_acceptance is None
             else f"{100 * calibration.out_of_scope_false_acceptance:.2f}% of {calibration.out_of_scope}")
    return calibration


def training_features(s: FitSettings, data: LabelledSplits, extractor: Any,
                      windows: tuple[int, ...] = ()) -> dict[str, Any]:
    """The train and test splits as model inputs; speed- and trim-perturbed copies join the train split only;
    with windows (samples) each clip padded to the window it will be served at."""
    speeds = {"train": (1.0, *s.speed_perturb), "test": (1.0,)}
    trims = {"train": s.trim_perturb, "test": ()}
    return {
        name: prepare_features(data.split(name), data.label_column, extractor, s.max_seconds, s.batch_size,
                               speeds=speeds[name], trims=trims[name], windows=windows)
        for name in ("train", "test")
    }


def serving_windows(s: FitSettings, model: Any, extractor: Any) -> tuple[int, ...]:
    """--windows in samples (the backbone's own window last), checked against the model; () without the flag."""
    from intentd.daemon.classifier import fixed_window
    from intentd.daemon.errors import ModelError
    from intentd.daemon.windows import parse_windows, window_step

    if not s.windows:
        return ()
    from intentd.train import frozen

    full = fixed_window(extractor)
    if full is None or not frozen.can_cache(model, "top"):
        raise TrainError(f"{flag_of('windows')} needs a Whisper backbone (a fixed-window model), "
                         f"not {type(model).__name__}")
    try:
        return parse_windows(s.windows, full, window_step(extractor), flag_of("windows"))
    except ModelError as err:
        raise TrainError(str(err)) from err


def _loadable_checkpoints() -> Any:
    """A TrainerCallback class (transformers imported only when fit runs)."""
    from transformers import TrainerCallback

    class LoadableCheckpoints(TrainerCallback):  # type: ignore[misc]
        """Where Trainer trains a small module (the cached frozen prefix), its checkpoints hold only that module's
        tensors; beside them, CHECKPOINT/model gets the whole classifier as a Hugging Face folder (config,
        weights, feature extractor) that from_pretrained, pipeline() and `intentd --model` load. The full model
        shares the trained module's parameters, so it holds the checkpoint's weights at save time."""

        def __init__(self, model: Any, extractor: Any) -> None:
            self._model = model
            self._extractor = extractor

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not state.is_world_process_zero:
                return
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}" / CHECKPOINT_MODEL_DIR
            self._model.save_pretrained(str(folder))
            self._extractor.save_pretrained(str(folder))

    return LoadableCheckpoints


def _checkpoint_saver(model: Any, extractor: Any) -> Any:
    return _loadable_checkpoints()(model, extractor)


def _last_checkpoint(checkpoints: Path) -> str | None:
    """The newest checkpoint-N folder, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None


def fit(settings: FitSettings) -> FitResult:
    """Train, keep the best epoch by accuracy, and write the model folder, metrics.json and plots.

    A fit that fails before writing a file removes the --out folder it made, so no empty folder looks like a
    model (checkpoints, once written, stay for --resume)."""
    out = Path(settings.out)
    made = not out.exists()
    try:
        return _fit(settings.resolved(), out)
    except BaseException:
        if made and out.is_dir() and not any(f.is_file() for f in out.rglob("*")):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _fit(s: FitSettings, out: Path) -> FitResult:
    from accelerate import PartialState
    from transformers import Trainer, default_data_collator, set_seed

    from intentd.train import frozen, plots

    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / CHECKPOINTS_DIR
    set_seed(s.seed)
    # Made first: under torchrun it joins the process group, which says which process writes and on which
    # device each trains (cuda:LOCAL_RANK, not every process on cuda:0).
    args = _training_arguments(s, checkpoints)
    writer = args.process_index == 0

    # The main process of each node loads first, so the out-of-scope clips and the datasets caches are written
    # once, then read by the others.
    with args.main_process_first(desc="loading the data"):
        data = load_data(s)
        model, extractor = load_base_model(s.base_model, data.label_names, s.weighted_layer_sum)
        counts = frozen.apply_train_mode(model, s.train_mode, s.unfreeze_top)
        log.info("train mode %s: %d of %d parameters trainable", s.train_mode, counts["trainable"], counts["total"])
        # Before the slow feature pass, so an unsupported model fails at once; the cache runs in eval mode,
        # unmasked.
        mask_hook = install_time_mask(model, s) if s.time_mask else None
        windows = serving_windows(s, model, extractor)
        slot_schema = slot_training.schema_of(data) if s.slots else None
        if slot_schema is not None:
            slot_training.check_run(model, s.train_mode, s.cache, s.weighted_layer_sum)
            data = slot_training.with_targets(data, slot_schema)
            log.info("training slot heads beside the intent: %s",
                     ", ".join(f"{name} ({len(v)} values)" for name, v in slot_schema.values.items()))
        features = training_features(s, data, extractor, windows)
    model.to(args.device)

    cached = s.cache and frozen.can_cache(model, s.train_mode)
    cache_speed: dict[str, float] = {}
    slot_heads = slot_training.new_heads(model, slot_schema, s.seed) if slot_schema is not None else None
    if cached:
        # Slot heads attend over frames, so in head mode the cache keeps the final states per frame ("top" with no
        # trained layer) instead of their mean.
        mode, top = ("top", 0) if slot_heads is not None and s.train_mode == "head" else (s.train_mode,
                                                                                           s.unfreeze_top)
        train_set, cache_speed = frozen.build_cache(model, features["train"], mode, top)
        test_set, _ = frozen.build_cache(model, features["test"], mode, top)
        trained: Any = frozen.small_module(model, mode, top, slot_heads)
        collator: Any = default_data_collator
    else:
        train_set, test_set, trained, collator = features["train"], features["test"], model, None

    trainer = Trainer(
        model=trained,
        args=args,
        data_collator=collator,
        train_dataset=train_set,
        eval_dataset=test_set,
        processing_class=extractor,
        compute_metrics=_accuracy_fn(),
        callbacks=[_checkpoint_saver(model, extractor)] if trained is not model else None,
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
    if not writer:  # rank 0 writes the folder; this process returns once it has
        PartialState().wait_for_everyone()
        return FitResult(accuracy=accuracy, test_logits=np.asarray(logits), test_labels=labels, wrote=False)

    model.to("cpu")
    (out / CALIBRATION_FILE).unlink(missing_ok=True)  # an earlier fit's threshold and windows are not this one's
    model.save_pretrained(str(out))
    extractor.save_pretrained(str(out))
    (out / SLOT_HEADS_FILE).unlink(missing_ok=True)
    if slot_heads is not None and slot_schema is not None:  # beside the HF classifier, which stays pipeline-loadable
        slot_heads.to("cpu").save(out)
        out_of_scope.write_serving_meta(out, {SLOTS_KEY: slot_schema.to_json()})
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
            "parts": list(data.parts),
        },
        "parameters": counts,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "resumed_from": resume_from,
        "processes": args.world_size,  # > 1 under torchrun / accelerate launch (DDP)
    }
    if windows:  # written before calibrating: the calibration scores the held-out clips as served
        out_of_scope.write_serving_meta(out, {"windows_s": [w / SAMPLE_RATE for w in windows[:-1]]})
    metrics["calibration"] = asdict(calibrate_saved(s, data))
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    model_card.write(out, metrics, FitSettings)
    plots.training_curves(history, out / CURVES_FILE)
    plots.confusion_matrix(labels.tolist(), predicted.tolist(), data.label_names, out / CONFUSION_FILE)
    log.info("accuracy %.3f on %d test clips; model written to %s", accuracy, len(labels), out)

    if s.push_to_hub:
        _push(model, extractor, s.hub_model_id or out.name)
    PartialState().wait_for_everyone()
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


# What `intentd-train fit --help` tells users (the module docstring is for developers).
FIT_DESCRIPTION = (
    "Train an intent model on labelled audio and write a model folder that `intentd --model DIR` serves. DATA "
    "is a folder of recordings (one subfolder per intent, or a metadata.jsonl), the output of `intentd-train "
    "synth`, or a Hugging Face dataset. A part of DATA is held out to measure accuracy (its test split, else "
    "--test-fraction); DIR gets the model, metrics.json, plots and a README.md model card. Runs under torchrun "
    "for several processes."
)


def register(subparsers: Any) -> None:
    """Add the `fit` subcommand: its flags are FitSettings' fields."""
    p = subparsers.add_parser("fit", help="fine-tune an audio classifier", description=FIT_DESCRIPTION)
    add_arguments(p)
    p.set_defaults(func=run)


def _numbers(text: str) -> tuple[float, ...]:
    """`0.9,1.1` -> (0.9, 1.1) for --speed-perturb and --trim-perturb."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.9,1.1 or 15, got {text!r}") from err


def run(args: argparse.Namespace) -> int:
    """CLI entry: build FitSettings from flags and fit."""
    settings = from_arguments(args)
    result = fit(settings)
    if result.wrote:  # under DDP, one line from the process that wrote the folder
        print(f"accuracy {result.accuracy:.4f} ({len(result.test_labels)} test clips); model in {settings.out}")
    return 0
