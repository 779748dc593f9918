"""Time masking inside the network: the mask itself, the hook's train-only effect, and fits that use it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import write_tone_folder

from intentd.train import augment, frozen
from intentd.train.data import load_labelled, prepare_features
from intentd.train.errors import TrainError
from intentd.train.fit import FitSettings, fit


def test_each_clip_gets_one_contiguous_span_of_at_most_n_frames_zeroed() -> None:
    hidden = torch.rand(64, 30, 4) + 1.0  # no zeros of its own
    masked = augment.time_mask(hidden, 6, torch.Generator().manual_seed(0))
    zero = (masked == 0).all(dim=2)
    widths = zero.sum(dim=1)
    assert widths.max() <= 6 and widths.min() == 0 and len(set(widths.tolist())) > 3  # drawn, not fixed
    for row in zero:
        where = row.nonzero().flatten()
        if len(where):
            assert where.tolist() == list(range(int(where[0]), int(where[-1]) + 1))  # one span
    torch.testing.assert_close(masked[~zero], hidden[~zero])  # the rest untouched
    assert (zero[:, 0].any() and zero[:, -1].any())  # spans reach both ends of the window over many clips


def test_mask_longer_than_the_window_is_drawn_within_it() -> None:
    # 3 frames, masks of up to 50: widths must be drawn from 0..3, so about a quarter of the clips lose every frame.
    # (Drawing 0..50 and cutting at the end would mask nearly all of them.)
    masked = augment.time_mask(torch.ones(400, 3, 2), 50, torch.Generator().manual_seed(1))
    fully = float((masked == 0).all(dim=2).all(dim=1).float().mean())
    assert 0.15 < fully < 0.35, fully


def _tiny_top(path: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import AutoModelForAudioClassification

    model = AutoModelForAudioClassification.from_pretrained(str(path), num_labels=3, ignore_mismatched_sizes=True)
    frozen.apply_train_mode(model, "top", 1)
    return model, frozen.small_module(model, "top", 1)


def test_hook_masks_the_trained_layer_input_only_while_training(tone_folder: Path, tiny_whisper_dir: Path) -> None:
    from transformers import AutoFeatureExtractor

    model, top = _tiny_top(tiny_whisper_dir)
    extractor = AutoFeatureExtractor.from_pretrained(str(tiny_whisper_dir))
    data = load_labelled(str(tone_folder))
    features = prepare_features(data.splits["test"], data.label_column, extractor, 1.0)
    cache, _ = frozen.build_cache(model, features, "top", unfreeze_top=1)
    hidden = cache.model_inputs()["hidden"]
    with torch.no_grad():
        top.eval()
        before = top(hidden)["logits"]
        handle = augment.install_time_mask(frozen.encoder_layers(model)[-1], 0.5, seed=0)
        after_eval = top(hidden)["logits"]
        top.train()
        after_train = top(hidden)["logits"]
        handle.remove()
        top.eval()
        removed = top(hidden)["logits"]
    torch.testing.assert_close(after_eval, before)  # inference is never masked
    assert not torch.allclose(after_train, before)  # training is
    torch.testing.assert_close(removed, before)


def test_hook_reaches_the_uncached_full_model_path(tiny_whisper_dir: Path) -> None:
    model, _ = _tiny_top(tiny_whisper_dir)
    seen: list[torch.Tensor] = []
    layers = frozen.encoder_layers(model)
    layers[0].register_forward_hook(lambda module, args, out: seen.append(args[0].detach().clone()))
    augment.install_time_mask(layers[0], 0.4, seed=0)
    features = torch.randn(4, model.config.num_mel_bins, 2 * model.config.max_source_positions)
    model.train()
    model(input_features=features)
    masked_frames = (seen[-1] == 0).all(dim=2).sum(dim=1)
    assert masked_frames.max() > 0  # the full model's own call of the layer is masked too


def _settings(data: Path, base: Path, out: Path, **overrides: object) -> FitSettings:
    values: dict[str, object] = {"dataset": str(data), "base_model": str(base), "out": str(out), "epochs": 8,
                                 "batch_size": 8, "seed": 0, "learning_rate": 3e-3, "train_mode": "top",
                                 "unfreeze_top": 1, "out_of_scope": False}
    values.update(overrides)
    return FitSettings(**values)  # type: ignore[arg-type]


def test_fit_with_time_mask_learns_and_saves_a_plain_model(tmp_path: Path, tiny_whisper_dir: Path) -> None:
    from transformers import AutoModelForAudioClassification

    data = write_tone_folder(tmp_path / "tones", per_label=12, seed=1)
    result = fit(_settings(data, tiny_whisper_dir, tmp_path / "model", time_mask=0.2))
    assert result.accuracy >= 0.75, result.metrics["history"]
    assert result.metrics["settings"]["time_mask"] == 0.2
    model = AutoModelForAudioClassification.from_pretrained(str(tmp_path / "model"))
    assert not any(layer._forward_pre_hooks for layer in frozen.encoder_layers(model))


def test_time_mask_needs_a_trained_layer_and_a_sane_length(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="--train-mode head"):
        _settings(tmp_path, tmp_path, tmp_path, train_mode="head", time_mask=0.3).resolved()
    with pytest.raises(TrainError, match="--time-mask must be between 0 and 1"):
        _settings(tmp_path, tmp_path, tmp_path, time_mask=2.0).resolved()
