"""Tiny real models built from configs (no hub downloads) for fast classifier tests."""

from __future__ import annotations

from pathlib import Path

TINY_LABELS = ("balance", "transfer", "stop")
TINY_SAMPLE_RATE = 16_000
TINY_CHUNK_S = 1  # the encoder sees 1 s: max_source_positions=50 -> 100 mel frames -> 16000 samples
TINY_MEL_BINS = 16


def build_tiny_whisper(folder: Path, seed: int = 0, labels: tuple[str, ...] = TINY_LABELS) -> Path:
    """Build, save and return a folder with a tiny WhisperForAudioClassification and its feature extractor."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForAudioClassification

    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=64,
        # Special token ids must sit inside the tiny vocabulary (the defaults are Whisper's 50256...).
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=3,
        num_mel_bins=TINY_MEL_BINS,
        d_model=16,
        encoder_layers=1,
        encoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=32,
        max_source_positions=50,
        max_target_positions=16,
        classifier_proj_size=8,
        init_std=0.5,  # large random weights so different clips get clearly different scores
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model = WhisperForAudioClassification(config).eval()
    extractor = WhisperFeatureExtractor(
        feature_size=TINY_MEL_BINS, sampling_rate=TINY_SAMPLE_RATE, chunk_length=TINY_CHUNK_S
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    extractor.save_pretrained(folder)
    return folder
