"""A fast loop for unseen-speaker experiments: cache one FSDD fold once, then train many top-1 variants on it.

Usage: .venv/bin/python -m bench.fold_variants --speaker nicolas --synth DIR [--workdir DIR] [--trim-perturb 15]
                                               [--seeds 0 1 2] [--variants base time-mask=0.4 mixup=0.4 ...]

`bench/fsdd_speakers.py` runs the real `intentd-train fit` per fold: 7-14 min each here, mostly Trainer. This
script builds the same training data through fit's own functions (the three other speakers + the synth set,
`fit`'s held-out split, the same features, the same frozen-prefix cache of train.frozen) once per fold, saves the
cache under the work folder, and trains the top layer in its own loop with fit's settings (train.fit.FitSettings'
defaults, at the 5 epochs of the fsdd_speakers rows it mirrors) and fit's optimiser and schedule
(train.fit.loop_optimiser, which says why the loop is not Trainer) in about 5 min per variant. For each variant and seed it prints the unseen speaker's accuracy at
the epoch `fit` would keep (best held-out accuracy), its mean over the epochs (less noisy), and, over the seeds,
the accuracy of averaging their probabilities (an ensemble) and the clips every seed misses. Use it to choose
what to run through `fsdd_speakers`; the README's rows come from that script, not this one.

Variants: base; time-mask=SECONDS (train.augment, as `fit --time-mask`); label-smoothing=X; mixup=ALPHA (inputs
and targets mixed within a batch, Beta(ALPHA, ALPHA)); swa=EPOCH (weights averaged every quarter epoch from that
epoch on; the average is what is kept); masked-ce=1 (the loss pools speech frames only; evaluation still pools
all, as the model does); pad-neutral=WEIGHT (penalise the padding frames' pull on the logits); distill=K (half
the loss matches the averaged probabilities of K base teachers, seeds 1000 on). Join with `+`:
time-mask=0.4+mixup=0.4. mixup, the speech-frame losses (masked-ce, pad-neutral) and distill each replace the
plain loss, so at most one of the three kinds goes in a variant.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import sys
from pathlib import Path

import torch
from torch import nn

from bench import fsdd
from intentd.train.fit import FitSettings

# The fsdd_speakers rows this loop mirrors ran `fit --unfreeze-top 1 --epochs 5`; every other setting is fit's.
FOLD_EPOCHS = 5
EVAL_CHUNK = 64  # clips scored at once
DISTILL_T = 2.0  # softmax temperature of the distillation targets
TEACHER_SEEDS = 1000  # teachers for distill=K use seeds 1000..1000+K-1, apart from the students'
LOSS_KINDS = {"mixup": {"mixup"}, "a speech-frame loss": {"masked-ce", "pad-neutral"}, "distill": {"distill"}}


def fold_settings(fold: Path, synth: Path, base: Path, trims: tuple[float, ...]) -> FitSettings:
    """What `fsdd_speakers --synth SYNTH -- --unfreeze-top 1 --epochs 5 --trim-perturb TRIMS` gives fit for
    this fold, resolved: fit's defaults but for the epochs and the trims."""
    return FitSettings(dataset=str(fold / "train-data"), out=str(fold / "model"), add_datasets=(str(synth),),
                       trim_perturb=trims, base_model=str(base), epochs=FOLD_EPOCHS).resolved()


