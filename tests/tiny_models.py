"""Tiny real models built from configs (no hub downloads): Whisper and Wav2Vec2 classifier folders."""

from __future__ import annotations

from pathlib import Path

from daemon.audio import SAMPLE_RATE

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
