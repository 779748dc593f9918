"""Tiny real models built from configs (no hub downloads): Whisper and Wav2Vec2 classifier folders."""

from __future__ import annotations

from pathlib import Path

from intentd.daemon.audio import SAMPLE_RATE

TINY_LABELS = ("balance", "transfer", "stop")
TINY_CHUNK_S = 1  # the encoder sees 1 s: max_source_positions=50 -> 100 mel frames -> one second of samples
POSITIONS_PER_S = 50


def _whisper_folder(folder: Path, labels: tuple[str, ...] | list[str], *, seed: int, mel_bins: int,
                    d_model: int, layers: int, init_std: float | None, conv_std: float | None) -> Path:
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=64,
        # Special token ids must sit inside the tiny vocabulary (the defaults are Whisper's 50256...).
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
        num_mel_bins=mel_bins, d_model=d_model, encoder_layers=layers, encoder_attention_heads=2,
        encoder_ffn_dim=2 * d_model, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=2 * d_model,
        max_source_positions=POSITIONS_PER_S * TINY_CHUNK_S, max_target_positions=16,
        classifier_proj_size=d_model // 2, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
        **({"init_std": init_std} if init_std is not None else {}),
    )
    model = WhisperForAudioClassification(config).eval()
    if conv_std is not None:
        with torch.no_grad():
            for conv in (model.encoder.conv1, model.encoder.conv2):
                conv.weight.normal_(0.0, conv_std)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    WhisperFeatureExtractor(feature_size=mel_bins, sampling_rate=SAMPLE_RATE,
                            chunk_length=TINY_CHUNK_S).save_pretrained(folder)
    return folder


def build_tiny_whisper(folder: Path, seed: int = 0, labels: tuple[str, ...] = TINY_LABELS) -> Path:
    """An untrained classifier whose large random weights give different clips clearly different scores."""
    return _whisper_folder(folder, labels, seed=seed, mel_bins=16, d_model=16, layers=1, init_std=0.5,
                           conv_std=None)


def make_tiny_whisper(out: Path, labels: list[str] | None = None) -> Path:
    """A 2-layer d_model=32 classifier that can learn: for fit tests.

    At the default init (std 0.02) the conv front end is drowned by the sinusoidal positions and every clip
    encodes alike; a louder front end keeps pitch audible, as a pretrained one would.
    """
    return _whisper_folder(out, labels or ["a", "b"], seed=0, mel_bins=80, d_model=32, layers=2, init_std=None,
                           conv_std=0.2)


def build_whisper_tiny_size(folder: Path, labels: tuple[str, ...] = TINY_LABELS, seed: int = 1) -> Path:
    """Random weights at Whisper tiny's size (d_model 384, 4 encoder layers, a 30 s window): each forward and
    each load costs what a real small model's does, for the tests and benchmarks where that time is the point
    (a queue that fills, a drain that runs out of time, a reload still loading)."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
        num_mel_bins=80, d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536,
        decoder_layers=1, decoder_attention_heads=6, decoder_ffn_dim=1536, max_source_positions=1500,
        max_target_positions=16, classifier_proj_size=256, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
    )
    folder.mkdir(parents=True, exist_ok=True)
    WhisperForAudioClassification(config).eval().save_pretrained(folder, safe_serialization=True)
    WhisperFeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE, chunk_length=30).save_pretrained(folder)
    return folder


def make_tiny_wav2vec2(out: Path, labels: list[str] | None = None) -> Path:
    """A 2-layer hidden=32 Wav2Vec2ForSequenceClassification folder with its feature extractor."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    labels = labels or ["a", "b"]
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        vocab_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 8), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, classifier_proj_size=16, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
    )
    Wav2Vec2ForSequenceClassification(config).save_pretrained(str(out))
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE,
                             return_attention_mask=False).save_pretrained(str(out))
    return out


# A whisper-grammar folder's tiny tokenizer: every byte is a token (GPT-2's byte-level alphabet), a few words
# are single tokens too (so decoding mixes whole words and letters, as Whisper's does), then the special tokens.
TINY_WORD_TOKENS = ("Ġlarge", "Ġsmall", "Ġlatte", "Ġmocha", "Ġwith", "Ġmilk", "Ġa", "ĠI", "Ġcan", "Ġget")
TINY_GRAMMAR_WINDOWS_S = (0.5, 1.0)


def build_tiny_grammar_model(folder: Path, intents_file: Path, seed: int = 0, max_tokens: int = 48) -> Path:
    """A whisper-grammar folder for an intents file: a random tiny WhisperForConditionalGeneration (1 s window,
    served at 0.5 and 1 s), the byte-level tokenizer above, and the intentd.json `grammar-model` writes."""
    import json

    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from intentd.daemon.grammar import byte_decoder
    from intentd.daemon.grammar_decoder import TOKENIZER_FILE, DecoderSettings
    from intentd.train.grammar_model import EOT, NO_TIMESTAMPS, SERVING_FILE, SOT, grammar_serving_meta
    from intentd.train.intents import load_intents

    intents = load_intents(intents_file)
    alphabet = sorted(byte_decoder(), key=lambda ch: byte_decoder()[ch])
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for word in TINY_WORD_TOKENS:
        vocab[word] = len(vocab)
    specials = [SOT, EOT, NO_TIMESTAMPS]
    added = [{"id": len(vocab) + i, "content": name, "special": True} for i, name in enumerate(specials)]
    ids = {t["content"]: t["id"] for t in added}
    tokenizer = {"version": "1.0", "added_tokens": added, "model": {"type": "BPE", "vocab": vocab, "merges": []}}
    labels = list(intents.names)
    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=len(vocab) + len(specials), pad_token_id=ids[EOT], bos_token_id=ids[SOT], eos_token_id=ids[EOT],
        decoder_start_token_id=ids[SOT], num_mel_bins=16, d_model=16, encoder_layers=1, encoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32,
        max_source_positions=POSITIONS_PER_S * TINY_CHUNK_S, max_target_positions=max_tokens + 4, init_std=0.5,
        architectures=["WhisperForConditionalGeneration"], id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    folder.mkdir(parents=True, exist_ok=True)
    WhisperForConditionalGeneration(config).eval().save_pretrained(folder, safe_serialization=True)
    WhisperFeatureExtractor(feature_size=16, sampling_rate=SAMPLE_RATE, chunk_length=TINY_CHUNK_S).save_pretrained(
        folder)
    (folder / TOKENIZER_FILE).write_text(json.dumps(tokenizer), encoding="utf-8")
    settings = DecoderSettings((ids[SOT], ids[NO_TIMESTAMPS]), ids[EOT], beam=3, max_tokens=max_tokens)
    meta = grammar_serving_meta(intents, settings, TINY_GRAMMAR_WINDOWS_S, source="tests/tiny_models.py",
                                intents_file=str(intents_file))
    (folder / SERVING_FILE).write_text(json.dumps(meta), encoding="utf-8")
    return folder