def build_cache(fold: Path, s: FitSettings) -> dict:
    """The fold's cache, built as fit builds it: train (with trim copies), fit's held-out split, and the unseen
    speaker."""
    from intentd.train import frozen
    from intentd.train.data import load_labelled, prepare_features
    from intentd.train.fit import load_base_model, load_data, training_features

    data = load_data(s)
    model, extractor = load_base_model(s.base_model, data.label_names, s.weighted_layer_sum)
    frozen.apply_train_mode(model, s.train_mode, s.unfreeze_top)
    features = training_features(s, data, extractor)
    out: dict = {"label_names": data.label_names}
    for name, split in (("train", "train"), ("val", "test")):
        cache, _ = frozen.build_cache(model, features[split], s.train_mode, s.unfreeze_top)
        out[name] = (cache.inputs.half(), cache.labels, speech_frames(features[split]))
    unseen = load_labelled(str(fold / "test-data"), s.dataset_config, s.label_column, s.seed, s.test_fraction)
    unseen_features = prepare_features(unseen.split("test"), unseen.label_column, extractor, s.max_seconds,
                                       s.batch_size)
    cache, _ = frozen.build_cache(model, unseen_features, s.train_mode, s.unfreeze_top)
    to_ours = [data.label_names.index(n) for n in unseen.label_names]
    out["unseen"] = (cache.inputs.half(), torch.tensor([to_ours[int(i)] for i in cache.labels]),
                     speech_frames(unseen_features))
    return out


def speech_frames(features) -> torch.Tensor:
    """(clips, encoder frames) bool: True where the frame sees audio, False where it sees only the zero padding.

    The Whisper extractor zero-pads every clip to the crop and clamps log-mel at 8 below the clip's peak, so the
    padding's mel frames all sit exactly at the clip's minimum. An encoder frame comes from mel frames 2t-1..2t+1
    (conv2: kernel 3, stride 2, padding 1), hence the max-pool.
    """
    masks = []
    for row in features.with_format("torch")["input_features"]:
        mel = row.float()
        audible = (mel > mel.min() + 1e-4).any(dim=0).float().view(1, 1, -1)
        masks.append(nn.functional.max_pool1d(audible, 3, stride=2, padding=1).view(-1) > 0)
    return torch.stack(masks)


def parse_variant(text: str) -> dict[str, float]:
    """'time-mask=0.4+mixup=0.4' -> {'time-mask': 0.4, 'mixup': 0.4}; 'base' -> {}."""
    known = {"time-mask", "label-smoothing", "mixup", "swa", "masked-ce", "pad-neutral", "distill"}
    parts = {} if text == "base" else dict(p.split("=", 1) for p in text.split("+"))
    unknown = set(parts) - known
    if unknown:
        raise SystemExit(f"unknown variant part(s) {sorted(unknown)} in {text!r}; known: base, {', '.join(sorted(known))}")
    losses = [kind for kind, names in LOSS_KINDS.items() if names & set(parts)]
    if len(losses) > 1:
        raise SystemExit(f"variant {text!r} mixes {' and '.join(losses)}, which each replace the loss; pick one")
    return {k: float(v) for k, v in parts.items()}


def train_variant(
    cache: dict, s: FitSettings, variant: dict[str, float], seed: int, teacher: torch.Tensor | None = None,
    want_train_logits: bool = False,
) -> tuple[list[float], torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Train one variant with settings `s` at `seed`; returns the unseen accuracy per epoch and, at fit's kept
    epoch, the unseen logits pooled as the model pools (every frame) and pooled over speech frames only (what a
    masked mean would give), and the training clips' logits if asked (to teach a student). With `teacher` (soft
    targets per training clip, at DISTILL_T), half the loss is the distillation term."""
    from intentd.train import frozen
    from intentd.train.fit import install_time_mask, load_base_model, loop_optimiser

    run = dataclasses.replace(s, seed=seed, time_mask=variant.get("time-mask", 0.0))
    torch.manual_seed(seed)
    model, _ = load_base_model(run.base_model, cache["label_names"], run.weighted_layer_sum)
    frozen.apply_train_mode(model, run.train_mode, run.unfreeze_top)
    top = frozen.small_module(model, run.train_mode, run.unfreeze_top)
    if run.time_mask:
        install_time_mask(model, run)
    (x_train, y_train, m_train), (x_val, y_val, _), (x_unseen, y_unseen, m_unseen) = (
        cache["train"], cache["val"], cache["unseen"])
    masked_ce, neutral = variant.get("masked-ce", 0.0), variant.get("pad-neutral", 0.0)
    batch, epochs = run.batch_size, int(run.epochs)
    steps = math.ceil(len(y_train) / batch)
    optimiser, schedule = loop_optimiser(top, run, steps)
    generator = torch.Generator().manual_seed(seed)
    smoothing, alpha = variant.get("label-smoothing", 0.0), variant.get("mixup", 0.0)
    # swa=E: average the weights at every quarter epoch from epoch E (1-based) on, and report the average
    swa_from = int(variant.get("swa", 0))
    averaged = torch.optim.swa_utils.AveragedModel(top) if swa_from else None
    snapshot_every = max(1, steps // 4)

    @torch.no_grad()
    def logits(x: torch.Tensor, speech: torch.Tensor | None = None) -> torch.Tensor:
        module = averaged.module if averaged is not None and averaged.n_averaged > 0 else top
        module.eval()
        out = []
        for i in range(0, len(x), EVAL_CHUNK):
            frames = frame_states(module, x[i : i + EVAL_CHUNK].float())
            pooled = frames.mean(1) if speech is None else speech_mean(frames, speech[i : i + EVAL_CHUNK])
            out.append(module.classifier(pooled))
        top.train()
        return torch.cat(out)

    per_epoch: list[float] = []
    best_val, best_state = -1.0, None
    top.train()
    for epoch in range(epochs):
        order = torch.randperm(len(y_train), generator=generator)
        for step in range(steps):
            rows = order[step * batch : (step + 1) * batch]
            x, y = x_train[rows].float(), y_train[rows]
            if alpha:
                lam = float(torch.distributions.Beta(alpha, alpha).sample())
                other = torch.randperm(len(y), generator=generator)
                out = top(lam * x + (1 - lam) * x[other])["logits"]
                loss = lam * nn.functional.cross_entropy(out, y, label_smoothing=smoothing) + (
                    1 - lam) * nn.functional.cross_entropy(out, y[other], label_smoothing=smoothing)
            elif masked_ce or neutral:
                loss = pooled_loss(top, x, y, m_train[rows], bool(masked_ce), neutral, smoothing)
            else:
                out = top(x)["logits"]
                loss = nn.functional.cross_entropy(out, y, label_smoothing=smoothing)
                if teacher is not None:
                    taught = nn.functional.kl_div(nn.functional.log_softmax(out / DISTILL_T, dim=1), teacher[rows],
                                                  reduction="batchmean")
                    loss = 0.5 * loss + 0.5 * DISTILL_T**2 * taught
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            if averaged is not None and epoch + 1 >= swa_from and (step + 1) % snapshot_every == 0:
                averaged.update_parameters(top)
        val = float((logits(x_val).argmax(1) == y_val).float().mean())
        per_epoch.append(float((logits(x_unseen).argmax(1) == y_unseen).float().mean()))
        if averaged is None and val > best_val:  # Trainer keeps the first of equal epochs; SWA keeps its last
            best_val, best_state = val, copy.deepcopy(top.state_dict())
    if best_state is not None:
        top.load_state_dict(best_state)
    kept_train = logits(x_train) if want_train_logits else None
    return per_epoch, logits(x_unseen), logits(x_unseen, m_unseen), kept_train


def frame_states(top: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The projector's output per frame (batch, T, proj): what WhisperForAudioClassification means over."""
    return top.projector(top.encode(x)[0])


def speech_mean(frames: torch.Tensor, speech: torch.Tensor) -> torch.Tensor:
    weights = speech.float().unsqueeze(-1)
    return (frames * weights).sum(1) / weights.sum(1).clamp(min=1)


def pooled_loss(top: nn.Module, x: torch.Tensor, y: torch.Tensor, speech: torch.Tensor, masked: bool,
                neutral: float, smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy on the mean over all frames (what the model does) or over speech frames only, plus `neutral`
    times how far the padding frames' mean pushes the logits apart (their class-centred square).

    The head is affine after the mean: logits = C(n/T speech mean + (T-n)/T padding mean) + b. Where C maps the
    padding mean to equal logits, the argmax is that of the speech frames alone, whatever the clip's length.
    """
    frames = frame_states(top, x)
    pooled = speech_mean(frames, speech) if masked else frames.mean(1)
    loss = nn.functional.cross_entropy(top.classifier(pooled), y, label_smoothing=smoothing)
    if neutral:
        pushed = speech_mean(frames, ~speech) @ top.classifier.weight.T
        loss = loss + neutral * ((pushed - pushed.mean(-1, keepdim=True)) ** 2).mean()
    return loss


def teach(cache: dict, s: FitSettings, count: int) -> torch.Tensor:
    """Soft targets for a student: `count` base models' training-clip probabilities at DISTILL_T, averaged."""
    y_unseen = cache["unseen"][1]
    probs = []
    for seed in range(TEACHER_SEEDS, TEACHER_SEEDS + count):
        _, kept, _, train_logits = train_variant(cache, s, {}, seed, want_train_logits=True)
        print(f"| teacher | {seed} | {float((kept.argmax(1) == y_unseen).float().mean()):.2%} | | | |", flush=True)
        probs.append(torch.softmax(train_logits / DISTILL_T, dim=1))
    return sum(probs) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsdd.add_bench_args(parser, "where the fold and its cache go", fsdd.DIGITS_MAX_SECONDS, ", as the README's")
    parser.add_argument("--speaker", default="nicolas", choices=fsdd.SPEAKERS, help="the unseen speaker")
    parser.add_argument("--synth", type=Path, required=True, help="digits synth folder joined to training")
    parser.add_argument("--trim-perturb", type=float, nargs="*", default=[15.0],
                        help="as fit's (default: %(default)s, as the rows this mirrors)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=["base"])
    args = parser.parse_args(argv)
    variants = {text: parse_variant(text) for text in args.variants}

    bench = fsdd.open_bench(args, "intentd-fold-variants-")
    if bench is None:
        return fsdd.SKIP_STATUS
    recs, workdir, base = bench.recordings, bench.workdir, bench.base
    trims = tuple(args.trim_perturb)
    fold = workdir / f"fold-{args.speaker}"
    cache_file = workdir / f"cache-v2-{args.speaker}-{args.synth.name}-trim{','.join(f'{t:g}' for t in trims)}.pt"
    settings = fold_settings(fold, args.synth, base, trims)
    if cache_file.is_file():
        cache = torch.load(cache_file)
    else:
        if not fold.exists():
            fsdd.audiofolder(fold / "train-data", {"train": [r for r in recs if r.speaker != args.speaker]})
            fsdd.audiofolder(fold / "test-data", {"test": [r for r in recs if r.speaker == args.speaker]})
        cache = build_cache(fold, settings)
        torch.save(cache, cache_file)

    y_unseen = cache["unseen"][1]
    print(f"| variant | seed | kept epoch | mean of epochs | per epoch | kept, speech-only pooling |  "
          f"(unseen: {args.speaker}, {len(y_unseen)} clips)")
    print("|---|---|---|---|---|---|")
    for text, variant in variants.items():
        teacher = teach(cache, settings, int(variant["distill"])) if variant.get("distill") else None
        kept_logits = []
        for seed in args.seeds:
            per_epoch, kept, kept_speech, _ = train_variant(cache, settings, variant, seed, teacher)
            kept_logits.append(kept)
            kept_acc = float((kept.argmax(1) == y_unseen).float().mean())
            speech_acc = float((kept_speech.argmax(1) == y_unseen).float().mean())
            print(f"| {text} | {seed} | {kept_acc:.2%} | {sum(per_epoch) / len(per_epoch):.2%} | "
                  f"{' '.join(f'{a:.1%}' for a in per_epoch)} | {speech_acc:.2%} |", flush=True)
        if len(kept_logits) > 1:
            mean_probs = sum(torch.softmax(k, dim=1) for k in kept_logits)
            ensemble = float((mean_probs.argmax(1) == y_unseen).float().mean())
            always = torch.stack([k.argmax(1) != y_unseen for k in kept_logits]).all(dim=0).sum()
            print(f"| {text} | ensemble of {len(kept_logits)} | {ensemble:.2%} | | {int(always)} clips missed by "
                  "every seed |", flush=True)
    print(f"reproduce: {fsdd.reproduce_line(argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
